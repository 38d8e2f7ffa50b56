//! The one error type of the data path.
//!
//! Every failure a request can meet is a [`Kind`]; the kind alone decides
//! the HTTP status, the OpenAI error `type`/`code`, which side caused it
//! and whether another attempt could succeed. The message is a static
//! string on most paths; only errors that quote client input allocate.

use std::borrow::Cow;

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Request head is not valid HTTP/1.1.
    BadRequest,
    /// Empty request body where JSON is required.
    EmptyBody,
    /// Body is not valid JSON.
    InvalidJson,
    /// Body is JSON but not an object.
    NotObject,
    /// No top-level `model`.
    MissingModel,
    /// `model` is not a non-empty string.
    ModelNotString,
    /// More than one top-level `model`.
    DuplicateModel,
    /// No route for the model.
    UnknownModel,
    /// No such endpoint.
    NotFound,
    /// Endpoint exists, method does not.
    MethodNotAllowed,
    /// Body larger than the limit.
    BodyTooLarge,
    /// Head larger than the limit.
    HeadersTooLarge,
    /// Client too slow to send head or body.
    RequestTimeout,
    /// `Expect` other than `100-continue`.
    ExpectationFailed,
    /// Transfer coding other than chunked.
    NotImplemented,
    /// TCP connect failed (refused, unreachable).
    UpstreamConnect,
    /// TLS handshake or certificate failure.
    UpstreamTls,
    /// Upstream did not answer in time.
    UpstreamTimeout,
    /// Upstream spoke invalid HTTP or closed mid-response.
    UpstreamProtocol,
    /// The upstream rejected the gateway's own credentials (401/403).
    UpstreamAuth,
    /// Every target refused by its breaker, no fallback applies.
    NoHealthyTarget,
    /// The gateway is shutting down.
    ShuttingDown,
    /// No API key, or an unknown or revoked one.
    Unauthorized,
    /// The key may not use this model.
    ModelNotAllowed,
    /// A per-minute limit (requests, tokens, concurrent streams) is reached.
    RateLimited,
    /// A token or money budget is used up.
    QuotaExceeded,
    /// The limits store is unreachable and the policy is fail_closed.
    StoreUnavailable,
    /// A bug or resource exhaustion in the gateway.
    Internal,
}

/// Who caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client sent something wrong.
    Client,
    /// The upstream failed.
    Upstream,
    /// The gateway itself.
    Gateway,
}

/// An error with its kind and a human message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// The kind.
    pub kind: Kind,
    /// Message shown to the client.
    pub message: Cow<'static, str>,
    /// Extra response headers (`retry-after`, `x-ratelimit-*`).
    pub headers: Vec<(&'static [u8], Vec<u8>)>,
}

impl Error {
    /// An error with a static message.
    pub const fn new(kind: Kind, message: &'static str) -> Self {
        Error {
            kind,
            message: Cow::Borrowed(message),
            headers: Vec::new(),
        }
    }

    /// An error with a formatted message.
    pub fn msg(kind: Kind, message: String) -> Self {
        Error {
            kind,
            message: Cow::Owned(message),
            headers: Vec::new(),
        }
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: &'static [u8], value: Vec<u8>) -> Self {
        self.headers.push((name, value));
        self
    }

    /// HTTP status for the client.
    pub fn status(&self) -> u16 {
        match self.kind {
            Kind::BadRequest
            | Kind::EmptyBody
            | Kind::InvalidJson
            | Kind::NotObject
            | Kind::MissingModel
            | Kind::ModelNotString
            | Kind::DuplicateModel => 400,
            Kind::Unauthorized => 401,
            Kind::ModelNotAllowed => 403,
            Kind::RateLimited | Kind::QuotaExceeded => 429,
            Kind::UnknownModel | Kind::NotFound => 404,
            Kind::MethodNotAllowed => 405,
            Kind::RequestTimeout => 408,
            Kind::BodyTooLarge => 413,
            Kind::ExpectationFailed => 417,
            Kind::HeadersTooLarge => 431,
            Kind::Internal => 500,
            Kind::NotImplemented => 501,
            Kind::UpstreamConnect
            | Kind::UpstreamTls
            | Kind::UpstreamProtocol
            | Kind::UpstreamAuth => 502,
            Kind::ShuttingDown | Kind::NoHealthyTarget | Kind::StoreUnavailable => 503,
            Kind::UpstreamTimeout => 504,
        }
    }

