//! uring-probe: the floor proxy's work (`tollgate_benches::probe`) written
//! directly on io_uring, without a runtime, to measure what the io_uring
//! features monoio 0.2 does not expose would buy a proxy's data path on
//! this kernel. Issue 6 asks for each to be measured before any is built
//! into tollgate:
//!
//! - `--multishot`: one multishot receive armed per socket for its whole
//!   life, reading into a provided buffer ring, instead of one receive
//!   submitted per read (each of which, when no data is waiting, makes the
//!   kernel arm a poll). Upstream bytes go to the client straight from the
//!   ring's buffer, and every read that arrived in one loop turn goes out
//!   in one `sendmsg` (batched writes).
//! - `--fixed`: sockets live in the ring's registered file table, so no
//!   operation looks its file up (`fget`/`fput`).
//! - `--sqpoll`: a kernel thread polls the submission queue, so the loop
//!   enters the kernel only to wait.
//!
//! Without flags it does what `floor` does on monoio: one receive or send
//! submitted per step, single issuer, deferred task running. Upstream
//! connections are opened with a blocking connect, once per pooled
//! connection (loopback only).
//!
//! Ownership rule that keeps the kernel's buffers valid: an operation only
//! ever points at memory owned by the socket slot it runs on (or at a ring
//! buffer that slot holds), and a closed slot is released only when none
//! of its operations is still in flight.
//!
//! `uring-probe LISTEN UPSTREAM [--multishot] [--fixed] [--sqpoll]`; once
//! listening it prints `listening on ADDR` (LISTEN may have port 0).

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use tollgate_benches::probe::{Framing, ResponseHead, parse_response, rewrite_request};

const BUF: usize = 16 * 1024;
/// Buffers in the provided ring (a power of two).
const RING_ENTRIES: u16 = 2048;
const GROUP: u16 = 7;
const MAX_SOCKS: u32 = 16 * 1024;
/// Most ring buffers one `sendmsg` carries.
const MAX_IOV: usize = 16;
const ACCEPT: u64 = u64::MAX;

#[derive(Clone, Copy)]
struct Features {
    multishot: bool,
    fixed: bool,
    sqpoll: bool,
}

/// Says on stderr why a connection is closed when the reason is not the
/// peer leaving (EOF, a reset or a broken pipe), so a test that sees its
/// connection cut can tell why.
fn note_failure(role: Role, what: &str, res: i32) {
    if res < 0 && ![libc::EPIPE, libc::ECONNRESET].contains(&-res) {
        let e = io::Error::from_raw_os_error(-res);
        eprintln!("uring-probe: {role:?} {what} failed: {e}");
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Client,
    Upstream,
}

#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Op {
    Recv = 1,
    Send = 2,
}

fn user_data(idx: usize, op: Op) -> u64 {
    ((idx as u64) << 8) | op as u64
}

/// One socket slot: a client or an upstream connection and everything its
/// operations point at.
struct Sock {
    stream: Option<TcpStream>,
    role: Role,
    /// The other side of the exchange in progress.
    peer: Option<usize>,
    /// Operations on this slot the kernel has not finished with.
    inflight: u32,
    closing: bool,
    /// A receive (single or multishot) is armed.
    receiving: bool,
    sending: bool,
    /// Client: request bytes received and not yet forwarded.
    inbuf: Vec<u8>,
    /// Client: the upstream request being built.
    req: Vec<u8>,
    /// Upstream: the request being sent to it.
    out: Vec<u8>,
    /// Upstream (single-shot): where its next read lands.
    ubuf: Vec<u8>,
    /// Client (single-shot): the upstream bytes being sent to it.
    obuf: Vec<u8>,
    sent: usize,
    /// Client (multishot): ring buffers to send, in order, and how much of
    /// the first one is already sent.
    queue: VecDeque<(u16, u32)>,
    queue_off: u32,
    batch: usize,
    iov: Box<[libc::iovec; MAX_IOV]>,
    msg: Box<libc::msghdr>,
    /// Upstream: response head bytes while incomplete, then the framing.
    rhead: Vec<u8>,
    framing: Option<Framing>,
    reusable: bool,
    got_bytes: bool,
    /// Upstream: connected for this exchange (a failure is not a stale
    /// pooled connection, so no retry).
    fresh: bool,
    /// Client: the upstream response is complete (it may still be queued).
    /// Upstream: its response is complete.
    resp_done: bool,
}

