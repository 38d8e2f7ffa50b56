//! Idle deadlines of parked connections, kept by one sweeper per worker
//! instead of a timer per connection. A monoio timer is 640 bytes, more
//! than everything else a parked connection holds, and an idle timeout
//! (a minute by default) needs no millisecond precision: the sweeper looks
//! every `idle_timeout / 8` (at most once a second) and wakes the
//! connections whose deadline passed, which then close.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::slots::Slots;

/// The worker's parked deadlines.
#[derive(Default)]
pub struct IdleSweep {
    waiters: RefCell<Slots<Waiter>>,
}

struct Waiter {
    deadline: Instant,
    waker: Waker,
    expired: bool,
}

impl IdleSweep {
    /// Completes at the first sweep after `deadline`.
    pub fn until(self: &Rc<Self>, deadline: Instant) -> Expiry {
        Expiry {
            sweep: self.clone(),
            deadline,
            slot: None,
        }
    }

    /// Wakes every waiter whose deadline is not after `now`.
    pub fn sweep(&self, now: Instant) {
        for w in self.waiters.borrow_mut().iter_mut() {
            if !w.expired && w.deadline <= now {
                w.expired = true;
                w.waker.wake_by_ref();
            }
        }
    }

    /// How often to sweep for a given idle timeout.
    pub fn period(idle_timeout: Duration) -> Duration {
        (idle_timeout / 8).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }

    /// Sweeps every `period` for as long as the worker runs.
    pub async fn run(self: Rc<Self>, period: Duration) {
        loop {
            monoio::time::sleep(period).await;
            self.sweep(Instant::now());
        }
    }
}

/// Future returned by [`IdleSweep::until`].
pub struct Expiry {
    sweep: Rc<IdleSweep>,
    deadline: Instant,
    slot: Option<usize>,
}

impl Future for Expiry {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let sweep = self.sweep.clone();
        let mut w = sweep.waiters.borrow_mut();
        let deadline = self.deadline;
        let new = || Waiter {
            deadline,
            waker: cx.waker().clone(),
            expired: false,
        };
        match w.entry(&mut self.slot, new) {
            Some(e) if e.expired => Poll::Ready(()),
            Some(e) => {
                e.waker.clone_from(cx.waker());
                Poll::Pending
            }
            None => Poll::Pending,
        }
    }
}

impl Drop for Expiry {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            self.sweep.waiters.borrow_mut().remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_wakes_only_the_expired_and_slots_are_freed() {
        let s = Rc::new(IdleSweep::default());
        let t0 = Instant::now();
        let mut early = Box::pin(s.until(t0 + Duration::from_secs(1)));
        let mut late = std::pin::pin!(s.until(t0 + Duration::from_secs(60)));
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(early.as_mut().poll(&mut cx).is_pending());
        assert!(late.as_mut().poll(&mut cx).is_pending());
        s.sweep(t0);
        assert!(early.as_mut().poll(&mut cx).is_pending(), "not yet due");
        s.sweep(t0 + Duration::from_secs(2));
        assert!(early.as_mut().poll(&mut cx).is_ready());
        assert!(late.as_mut().poll(&mut cx).is_pending());
        assert_eq!(s.waiters.borrow().capacity(), 2);
        drop(early);
        // The freed slot serves the next waiter.
        let mut next = std::pin::pin!(s.until(t0));
        assert!(next.as_mut().poll(&mut cx).is_pending());
        assert_eq!(s.waiters.borrow().capacity(), 2);
        s.sweep(t0 + Duration::from_secs(2));
        assert!(next.as_mut().poll(&mut cx).is_ready());
        assert!(late.as_mut().poll(&mut cx).is_pending());
    }

    #[test]
    fn the_period_follows_the_timeout_within_bounds() {
        assert_eq!(
            IdleSweep::period(Duration::from_secs(60)),
            Duration::from_secs(1)
        );
        assert_eq!(
            IdleSweep::period(Duration::from_millis(400)),
            Duration::from_millis(50)
        );
        assert_eq!(
            IdleSweep::period(Duration::from_millis(20)),
            Duration::from_millis(10)
        );
    }

    #[test]
    fn the_sweeper_task_wakes_a_waiting_task() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let s = Rc::new(IdleSweep::default());
            monoio::spawn(s.clone().run(Duration::from_millis(10)));
            let t0 = Instant::now();
            s.until(t0 + Duration::from_millis(30)).await;
            assert!(t0.elapsed() >= Duration::from_millis(30));
        });
    }
}
