//! The floor: a minimal HTTP/1.1 proxy on the same runtime as tollgate,
//! with no feature at all, measured beside tollgate and nginx in the same
//! run.
//!
//! Issue 6's goals were set against a probe of this shape (one monoio
//! thread, httparse, a keep-alive pool, one write per direction). The
//! machine, kernel and nginx have moved since; running the floor in every
//! comparison says how much of tollgate's cost is the loopback TCP work
//! every proxy pays and how much is tollgate's own (routing, token
//! accounting, usage records, metrics).
//!
//! What it does per request: parse the head, read a Content-Length body,
//! rebuild the head for the upstream (its own Host, no hop-by-hop
//! headers), send head and body in one write on a pooled connection, then
//! relay every upstream read to the client as it arrives (head included,
//! verbatim) until the response's framing (Content-Length, chunked or
//! close) says it ended. Chunked request bodies are refused (no client of
//! the benches sends one). Any error closes the client connection.
//!
//! `floor LISTEN UPSTREAM [io_uring|legacy]`, e.g.
//! `target/release/floor 127.0.0.1:19400 127.0.0.1:19001`

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use tollgate::config::{DriverChoice, TaskRun};
use tollgate::server::{bind, run_on_runtime};
use tollgate_benches::probe::{RequestHead, parse_response, rewrite_request};

const BUF: usize = 16 * 1024;

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let parsed = match (args.get(1), args.get(2)) {
        (Some(l), Some(u)) => l.parse::<SocketAddr>().and_then(|l| Ok((l, u.parse()?))),
        _ => {
            eprintln!("usage: floor LISTEN UPSTREAM [io_uring|legacy]");
            return std::process::ExitCode::from(2);
        }
    };
    let (listen, upstream): (SocketAddr, SocketAddr) = match parsed {
        Ok(a) => a,
        Err(e) => {
            eprintln!("floor: bad address: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let choice = match args.get(3).map(String::as_str) {
        Some("legacy") => DriverChoice::Legacy,
        _ => DriverChoice::IoUring,
    };
    let ran = run_on_runtime(choice, TaskRun::Defer, |_| async move {
        let listener = match bind(listen) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("floor: bind {listen}: {e}");
                return;
            }
        };
        let pool = Rc::new(Pool {
            addr: upstream,
            host: format!("Host: {upstream}\r\n").into_bytes(),
            idle: RefCell::new(Vec::new()),
        });
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            monoio::spawn(serve(pool.clone(), stream));
        }
    });
    match ran {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("floor: runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The upstream and its idle keep-alive connections (LIFO).
struct Pool {
    addr: SocketAddr,
    host: Vec<u8>,
    idle: RefCell<Vec<TcpStream>>,
}

impl Pool {
    async fn take(&self) -> io::Result<TcpStream> {
        let pooled = self.idle.borrow_mut().pop();
        match pooled {
            Some(c) => Ok(c),
            None => {
                let c = TcpStream::connect(self.addr).await?;
                c.set_nodelay(true)?;
                Ok(c)
            }
        }
    }
}

async fn serve(pool: Rc<Pool>, mut client: TcpStream) {
    let mut cbuf = Vec::with_capacity(BUF);
    let mut req = Vec::with_capacity(BUF);
    let mut ubuf = Vec::with_capacity(BUF);
    loop {
        match exchange(&pool, &mut client, cbuf, req, ubuf).await {
            Ok((c, r, u)) => (cbuf, req, ubuf) = (c, r, u),
            Err(_) => return,
        }
    }
}

type Bufs = (Vec<u8>, Vec<u8>, Vec<u8>);

/// Reads more bytes after `buf`'s end; an error at EOF.
async fn read_more<S: AsyncReadRent>(s: &mut S, mut buf: Vec<u8>) -> io::Result<Vec<u8>> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(BUF);
    }
    let (len, cap) = (buf.len(), buf.capacity());
    let (res, slice) = s.read(buf.slice_mut(len..cap)).await;
    match res? {
        0 => Err(io::ErrorKind::UnexpectedEof.into()),
        _ => Ok(slice.into_inner()),
    }
}

/// One request and its response.
async fn exchange(
    pool: &Pool,
    client: &mut TcpStream,
    mut cbuf: Vec<u8>,
    mut req: Vec<u8>,
    mut ubuf: Vec<u8>,
) -> io::Result<Bufs> {
    // Head.
    let RequestHead { head_len, body_len } = loop {
        if let Some(head) = rewrite_request(&cbuf, &pool.host, &mut req)? {
            break head;
        }
        cbuf = read_more(client, cbuf).await?;
    };
    // Body.
    let total = head_len + body_len;
    cbuf.reserve(total.saturating_sub(cbuf.len()));
    while cbuf.len() < total {
        cbuf = read_more(client, cbuf).await?;
    }
    req.extend_from_slice(&cbuf[head_len..total]);
    cbuf.drain(..total);
    // Upstream: a pooled connection that fails before any response byte
    // was closed while idle; one retry on a fresh connection.
    let mut up = pool.take().await?;
    let (res, back) = up.write_all(req).await;
    req = back;
    ubuf.clear();
    let first = match res {
        Ok(_) => read_more(&mut up, ubuf).await,
        Err(e) => Err(e),
    };
    ubuf = match first {
        Ok(b) => b,
        Err(_) => {
            up = TcpStream::connect(pool.addr).await?;
            up.set_nodelay(true)?;
            let (res, back) = up.write_all(req).await;
            req = back;
            res?;
            read_more(&mut up, Vec::with_capacity(BUF)).await?
        }
    };
    // Response head, then its body as it comes.
    let (mut framing, reusable, mut done) = loop {
        if let Some(h) = parse_response(&ubuf)? {
            let mut framing = h.framing;
            let done = framing.feed(&ubuf[h.head_len..])?;
            break (framing, h.reusable, done);
        }
        ubuf = read_more(&mut up, ubuf).await?;
    };
    loop {
        let (res, back) = client.write_all(ubuf).await;
        ubuf = back;
        res?;
        if done {
            break;
        }
        ubuf.clear();
        // A close-delimited body ends at EOF: the error closes the client
        // connection, which ends the client's copy of the body too.
        ubuf = read_more(&mut up, ubuf).await?;
        done = framing.feed(&ubuf)?;
    }
    if reusable {
        pool.idle.borrow_mut().push(up);
    }
    Ok((cbuf, req, ubuf))
}