impl Sock {
    fn new() -> Sock {
        // SAFETY: msghdr is a plain C struct; all-zero is its empty value.
        let msg: libc::msghdr = unsafe { std::mem::zeroed() };
        Sock {
            stream: None,
            role: Role::Client,
            peer: None,
            inflight: 0,
            closing: false,
            receiving: false,
            sending: false,
            inbuf: Vec::with_capacity(BUF),
            req: Vec::with_capacity(BUF),
            out: Vec::with_capacity(BUF),
            ubuf: Vec::with_capacity(BUF),
            obuf: Vec::with_capacity(BUF),
            sent: 0,
            queue: VecDeque::new(),
            queue_off: 0,
            batch: 0,
            iov: Box::new(
                [libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                }; MAX_IOV],
            ),
            msg: Box::new(msg),
            rhead: Vec::new(),
            framing: None,
            reusable: false,
            got_bytes: false,
            fresh: false,
            resp_done: false,
        }
    }

    fn fd(&self) -> RawFd {
        self.stream.as_ref().map_or(-1, AsRawFd::as_raw_fd)
    }

    fn reset_response(&mut self) {
        self.rhead.clear();
        self.framing = None;
        self.reusable = false;
        self.got_bytes = false;
        self.resp_done = false;
    }
}

/// The provided buffer ring: `RING_ENTRIES` buffers of `BUF` bytes the
/// kernel picks from for multishot receives.
struct BufRing {
    entries: *mut types::BufRingEntry,
    mem: *mut u8,
    tail: u16,
}

impl BufRing {
    fn layouts() -> io::Result<(std::alloc::Layout, std::alloc::Layout)> {
        let bad = |_| io::Error::other("ring layout");
        Ok((
            std::alloc::Layout::from_size_align(
                RING_ENTRIES as usize * std::mem::size_of::<types::BufRingEntry>(),
                4096,
            )
            .map_err(bad)?,
            std::alloc::Layout::from_size_align(RING_ENTRIES as usize * BUF, 4096).map_err(bad)?,
        ))
    }

    fn new(ring: &IoUring) -> io::Result<BufRing> {
        let (el, ml) = BufRing::layouts()?;
        // SAFETY: both layouts have a non-zero size.
        let entries = unsafe { std::alloc::alloc_zeroed(el) }.cast::<types::BufRingEntry>();
        // SAFETY: as above.
        let mem = unsafe { std::alloc::alloc(ml) };
        if entries.is_null() || mem.is_null() {
            return Err(io::Error::other("out of memory for the buffer ring"));
        }
        let mut r = BufRing {
            entries,
            mem,
            tail: 0,
        };
        // SAFETY: `entries` is page aligned, zeroed, RING_ENTRIES long, and
        // outlives the registration: the ring is dropped first (field order
        // of `Proxy`) and `Drop` frees it after.
        unsafe {
            ring.submitter()
                .register_buf_ring(entries as u64, RING_ENTRIES, GROUP)?;
        }
        for bid in 0..RING_ENTRIES {
            r.give(bid);
        }
        Ok(r)
    }

    /// The first `len` bytes of buffer `bid`, which a completion handed us.
    fn bytes(&self, bid: u16, len: usize) -> &[u8] {
        let len = len.min(BUF);
        // SAFETY: bid < RING_ENTRIES (the kernel only hands out ids we
        // gave it), so the range is inside `mem`; the kernel wrote these
        // bytes before posting the completion and writes the buffer again
        // only after `give` returns it.
        unsafe { std::slice::from_raw_parts(self.mem.add(bid as usize * BUF), len) }
    }

    fn ptr(&self, bid: u16, off: u32) -> *mut u8 {
        // SAFETY: bid < RING_ENTRIES and off < BUF keep it inside `mem`.
        unsafe { self.mem.add(bid as usize * BUF + off as usize) }
    }

