//! The read side of a client connection, built so a read can stay in
//! flight across await points.
//!
//! While a request is proxied, the connection's next read is already
//! submitted. If it completes with EOF the client is gone and the upstream
//! request is cancelled at once (even when the upstream is silent); if it
//! is still pending when the response ends, the same read simply becomes
//! the wait for the next keep-alive request. Disconnect detection therefore
//! costs no extra system call or SQE per request.
//!
//! That read owns its buffer, so an idle keep-alive connection holds
//! [`READ_CHUNK`] bytes for as long as it idles. Past a while idle the
//! connection is parked: the read is cancelled (any bytes it got first are
//! kept), the buffer freed, and the connection waits for readiness, which
//! needs no buffer. Parking costs a cancel and a poll, paid only by a
//! client that comes back after idling, never on back-to-back requests.
//!
//! The read is polled through its own waker, which notes that it fired:
//! while a request is proxied, the connection's task wakes several times
//! (upstream write, read, client write) and each wake polls both sides of
//! the watch. Asking the driver about a read that did not complete cost
//! ~300 instructions a poll, ~1,500 a request; the note makes it a load.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use monoio::buf::IoBufMut;
use monoio::io::{CancelableAsyncReadRent, Canceller, OwnedReadHalf};
use monoio::net::TcpStream;

type ReadHalf = OwnedReadHalf<TcpStream>;
type Done = (ReadHalf, io::Result<usize>, Vec<u8>);

enum State {
    /// No read in flight; `buf` holds unconsumed bytes.
    Idle(ReadHalf, Vec<u8>),
    /// A read owns the half and the buffer until it completes.
    InFlight(Pin<Box<dyn Future<Output = Done>>>),
    /// Transitional; never observed outside a method.
    Empty,
}

/// Reader of one client connection.
pub struct ClientIn {
    state: State,
    /// Set once a read returned EOF or an error.
    closed: bool,
    /// Cancels the read in flight when the connection is parked.
    canceller: Canceller,
    /// The waker the read in flight is polled with, made from the task's
    /// on the first poll.
    waker: Option<(Arc<ReadWaker>, Waker)>,
}

/// Wakes the connection's task and notes that the read asked for it.
struct ReadWaker {
    /// The read woke the task since it was last polled (or it was never
    /// polled): poll it.
    woken: AtomicBool,
    task: Waker,
}

impl Wake for ReadWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake_by_ref();
    }
}

/// Smallest spare capacity offered to a read. Every idle keep-alive
/// connection holds one such buffer (its read is in flight), so this is
/// most of a connection's memory; a request larger than it costs one more
/// read once its head says how long the body is.
const READ_CHUNK: usize = 4 * 1024;
/// An empty buffer larger than this is replaced by a `READ_CHUNK` one
/// before the next read.
const SHRINK_ABOVE: usize = 4 * READ_CHUNK;

impl ClientIn {
    /// Wraps a read half.
    pub fn new(rd: ReadHalf) -> Self {
        ClientIn {
            state: State::Idle(rd, Vec::with_capacity(READ_CHUNK)),
            closed: false,
            canceller: Canceller::new(),
            waker: None,
        }
    }

    /// Buffered bytes. Empty while a read is in flight.
    pub fn buf(&self) -> &[u8] {
        match &self.state {
            State::Idle(_, b) => b,
            _ => &[],
        }
    }

    /// True when a read is in flight.
    pub fn in_flight(&self) -> bool {
        matches!(self.state, State::InFlight(_))
    }

    /// True after EOF or a read error.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Drops the first `n` buffered bytes (a finished request).
    pub fn consume(&mut self, n: usize) {
        if let State::Idle(_, b) = &mut self.state {
            let n = n.min(b.len());
            b.drain(..n);
        }
    }

    /// Makes room so the buffer can grow to `total` bytes without
    /// reallocating during reads.
    pub fn reserve_total(&mut self, total: usize) {
        if let State::Idle(_, b) = &mut self.state {
            b.reserve(total.saturating_sub(b.len()));
        }
    }

