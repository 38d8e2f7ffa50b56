//! One limit counted in fixed windows, admitted from local state only.
//!
//! A worker takes from a window with one compare-and-swap on a packed word
//! (window tag, amount used on this node): no lock, no syscall, no store
//! round trip. What "enough" means depends on the [`Allow`] mode:
//!
//! - `Local` (memory store, or a Redis store that is down with
//!   `fail_open`): this node is the authority; it admits up to the limit.
//! - `Shared` (Redis store up): the node admits up to what the store
//!   granted it (leases of `lease` units, refilled in the background by
//!   `lease.rs`) plus one lease of overdraft while a refill is on its way,
//!   unless the store said the window is used up. The overdraft is pushed
//!   to the store as debt with the next refill, so the store's count stays
//!   true. Bound: across N nodes a window admits at most
//!   `limit + N * lease` units, and each node at most `granted + lease`.
//! - `Closed` (Redis store down with `fail_closed`): only what was already
//!   granted; beyond it requests are refused.
//!
//! Tags are the low 24 bits of the window index: a window older than 2^24
//! windows (32 years of minutes) could alias, which cannot happen while a
//! process runs.

use std::sync::atomic::{AtomicU64, Ordering};

use super::period::Period;

const USED_BITS: u32 = 40;
const USED_MAX: u64 = (1 << USED_BITS) - 1;
const TAG_MASK: u64 = (1 << 24) - 1;

fn pack(tag: u64, v: u64) -> u64 {
    (tag << USED_BITS) | v.min(USED_MAX)
}

fn unpack(w: u64) -> (u64, u64) {
    (w >> USED_BITS, w & USED_MAX)
}

/// How much a node may admit on its own (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allow {
    /// This node is the authority.
    Local,
    /// Leases from the store plus one lease of overdraft.
    Shared,
    /// Only leases already granted (store down, fail_closed).
    Closed,
}

/// A successful take.
#[derive(Debug, Clone, Copy)]
pub struct Taken {
    /// Window tag, for settling later.
    pub tag: u64,
    /// Units left in the window after this take, as far as this node knows.
    pub remaining: u64,
    /// Milliseconds until the window resets.
    pub reset_ms: u64,
}

/// Why a take failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The window is used up until `reset_ms` from now.
    Exhausted {
        /// Milliseconds until the window resets.
        reset_ms: u64,
    },
    /// The cost alone is larger than the limit: it can never pass.
    TooLarge,
    /// The store is down and the policy is fail_closed.
    StoreDown {
        /// Milliseconds until the window resets.
        reset_ms: u64,
    },
}

/// What a refill should ask the store for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    /// Window index.
    pub index: u64,
    /// Units used beyond the grant, added to the store unconditionally.
    pub debt: u64,
    /// New lease wanted (granted only up to the limit).
    pub want: u64,
}

/// One limit.
#[derive(Debug)]
pub struct Window {
    /// Units per window.
    pub limit: u64,
    /// Window length.
    pub period: Period,
    /// Lease size in shared mode.
    pub lease: u64,
    used: AtomicU64,
    granted: AtomicU64,
    /// Tag + 1 of a window the store reported used up; 0 when none.
    exhausted: AtomicU64,
    /// (tag, store total) last seen, for `remaining` in shared mode.
    seen: AtomicU64,
}

impl Window {
    /// A window of `limit` units per `period`; `lease` is used in shared mode.
    pub fn new(limit: u64, period: Period, lease: u64) -> Self {
        Window {
            limit,
            period,
            lease: lease.max(1),
            used: AtomicU64::new(0),
            granted: AtomicU64::new(0),
            exhausted: AtomicU64::new(0),
            seen: AtomicU64::new(0),
        }
    }

    fn tag(&self, now_ms: u64) -> (u64, u64) {
        let index = self.period.index(now_ms);
        (index, index & TAG_MASK)
    }

    fn current(cell: &AtomicU64, tag: u64) -> u64 {
        let (t, v) = unpack(cell.load(Ordering::Acquire));
        if t == tag { v } else { 0 }
    }

    fn allowance(&self, tag: u64, allow: Allow) -> u64 {
        match allow {
            Allow::Local => self.limit,
            Allow::Closed => Self::current(&self.granted, tag),
            Allow::Shared => {
                let g = Self::current(&self.granted, tag);
                if self.exhausted.load(Ordering::Acquire) == tag + 1 {
                    g
                } else {
                    g + self.lease
                }
            }
        }
    }

