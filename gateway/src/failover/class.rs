//! Failure classes of an upstream attempt, and the one place that decides
//! what each class means for failover and for the breaker.

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// A response the client can use.
    Ok,
    /// TCP connect refused (nothing listening).
    ConnectRefused,
    /// TCP/TLS connect did not finish in time.
    ConnectTimeout,
    /// Connection reset or closed mid-exchange.
    Reset,
    /// TLS handshake or certificate failure.
    TlsError,
    /// No response head within the response timeout.
    FirstByteTimeout,
    /// The whole attempt ran past its deadline.
    TotalTimeout,
    /// 5xx other than overload.
    Status5xx,
    /// 529, or 503 whose body says the provider is overloaded.
    Overloaded,
    /// 429.
    RateLimited,
    /// 401/403: the gateway's upstream credentials are wrong.
    Auth,
    /// Other 4xx: the client's request is at fault.
    ClientError,
}

impl Class {
    /// Names used in conditions and logs.
    pub const NAMES: [&'static str; 12] = [
        "ok",
        "connect_refused",
        "connect_timeout",
        "reset",
        "tls_error",
        "first_byte_timeout",
        "total_timeout",
        "status_5xx",
        "overloaded",
        "rate_limited",
        "auth",
        "client_error",
    ];

    /// The name of a class.
    pub fn name(self) -> &'static str {
        match self {
            Class::Ok => "ok",
            Class::ConnectRefused => "connect_refused",
            Class::ConnectTimeout => "connect_timeout",
            Class::Reset => "reset",
            Class::TlsError => "tls_error",
            Class::FirstByteTimeout => "first_byte_timeout",
            Class::TotalTimeout => "total_timeout",
            Class::Status5xx => "status_5xx",
            Class::Overloaded => "overloaded",
            Class::RateLimited => "rate_limited",
            Class::Auth => "auth",
            Class::ClientError => "client_error",
        }
    }

    /// Position in [`Class::NAMES`].
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|&c| c == self).unwrap_or(0)
    }

    /// The class of a name.
    pub fn from_name(s: &str) -> Option<Class> {
        Self::ALL.iter().copied().find(|c| c.name() == s)
    }

    const ALL: [Class; 12] = [
        Class::Ok,
        Class::ConnectRefused,
        Class::ConnectTimeout,
        Class::Reset,
        Class::TlsError,
        Class::FirstByteTimeout,
        Class::TotalTimeout,
        Class::Status5xx,
        Class::Overloaded,
        Class::RateLimited,
        Class::Auth,
        Class::ClientError,
    ];

    /// Class of an upstream response status (`body` is a prefix of the
    /// body, when read, to tell overload 503s apart).
    pub fn of_status(status: u16, body: &[u8]) -> Class {
        match status {
            429 => Class::RateLimited,
            401 | 403 => Class::Auth,
            529 => Class::Overloaded,
            503 if memchr::memmem::find(body, b"overloaded").is_some() => Class::Overloaded,
            500..=599 => Class::Status5xx,
            400..=499 => Class::ClientError,
            _ => Class::Ok,
        }
    }

    /// Whether another target may be tried after this outcome: exactly the
    /// outcomes that say something against the target (failures and rate
    /// limits); credentials, client mistakes and success do not move on.
    pub fn may_fail_over(self) -> bool {
        matches!(self.breaker_effect(), Effect::Failure | Effect::Cooldown)
    }

    /// What the breaker of the target learns from this outcome. Exhaustive:
    /// a new class must decide (and so decides `may_fail_over` too).
    pub fn breaker_effect(self) -> Effect {
        match self {
            Class::Ok => Effect::Success,
            Class::ConnectRefused
            | Class::ConnectTimeout
            | Class::Reset
            | Class::TlsError
            | Class::FirstByteTimeout
            | Class::TotalTimeout
            | Class::Status5xx
            | Class::Overloaded => Effect::Failure,
            Class::RateLimited => Effect::Cooldown,
            // Credentials and client mistakes say nothing about the
            // target's health.
            Class::Auth | Class::ClientError => Effect::None,
        }
    }
}

/// Failed attempts of one target, by class (for `/metrics`).
#[derive(Debug, Default)]
pub struct FailureCounts([std::sync::atomic::AtomicU64; 12]);

impl FailureCounts {
    /// Counts one attempt that ended with `class` (`Ok` is not counted).
    pub fn add(&self, class: Class) {
        if class != Class::Ok {
            self.0[class.index()].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Non-zero counts by class.
    pub fn snapshot(&self) -> Vec<(Class, u64)> {
        Class::ALL
            .iter()
            .map(|&c| {
                (
                    c,
                    self.0[c.index()].load(std::sync::atomic::Ordering::Relaxed),
                )
            })
            .filter(|&(_, n)| n > 0)
            .collect()
    }
}

/// Breaker input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Counts as a success.
    Success,
    /// Counts as a failure.
    Failure,
    /// Rate limited: cool down, not a failure.
    Cooldown,
    /// No change.
    None,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(Class::of_status(200, b""), Class::Ok);
        assert_eq!(
            Class::of_status(503, b"{\"error\":{\"type\":\"overloaded_error\"}}"),
            Class::Overloaded
        );
        assert_eq!(Class::of_status(503, b"busy"), Class::Status5xx);
        assert_eq!(Class::of_status(529, b""), Class::Overloaded);
        assert_eq!(Class::of_status(429, b""), Class::RateLimited);
        assert_eq!(Class::of_status(401, b""), Class::Auth);
        assert_eq!(Class::of_status(422, b""), Class::ClientError);
        for n in Class::NAMES {
            assert_eq!(Class::from_name(n).map(Class::name), Some(n));
        }
        assert!(!Class::Auth.may_fail_over());
        assert_eq!(Class::Auth.breaker_effect(), Effect::None);
        assert_eq!(Class::RateLimited.breaker_effect(), Effect::Cooldown);
    }
}