    /// Starts a read if none is in flight.
    pub fn start(&mut self) {
        if let State::Idle(..) = self.state {
            let State::Idle(mut rd, mut buf) = std::mem::replace(&mut self.state, State::Empty)
            else {
                return;
            };
            if buf.is_empty() && buf.capacity() > SHRINK_ABOVE {
                // A large request grew the buffer: an idle connection does
                // not keep that memory.
                buf = Vec::with_capacity(READ_CHUNK);
            }
            if buf.capacity() - buf.len() < READ_CHUNK {
                buf.reserve(READ_CHUNK);
            }
            let cancel = self.canceller.handle();
            if let Some((w, _)) = &self.waker {
                // A new read is polled once whatever the flag says.
                w.woken.store(true, Ordering::Relaxed);
            }
            self.state = State::InFlight(Box::pin(async move {
                let len = buf.len();
                let cap = buf.capacity();
                let (res, slice) = rd.cancelable_read(buf.slice_mut(len..cap), cancel).await;
                (rd, res, slice.into_inner())
            }));
        }
    }

    /// Waits for the in-flight read (starting one if needed); returns the
    /// bytes appended, 0 at EOF. Cancel-safe: if this future is dropped the
    /// read stays in flight and a later call resumes it.
    pub async fn complete(&mut self) -> io::Result<usize> {
        self.start();
        let (rd, res, buf) = std::future::poll_fn(|cx| self.poll_in_flight(cx)).await?;
        self.state = State::Idle(rd, buf);
        match &res {
            Ok(0) | Err(_) => self.closed = true,
            Ok(_) => {}
        }
        res
    }

