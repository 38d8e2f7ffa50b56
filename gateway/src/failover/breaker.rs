//! A circuit breaker per target (upstream + upstream model), shared by all
//! workers of a node through atomics only.
//!
//! States (Nygard; resilience4j's naming):
//! - `Closed`: calls flow; failures are counted. `max_failures` consecutive
//!   failures, or a failure rate over the last `window` calls (once
//!   `min_calls` were seen) at or above `failure_rate`, trip it.
//! - `Open`: calls are refused until `open_until`. Each trip in a row
//!   lengthens the break by `growth`, capped at `max_break`.
//! - `HalfOpen`: after the break, up to `probes` calls per probe window
//!   (one break long) are let through; a probe's success closes the
//!   breaker, a probe's failure opens it again. Outcomes of calls admitted
//!   before the break do not move a half-open breaker. Probes are counted
//!   per window, never handed back, so a probe whose outcome is never
//!   recorded (the client left) cannot lock the target out: the next
//!   window admits a new one.
//!
//! A 429 is not a failure: it puts the target into a cooldown for the
//! `Retry-After` time (or `cooldown` by default) during which it is skipped.
//!
//! Races between workers are benign by construction: transitions use
//! compare-and-swap, so two workers tripping at once open it once.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use super::class::Effect;

/// Breaker settings (compiled from `breaker = { ... }`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker (0 = off).
    pub max_failures: u32,
    /// Failure rate (0..1] over the window that opens it (None = off).
    pub failure_rate: Option<f64>,
    /// Calls in the sliding window (1..=64).
    pub window: u32,
    /// Calls needed before the rate is judged.
    pub min_calls: u32,
    /// First break.
    pub break_duration: Duration,
    /// Multiplier per consecutive trip (1 = constant).
    pub growth: f64,
    /// Longest break.
    pub max_break: Duration,
    /// Calls let through when half-open.
    pub probes: u32,
    /// Cooldown after a 429 without `Retry-After`.
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            max_failures: 5,
            failure_rate: None,
            window: 20,
            min_calls: 10,
            break_duration: Duration::from_secs(30),
            growth: 1.0,
            max_break: Duration::from_secs(300),
            probes: 1,
            cooldown: Duration::from_secs(1),
        }
    }
}

/// Breaker state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Calls flow.
    Closed,
    /// Calls refused.
    Open,
    /// Probing.
    HalfOpen,
}

impl State {
    fn from_u8(v: u8) -> State {
        match v {
            1 => State::Open,
            2 => State::HalfOpen,
            _ => State::Closed,
        }
    }

    /// Name for logs and the admin API.
    pub fn name(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

/// The answer to "may I call this target now?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Closed: go.
    Go,
    /// Half-open: go, as one of the probes.
    Probe,
    /// Open: skip.
    Open,
    /// Cooling down after a 429: skip.
    Cooldown,
}

impl Permit {
    /// Whether the call may proceed.
    pub fn allowed(self) -> bool {
        matches!(self, Permit::Go | Permit::Probe)
    }
}

/// A state change worth logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Now open for this long.
    Opened(Duration),
    /// Closed again after a successful probe.
    Closed,
}

/// Milliseconds on a process-wide monotonic clock (coarse: a few ms of
/// resolution), never 0.
pub fn now_ms() -> u64 {
    static BASE: OnceLock<u64> = OnceLock::new();
    let now = crate::sys::coarse_mono_ms();
    now.saturating_sub(*BASE.get_or_init(|| now)) + 1
}

/// One breaker.
#[derive(Debug)]
pub struct Breaker {
    cfg: BreakerConfig,
    state: AtomicU8,
    consecutive: AtomicU32,
    open_until: AtomicU64,
    trips: AtomicU32,
    /// Probes admitted in the current probe window.
    probes: AtomicU32,
    /// Start of the current probe window.
    probe_window: AtomicU64,
    cooldown_until: AtomicU64,
    window_bits: AtomicU64,
    calls: AtomicU64,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(cfg: BreakerConfig) -> Self {
        Breaker {
            cfg,
            state: AtomicU8::new(0),
            consecutive: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            trips: AtomicU32::new(0),
            probes: AtomicU32::new(0),
            probe_window: AtomicU64::new(0),
            cooldown_until: AtomicU64::new(0),
            window_bits: AtomicU64::new(0),
            calls: AtomicU64::new(0),
        }
    }

