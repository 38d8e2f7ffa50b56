//! A connection's one timer, reused by every wait that has a deadline:
//! the next request head, the request body, the upstream's response head
//! and each read of its body.
//!
//! A monoio timer is 640 bytes aligned to 128. Made inline for each wait
//! (`monoio::time::timeout`), it made every future holding one that
//! aligned, and the proxy future, boxed once per request, went through
//! mimalloc's over-allocating aligned path on every request (which also
//! marks the page as holding interior pointers, slowing each later free
//! on it). On the heap and kept for the connection's life, it is
//! allocated once and each wait only moves its deadline. Freed while the
//! connection is parked, so an idle connection does not hold it.
//!
//! A wait is a small future of its own ([`Within`]) rather than an
//! `async fn` around `select!`: that form moved the awaited future twice
//! (into its arguments, then into the select's storage), and the relay
//! makes one for every upstream read.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use monoio::time::Sleep;

/// The timer of one connection, made on first use.
#[derive(Default)]
pub struct ConnTimer(Option<Pin<Box<Sleep>>>);

/// A wait ran out of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl ConnTimer {
    /// The timer set to fire at `at`.
    pub fn at(&mut self, at: Instant) -> Pin<&mut Sleep> {
        let at = monoio::time::Instant::from_std(at);
        let t = self
            .0
            .get_or_insert_with(|| Box::pin(monoio::time::sleep_until(at)));
        t.as_mut().reset(at);
        t.as_mut()
    }

    /// Runs `f` for at most `limit`.
    pub fn within<F: Future>(&mut self, limit: Duration, f: F) -> Within<'_, F> {
        Within {
            f,
            sleep: self.at(Instant::now() + limit),
        }
    }

    /// Frees the timer (a parked connection holds none).
    pub fn release(&mut self) {
        self.0 = None;
    }
}

pin_project_lite::pin_project! {
    /// [`ConnTimer::within`]: `f`'s output, or [`Elapsed`] once the timer
    /// fires first. `f` is polled first, so a result ready when the
    /// deadline passes is kept.
    pub struct Within<'t, F> {
        #[pin]
        f: F,
        sleep: Pin<&'t mut Sleep>,
    }
}

impl<F: Future> Future for Within<'_, F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(r) = this.f.poll(cx) {
            return Poll::Ready(Ok(r));
        }
        this.sleep.as_mut().poll(cx).map(|()| Err(Elapsed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime")
    }

    #[test]
    fn a_reused_timer_fires_at_each_new_deadline_and_never_early() {
        rt().block_on(async {
            let mut t = ConnTimer::default();
            // A wait that finishes first leaves the timer armed for later:
            // the next wait must move the deadline, not inherit it.
            assert_eq!(t.within(Duration::from_secs(60), async { 7 }).await, Ok(7));
            let t0 = Instant::now();
            let never = std::future::pending::<()>();
            assert_eq!(
                t.within(Duration::from_millis(30), never).await,
                Err(Elapsed)
            );
            assert!(t0.elapsed() >= Duration::from_millis(30));
            // And a long deadline after a short one does not fire early.
            let quick = monoio::time::sleep(Duration::from_millis(40));
            assert_eq!(t.within(Duration::from_secs(60), quick).await, Ok(()));
            // The awaited future is polled first: a result ready when the
            // deadline has passed is kept. This one is ready whenever it
            // is polled again; nothing but the timer wakes the task, so
            // that poll is the one where the timer has fired too.
            let mut polls = 0;
            let late = std::future::poll_fn(|_| {
                polls += 1;
                if polls == 1 {
                    return std::task::Poll::Pending;
                }
                std::task::Poll::Ready(8)
            });
            assert_eq!(t.within(Duration::from_millis(5), late).await, Ok(8));
            t.release();
            assert!(t.0.is_none());
            assert_eq!(
                t.within(Duration::from_millis(5), std::future::pending::<()>())
                    .await,
                Err(Elapsed)
            );
        });
    }
}
