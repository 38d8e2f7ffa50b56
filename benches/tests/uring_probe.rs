//! The raw io_uring probe relays exactly what the upstream sent, in every
//! I/O mode it measures: keep-alive requests answered with Content-Length
//! and chunked bodies (one larger than a ring buffer, so it spans several
//! and goes out in batched writes), a client that leaves mid-response, and
//! a pooled upstream connection closed while idle (retried once).
//! Real sockets on 127.0.0.1; the upstream is a thread of this test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

type R<T> = Result<T, Box<dyn std::error::Error>>;

/// Reads one request (head + Content-Length body); None at EOF.
fn read_request(r: &mut BufReader<TcpStream>) -> R<Option<(String, Vec<u8>)>> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .and_then(|v| v.trim().parse::<usize>().ok())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(Some((head, body)))
}

/// The upstream: each request's body says what to answer.
/// `len:N` → N bytes with Content-Length; `chunks:A,B,..` → chunked, one
/// write per chunk; `slow` → a chunked answer, a chunk every 20 ms for
/// 2 s; `close` → a Content-Length answer, then the connection closes as
/// a keep-alive timeout would (no `Connection: close`).
fn upstream(accepted: Arc<AtomicUsize>) -> R<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            accepted.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let _ = serve(s);
            });
        }
    });
    Ok(addr)
}

fn body_of(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + ((i + seed) % 26) as u8).collect()
}

fn serve(s: TcpStream) -> R<()> {
    s.set_nodelay(true)?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    while let Some((_, body)) = read_request(&mut r)? {
        let cmd = String::from_utf8(body)?;
        if let Some(n) = cmd.strip_prefix("len:") {
            let n: usize = n.parse()?;
            write!(w, "HTTP/1.1 200 OK\r\ncontent-length: {n}\r\n\r\n")?;
            w.write_all(&body_of(n, n))?;
        } else if let Some(list) = cmd.strip_prefix("chunks:") {
            w.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")?;
            for n in list.split(',') {
                let n: usize = n.parse()?;
                let mut c = format!("{n:x}\r\n").into_bytes();
                c.extend_from_slice(&body_of(n, n));
                c.extend_from_slice(b"\r\n");
                w.write_all(&c)?;
                w.flush()?;
                std::thread::sleep(Duration::from_millis(2));
            }
            w.write_all(b"0\r\n\r\n")?;
        } else if cmd == "slow" {
            w.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")?;
            for _ in 0..100 {
                w.write_all(b"5\r\nhello\r\n")?;
                std::thread::sleep(Duration::from_millis(20));
            }
            w.write_all(b"0\r\n\r\n")?;
        } else if cmd == "close" {
            w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")?;
            return Ok(());
        }
    }
    Ok(())
}

/// Reads one response; returns its decoded body.
fn read_response(r: &mut BufReader<TcpStream>) -> R<Vec<u8>> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err("EOF in response head".into());
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let lower = head.to_ascii_lowercase();
    if lower.contains("transfer-encoding: chunked") {
        let mut body = Vec::new();
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim(), 16)?;
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk)?;
            if n == 0 {
                return Ok(body);
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    let n = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .ok_or("no framing")?
        .trim()
        .parse::<usize>()?;
    let mut body = vec![0u8; n];
    r.read_exact(&mut body)?;
    Ok(body)
}

fn send(w: &mut TcpStream, cmd: &str) -> R<()> {
    write!(
        w,
        "POST /v1/x HTTP/1.1\r\nHost: probe\r\nContent-Length: {}\r\n\r\n{cmd}",
        cmd.len()
    )?;
    Ok(())
}

