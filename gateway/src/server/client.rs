//! The read side of a client connection, built so a read can stay in
//! flight across await points.
//!
//! While a request is proxied, the connection's next read is already
//! submitted. If it completes with EOF the client is gone and the upstream
//! request is cancelled at once (even when the upstream is silent); if it
//! is still pending when the response ends, the same read simply becomes
//! the wait for the next keep-alive request. Disconnect detection therefore
//! costs no extra system call or SQE per request.

use std::future::Future;
use std::io;
use std::pin::Pin;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, OwnedReadHalf};
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
            self.state = State::InFlight(Box::pin(async move {
                let len = buf.len();
                let cap = buf.capacity();
                let (res, slice) = rd.read(buf.slice_mut(len..cap)).await;
                (rd, res, slice.into_inner())
            }));
        }
    }

    /// Waits for the in-flight read (starting one if needed); returns the
    /// bytes appended, 0 at EOF. Cancel-safe: if this future is dropped the
    /// read stays in flight and a later call resumes it.
    pub async fn complete(&mut self) -> io::Result<usize> {
        self.start();
        let State::InFlight(fut) = &mut self.state else {
            return Err(io::Error::other("client reader in an invalid state"));
        };
        let (rd, res, buf) = fut.await;
        self.state = State::Idle(rd, buf);
        match &res {
            Ok(0) | Err(_) => self.closed = true,
            Ok(_) => {}
        }
        res
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
}