    /// OpenAI's `error.type`.
    pub fn error_type(&self) -> &'static str {
        match self.kind {
            Kind::RateLimited => return "requests",
            Kind::QuotaExceeded => return "insufficient_quota",
            Kind::ModelNotAllowed => return "permission_error",
            _ => {}
        }
        match self.side() {
            Side::Client => "invalid_request_error",
            Side::Upstream => "upstream_error",
            Side::Gateway => "server_error",
        }
    }

    /// OpenAI's `error.code`, also the low-cardinality metric label.
    pub fn code(&self) -> &'static str {
        match self.kind {
            Kind::BadRequest => "bad_request",
            Kind::EmptyBody => "empty_body",
            Kind::InvalidJson => "invalid_json",
            Kind::NotObject => "invalid_json",
            Kind::MissingModel => "missing_model",
            Kind::ModelNotString => "invalid_model",
            Kind::DuplicateModel => "duplicate_model",
            Kind::UnknownModel => "model_not_found",
            Kind::NotFound => "not_found",
            Kind::MethodNotAllowed => "method_not_allowed",
            Kind::BodyTooLarge => "body_too_large",
            Kind::HeadersTooLarge => "headers_too_large",
            Kind::RequestTimeout => "request_timeout",
            Kind::ExpectationFailed => "expectation_failed",
            Kind::NotImplemented => "not_implemented",
            Kind::UpstreamConnect => "upstream_connect_failed",
            Kind::UpstreamTls => "upstream_tls_failed",
            Kind::UpstreamTimeout => "upstream_timeout",
            Kind::UpstreamProtocol => "upstream_protocol_error",
            Kind::ShuttingDown => "shutting_down",
            Kind::Unauthorized => "invalid_api_key",
            Kind::ModelNotAllowed => "model_not_allowed",
            Kind::RateLimited => "rate_limit_exceeded",
            Kind::QuotaExceeded => "insufficient_quota",
            Kind::StoreUnavailable => "store_unavailable",
            Kind::NoHealthyTarget => "no_healthy_target",
            Kind::UpstreamAuth => "upstream_auth_failed",
            Kind::Internal => "internal_error",
        }
    }

    /// The `param` OpenAI names, when one is at fault.
    pub fn param(&self) -> Option<&'static str> {
        match self.kind {
            Kind::MissingModel
            | Kind::ModelNotString
            | Kind::DuplicateModel
            | Kind::UnknownModel => Some("model"),
            _ => None,
        }
    }

    /// Who caused it.
    pub fn side(&self) -> Side {
        match self.kind {
            Kind::BadRequest
            | Kind::EmptyBody
            | Kind::InvalidJson
            | Kind::NotObject
            | Kind::MissingModel
            | Kind::ModelNotString
            | Kind::DuplicateModel
            | Kind::UnknownModel
            | Kind::NotFound
            | Kind::MethodNotAllowed
            | Kind::BodyTooLarge
            | Kind::HeadersTooLarge
            | Kind::RequestTimeout
            | Kind::ExpectationFailed
            | Kind::NotImplemented
            | Kind::Unauthorized
            | Kind::ModelNotAllowed
            | Kind::RateLimited
            | Kind::QuotaExceeded => Side::Client,
            Kind::UpstreamConnect
            | Kind::UpstreamTls
            | Kind::UpstreamTimeout
            | Kind::UpstreamProtocol
            | Kind::UpstreamAuth
            | Kind::NoHealthyTarget => Side::Upstream,
            Kind::ShuttingDown | Kind::Internal | Kind::StoreUnavailable => Side::Gateway,
        }
    }

    /// Whether another attempt (other connection or target) could succeed.
    /// Exhaustive on purpose: a new kind must decide.
    pub fn is_retryable(&self) -> bool {
        match self.kind {
            Kind::UpstreamConnect
            | Kind::UpstreamTls
            | Kind::UpstreamTimeout
            | Kind::UpstreamProtocol => true,
            Kind::BadRequest
            | Kind::EmptyBody
            | Kind::InvalidJson
            | Kind::NotObject
            | Kind::MissingModel
            | Kind::ModelNotString
            | Kind::DuplicateModel
            | Kind::UnknownModel
            | Kind::NotFound
            | Kind::MethodNotAllowed
            | Kind::BodyTooLarge
            | Kind::HeadersTooLarge
            | Kind::RequestTimeout
            | Kind::ExpectationFailed
            | Kind::NotImplemented
            | Kind::NoHealthyTarget
            | Kind::UpstreamAuth
            | Kind::ShuttingDown
            | Kind::Internal
            | Kind::Unauthorized
            | Kind::ModelNotAllowed
            | Kind::RateLimited
            | Kind::QuotaExceeded
            | Kind::StoreUnavailable => false,
        }
    }

    /// The OpenAI-shaped JSON body.
    pub fn to_json(&self) -> String {
        let param = match self.param() {
            Some(p) => format!("\"{p}\""),
            None => "null".to_string(),
        };
        format!(
            "{{\"error\":{{\"message\":{},\"type\":\"{}\",\"param\":{},\"code\":\"{}\"}}}}",
            crate::route::rewrite::json_string(&self.message),
            self.error_type(),
            param,
            self.code()
        )
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code(), self.status(), self.message)
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape() {
        let e = Error::msg(Kind::UnknownModel, "model `x\"` not found".into());
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(v["error"]["message"], "model `x\"` not found");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["param"], "model");
        assert_eq!(e.status(), 404);
        let e = Error::new(Kind::UpstreamTimeout, "t");
        assert_eq!((e.status(), e.is_retryable()), (504, true));
        assert!(
            serde_json::from_str::<serde_json::Value>(&e.to_json()).unwrap()["error"]["param"]
                .is_null()
        );
    }
}
