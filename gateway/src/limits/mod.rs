//! Per-key and per-tenant limits: requests and tokens per minute, token
//! and money budgets per day or month, concurrent streams.
//!
//! Admission happens before forwarding, from local state only (see
//! `window.rs`): it reserves the request, the prompt estimate plus the
//! output the client allows (`max_tokens` / `max_completion_tokens`, times
//! `n`), and the price of both. When the answer is done the reservation
//! settles to the real usage: the unused part is refunded, an excess is
//! charged. With a Redis store the windows are shared between nodes
//! through leases that `lease.rs` refills in the background.
//!
//! # Failure behavior
//! Admission never waits for the store. When the store is unreachable the
//! policy decides: `fail_open` (default) admits against each node's own
//! view of the limits; `fail_closed` admits only against leases already
//! granted and answers 503 beyond them.

pub mod lease;
pub mod metrics;
pub mod period;
pub mod window;

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

pub use period::Period;
pub use window::{Allow, Gauge, Refusal, Window};

/// Output tokens a request allows: `max_completion_tokens` (or the older
/// `max_tokens`) times `n`; 0 when it sets none (then only the prompt is
/// reserved and the completion is charged when known).
pub fn output_cap(body: &[u8]) -> u64 {
    #[derive(serde::Deserialize)]
    struct Cap {
        #[serde(default)]
        max_tokens: Option<u64>,
        #[serde(default)]
        max_completion_tokens: Option<u64>,
        #[serde(default)]
        n: Option<u64>,
    }
    match serde_json::from_slice::<Cap>(body) {
        Ok(c) => c
            .max_completion_tokens
            .or(c.max_tokens)
            .unwrap_or(0)
            .saturating_mul(c.n.unwrap_or(1).clamp(1, 128)),
        Err(_) => 0,
    }
}

/// Limits as configured for one key, tenant, or key/tenant and model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitSpec {
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Tokens (prompt + completion) per minute.
    pub tpm: Option<u64>,
    /// Concurrent streaming requests (per node).
    pub max_streams: Option<u64>,
    /// Tokens per budget period.
    pub budget_tokens: Option<u64>,
    /// Micro-dollars per budget period.
    pub budget_micros: Option<u64>,
    /// Budget period (day or month).
    pub budget_period: Option<Period>,
}

impl LimitSpec {
    /// True when nothing is limited.
    pub fn is_empty(&self) -> bool {
        self.rpm.is_none()
            && self.tpm.is_none()
            && self.max_streams.is_none()
            && self.budget_tokens.is_none()
            && self.budget_micros.is_none()
    }
}

/// Which limit a window counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Requests per minute.
    Requests,
    /// Tokens per minute.
    Tokens,
    /// Token budget.
    BudgetTokens,
    /// Money budget.
    BudgetMicros,
}

impl Kind {
    /// Name in Redis keys, errors and the admin API.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Requests => "rpm",
            Kind::Tokens => "tpm",
            Kind::BudgetTokens => "budget_tokens",
            Kind::BudgetMicros => "budget_micros",
        }
    }
}

/// The live counters of one scope (a key, a tenant, or either with a model).
#[derive(Debug)]
pub struct Counters {
    /// `key:<id>`, `tenant:<id>`, with `/<model>` for a per-model scope.
    pub scope: Arc<str>,
    /// The limits these counters enforce.
    pub spec: LimitSpec,
    /// Windows with their kind.
    pub windows: Vec<(Kind, Window)>,
    /// Concurrent streams.
    pub streams: Option<Gauge>,
}

impl Counters {
    /// Counters for `spec`; `lease_fraction` sizes shared-mode leases.
    pub fn new(scope: impl Into<Arc<str>>, spec: &LimitSpec, lease_fraction: f64) -> Self {
        let lease = |limit: u64| ((limit as f64 * lease_fraction).ceil() as u64).max(1);
        let budget = spec.budget_period.unwrap_or(Period::Month);
        let mut windows = Vec::new();
        for (kind, limit, period) in [
            (Kind::Requests, spec.rpm, Period::Minute),
            (Kind::Tokens, spec.tpm, Period::Minute),
            (Kind::BudgetTokens, spec.budget_tokens, budget),
            (Kind::BudgetMicros, spec.budget_micros, budget),
        ] {
            if let Some(l) = limit {
                windows.push((kind, Window::new(l, period, lease(l))));
            }
        }
        Counters {
            scope: scope.into(),
            spec: spec.clone(),
            windows,
            streams: spec.max_streams.map(Gauge::new),
        }
    }

