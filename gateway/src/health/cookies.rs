//! Which pooled upstream connections the kernel saw die while idle.
//!
//! The pool (per worker) and the eBPF thread share one fixed table of
//! socket cookies: a pooled connection's cookie is written to its slot
//! when it goes idle; an RST on that socket (`tcp_receive_reset`) or a FIN
//! from the upstream (`sock_ops`, the socket enters CLOSE_WAIT), both keyed
//! by cookie, set the slot's top bit; `take` evicts a connection whose bit
//! is set instead of writing a request to it. Cookies count up from 1 and
//! never reach the top bit.
//!
//! Lossy by design: two cookies sharing a slot overwrite each other, and
//! a lost mark falls back to the relay's stale-connection retry (the
//! state before eBPF). No locks; one atomic store per put and one
//! compare-exchange per take, and nothing at all while tracking is off.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

const SLOTS: usize = 4096;
const RESET: u64 = 1 << 63;

static TRACK: AtomicBool = AtomicBool::new(false);
static PORTS: AtomicBool = AtomicBool::new(false);
static TABLE: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];
static MARKED_RST: AtomicU64 = AtomicU64::new(0);
static MARKED_FIN: AtomicU64 = AtomicU64::new(0);
static EVICTED: AtomicU64 = AtomicU64::new(0);

/// Starts tracking (the RST program is attached).
pub fn enable() {
    TRACK.store(true, Ordering::Release);
}

/// Starts recording local ports (per-port stats are mapped).
pub fn enable_ports() {
    PORTS.store(true, Ordering::Release);
}

/// Whether new upstream connections should note their local port.
pub fn ports() -> bool {
    PORTS.load(Ordering::Relaxed)
}

fn slot(cookie: u64) -> &'static AtomicU64 {
    &TABLE[(cookie % SLOTS as u64) as usize]
}

/// The cookie of a new upstream socket, or 0 when tracking is off.
pub fn of(fd: RawFd) -> u64 {
    if !TRACK.load(Ordering::Relaxed) {
        return 0;
    }
    tollgate_loader::socket_cookie(fd).unwrap_or(0)
}

/// A connection goes idle in a pool.
pub fn idle(cookie: u64) {
    if cookie != 0 {
        slot(cookie).store(cookie, Ordering::Release);
    }
}

/// A connection leaves the pool: true when it was reset while idle
/// (evict it), false when it may be used.
pub fn take(cookie: u64) -> bool {
    if cookie == 0 {
        return false;
    }
    let s = slot(cookie);
    if s.compare_exchange(cookie | RESET, 0, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
    {
        EVICTED.fetch_add(1, Ordering::Relaxed);
        return true;
    }
    let _ = s.compare_exchange(cookie, 0, Ordering::AcqRel, Ordering::Acquire);
    false
}

/// A pooled connection is dropped without being used (expired).
pub fn forget(cookie: u64) {
    if cookie != 0 {
        let s = slot(cookie);
        let _ = s.compare_exchange(cookie, 0, Ordering::AcqRel, Ordering::Acquire);
        let _ = s.compare_exchange(cookie | RESET, 0, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// How an idle connection died.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Death {
    /// The upstream reset it.
    Rst,
    /// The upstream closed it (FIN).
    Fin,
}

/// The kernel saw `cookie` die: marks it when it is idle in a pool and
/// says so (an idle connection dying is not an upstream failure).
pub fn mark_dead(cookie: u64, how: Death) -> bool {
    if cookie == 0 {
        return false;
    }
    let marked = slot(cookie)
        .compare_exchange(cookie, cookie | RESET, Ordering::AcqRel, Ordering::Acquire)
        .is_ok();
    if marked {
        match how {
            Death::Rst => MARKED_RST.fetch_add(1, Ordering::Relaxed),
            Death::Fin => MARKED_FIN.fetch_add(1, Ordering::Relaxed),
        };
    }
    marked
}

/// (idle connections reset, idle connections closed by the upstream,
/// connections evicted because of either).
pub fn counts() -> (u64, u64, u64) {
    (
        MARKED_RST.load(Ordering::Relaxed),
        MARKED_FIN.load(Ordering::Relaxed),
        EVICTED.load(Ordering::Relaxed),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_idle_connection_is_evicted_once_and_others_are_kept() {
        let (c1, c2) = (1_000_003, 1_000_004);
        idle(c1);
        idle(c2);
        assert!(mark_dead(c1, Death::Rst));
        assert!(take(c1), "reset while idle: evicted");
        assert!(!take(c1), "the mark is consumed");
        assert!(!take(c2));
        // A reset of a connection in use is not an idle reset.
        assert!(!mark_dead(c2, Death::Fin));
        // A colliding cookie overwrote the slot: no false eviction.
        let c3 = c1 + SLOTS as u64;
        idle(c1);
        idle(c3);
        assert!(!mark_dead(c1, Death::Rst));
        assert!(!take(c1));
        forget(c3);
        assert!(!take(0) && !mark_dead(0, Death::Fin));
    }
}
