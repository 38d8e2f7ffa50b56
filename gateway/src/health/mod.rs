//! Upstream health from the kernel: the eBPF programs of `ebpf/` (loaded by
//! `tollgate-loader`) report refused connects, resets, kernel timeouts and
//! SYN retransmits on the gateway's upstream addresses within a
//! millisecond, long before a request would time out, and RTT per
//! connection without a system call on the data path.
//!
//! What the signals do:
//! - refused / reset / kernel timeout on an upstream address: one failure
//!   for the breaker of every target on that upstream, at once (no
//!   request needs to hit each target first). The request that saw the
//!   same error also records it for its own target: the two are not
//!   matched up, so that target counts it twice. The kernel's view is
//!   per host: another process's refused connect to the same address
//!   counts too. A reset after this host hung up first (a stream whose
//!   client left) is the local kernel's abort, not a failure (`resets`).
//!   An RST answering a write to a socket the upstream had already closed
//!   is EPIPE in the kernel, not a reset: not counted (the relay's
//!   stale-connection retry covers it).
//! - an RST on an idle pooled connection, or a FIN from the upstream on
//!   one: the connection is evicted before a request is written to it
//!   (`cookies`); not a failure, unless the connection had been idle for
//!   less than a second (the server went away: see `server::relay`).
//! - a SYN retransmit: the upstream is marked slow for [`SLOW_FOR`]; the
//!   balancer's pick moves to another target of the route when one is not
//!   slow ([`Health::prefer_fast`]).
//!
//! # Failure behavior
//! Fail-open: with `[ebpf] enabled = "auto"` (the default) any program the
//! host refuses (not root, a missing capability, no tracefs, no cgroup v2,
//! built without clang) is logged once, one line per program, and the
//! gateway runs without its signals: breakers then learn only from
//! requests, as before. `enabled = "on"` makes start-up fail instead.
//! Lost events (full ring buffer) are counted; they only delay a breaker.

pub mod cookies;
mod metrics;
mod resets;
mod signals;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;

pub use metrics::render;
pub use signals::{Running, start};

use crate::failover::now_ms;
use crate::route::Route;

/// How long a SYN retransmit marks an upstream slow.
pub const SLOW_FOR: Duration = Duration::from_secs(10);

/// Event kinds counted per upstream (the `kind` label).
pub const KINDS: [&str; 5] = [
    "refused",
    "reset",
    "timeout",
    "syn_retransmit",
    "retransmit",
];

/// Upper bounds of the signal-delay histogram, seconds.
pub const DELAY_BOUNDS: [f64; 12] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
];

/// One upstream's kernel view.
#[derive(Debug, Default)]
pub struct UpstreamHealth {
    /// Events by [`KINDS`] index.
    pub events: [AtomicU64; 5],
    /// RSTs this host sent to the upstream.
    pub rst_sent: AtomicU64,
    /// `now_ms()` until which the upstream counts as slow.
    pub slow_until: AtomicU64,
    /// Latest srtt histogram read from the kernel.
    pub srtt: ArcSwapOption<tollgate_loader::Histogram>,
}

/// Shared by the eBPF thread (writer), the workers and the admin listener.
#[derive(Debug)]
pub struct Health {
    /// Per upstream, indexed by `UpstreamId`.
    pub upstreams: Vec<UpstreamHealth>,
    /// Program name and whether it is attached (set once at start).
    pub programs: OnceLock<Vec<(&'static str, bool)>>,
    /// Events the ring buffer had no room for.
    pub dropped: AtomicU64,
    /// Kernel event to breaker decision, counts per [`DELAY_BOUNDS`]
    /// bucket (last: above the largest bound).
    pub delay: [AtomicU64; 13],
    /// Sum of those delays, nanoseconds.
    pub delay_sum_ns: AtomicU64,
    /// Latest `slow_until` of any upstream: skips the per-target check
    /// while nothing is slow.
    any_slow_until: AtomicU64,
    stop: AtomicBool,
    /// Per-port srtt/retransmits shared with the kernel (`sock_ops` up).
    ports: OnceLock<Arc<tollgate_loader::PortStats>>,
}

impl Health {
    /// Empty state for `n` upstreams.
    pub fn new(n: usize) -> Self {
        Health {
            upstreams: (0..n).map(|_| UpstreamHealth::default()).collect(),
            programs: OnceLock::new(),
            dropped: AtomicU64::new(0),
            delay: Default::default(),
            delay_sum_ns: AtomicU64::new(0),
            any_slow_until: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            ports: OnceLock::new(),
        }
    }