    /// Polls the read in flight through [`ReadWaker`]: not at all when it
    /// has not woken the task since its last poll.
    fn poll_in_flight(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Done>> {
        let State::InFlight(fut) = &mut self.state else {
            return Poll::Ready(Err(io::Error::other("client reader in an invalid state")));
        };
        let waker = match &self.waker {
            Some((w, waker)) if w.task.will_wake(cx.waker()) => {
                // Cleared before the poll, so a wake during it is kept.
                if !w.woken.swap(false, Ordering::Acquire) {
                    return Poll::Pending;
                }
                waker
            }
            _ => {
                let w = Arc::new(ReadWaker {
                    woken: AtomicBool::new(false),
                    task: cx.waker().clone(),
                });
                &self.waker.insert((w.clone(), Waker::from(w))).1
            }
        };
        fut.as_mut().poll(&mut Context::from_waker(waker)).map(Ok)
    }

    /// Parks an idle connection: cancels the read in flight and frees the
    /// buffer. `None`: parked, wait with [`ClientIn::readable`]. `Some`:
    /// the read ended before the cancel took effect, with what
    /// [`ClientIn::complete`] would have returned (bytes, EOF or error).
    pub async fn park(&mut self) -> Option<io::Result<usize>> {
        if self.in_flight() {
            self.canceller = std::mem::take(&mut self.canceller).cancel();
            match self.complete().await {
                // Cancelled before any byte came: not a close.
                Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => self.closed = false,
                done => return Some(done),
            }
        }
        if let State::Idle(_, buf) = &mut self.state
            && buf.is_empty()
        {
            *buf = Vec::new();
        }
        None
    }

    /// Waits until the connection is readable (data or EOF), holding no
    /// buffer; the next [`ClientIn::complete`] reads with a fresh one.
    pub async fn readable(&self) -> io::Result<()> {
        let State::Idle(rd, _) = &self.state else {
            return Ok(());
        };
        // SAFETY: the read half and the write half share the stream through
        // an `UnsafeCell`; monoio borrows it mutably only inside a read or
        // write call of the owning half. This connection's task is the only
        // user of both halves, no read is in flight (the state is `Idle`)
        // and the task is waiting here, so no write call runs while this
        // shared borrow lives. `readable` only needs the file descriptor.
        let stream: &TcpStream = unsafe { &*rd.0.get() };
        stream.readable(false).await
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use monoio::io::Splitable;

    use super::*;

    impl ClientIn {
        fn capacity(&self) -> usize {
            match &self.state {
                State::Idle(_, b) => b.capacity(),
                _ => 0,
            }
        }
    }

    #[test]
    fn a_buffer_grown_by_a_large_request_is_released_before_the_next_read() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = monoio::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let big = vec![b'x'; 256 * 1024];
            let writer = std::thread::spawn(move || {
                let mut c = std::net::TcpStream::connect(addr).unwrap();
                c.write_all(&big).unwrap();
                c
            });
            let (s, _) = l.accept().await.unwrap();
            let (rd, _wr) = s.into_split();
            let mut cin = ClientIn::new(rd);
            let mut got = 0;
            while got < 256 * 1024 {
                cin.reserve_total(256 * 1024);
                got += cin.complete().await.unwrap();
            }
            assert!(cin.capacity() >= 256 * 1024);
            cin.consume(got);
            // The next read starts with a small buffer again.
            cin.start();
            let State::InFlight(_) = &cin.state else {
                panic!("no read in flight")
            };
            let c = writer.join().unwrap();
            drop(c);
            assert_eq!(cin.complete().await.unwrap(), 0);
            assert!(cin.capacity() <= 2 * READ_CHUNK, "{}", cin.capacity());
        });
    }

    /// Runs `body` on a runtime of each driver.
    fn on_both_drivers<F: Future<Output = ()>>(body: impl Fn() -> F) {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(body());
        let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(body());
    }

    type WriteHalf = monoio::io::OwnedWriteHalf<TcpStream>;

    /// An accepted connection's reader, its write half (kept so the socket
    /// stays open) and the peer's socket.
    async fn pair() -> (ClientIn, WriteHalf, std::net::TcpStream) {
        let l = monoio::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().await.unwrap();
        let (rd, wr) = s.into_split();
        (ClientIn::new(rd), wr, peer)
    }

    #[test]
    fn a_parked_connection_holds_no_buffer_and_reads_what_comes_next() {
        on_both_drivers(|| async {
            let (mut cin, _wr, mut peer) = pair().await;
            cin.start();
            assert!(cin.in_flight());
            assert!(cin.park().await.is_none(), "nothing was sent: parked");
            assert!(!cin.in_flight() && !cin.is_closed());
            assert_eq!(cin.capacity(), 0, "a parked connection owns no buffer");
            peer.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
            cin.readable().await.unwrap();
            assert_eq!(cin.capacity(), 0, "waiting for readiness takes no buffer");
            let n = cin.complete().await.unwrap();
            assert_eq!(&cin.buf()[..n], b"GET / HTTP/1.1\r\n\r\n");
            // Parked again, then the client leaves: EOF, not an error.
            cin.consume(n);
            assert!(cin.park().await.is_none());
            drop(peer);
            cin.readable().await.unwrap();
            assert_eq!(cin.complete().await.unwrap(), 0);
            assert!(cin.is_closed());
        });
    }

    /// Polls the reader's read once (submitting it), without waiting.
    async fn submit(cin: &mut ClientIn) {
        let mut read = std::pin::pin!(cin.complete());
        std::future::poll_fn(|cx| {
            assert!(read.as_mut().poll(cx).is_pending(), "nothing was sent yet");
            std::task::Poll::Ready(())
        })
        .await;
    }

    /// Parks, then reads on as the connection loop does; returns what the
    /// next read brought.
    async fn park_and_read(cin: &mut ClientIn) -> usize {
        match cin.park().await {
            Some(r) => r.unwrap(),
            None => {
                cin.readable().await.unwrap();
                cin.complete().await.unwrap()
            }
        }
    }

    #[test]
    fn bytes_that_race_the_cancel_are_not_lost() {
        const REQ: &[u8] = b"POST /v1/chat/completions HTTP/1.1\r\n";
        on_both_drivers(|| async {
            // Sent before the read is submitted, and after.
            for sent_first in [true, false] {
                let (mut cin, _wr, mut peer) = pair().await;
                if sent_first {
                    peer.write_all(REQ).unwrap();
                    cin.start();
                } else {
                    submit(&mut cin).await;
                    peer.write_all(REQ).unwrap();
                }
                let n = park_and_read(&mut cin).await;
                assert_eq!(&cin.buf()[..n], REQ, "sent first: {sent_first}");
                assert!(!cin.is_closed());
            }
        });
    }

    #[test]
    fn parking_a_connection_at_eof_reports_the_eof() {
        on_both_drivers(|| async {
            let (mut cin, _wr, peer) = pair().await;
            submit(&mut cin).await;
            drop(peer);
            assert_eq!(park_and_read(&mut cin).await, 0);
            assert!(cin.is_closed());
        });
    }
}