    /// Current state (an open breaker past its break reads as half-open).
    pub fn state(&self, now: u64) -> State {
        match State::from_u8(self.state.load(Ordering::Acquire)) {
            State::Open if now >= self.open_until.load(Ordering::Acquire) => State::HalfOpen,
            s => s,
        }
    }

    /// Milliseconds left in the break or cooldown, for the admin API.
    pub fn blocked_for(&self, now: u64) -> u64 {
        let open = self.open_until.load(Ordering::Acquire).saturating_sub(now);
        let cool = self
            .cooldown_until
            .load(Ordering::Acquire)
            .saturating_sub(now);
        if self.state(now) == State::Open {
            open.max(cool)
        } else {
            cool
        }
    }

    /// Asks to call the target.
    pub fn permit(&self, now: u64) -> Permit {
        if now < self.cooldown_until.load(Ordering::Acquire) {
            return Permit::Cooldown;
        }
        match State::from_u8(self.state.load(Ordering::Acquire)) {
            State::Closed => Permit::Go,
            State::Open => {
                if now < self.open_until.load(Ordering::Acquire) {
                    return Permit::Open;
                }
                // Break over: the first worker here moves it to half-open
                // (the probe window starts at 0, so the first probe opens it).
                let _ = self
                    .state
                    .compare_exchange(1, 2, Ordering::AcqRel, Ordering::Acquire);
                self.probe(now)
            }
            State::HalfOpen => self.probe(now),
        }
    }

    fn probe(&self, now: u64) -> Permit {
        let start = self.probe_window.load(Ordering::Acquire);
        let window = self.cfg.break_duration.as_millis().max(1) as u64;
        if now >= start.saturating_add(window)
            && self
                .probe_window
                .compare_exchange(start, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.probes.store(0, Ordering::Release);
        }
        if self.probes.fetch_add(1, Ordering::AcqRel) < self.cfg.probes {
            Permit::Probe
        } else {
            Permit::Open
        }
    }