    /// Returns buffer `bid` to the kernel.
    fn give(&mut self, bid: u16) {
        let mask = RING_ENTRIES - 1;
        // SAFETY: the index is masked into the ring; only this thread
        // writes entries, and the kernel reads an entry only once the tail
        // published below covers it.
        let e = unsafe { &mut *self.entries.add((self.tail & mask) as usize) };
        e.set_addr(self.ptr(bid, 0) as u64);
        e.set_len(BUF as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail field lives in the first entry, which is valid
        // and aligned for a u16; the release store publishes the entry.
        let tail = unsafe { &*types::BufRingEntry::tail(self.entries).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if let Ok((el, ml)) = BufRing::layouts() {
            // SAFETY: allocated in `new` with these layouts; the ring that
            // used them was dropped before (field order of `Proxy`).
            unsafe {
                std::alloc::dealloc(self.entries.cast(), el);
                std::alloc::dealloc(self.mem, ml);
            }
        }
    }
}

struct Proxy {
    ring: IoUring,
    bufs: Option<BufRing>,
    f: Features,
    listener: TcpListener,
    upstream: SocketAddr,
    host_line: Vec<u8>,
    socks: Vec<Sock>,
    max_socks: usize,
    free: Vec<usize>,
    pool: Vec<usize>,
    /// Clients with ring buffers queued to send (multishot).
    dirty: Vec<usize>,
    /// Sockets whose multishot receive ended and must be armed again.
    rearm: Vec<usize>,
}

/// Builds one submission entry on slot `$i`'s socket, by registered index
/// or by descriptor.
macro_rules! on_sock {
    ($p:expr, $i:expr, $t:ident => $build:expr) => {
        if $p.f.fixed {
            let $t = types::Fixed($i as u32);
            $build
        } else {
            let $t = types::Fd($p.socks[$i].fd());
            $build
        }
    };
}

impl Proxy {
    fn push(&mut self, e: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry points at memory owned by the slot it
            // runs on (or a ring buffer that slot holds), which stays put
            // until the slot is released, after its last completion.
            if unsafe { self.ring.submission().push(&e) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    fn arm_accept(&mut self) -> io::Result<()> {
        let e = opcode::Accept::new(
            types::Fd(self.listener.as_raw_fd()),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
        .build()
        .user_data(ACCEPT);
        self.push(e)
    }

    /// Puts a connected socket into a free slot.
    fn adopt(&mut self, stream: TcpStream, role: Role) -> io::Result<usize> {
        stream.set_nodelay(true)?;
        let i = match self.free.pop() {
            Some(i) => i,
            None if self.socks.len() < self.max_socks => {
                self.socks.push(Sock::new());
                self.socks.len() - 1
            }
            None => return Err(io::Error::other("out of socket slots")),
        };
        if self.f.fixed {
            self.ring
                .submitter()
                .register_files_update(i as u32, &[stream.as_raw_fd()])?;
        }
        let s = &mut self.socks[i];
        s.stream = Some(stream);
        s.role = role;
        s.peer = None;
        s.closing = false;
        s.inbuf.clear();
        s.reset_response();
        if self.f.multishot {
            self.arm_recv(i)?;
        }
        Ok(i)
    }

    /// Arms a receive on slot `i`: multishot into the ring, or one read
    /// into the slot's own buffer (the client's request buffer or the
    /// upstream's read buffer).
    fn arm_recv(&mut self, i: usize) -> io::Result<()> {
        let s = &mut self.socks[i];
        if s.receiving || s.closing {
            return Ok(());
        }
        s.receiving = true;
        s.inflight += 1;
        let e = if self.f.multishot {
            on_sock!(self, i, t => opcode::RecvMulti::new(t, GROUP).build())
        } else {
            let buf = if s.role == Role::Client {
                if s.inbuf.capacity() - s.inbuf.len() < 1024 {
                    s.inbuf.reserve(BUF);
                }
                &mut s.inbuf
            } else {
                s.ubuf.clear();
                &mut s.ubuf
            };
            let spare = buf.spare_capacity_mut();
            let (ptr, len) = (spare.as_mut_ptr().cast::<u8>(), spare.len() as u32);
            on_sock!(self, i, t => opcode::Recv::new(t, ptr, len).build())
        };
        self.push(e.user_data(user_data(i, Op::Recv)))
    }

    /// Sends the client `c` what it is owed: the single-shot buffer from
    /// `sent` on, or (multishot) up to `MAX_IOV` queued ring buffers.
    fn send_client(&mut self, c: usize) -> io::Result<()> {
        let multishot = self.f.multishot;
        let s = &mut self.socks[c];
        if s.sending || s.closing {
            return Ok(());
        }
        let e = if !multishot {
            let rest = &s.obuf[s.sent.min(s.obuf.len())..];
            let (ptr, len) = (rest.as_ptr(), rest.len() as u32);
            on_sock!(self, c, t => opcode::Send::new(t, ptr, len).build())
        } else {
            let Some(bufs) = self.bufs.as_ref() else {
                return Err(io::Error::other("multishot without a buffer ring"));
            };
            s.batch = s.queue.len().min(MAX_IOV);
            if s.batch == 0 {
                return Ok(());
            }
            for (k, &(bid, len)) in s.queue.iter().take(s.batch).enumerate() {
                let off = if k == 0 { s.queue_off } else { 0 };
                s.iov[k] = libc::iovec {
                    iov_base: bufs.ptr(bid, off).cast(),
                    iov_len: (len - off) as usize,
                };
            }
            if s.batch == 1 {
                let (ptr, len) = (s.iov[0].iov_base.cast::<u8>(), s.iov[0].iov_len as u32);
                on_sock!(self, c, t => opcode::Send::new(t, ptr, len).build())
            } else {
                s.msg.msg_iov = s.iov.as_mut_ptr();
                s.msg.msg_iovlen = s.batch;
                let msg: *const libc::msghdr = &*s.msg;
                on_sock!(self, c, t => opcode::SendMsg::new(t, msg).build())
            }
        };
        let s = &mut self.socks[c];
        s.sending = true;
        s.inflight += 1;
        self.push(e.user_data(user_data(c, Op::Send)))
    }

    /// Sends upstream `u` its request from `sent` on.
    fn send_upstream(&mut self, u: usize) -> io::Result<()> {
        let s = &mut self.socks[u];
        let rest = &s.out[s.sent.min(s.out.len())..];
        let (ptr, len) = (rest.as_ptr(), rest.len() as u32);
        s.sending = true;
        s.inflight += 1;
        let e = on_sock!(self, u, t => opcode::Send::new(t, ptr, len).build());
        self.push(e.user_data(user_data(u, Op::Send)))
    }

    /// Starts forwarding the next request of client `c` if one is complete;
    /// otherwise waits for more of it.
    fn client_progress(&mut self, c: usize) -> io::Result<()> {
        let s = &mut self.socks[c];
        if s.peer.is_some() || s.closing {
            return Ok(());
        }
        let Some(head) = rewrite_request(&s.inbuf, &self.host_line, &mut s.req)? else {
            return self.arm_recv(c);
        };
        let total = head.head_len + head.body_len;
        if s.inbuf.len() < total {
            if !self.f.multishot && !s.receiving {
                s.inbuf.reserve(total - s.inbuf.len());
            }
            return self.arm_recv(c);
        }
        s.req.extend_from_slice(&s.inbuf[head.head_len..total]);
        s.inbuf.drain(..total);
        s.resp_done = false;
        self.begin(c, false)
    }

    /// Sends client `c`'s built request on a pooled upstream connection,
    /// or a new one (always new when `fresh_only`).
    fn begin(&mut self, c: usize, fresh_only: bool) -> io::Result<()> {
        let pooled = if fresh_only { None } else { self.pool.pop() };
        let (u, fresh) = match pooled {
            Some(u) => (u, false),
            None => match TcpStream::connect(self.upstream) {
                Ok(s) => (self.adopt(s, Role::Upstream)?, true),
                Err(_) => {
                    self.close(c);
                    return Ok(());
                }
            },
        };
        let (cs, us) = pair_mut(&mut self.socks, c, u);
        std::mem::swap(&mut cs.req, &mut us.out);
        cs.peer = Some(u);
        us.peer = Some(c);
        us.fresh = fresh;
        us.sent = 0;
        us.reset_response();
        self.send_upstream(u)
    }

    /// Accounts upstream bytes; true once the response is complete.
    fn upstream_bytes(s: &mut Sock, bytes: &[u8]) -> io::Result<bool> {
        s.got_bytes = true;
        if let Some(f) = s.framing.as_mut() {
            s.resp_done = f.feed(bytes)?;
            return Ok(s.resp_done);
        }
        if s.rhead.is_empty()
            && let Some(h) = parse_response(bytes)?
        {
            let body = &bytes[h.head_len..];
            return Proxy::headed(s, h, body);
        }
        // A head split across reads (rare): gather it.
        s.rhead.extend_from_slice(bytes);
        let Some(h) = parse_response(&s.rhead)? else {
            return Ok(false);
        };
        let body = s.rhead.split_off(h.head_len);
        Proxy::headed(s, h, &body)
    }

    fn headed(s: &mut Sock, h: ResponseHead, body: &[u8]) -> io::Result<bool> {
        let mut framing = h.framing;
        let done = framing.feed(body)?;
        s.resp_done = done;
        s.reusable = h.reusable;
        s.framing = Some(framing);
        s.rhead.clear();
        Ok(done)
    }

    /// The response to client `c` is delivered: its upstream goes back to
    /// the pool, and the client's next request (if any) starts.
    fn finish(&mut self, c: usize) -> io::Result<()> {
        if let Some(u) = self.socks[c].peer.take() {
            let us = &mut self.socks[u];
            us.peer = None;
            if us.reusable && !us.closing {
                us.reset_response();
                self.pool.push(u);
            } else {
                self.close(u);
            }
        }
        self.socks[c].resp_done = false;
        self.client_progress(c)
    }

    /// Upstream `u` failed or closed. After a complete response that only
    /// ends the connection (the client still gets what is queued). A
    /// pooled connection that fails before any response byte was closed
    /// while idle: the request is retried once on a new connection.
    /// Otherwise the client connection closes too.
    fn upstream_failed(&mut self, u: usize) -> io::Result<()> {
        let us = &mut self.socks[u];
        let peer = us.peer.take();
        if us.resp_done {
            if let Some(c) = peer {
                self.socks[c].peer = None;
            }
            self.close(u);
            return Ok(());
        }
        let retry = !us.got_bytes && !us.fresh;
        let request = if retry { us.out.clone() } else { Vec::new() };
        self.close(u);
        if let Some(c) = peer {
            self.socks[c].peer = None;
            if retry {
                self.socks[c].req = request;
                return self.begin(c, true);
            }
            self.close(c);
        }
        Ok(())
    }

    /// Shuts slot `i` down (and its exchange's other side); the slot is
    /// released once its operations have all completed.
    fn close(&mut self, i: usize) {
        let s = &mut self.socks[i];
        if s.closing || s.stream.is_none() {
            return;
        }
        s.closing = true;
        if let Some(stream) = &s.stream {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        let peer = s.peer.take();
        self.pool.retain(|&p| p != i);
        if let Some(p) = peer {
            self.socks[p].peer = None;
            self.close(p);
        }
        self.maybe_release(i);
    }

    fn maybe_release(&mut self, i: usize) {
        let s = &mut self.socks[i];
        if !s.closing || s.inflight > 0 || s.stream.is_none() {
            return;
        }
        if let Some(bufs) = self.bufs.as_mut() {
            for (bid, _) in s.queue.drain(..) {
                bufs.give(bid);
            }
        }
        s.queue_off = 0;
        s.receiving = false;
        s.sending = false;
        s.stream = None;
        if self.f.fixed {
            let _ = self.ring.submitter().register_files_update(i as u32, &[-1]);
        }
        self.free.push(i);
    }

    fn complete(&mut self, ud: u64, res: i32, flags: u32) -> io::Result<()> {
        if ud == ACCEPT {
            if res >= 0 {
                // SAFETY: a successful accept hands us a new descriptor
                // nobody else owns.
                let stream = unsafe { TcpStream::from_raw_fd(res) };
                match self.adopt(stream, Role::Client) {
                    Ok(c) if !self.f.multishot => self.arm_recv(c)?,
                    Ok(_) => {}
                    // The client sees its connection closed: say why.
                    Err(e) => eprintln!("uring-probe: client not adopted: {e}"),
                }
            }
            return self.arm_accept();
        }
        let i = (ud >> 8) as usize;
        let op = ud & 0xff;
        let more = cqueue::more(flags);
        let Some(s) = self.socks.get_mut(i) else {
            return Ok(());
        };
        if !more {
            s.inflight = s.inflight.saturating_sub(1);
        }
        if op == Op::Recv as u64 {
            if !more {
                s.receiving = false;
            }
            let bid = cqueue::buffer_select(flags);
            if s.closing || res <= 0 {
                // No bytes to use: a buffer the kernel picked goes back.
                if let (Some(bid), Some(bufs)) = (bid, self.bufs.as_mut()) {
                    bufs.give(bid);
                }
                return if self.socks[i].closing {
                    self.maybe_release(i);
                    Ok(())
                } else if res == -libc::ENOBUFS {
                    self.rearm.push(i);
                    Ok(())
                } else {
                    note_failure(self.socks[i].role, "receive", res);
                    self.failed(i)
                };
            }
            if self.f.multishot && !more {
                self.rearm.push(i);
            }
            self.received(i, res as usize, bid)
        } else {
            s.sending = false;
            if s.closing {
                self.maybe_release(i);
                return Ok(());
            }
            if res < 0 {
                note_failure(self.socks[i].role, "send", res);
                return self.failed(i);
            }
            self.sent(i, res as usize)
        }
    }

    /// A receive or send on slot `i` failed (or the peer closed it).
    fn failed(&mut self, i: usize) -> io::Result<()> {
        match self.socks[i].role {
            Role::Upstream => self.upstream_failed(i),
            Role::Client => {
                self.close(i);
                Ok(())
            }
        }
    }

    /// `n` bytes arrived on slot `i`: in its own buffer, or in ring buffer
    /// `bid`.
    fn received(&mut self, i: usize, n: usize, bid: Option<u16>) -> io::Result<()> {
        let role = self.socks[i].role;
        match (role, bid, self.bufs.as_mut()) {
            (Role::Client, Some(bid), Some(bufs)) => {
                self.socks[i].inbuf.extend_from_slice(bufs.bytes(bid, n));
                bufs.give(bid);
                self.client_progress(i)
            }
            (Role::Client, _, _) => {
                let s = &mut self.socks[i];
                let len = (s.inbuf.len() + n).min(s.inbuf.capacity());
                // SAFETY: the kernel initialised the n bytes after the old
                // length, inside the spare capacity the receive was given.
                unsafe { s.inbuf.set_len(len) };
                self.client_progress(i)
            }
            (Role::Upstream, Some(bid), Some(bufs)) => {
                let Some(c) = self.socks[i].peer else {
                    // Bytes from an idle upstream: it is out of step.
                    bufs.give(bid);
                    self.close(i);
                    return Ok(());
                };
                let done = match Proxy::upstream_bytes(&mut self.socks[i], bufs.bytes(bid, n)) {
                    Ok(d) => d,
                    Err(_) => {
                        bufs.give(bid);
                        self.close(i);
                        return Ok(());
                    }
                };
                let cs = &mut self.socks[c];
                cs.queue.push_back((bid, n as u32));
                cs.resp_done = done;
                self.dirty.push(c);
                Ok(())
            }
            (Role::Upstream, _, _) => {
                let Some(c) = self.socks[i].peer else {
                    self.close(i);
                    return Ok(());
                };
                let us = &mut self.socks[i];
                let len = n.min(us.ubuf.capacity());
                // SAFETY: the kernel initialised these bytes of the spare
                // capacity the receive was given (ubuf was empty).
                unsafe { us.ubuf.set_len(len) };
                let mut ubuf = std::mem::take(&mut us.ubuf);
                let done = Proxy::upstream_bytes(us, &ubuf);
                let cs = &mut self.socks[c];
                std::mem::swap(&mut cs.obuf, &mut ubuf);
                self.socks[i].ubuf = ubuf;
                match done {
                    Ok(d) => {
                        let cs = &mut self.socks[c];
                        cs.resp_done = d;
                        cs.sent = 0;
                        self.send_client(c)
                    }
                    Err(_) => {
                        self.close(i);
                        Ok(())
                    }
                }
            }
        }
    }

    /// A send on slot `i` wrote `n` bytes.
    fn sent(&mut self, i: usize, n: usize) -> io::Result<()> {
        let multishot = self.f.multishot;
        let s = &mut self.socks[i];
        if s.role == Role::Upstream {
            s.sent += n;
            if s.sent < s.out.len() {
                return self.send_upstream(i);
            }
            return if multishot { Ok(()) } else { self.arm_recv(i) };
        }
        if !multishot {
            s.sent += n;
            if s.sent < s.obuf.len() {
                return self.send_client(i);
            }
        } else if let Some(bufs) = self.bufs.as_mut() {
            let mut left = n as u32;
            for _ in 0..s.batch {
                let Some(&(bid, len)) = s.queue.front() else {
                    break;
                };
                let rest = len - s.queue_off;
                if left >= rest {
                    left -= rest;
                    s.queue.pop_front();
                    s.queue_off = 0;
                    bufs.give(bid);
                } else {
                    s.queue_off += left;
                    break;
                }
            }
            if !s.queue.is_empty() {
                return self.send_client(i);
            }
        }
        if self.socks[i].resp_done {
            return self.finish(i);
        }
        match self.socks[i].peer {
            Some(u) if !multishot => self.arm_recv(u),
            _ => Ok(()),
        }
    }

    fn run(&mut self) -> io::Result<()> {
        self.arm_accept()?;
        let mut cq = Vec::with_capacity(1024);
        loop {
            for c in std::mem::take(&mut self.dirty) {
                self.send_client(c)?;
            }
            for i in std::mem::take(&mut self.rearm) {
                self.arm_recv(i)?;
            }
            self.ring.submit_and_wait(1)?;
            cq.clear();
            cq.extend(
                self.ring
                    .completion()
                    .map(|e| (e.user_data(), e.result(), e.flags())),
            );
            for &(ud, res, flags) in &cq {
                self.complete(ud, res, flags)?;
            }
        }
    }
}

/// Two distinct slots, both mutable.
fn pair_mut(socks: &mut [Sock], a: usize, b: usize) -> (&mut Sock, &mut Sock) {
    if a < b {
        let (x, y) = socks.split_at_mut(b);
        (&mut x[a], &mut y[0])
    } else {
        let (x, y) = socks.split_at_mut(a);
        (&mut y[0], &mut x[b])
    }
}

/// Slots for sockets: the registered file table may not exceed the
/// open-file limit (the kernel refuses it with EMFILE).
fn max_socks() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct it is given.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    let open_files = if rc == 0 { lim.rlim_cur } else { 1024 };
    (MAX_SOCKS as u64).min(open_files.saturating_sub(64).max(64)) as usize
}

fn build_ring(f: Features) -> io::Result<IoUring> {
    let mut b = IoUring::builder();
    if f.sqpoll {
        b.setup_sqpoll(50);
    } else {
        b.setup_single_issuer().setup_defer_taskrun();
    }
    b.build(1024)
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let addrs = match (args.get(1), args.get(2)) {
        (Some(l), Some(u)) => l
            .parse::<SocketAddr>()
            .and_then(|l| Ok((l, u.parse::<SocketAddr>()?))),
        _ => {
            eprintln!("usage: uring-probe LISTEN UPSTREAM [--multishot] [--fixed] [--sqpoll]");
            return std::process::ExitCode::from(2);
        }
    };
    let (listen, upstream) = match addrs {
        Ok(a) => a,
        Err(e) => {
            eprintln!("uring-probe: bad address: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let mut f = Features {
        multishot: false,
        fixed: false,
        sqpoll: false,
    };
    for a in &args[3..] {
        match a.as_str() {
            "--multishot" => f.multishot = true,
            "--fixed" => f.fixed = true,
            "--sqpoll" => f.sqpoll = true,
            other => {
                eprintln!("uring-probe: unknown flag {other}");
                return std::process::ExitCode::from(2);
            }
        }
    }
    match start(listen, upstream, f) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("uring-probe: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn start(listen: SocketAddr, upstream: SocketAddr, f: Features) -> io::Result<()> {
    let ring = build_ring(f)?;
    let max_socks = max_socks();
    if f.fixed {
        ring.submitter().register_files_sparse(max_socks as u32)?;
    }
    let bufs = if f.multishot {
        Some(BufRing::new(&ring)?)
    } else {
        None
    };
    let listener = TcpListener::bind(listen)?;
    // With port 0 the kernel picks one: whoever started the probe reads
    // which from this line (the tests do, so two probes never share one,
    // and then close the pipe: nothing else is written to stdout).
    println!("listening on {}", listener.local_addr()?);
    io::Write::flush(&mut io::stdout())?;
    let mut p = Proxy {
        ring,
        bufs,
        f,
        listener,
        upstream,
        host_line: format!("Host: {upstream}\r\n").into_bytes(),
        socks: Vec::new(),
        max_socks,
        free: Vec::new(),
        pool: Vec::new(),
        dirty: Vec::new(),
        rearm: Vec::new(),
    };
    p.run()
}