    /// Marks an upstream slow for [`SLOW_FOR`] from `now`.
    pub fn mark_slow(&self, up: usize, now: u64) {
        let until = now + SLOW_FOR.as_millis() as u64;
        if let Some(u) = self.upstreams.get(up) {
            u.slow_until.fetch_max(until, Ordering::AcqRel);
            self.any_slow_until.fetch_max(until, Ordering::AcqRel);
        }
    }

    /// Whether an upstream is marked slow at `now`.
    pub fn is_slow(&self, up: usize, now: u64) -> bool {
        self.upstreams
            .get(up)
            .is_some_and(|u| now < u.slow_until.load(Ordering::Acquire))
    }

    /// The balancer's pick `idx`, or the first target of the route whose
    /// upstream is not slow when the pick's is.
    pub fn prefer_fast(&self, route: &Route, idx: usize) -> usize {
        let now = now_ms();
        if now >= self.any_slow_until.load(Ordering::Acquire) {
            return idx;
        }
        let slow = |i: usize| {
            route
                .targets
                .get(i)
                .is_some_and(|t| self.is_slow(t.upstream as usize, now))
        };
        if !slow(idx) {
            return idx;
        }
        (0..route.targets.len()).find(|&i| !slow(i)).unwrap_or(idx)
    }

    /// (srtt µs, retransmits) of the upstream connection on local `port`:
    /// one load from memory the kernel writes, no system call.
    pub fn tcp(&self, port: u16) -> Option<(u32, u32)> {
        if port == 0 {
            return None;
        }
        self.ports.get()?.get(port)
    }

    /// Records one kernel-event-to-decision delay.
    pub fn record_delay(&self, ns: u64) {
        let s = ns as f64 / 1e9;
        let b = DELAY_BOUNDS
            .iter()
            .position(|&le| s <= le)
            .unwrap_or(DELAY_BOUNDS.len());
        self.delay[b].fetch_add(1, Ordering::Relaxed);
        self.delay_sum_ns.fetch_add(ns, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::RouteTable;

    /// Built through the config, like the gateway builds it.
    fn table() -> RouteTable {
        let raw: crate::config::raw::RawConfig = toml::from_str(
            "[[upstreams]]\nname = \"a\"\nbase_url = \"http://127.0.0.1:1/v1\"\n\
             [[upstreams]]\nname = \"b\"\nbase_url = \"http://127.0.0.1:2/v1\"\n\
             [[upstreams]]\nname = \"c\"\nbase_url = \"http://127.0.0.1:3/v1\"\n\
             [[models]]\nname = \"m\"\ntargets = [{ upstream = \"a\" }, { upstream = \"b\" }, { upstream = \"c\" }]\n",
        )
        .unwrap();
        crate::config::compile(raw, std::path::Path::new("t.toml"))
            .unwrap()
            .routes
    }

    #[test]
    fn a_slow_upstream_loses_the_pick_while_another_is_fast() {
        let h = Health::new(3);
        let t = table();
        let r = t.route(0);
        assert_eq!(h.prefer_fast(r, 0), 0);
        h.mark_slow(0, now_ms());
        assert!(h.is_slow(0, now_ms()));
        assert_eq!(h.prefer_fast(r, 0), 1);
        assert_eq!(h.prefer_fast(r, 2), 2);
        h.mark_slow(1, now_ms());
        h.mark_slow(2, now_ms());
        assert_eq!(h.prefer_fast(r, 1), 1, "all slow: the pick stands");
        assert!(!h.is_slow(0, now_ms() + SLOW_FOR.as_millis() as u64 + 1));
    }

    #[test]
    fn delays_land_in_their_buckets() {
        let h = Health::new(0);
        h.record_delay(20_000);
        h.record_delay(700_000);
        h.record_delay(1_000_000_000);
        assert_eq!(h.delay[0].load(Ordering::Relaxed), 1);
        assert_eq!(h.delay[5].load(Ordering::Relaxed), 1);
        assert_eq!(h.delay[12].load(Ordering::Relaxed), 1);
        assert_eq!(h.delay_sum_ns.load(Ordering::Relaxed), 1_000_720_000);
    }
}