    fn remaining(&self, tag: u64, used: u64, allow: Allow) -> u64 {
        match allow {
            Allow::Local => self.limit.saturating_sub(used),
            Allow::Shared | Allow::Closed => {
                // The store's total counts grants; our unused grant is still ours.
                let global = Self::current(&self.seen, tag);
                let g = Self::current(&self.granted, tag);
                let others = global.saturating_sub(g);
                self.limit.saturating_sub(others + used)
            }
        }
    }

    /// Units used in the current window on this node.
    pub fn used(&self, now_ms: u64) -> u64 {
        let (_, tag) = self.tag(now_ms);
        Self::current(&self.used, tag)
    }

    /// Units left and ms to reset, without taking anything.
    pub fn peek(&self, now_ms: u64, allow: Allow) -> Taken {
        let (index, tag) = self.tag(now_ms);
        let used = Self::current(&self.used, tag);
        Taken {
            tag,
            remaining: self.remaining(tag, used, allow),
            reset_ms: self.period.end_ms(index).saturating_sub(now_ms),
        }
    }

    /// Takes `cost` units now, or says why not.
    pub fn take(&self, cost: u64, now_ms: u64, allow: Allow) -> Result<Taken, Refusal> {
        if cost > self.limit {
            return Err(Refusal::TooLarge);
        }
        let (index, tag) = self.tag(now_ms);
        let reset_ms = self.period.end_ms(index).saturating_sub(now_ms);
        let allowance = self.allowance(tag, allow);
        let mut cur = self.used.load(Ordering::Acquire);
        loop {
            let (t, u) = unpack(cur);
            let u = if t == tag { u } else { 0 };
            if u + cost > allowance {
                return Err(match allow {
                    Allow::Closed if u + cost <= self.limit => Refusal::StoreDown { reset_ms },
                    _ => Refusal::Exhausted { reset_ms },
                });
            }
            match self.used.compare_exchange_weak(
                cur,
                pack(tag, u + cost),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Ok(Taken {
                        tag,
                        remaining: self.remaining(tag, u + cost, allow),
                        reset_ms,
                    });
                }
                Err(now) => cur = now,
            }
        }
    }

    /// Gives back `n` units taken in window `tag` (nothing when the window
    /// has rolled over: a new window starts from zero anyway).
    pub fn refund(&self, tag: u64, n: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                let (t, u) = unpack(w);
                (t == tag && n > 0).then(|| pack(t, u.saturating_sub(n)))
            });
    }

    /// Charges `n` more units to the current window, past the limit if need
    /// be (the work was already done).
    pub fn charge(&self, n: u64, now_ms: u64) {
        if n == 0 {
            return;
        }
        let (_, tag) = self.tag(now_ms);
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                let (t, u) = unpack(w);
                let u = if t == tag { u } else { 0 };
                Some(pack(tag, u + n))
            });
    }

    /// What a refill should ask the store for, if anything: debt (used
    /// beyond the grant) always, and a new grant when less than half of one
    /// is left and the store has not said the window is used up. A grant
    /// is an eighth of what the store has left (at least one lease): large
    /// early in a window, so a busy node does not outrun its refills, and
    /// small near the limit, so little sits unused on idle nodes. Only the
    /// overdraft (one lease) can exceed the limit, never a grant.
    pub fn ask(&self, now_ms: u64) -> Option<Ask> {
        let (index, tag) = self.tag(now_ms);
        let u = Self::current(&self.used, tag);
        let g = Self::current(&self.granted, tag);
        let debt = u.saturating_sub(g);
        let left = g.saturating_sub(u);
        let global = Self::current(&self.seen, tag);
        let chunk = (self.limit.saturating_sub(global) / 8).max(self.lease);
        let want = if self.exhausted.load(Ordering::Acquire) == tag + 1 || left * 2 >= chunk {
            0
        } else {
            chunk
        };
        (debt > 0 || want > 0).then_some(Ask { index, debt, want })
    }

    /// Records a store answer for window `index`: `added` units now granted
    /// to this node (debt included), the store's total after it, and
    /// whether the window is used up.
    pub fn granted(&self, index: u64, added: u64, total: u64, used_up: bool) {
        let tag = index & TAG_MASK;
        let _ = self
            .granted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                let (t, g) = unpack(w);
                let g = if t == tag { g } else { 0 };
                Some(pack(tag, g + added))
            });
        self.seen.store(pack(tag, total), Ordering::Release);
        if used_up {
            self.exhausted.store(tag + 1, Ordering::Release);
        }
    }
}

