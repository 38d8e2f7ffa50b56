//! The whole generator against tiny real servers on loopback: complete
//! answers count as successes, cut or short streams as errors.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use super::{Options, render_request, run};

/// A keep-alive server answering every request with `answer`; after
/// `close_after` answers on one connection it closes it.
fn server(answer: &'static [u8], close_after: usize) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                let mut have = Vec::new();
                let mut answered = 0;
                loop {
                    // One request = head + Content-Length body.
                    let Some(end) = request_end(&have) else {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => have.extend_from_slice(&buf[..n]),
                        }
                        continue;
                    };
                    have.drain(..end);
                    if s.write_all(answer).is_err() {
                        return;
                    }
                    answered += 1;
                    if answered == close_after {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn request_end(b: &[u8]) -> Option<usize> {
    let head = memchr::memmem::find(b, b"\r\n\r\n")? + 4;
    let text = std::str::from_utf8(&b[..head]).ok()?.to_ascii_lowercase();
    let len: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    (b.len() >= head + len).then_some(head + len)
}

fn opts(addr: SocketAddr, expect: Option<u32>) -> Options {
    Options {
        addr,
        request: Vec::leak(render_request("/v1/chat/completions", "t", &[], b"{}")),
        connections: 4,
        threads: 2,
        duration: Duration::from_millis(300),
        warmup: Duration::from_millis(50),
        rate: None,
        expect_events: expect,
        marker: b"mark".to_vec(),
        timeout: Duration::from_secs(2),
        idle: 0,
        idle_ramp: Duration::ZERO,
        legacy: false,
    }
}

const STREAM: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
    e\r\ndata: {mark}\n\n\r\ne\r\ndata: [DONE]\n\n\r\n0\r\n\r\n";

#[test]
fn complete_streams_are_successes() {
    let (s, secs) = run(opts(server(STREAM, usize::MAX), Some(2))).unwrap();
    assert!(s.ok > 10, "only {} answers", s.ok);
    assert_eq!(s.errors.total(), 0, "{:?}", s.errors);
    assert_eq!(s.events, 2 * s.ok);
    assert!(s.marked >= s.ok && s.first_marker_unix_us.is_some());
    assert!((secs - 0.3).abs() < 1e-9);
    assert!(s.latency.len() == s.ok && s.ttfb.max() <= s.latency.max());
}

#[test]
fn wrong_event_count_is_incomplete() {
    let (s, _) = run(opts(server(STREAM, usize::MAX), Some(3))).unwrap();
    assert_eq!(s.ok, 0);
    assert!(s.errors.incomplete > 10, "{:?}", s.errors);
}

#[test]
fn cut_stream_is_an_io_error_and_the_next_request_reconnects() {
    // The answer stops before the last chunk, then the server closes.
    static CUT: &[u8] =
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\ne\r\ndata: {mark}\n\n\r\n";
    let (s, _) = run(opts(server(CUT, 1), Some(2))).unwrap();
    assert_eq!(s.ok, 0);
    assert!(s.errors.io > 10, "{:?}", s.errors);
}

#[test]
fn open_loop_holds_the_rate() {
    let mut o = opts(server(STREAM, usize::MAX), Some(2));
    o.rate = Some(2000.0);
    o.duration = Duration::from_millis(500);
    let (s, _) = run(o).unwrap();
    // 2,000/s for 0.5 s: 1,000 scheduled requests. Never more (open loop
    // does not catch up beyond its schedule); fewer only if a busy machine
    // pushes the last answers past the end of the window.
    assert!((600..=1010).contains(&s.ok), "{} answers", s.ok);
    assert_eq!(s.errors.total(), 0);
}

#[test]
fn idle_connections_survive_a_keep_alive_server() {
    let mut o = opts(server(STREAM, usize::MAX), Some(2));
    o.idle = 50;
    o.idle_ramp = Duration::from_millis(100);
    let (s, _) = run(o).unwrap();
    assert_eq!(s.idle, (50, 50));
    assert_eq!(s.errors.total(), 0);
}