    /// The window of `kind`, if limited.
    pub fn window(&self, kind: Kind) -> Option<&Window> {
        self.windows
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, w)| w)
    }
}

/// What one request asks for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Demand {
    /// Tokens reserved (prompt estimate + allowed output).
    pub tokens: u64,
    /// Micro-dollars reserved.
    pub micros: u64,
    /// A streaming request (counts against `max_streams`).
    pub stream: bool,
}

impl Demand {
    fn cost(&self, kind: Kind) -> u64 {
        match kind {
            Kind::Requests => 1,
            Kind::Tokens | Kind::BudgetTokens => self.tokens,
            Kind::BudgetMicros => self.micros,
        }
    }
}

/// A refused request: which limit, and when to retry.
#[derive(Debug, Clone)]
pub struct Refused {
    /// Scope that refused.
    pub scope: Arc<str>,
    /// What ran out (`None`: concurrent streams).
    pub kind: Option<Kind>,
    /// Why.
    pub why: Refusal,
    /// The refusing limit's value.
    pub limit: u64,
    /// Headers to send with the 429.
    pub headers: RateHeaders,
}

impl Refused {
    /// Seconds for `Retry-After`.
    pub fn retry_after_s(&self) -> u64 {
        match self.why {
            Refusal::Exhausted { reset_ms } | Refusal::StoreDown { reset_ms } => {
                reset_ms.div_ceil(1000).max(1)
            }
            Refusal::TooLarge => 60,
        }
    }
}

/// The `x-ratelimit-*` values of the tightest request and token windows.
#[derive(Debug, Clone, Default)]
pub struct RateHeaders {
    /// (limit, remaining, reset ms) of requests per minute.
    pub requests: Option<(u64, u64, u64)>,
    /// (limit, remaining, reset ms) of tokens per minute.
    pub tokens: Option<(u64, u64, u64)>,
}

impl RateHeaders {
    fn offer(slot: &mut Option<(u64, u64, u64)>, limit: u64, remaining: u64, reset_ms: u64) {
        if slot.is_none_or(|(_, r, _)| remaining < r) {
            *slot = Some((limit, remaining, reset_ms));
        }
    }

    /// Header (name, value) pairs as OpenAI sends them.
    pub fn pairs(&self) -> Vec<(&'static [u8], Vec<u8>)> {
        let mut out = Vec::new();
        for (set, names) in [
            (
                self.requests,
                [
                    &b"x-ratelimit-limit-requests"[..],
                    b"x-ratelimit-remaining-requests",
                    b"x-ratelimit-reset-requests",
                ],
            ),
            (
                self.tokens,
                [
                    &b"x-ratelimit-limit-tokens"[..],
                    b"x-ratelimit-remaining-tokens",
                    b"x-ratelimit-reset-tokens",
                ],
            ),
        ] {
            if let Some((limit, remaining, reset)) = set {
                out.push((names[0], limit.to_string().into_bytes()));
                out.push((names[1], remaining.to_string().into_bytes()));
                out.push((names[2], reset_string(reset).into_bytes()));
            }
        }
        out
    }
}

/// OpenAI's reset format: `20ms`, `1s`, `6m0s`, `1h2m3s`.
pub fn reset_string(ms: u64) -> String {
    let mut s = String::new();
    if ms < 1000 {
        let _ = write!(s, "{ms}ms");
        return s;
    }
    let secs = ms.div_ceil(1000);
    let (h, m, sec) = (secs / 3600, (secs / 60) % 60, secs % 60);
    if h > 0 {
        let _ = write!(s, "{h}h{m}m{sec}s");
    } else if m > 0 {
        let _ = write!(s, "{m}m{sec}s");
    } else {
        let _ = write!(s, "{sec}s");
    }
    s
}

const MODE_LOCAL: u8 = 0;
const MODE_SHARED: u8 = 1;
const MODE_CLOSED: u8 = 2;

/// Process-wide admission state: how windows may be spent, and the wake-up
/// of the lease thread.
#[derive(Debug)]
pub struct Limiter {
    mode: AtomicU8,
    wake: Option<std::sync::mpsc::SyncSender<()>>,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter {
            mode: AtomicU8::new(MODE_LOCAL),
            wake: None,
        }
    }
}

impl Limiter {
    /// A limiter for a shared store; `wake` nudges the lease thread.
    pub fn shared(wake: std::sync::mpsc::SyncSender<()>) -> Self {
        Limiter {
            mode: AtomicU8::new(MODE_SHARED),
            wake: Some(wake),
        }
    }