struct Probe(Child, SocketAddr);

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_probe(up: SocketAddr, flags: &[&str]) -> R<Probe> {
    // The probe picks its own port and says which: a port picked here and
    // released could be picked again by a probe of a test running beside
    // this one, and this test would then talk to that probe.
    let mut child = Command::new(env!("CARGO_BIN_EXE_uring-probe"))
        .arg("127.0.0.1:0")
        .arg(up.to_string())
        .args(flags)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()?;
    let out = child.stdout.take().ok_or("no stdout")?;
    let mut p = Probe(child, "127.0.0.1:0".parse()?);
    // Ends at the probe's first line, or at EOF if it exits first.
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line)?;
    let Some(addr) = line.trim().strip_prefix("listening on ") else {
        let st = p.0.wait()?;
        return Err(format!("probe {flags:?} did not listen ({st}): {line:?}").into());
    };
    p.1 = addr.parse()?;
    Ok(p)
}

fn relays_everything(flags: &[&str]) -> R<()> {
    let accepted = Arc::new(AtomicUsize::new(0));
    let up = upstream(accepted.clone())?;
    let p = start_probe(up, flags)?;
    let c = TcpStream::connect(p.1)?;
    // A relay that loses bytes fails the test instead of hanging it.
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut w = c.try_clone()?;
    let mut r = BufReader::new(c);
    for (i, cmd) in [
        "len:600",
        "chunks:10,40000,3",
        "len:70000",
        "chunks:1",
        "len:1",
    ]
    .iter()
    .cycle()
    .take(20)
    .enumerate()
    {
        send(&mut w, cmd).map_err(|e| format!("{flags:?} sending {i}: {e}"))?;
        let body = read_response(&mut r).map_err(|e| format!("{flags:?} answer {i}: {e}"))?;
        let want: Vec<u8> = match cmd.split_once(':') {
            Some(("len", n)) => body_of(n.parse()?, n.parse()?),
            Some((_, list)) => list
                .split(',')
                .flat_map(|n| body_of(n.parse().unwrap_or(0), n.parse().unwrap_or(0)))
                .collect(),
            None => Vec::new(),
        };
        assert_eq!(body, want, "{flags:?}: request {i} ({cmd})");
    }
    // One keep-alive client, requests in turn: one upstream connection.
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "{flags:?}");

    // A client that leaves mid-response: the probe closes that exchange
    // and keeps serving others.
    let mut gone = TcpStream::connect(p.1)?;
    gone.set_read_timeout(Some(Duration::from_secs(10)))?;
    send(&mut gone, "slow")?;
    let mut first = [0u8; 64];
    let n = gone
        .read(&mut first)
        .map_err(|e| format!("{flags:?} slow answer: {e}"))?;
    assert!(n > 0, "{flags:?}");
    drop(gone);
    send(&mut w, "len:5").map_err(|e| format!("{flags:?} after a client left: {e}"))?;
    let after_gone =
        read_response(&mut r).map_err(|e| format!("{flags:?} after a client left: {e}"))?;
    assert_eq!(after_gone, body_of(5, 5), "{flags:?}");

    // The pooled upstream connection closes while idle: the next request
    // is retried once on a new connection.
    send(&mut w, "close").map_err(|e| format!("{flags:?} closing: {e}"))?;
    let closing = read_response(&mut r).map_err(|e| format!("{flags:?} closing answer: {e}"))?;
    assert_eq!(closing, b"ok", "{flags:?}");
    let before = accepted.load(Ordering::SeqCst);
    send(&mut w, "len:7").map_err(|e| format!("{flags:?} retry: {e}"))?;
    let retried = read_response(&mut r).map_err(|e| format!("{flags:?} retried: {e}"))?;
    assert_eq!(retried, body_of(7, 7), "{flags:?}");
    assert!(accepted.load(Ordering::SeqCst) > before, "{flags:?}");
    Ok(())
}

#[test]
fn single_shot_receives() -> R<()> {
    relays_everything(&[])
}

#[test]
fn multishot_receives_from_a_buffer_ring() -> R<()> {
    relays_everything(&["--multishot"])
}

#[test]
fn registered_files() -> R<()> {
    relays_everything(&["--fixed"])?;
    relays_everything(&["--multishot", "--fixed"])
}

#[test]
fn sqpoll() -> R<()> {
    relays_everything(&["--sqpoll"])
}