    /// Records the outcome of a call made under `permit`.
    pub fn record(
        &self,
        permit: Permit,
        effect: Effect,
        retry_after: Option<Duration>,
        now: u64,
    ) -> Option<Transition> {
        let probe = permit == Permit::Probe;
        match effect {
            Effect::Success => {
                self.consecutive.store(0, Ordering::Release);
                self.push(false);
                if probe
                    && self
                        .state
                        .compare_exchange(2, 0, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                {
                    self.trips.store(0, Ordering::Release);
                    self.reset_window();
                    return Some(Transition::Closed);
                }
                None
            }
            Effect::Failure => {
                self.push(true);
                let c = self.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
                let state = State::from_u8(self.state.load(Ordering::Acquire));
                let trip = match state {
                    // Only a probe's failure re-opens; a call admitted
                    // before the break ended says nothing new.
                    State::HalfOpen => probe,
                    State::Open => false,
                    State::Closed => {
                        (self.cfg.max_failures > 0 && c >= self.cfg.max_failures)
                            || self.rate_exceeded()
                    }
                };
                if trip { self.trip(state, now) } else { None }
            }
            Effect::Cooldown => {
                let d = retry_after.unwrap_or(self.cfg.cooldown);
                self.cooldown_until
                    .fetch_max(now + d.as_millis() as u64, Ordering::AcqRel);
                None
            }
            Effect::None => None,
        }
    }

    fn trip(&self, from: State, now: u64) -> Option<Transition> {
        let from = match from {
            State::Closed => 0,
            State::HalfOpen => 2,
            State::Open => return None,
        };
        if self
            .state
            .compare_exchange(from, 1, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return None;
        }
        let trips = self.trips.fetch_add(1, Ordering::AcqRel);
        self.probe_window.store(0, Ordering::Release);
        self.probes.store(0, Ordering::Release);
        let base = self.cfg.break_duration.as_secs_f64();
        let secs = (base * self.cfg.growth.powi(trips.min(30) as i32))
            .min(self.cfg.max_break.as_secs_f64());
        let d = Duration::from_secs_f64(secs.max(0.0));
        self.open_until
            .store(now + d.as_millis() as u64, Ordering::Release);
        self.consecutive.store(0, Ordering::Release);
        self.reset_window();
        Some(Transition::Opened(d))
    }

    /// Forces a state (admin API, or a peer node's report).
    pub fn force_open(&self, d: Duration, now: u64) {
        self.open_until
            .store(now + d.as_millis() as u64, Ordering::Release);
        self.state.store(1, Ordering::Release);
    }

    /// Opens for `d` because another node's breaker of the same target
    /// opened; a breaker already open at least that long is left alone
    /// (50 ms of slack absorbs clock and polling jitter).
    pub fn adopt_open(&self, d: Duration, now: u64) {
        let until = now + d.as_millis() as u64;
        let open = State::from_u8(self.state.load(Ordering::Acquire)) == State::Open;
        if open && self.open_until.load(Ordering::Acquire) + 50 >= until {
            return;
        }
        self.force_open(d, now);
    }

    /// Closes and clears everything.
    pub fn reset(&self) {
        self.state.store(0, Ordering::Release);
        self.consecutive.store(0, Ordering::Release);
        self.trips.store(0, Ordering::Release);
        self.cooldown_until.store(0, Ordering::Release);
        self.probe_window.store(0, Ordering::Release);
        self.probes.store(0, Ordering::Release);
        self.reset_window();
    }

    fn push(&self, failed: bool) {
        let w = u64::from(self.cfg.window.clamp(1, 64));
        let i = self.calls.fetch_add(1, Ordering::AcqRel) % w;
        let bit = 1u64 << i;
        if failed {
            self.window_bits.fetch_or(bit, Ordering::AcqRel);
        } else {
            self.window_bits.fetch_and(!bit, Ordering::AcqRel);
        }
    }

    fn reset_window(&self) {
        self.calls.store(0, Ordering::Release);
        self.window_bits.store(0, Ordering::Release);
    }

    fn rate_exceeded(&self) -> bool {
        let Some(rate) = self.cfg.failure_rate else {
            return false;
        };
        let w = u64::from(self.cfg.window.clamp(1, 64));
        let calls = self.calls.load(Ordering::Acquire).min(w);
        if calls < u64::from(self.cfg.min_calls.max(1)) {
            return false;
        }
        let mask = if w == 64 { u64::MAX } else { (1u64 << w) - 1 };
        let failures = (self.window_bits.load(Ordering::Acquire) & mask).count_ones();
        f64::from(failures) / calls as f64 >= rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            max_failures: 3,
            break_duration: Duration::from_millis(100),
            growth: 2.0,
            max_break: Duration::from_millis(300),
            ..BreakerConfig::default()
        }
    }

    #[test]
    fn opens_after_consecutive_failures_then_probes_and_closes() {
        let b = Breaker::new(cfg());
        let t = 1000;
        for i in 0..3 {
            let p = b.permit(t);
            assert_eq!(p, Permit::Go);
            let tr = b.record(p, Effect::Failure, None, t);
            assert_eq!(tr.is_some(), i == 2);
        }
        assert_eq!(b.permit(t + 50), Permit::Open);
        assert_eq!(b.state(t + 50), State::Open);
        // Break over: one probe at a time.
        let p = b.permit(t + 100);
        assert_eq!(p, Permit::Probe);
        assert_eq!(b.permit(t + 100), Permit::Open);
        assert_eq!(
            b.record(p, Effect::Success, None, t + 101),
            Some(Transition::Closed)
        );
        assert_eq!(b.permit(t + 102), Permit::Go);
    }

