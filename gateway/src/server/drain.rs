//! Worker-local drain signal: once raised at shutdown, every connection
//! waiting for its next request closes, and busy ones close after the
//! response in flight.
//!
//! Waiters live in a slab so a wait that ends for another reason (a new
//! request arrived) removes its waker; the list never grows with traffic.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use super::slots::Slots;

/// The signal. Cheap to clone through `Rc`.
#[derive(Default)]
pub struct Drain {
    raised: Cell<bool>,
    waiters: RefCell<Slots<Waker>>,
}

impl Drain {
    /// True once shutdown started.
    pub fn is_raised(&self) -> bool {
        self.raised.get()
    }

    /// Starts draining and wakes every waiter.
    pub fn raise(&self) {
        self.raised.set(true);
        let mut w = self.waiters.borrow_mut();
        for waker in w.iter_mut() {
            waker.wake_by_ref();
        }
    }

    /// Completes when the signal is raised.
    pub fn wait(self: &Rc<Self>) -> Wait {
        Wait {
            drain: self.clone(),
            slot: None,
        }
    }
}

/// Future returned by [`Drain::wait`].
pub struct Wait {
    drain: Rc<Drain>,
    slot: Option<usize>,
}

impl Future for Wait {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.drain.raised.get() {
            return Poll::Ready(());
        }
        let drain = self.drain.clone();
        let mut w = drain.waiters.borrow_mut();
        if let Some(waker) = w.entry(&mut self.slot, || cx.waker().clone()) {
            waker.clone_from(cx.waker());
        }
        Poll::Pending
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            self.drain.waiters.borrow_mut().remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiters_are_reused_and_woken() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .unwrap();
        rt.block_on(async {
            let d = Rc::new(Drain::default());
            for _ in 0..100 {
                let w = d.wait();
                let mut w = std::pin::pin!(w);
                let waker = futures_noop_waker();
                let mut cx = Context::from_waker(&waker);
                assert!(w.as_mut().poll(&mut cx).is_pending());
            }
            assert_eq!(d.waiters.borrow().capacity(), 1);
            let d2 = d.clone();
            let h = monoio::spawn(async move {
                d2.wait().await;
                7
            });
            monoio::spawn(async move { d.raise() }).await;
            assert_eq!(h.await, 7);
        });
    }

    fn futures_noop_waker() -> Waker {
        Waker::noop().clone()
    }
}