    /// Current spending mode.
    pub fn allow(&self) -> Allow {
        match self.mode.load(Ordering::Acquire) {
            MODE_SHARED => Allow::Shared,
            MODE_CLOSED => Allow::Closed,
            _ => Allow::Local,
        }
    }

    /// Set by the lease thread when the store goes down or comes back.
    pub fn set_allow(&self, a: Allow) {
        let m = match a {
            Allow::Local => MODE_LOCAL,
            Allow::Shared => MODE_SHARED,
            Allow::Closed => MODE_CLOSED,
        };
        self.mode.store(m, Ordering::Release);
    }

    /// Reserves `d` in every scope, all or nothing.
    pub fn admit(
        &self,
        scopes: &[&Arc<Counters>],
        d: Demand,
        now_ms: u64,
    ) -> Result<Admission, Refused> {
        let allow = self.allow();
        let mut adm = Admission {
            held: Vec::with_capacity(scopes.len()),
            demand: d,
            headers: RateHeaders::default(),
        };
        let mut low = false;
        for c in scopes {
            let mut held = Held {
                counters: Arc::clone(c),
                tags: [None; 4],
                stream: false,
            };
            for (i, (kind, w)) in c.windows.iter().enumerate() {
                let cost = d.cost(*kind);
                match w.take(cost, now_ms, allow) {
                    Ok(t) => {
                        if let Some(slot) = held.tags.get_mut(i) {
                            *slot = Some(t.tag);
                        }
                        low |= allow != Allow::Local && w.ask(now_ms).is_some();
                        match kind {
                            Kind::Requests => RateHeaders::offer(
                                &mut adm.headers.requests,
                                w.limit,
                                t.remaining,
                                t.reset_ms,
                            ),
                            Kind::Tokens => RateHeaders::offer(
                                &mut adm.headers.tokens,
                                w.limit,
                                t.remaining,
                                t.reset_ms,
                            ),
                            _ => {}
                        }
                    }
                    Err(why) => {
                        adm.held.push(held);
                        let mut headers = adm.headers.clone();
                        // The refusing window's own figures win.
                        let reset = match why {
                            Refusal::Exhausted { reset_ms } | Refusal::StoreDown { reset_ms } => {
                                reset_ms
                            }
                            Refusal::TooLarge => w.peek(now_ms, allow).reset_ms,
                        };
                        let left = w.peek(now_ms, allow).remaining;
                        match kind {
                            Kind::Requests => headers.requests = Some((w.limit, left, reset)),
                            Kind::Tokens => headers.tokens = Some((w.limit, left, reset)),
                            _ => {}
                        }
                        self.nudge();
                        adm.cancel();
                        return Err(Refused {
                            scope: c.scope.clone(),
                            kind: Some(*kind),
                            why,
                            limit: w.limit,
                            headers,
                        });
                    }
                }
            }
            if let (true, Some(g)) = (d.stream, &c.streams) {
                if !g.acquire() {
                    adm.held.push(held);
                    let headers = adm.headers.clone();
                    adm.cancel();
                    return Err(Refused {
                        scope: c.scope.clone(),
                        kind: None,
                        why: Refusal::Exhausted { reset_ms: 1000 },
                        limit: g.max,
                        headers,
                    });
                }
                held.stream = true;
            }
            adm.held.push(held);
        }
        if low {
            self.nudge();
        }
        Ok(adm)
    }

    /// Wakes the lease thread (never blocks; a pending wake-up is enough).
    pub fn nudge(&self) {
        if let Some(tx) = &self.wake {
            let _ = tx.try_send(());
        }
    }
}

#[derive(Debug)]
struct Held {
    counters: Arc<Counters>,
    /// Window tag taken, by window position (at most four windows).
    tags: [Option<u64>; 4],
    stream: bool,
}

/// A reservation: settle it with the real usage when the answer is done.
/// Dropping it unsettled frees stream slots and keeps the reservation
/// charged (the conservative side).
#[derive(Debug)]
pub struct Admission {
    held: Vec<Held>,
    demand: Demand,
    /// Header values for the response.
    pub headers: RateHeaders,
}

impl Admission {
    /// An admission that holds nothing (auth off, no limits).
    pub fn none() -> Self {
        Admission {
            held: Vec::new(),
            demand: Demand::default(),
            headers: RateHeaders::default(),
        }
    }