/// A cap on things in progress (concurrent streams).
#[derive(Debug)]
pub struct Gauge {
    /// Most at once.
    pub max: u64,
    cur: AtomicU64,
}

impl Gauge {
    /// A gauge capped at `max`.
    pub fn new(max: u64) -> Self {
        Gauge {
            max,
            cur: AtomicU64::new(0),
        }
    }

    /// Takes a slot if one is free.
    pub fn acquire(&self) -> bool {
        self.cur
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                (c < self.max).then_some(c + 1)
            })
            .is_ok()
    }

    /// Frees a slot taken by `acquire`.
    pub fn release(&self) {
        let _ = self
            .cur
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_sub(1));
    }

    /// Slots in use.
    pub fn current(&self) -> u64 {
        self.cur.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_700_000_000_000;

    #[test]
    fn local_admits_up_to_the_limit_then_resets() {
        let w = Window::new(3, Period::Minute, 1);
        for left in [2, 1, 0] {
            assert_eq!(w.take(1, T, Allow::Local).unwrap().remaining, left);
        }
        assert!(matches!(
            w.take(1, T, Allow::Local),
            Err(Refusal::Exhausted { .. })
        ));
        // Next minute starts empty.
        assert!(w.take(3, T + 60_000, Allow::Local).is_ok());
        assert_eq!(w.take(4, T, Allow::Local).unwrap_err(), Refusal::TooLarge);
    }

    #[test]
    fn refund_and_charge_settle_a_reservation() {
        let w = Window::new(100, Period::Minute, 10);
        let t = w.take(60, T, Allow::Local).unwrap();
        w.refund(t.tag, 50);
        assert_eq!(w.used(T), 10);
        w.charge(5, T);
        assert_eq!(w.used(T), 15);
        // A refund for a window that rolled over changes nothing.
        w.refund(t.tag, 5);
        assert_eq!(w.used(T + 60_000), 0);
    }

    #[test]
    fn shared_mode_overdraws_at_most_one_lease_then_asks() {
        let w = Window::new(100, Period::Minute, 10);
        // No grant yet: one lease of overdraft.
        for _ in 0..10 {
            w.take(1, T, Allow::Shared).unwrap();
        }
        assert!(w.take(1, T, Allow::Shared).is_err());
        let a = w.ask(T).unwrap();
        // An eighth of the 100 the store has left (12) beats one lease.
        assert_eq!((a.debt, a.want), (10, 12));
        w.granted(a.index, 20, 20, false);
        // Granted 20 (10 of it debt): 10 more plus a new overdraft lease.
        for _ in 0..20 {
            w.take(1, T, Allow::Shared).unwrap();
        }
        assert!(w.take(1, T, Allow::Shared).is_err());
        // The store says used up: no overdraft beyond the grant any more.
        let a = w.ask(T).unwrap();
        assert_eq!(a.debt, 10);
        w.granted(a.index, 10, 100, true);
        assert!(w.take(1, T, Allow::Shared).is_err());
        assert_eq!(w.ask(T), None);
    }

    #[test]
    fn closed_mode_spends_only_grants() {
        let w = Window::new(100, Period::Minute, 10);
        assert!(matches!(
            w.take(1, T, Allow::Closed),
            Err(Refusal::StoreDown { .. })
        ));
        w.granted(Period::Minute.index(T), 2, 2, false);
        w.take(2, T, Allow::Closed).unwrap();
        assert!(w.take(1, T, Allow::Closed).is_err());
    }

    #[test]
    fn concurrent_takes_never_exceed_the_limit() {
        let w = std::sync::Arc::new(Window::new(1000, Period::Day, 1));
        let ok = std::sync::Arc::new(AtomicU64::new(0));
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let (w, ok) = (w.clone(), ok.clone());
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        if w.take(1, T, Allow::Local).is_ok() {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(ok.load(Ordering::Relaxed), 1000);
    }

    #[test]
    fn gauge_caps_and_frees() {
        let g = Gauge::new(2);
        assert!(g.acquire() && g.acquire());
        assert!(!g.acquire());
        g.release();
        assert!(g.acquire());
        assert_eq!(g.current(), 2);
    }
}
