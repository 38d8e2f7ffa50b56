//! Request head parsing (httparse) into offsets of the connection's read
//! buffer, so nothing is copied until a header is forwarded.
//!
//! Framing follows RFC 9112 §6 strictly, because a proxy that disagrees
//! with its upstream about where a body ends is a request-smuggling hole:
//! `Transfer-Encoding` together with `Content-Length` is rejected,
//! differing repeated `Content-Length` values are rejected, and the only
//! transfer coding accepted is a lone `chunked`.

use std::ops::Range;

use super::headers::{has_token, names, trim};
use crate::error::{Error, Kind};

/// Most header fields accepted in one request.
pub const MAX_HEADERS: usize = 96;

/// Request method, as far as routing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// HEAD
    Head,
    /// POST
    Post,
    /// Anything else.
    Other,
}

/// How the request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    None,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed request head; ranges index the buffer it was parsed from.
#[derive(Debug, Clone)]
pub struct RequestHead {
    /// Method.
    pub method: Method,
    /// Path and query.
    pub target: Range<usize>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// Every header as (name, value) ranges, in order.
    pub headers: Vec<(Range<usize>, Range<usize>)>,
    /// Bytes of the head including the blank line.
    pub len: usize,
    /// Body framing.
    pub body: BodyFraming,
    /// `Expect: 100-continue` was sent.
    pub expect_continue: bool,
    /// The connection may be reused after this request.
    pub keep_alive: bool,
    /// A valid client `x-request-id`.
    pub request_id: Option<Range<usize>>,
}

impl RequestHead {
    /// The path without the query string.
    pub fn path<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        let t = &buf[self.target.clone()];
        match memchr::memchr(b'?', t) {
            Some(q) => &t[..q],
            None => t,
        }
    }

    /// The query string including `?`, or empty.
    pub fn query<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        let t = &buf[self.target.clone()];
        match memchr::memchr(b'?', t) {
            Some(q) => &t[q..],
            None => &[],
        }
    }
}

/// Parses a head from the start of `buf`. `Ok(None)` means more bytes
/// are needed; the caller enforces the size limit.
pub fn parse(buf: &[u8]) -> Result<Option<RequestHead>, Error> {
    // Left uninitialised: httparse writes only the slots it fills, so a
    // parse does not first clear 3 KiB of header slots.
    let mut raw = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Error::new(
                Kind::HeadersTooLarge,
                "too many request header fields",
            ));
        }
        Err(e) => {
            return Err(Error::msg(
                Kind::BadRequest,
                format!("malformed request head: {e}"),
            ));
        }
    };
    let base = buf.as_ptr() as usize;
    let off = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        start..start + s.len()
    };
    let method = match req.method.unwrap_or("") {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "HEAD" => Method::Head,
        _ => Method::Other,
    };
    let target = req.path.map(|p| off(p.as_bytes())).unwrap_or(0..0);
    let minor = req.version.unwrap_or(1);
    let mut headers = Vec::with_capacity(req.headers.len());
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut te_seen = false;
    let mut expect_continue = false;
    let mut conn_close = false;
    let mut request_id = None;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let value = trim(h.value);
        headers.push((off(name), off(value)));
        if names::CONTENT_LENGTH.is(name) {
            let n = parse_length(value)
                .ok_or_else(|| Error::new(Kind::BadRequest, "invalid Content-Length"))?;
            if content_length.is_some_and(|c| c != n) {
                return Err(Error::new(
                    Kind::BadRequest,
                    "conflicting Content-Length headers",
                ));
            }
            content_length = Some(n);
        } else if names::TRANSFER_ENCODING.is(name) {
            if te_seen || !value.eq_ignore_ascii_case(b"chunked") {
                return Err(Error::new(
                    Kind::NotImplemented,
                    "only `Transfer-Encoding: chunked` is supported",
                ));
            }
            te_seen = true;
            chunked = true;
        } else if names::CONNECTION.is(name) {
            conn_close |= has_token(value, b"close");
        } else if names::EXPECT.is(name) {
            if value.eq_ignore_ascii_case(b"100-continue") {
                expect_continue = true;
            } else {
                return Err(Error::new(
                    Kind::ExpectationFailed,
                    "only `Expect: 100-continue` is supported",
                ));
            }
        } else if names::X_REQUEST_ID.is(name) && valid_request_id(value) {
            request_id = Some(off(value));
        }
    }
    if chunked && content_length.is_some() {
        return Err(Error::new(
            Kind::BadRequest,
            "both Transfer-Encoding and Content-Length sent",
        ));
    }
    if chunked && minor == 0 {
        return Err(Error::new(
            Kind::BadRequest,
            "chunked body in an HTTP/1.0 request",
        ));
    }
    let body = match (chunked, content_length) {
        (true, _) => BodyFraming::Chunked,
        (false, Some(0)) | (false, None) => BodyFraming::None,
        (false, Some(n)) => BodyFraming::Length(n),
    };
    // HTTP/1.0 keep-alive is not offered: every 1.0 exchange closes.
    let keep_alive = minor == 1 && !conn_close;
    Ok(Some(RequestHead {
        method,
        target,
        minor,
        headers,
        len,
        body,
        expect_continue,
        keep_alive,
        request_id,
    }))
}

fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Request ids are echoed in headers and logs: visible ASCII only, bounded.
fn valid_request_id(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= 128 && v.iter().all(|&b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Option<RequestHead>, Error> {
        parse(s.as_bytes())
    }

    #[test]
    fn parses_post_with_length() {
        let s = "POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\nX-Request-Id: abc\r\n\r\n{}";
        let h = p(s).unwrap().unwrap();
        assert_eq!(h.method, Method::Post);
        assert_eq!(h.path(s.as_bytes()), b"/v1/chat/completions");
        assert_eq!(h.query(s.as_bytes()), b"?x=1");
        assert_eq!(h.body, BodyFraming::Length(12));
        assert!(h.keep_alive);
        assert_eq!(&s[h.request_id.clone().unwrap()], "abc");
        assert_eq!(&s[h.len..], "{}");
    }

    #[test]
    fn framing_rules() {
        assert_eq!(
            p("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
                .unwrap()
                .unwrap()
                .body,
            BodyFraming::Chunked
        );
        let both = p("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n");
        assert_eq!(both.unwrap_err().status(), 400);
        let two = p("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n");
        assert_eq!(two.unwrap_err().status(), 400);
        let gz = p("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(gz.unwrap_err().status(), 501);
        assert_eq!(
            p("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n")
                .unwrap_err()
                .status(),
            400
        );
        assert_eq!(
            p("POST / HTTP/1.1\r\nExpect: x\r\n\r\n")
                .unwrap_err()
                .status(),
            417
        );
        assert!(
            p("POST / HTTP/1.1\r\nExpect: 100-Continue\r\n\r\n")
                .unwrap()
                .unwrap()
                .expect_continue
        );
        assert!(p("POST / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
        assert_eq!(p("GARBAGE\r\n\r\n").unwrap_err().status(), 400);
    }

    #[test]
    fn keep_alive_rules() {
        assert!(!p("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap().keep_alive);
        assert!(
            !p("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .unwrap()
                .unwrap()
                .keep_alive
        );
        assert!(
            !p("GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n")
                .unwrap()
                .unwrap()
                .keep_alive
        );
    }

    #[test]
    fn bad_request_id_is_replaced() {
        let h = p("GET / HTTP/1.1\r\nx-request-id: has space\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.request_id.is_none());
    }
}