    #[test]
    fn failed_probe_reopens_for_longer_up_to_the_cap() {
        let b = Breaker::new(cfg());
        let mut t = 0;
        for _ in 0..3 {
            b.record(Permit::Go, Effect::Failure, None, t);
        }
        for expect in [200, 300, 300] {
            t = b.open_until.load(Ordering::Acquire);
            let p = b.permit(t);
            assert_eq!(p, Permit::Probe);
            assert_eq!(
                b.record(p, Effect::Failure, None, t),
                Some(Transition::Opened(Duration::from_millis(expect)))
            );
        }
    }

    #[test]
    fn successes_reset_the_count_and_429_cools_down() {
        let b = Breaker::new(cfg());
        for _ in 0..10 {
            b.record(Permit::Go, Effect::Failure, None, 0);
            b.record(Permit::Go, Effect::Failure, None, 0);
            b.record(Permit::Go, Effect::Success, None, 0);
        }
        assert_eq!(b.permit(1), Permit::Go);
        b.record(
            Permit::Go,
            Effect::Cooldown,
            Some(Duration::from_millis(50)),
            10,
        );
        assert_eq!(b.permit(20), Permit::Cooldown);
        assert_eq!(b.permit(60), Permit::Go);
        assert_eq!(b.state(60), State::Closed);
        b.record(Permit::Go, Effect::None, None, 60);
        assert_eq!(b.permit(61), Permit::Go);
    }

    #[test]
    fn failure_rate_window() {
        let b = Breaker::new(BreakerConfig {
            max_failures: 0,
            failure_rate: Some(0.5),
            window: 10,
            min_calls: 10,
            ..cfg()
        });
        let mut opened = false;
        for i in 0..10 {
            let effect = if i % 2 == 0 {
                Effect::Failure
            } else {
                Effect::Success
            };
            opened |= b.record(Permit::Go, effect, None, 0).is_some();
        }
        // 5 of 10 failed, the tenth call was a success: judged on the next failure.
        assert!(!opened);
        assert!(b.record(Permit::Go, Effect::Failure, None, 0).is_some());
    }

    #[test]
    fn a_lost_probe_does_not_lock_the_target_out() {
        let b = Breaker::new(cfg());
        for _ in 0..3 {
            b.record(Permit::Go, Effect::Failure, None, 0);
        }
        let t = b.open_until.load(Ordering::Acquire);
        // The probe's client leaves: its outcome is never recorded.
        assert_eq!(b.permit(t), Permit::Probe);
        assert_eq!(b.permit(t + 10), Permit::Open);
        // One probe window later a new probe is allowed, and closes it.
        let p = b.permit(t + 100);
        assert_eq!(p, Permit::Probe);
        assert_eq!(b.record(p, Effect::None, None, t + 100), None);
        let p = b.permit(t + 200);
        assert_eq!(
            b.record(p, Effect::Success, None, t + 201),
            Some(Transition::Closed)
        );
        // A late failure of a call admitted while closed does not re-open
        // a half-open breaker.
        for _ in 0..3 {
            b.record(Permit::Go, Effect::Failure, None, t + 300);
        }
        let t2 = b.open_until.load(Ordering::Acquire);
        assert_eq!(b.permit(t2), Permit::Probe);
        assert_eq!(b.record(Permit::Go, Effect::Failure, None, t2), None);
        assert_eq!(b.state(t2), State::HalfOpen);
    }

    #[test]
    fn concurrent_trips_open_once() {
        let b = std::sync::Arc::new(Breaker::new(BreakerConfig {
            max_failures: 1,
            ..cfg()
        }));
        let opened: usize = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    (0..1000)
                        .filter(|_| b.record(Permit::Go, Effect::Failure, None, 5).is_some())
                        .count()
                })
            })
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(opened, 1);
    }
}