    /// Undo everything taken (refusal in a later scope).
    fn cancel(&mut self) {
        for h in self.held.drain(..) {
            for (i, (kind, w)) in h.counters.windows.iter().enumerate() {
                if let Some(Some(tag)) = h.tags.get(i) {
                    w.refund(*tag, self.demand.cost(*kind));
                }
            }
            if h.stream
                && let Some(g) = &h.counters.streams
            {
                g.release();
            }
        }
    }

    /// Replaces the reservation with the real usage.
    pub fn settle(mut self, tokens: u64, micros: u64, now_ms: u64) {
        for h in self.held.drain(..) {
            for (i, (kind, w)) in h.counters.windows.iter().enumerate() {
                let Some(Some(tag)) = h.tags.get(i) else {
                    continue;
                };
                let (reserved, real) = match kind {
                    Kind::Requests => continue,
                    Kind::Tokens | Kind::BudgetTokens => (self.demand.tokens, tokens),
                    Kind::BudgetMicros => (self.demand.micros, micros),
                };
                if real < reserved {
                    w.refund(*tag, reserved - real);
                } else {
                    w.charge(real - reserved, now_ms);
                }
            }
            if h.stream
                && let Some(g) = &h.counters.streams
            {
                g.release();
            }
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        for h in self.held.drain(..) {
            if h.stream
                && let Some(g) = &h.counters.streams
            {
                g.release();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_700_000_010_000;

    fn spec() -> LimitSpec {
        LimitSpec {
            rpm: Some(3),
            tpm: Some(100),
            max_streams: Some(1),
            ..LimitSpec::default()
        }
    }

    #[test]
    fn all_or_nothing_across_scopes() {
        let l = Limiter::default();
        let key = Arc::new(Counters::new("key:a", &spec(), 0.1));
        let tenant = Arc::new(Counters::new(
            "tenant:t",
            &LimitSpec {
                tpm: Some(50),
                ..LimitSpec::default()
            },
            0.1,
        ));
        let d = Demand {
            tokens: 40,
            micros: 0,
            stream: false,
        };
        let a = l.admit(&[&key, &tenant], d, T).unwrap();
        assert_eq!(a.headers.requests.map(|r| r.1), Some(2));
        // Tokens: the tenant's 10 left is tighter than the key's 60.
        assert_eq!(a.headers.tokens.map(|r| r.1), Some(10));
        let r = l.admit(&[&key, &tenant], d, T).unwrap_err();
        assert_eq!(&*r.scope, "tenant:t");
        assert_eq!(r.kind, Some(Kind::Tokens));
        // The key's request and tokens were given back.
        assert_eq!(key.window(Kind::Requests).unwrap().used(T), 1);
        assert_eq!(key.window(Kind::Tokens).unwrap().used(T), 40);
        // Settling to 15 real tokens refunds 25 in both scopes.
        a.settle(15, 0, T);
        assert_eq!(tenant.window(Kind::Tokens).unwrap().used(T), 15);
        let thirty = Demand { tokens: 30, ..d };
        assert!(l.admit(&[&key, &tenant], thirty, T).is_ok());
    }

    #[test]
    fn stream_slots_free_on_settle_and_drop() {
        let l = Limiter::default();
        let key = Arc::new(Counters::new("key:a", &spec(), 0.1));
        let d = Demand {
            tokens: 1,
            micros: 0,
            stream: true,
        };
        let a = l.admit(&[&key], d, T).unwrap();
        let r = l.admit(&[&key], d, T).unwrap_err();
        assert_eq!(r.kind, None);
        drop(a);
        let b = l.admit(&[&key], d, T).unwrap();
        b.settle(1, 0, T);
        assert_eq!(key.streams.as_ref().unwrap().current(), 0);
    }

    #[test]
    fn output_cap_reads_the_request() {
        assert_eq!(output_cap(br#"{"model":"m","max_tokens":100}"#), 100);
        assert_eq!(
            output_cap(br#"{"max_tokens":100,"max_completion_tokens":50,"n":2}"#),
            100
        );
        assert_eq!(
            output_cap(br#"{"model":"m","messages":[{"max_tokens":5}]}"#),
            0
        );
        assert_eq!(output_cap(br#"{"max_tokens":"x"}"#), 0);
    }

    #[test]
    fn reset_strings_match_openai() {
        assert_eq!(reset_string(20), "20ms");
        assert_eq!(reset_string(1000), "1s");
        assert_eq!(reset_string(1001), "2s");
        assert_eq!(reset_string(360_000), "6m0s");
        assert_eq!(reset_string(3_723_000), "1h2m3s");
    }
}
