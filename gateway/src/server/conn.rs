//! The client connection loop: read a head, read the body within limits,
//! dispatch, answer, repeat while keep-alive allows.
//!
//! Errors found before the body is consumed close the connection after the
//! error response (the stream position is unknown); errors after it keep
//! the connection.

use std::time::{Duration, Instant};

use monoio::io::{AsyncWriteRentExt, OwnedWriteHalf, Splitable};
use monoio::net::TcpStream;

use super::client::ClientIn;
use super::local;
use super::proxy::{self, Endpoint};
use super::timer::ConnTimer;
use super::worker::Worker;
use crate::config::Limits;
use crate::error::{Error, Kind};
use crate::http::chunked::ChunkedDecoder;
use crate::http::response::{self, CONTINUE_100};
use crate::http::{BodyFraming, Method, RequestHead, request};

/// Client write half.
pub type ClientOut = OwnedWriteHalf<TcpStream>;

/// Serves one client connection to the end.
pub async fn serve(w: &Worker, stream: TcpStream) {
    let (rd, mut wr) = stream.into_split();
    let mut cin = ClientIn::new(rd);
    // Only local answers and errors use it: allocated on first use, so an
    // idle keep-alive connection holds just its read buffer.
    let mut out: Vec<u8> = Vec::new();
    // The timer of every wait with a deadline (server/timer.rs).
    let mut timer = ConnTimer::default();
    loop {
        let (head, started) = match read_head(w, &mut cin, &mut timer).await {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(e) => {
                let id = w.next_request_id();
                respond_error(&mut wr, &mut out, &e, &id, true).await;
                return;
            }
        };
        // The client's id is copied (its bytes leave the buffer with the
        // request); a generated one stays on the stack.
        let theirs: Vec<u8>;
        let generated;
        let rid: &[u8] = match &head.request_id {
            Some(r) => {
                theirs = cin.buf()[r.clone()].to_vec();
                &theirs
            }
            None => {
                generated = w.next_request_id();
                &generated
            }
        };
        let keep_alive = head.keep_alive && !w.drain.is_raised();
        let path = head.path(cin.buf());
        let endpoint = Endpoint::from_path(path);
        let log_path = if w.cfg().log.access {
            String::from_utf8_lossy(path).into_owned()
        } else {
            String::new()
        };
        let mut route_log = proxy::RouteLog::default();
        let is_proxy = endpoint.is_some() && head.method == Method::Post;
        let result = if let (true, Some(ep)) = (is_proxy, endpoint) {
            // The proxy path consumes the request bytes itself, on every
            // outcome, once the body has been read. Boxed, body reading
            // included: a connection task is as large as its largest
            // state, and an idle keep-alive connection should carry only
            // the wait for its next head (release build: a 1.2 KB task;
            // larger with the body read inline, several KB with the proxy
            // inline). One allocation per request, an ordinary one: no
            // timer lives in it (server/timer.rs).
            Box::pin(async {
                let body = read_body(w, &mut cin, &mut wr, &head, &mut timer)
                    .await
                    .map_err(|e| (e, true))?;
                proxy::handle(
                    w,
                    &mut cin,
                    &mut wr,
                    &head,
                    body,
                    ep,
                    rid,
                    keep_alive,
                    started,
                    &mut route_log,
                    &mut timer,
                )
                .await
            })
            .await
        } else {
            let r = match endpoint {
                Some(_) => Err((
                    Error::new(Kind::MethodNotAllowed, "use POST for this endpoint"),
                    false,
                )),
                None => local::handle(
                    w,
                    &cin,
                    &head,
                    &mut out,
                    rid,
                    keep_alive && head.body == BodyFraming::None,
                ),
            };
            cin.consume(head.len);
            r
        };
        // A body that was never read leaves the stream position unknown.
        let body_unread = !is_proxy && head.body != BodyFraming::None;
        let (status, close) = match result {
            Ok(proxy::Done::Local) => {
                let close = !keep_alive || body_unread;
                let (res, b) = wr.write_all(std::mem::take(&mut out)).await;
                out = b;
                out.clear();
                if res.is_err() {
                    return;
                }
                (200, close)
            }
            Ok(proxy::Done::Relayed { status, close }) => (status, close || !keep_alive),
            Ok(proxy::Done::Aborted { status }) => {
                access_log(w, rid, &log_path, status, started, &route_log);
                return;
            }
            Err((e, unread)) => {
                let close = unread || body_unread || !keep_alive;
                respond_error(&mut wr, &mut out, &e, rid, close).await;
                (e.status(), close)
            }
        };
        access_log(w, rid, &log_path, status, started, &route_log);
        if close || cin.is_closed() {
            return;
        }
    }
}

fn access_log(
    w: &Worker,
    rid: &[u8],
    path: &str,
    status: u16,
    started: Instant,
    route: &proxy::RouteLog,
) {
    if w.cfg().log.access {
        // Upstream TCP as the kernel saw it (eBPF sock_ops; absent without).
        let tcp = w.shared.health.tcp(route.tcp_port);
        tracing::info!(
            target: "tollgate::access",
            request_id = %proxy::id_text(rid),
            path,
            status,
            model = route.model.as_str(),
            upstream = route.upstream.as_deref().unwrap_or("-"),
            ttfb_ms = route.ttfb.map_or(0.0, |d| d.as_secs_f64() * 1000.0),
            ms = started.elapsed().as_secs_f64() * 1000.0,
            srtt_us = tcp.map(|t| t.0),
            retrans = tcp.map(|t| t.1.saturating_sub(route.tcp_retrans0)),
        );
    }
}

async fn respond_error(wr: &mut ClientOut, out: &mut Vec<u8>, e: &Error, rid: &[u8], close: bool) {
    out.clear();
    response::error(out, e, rid, close);
    let (_, b) = wr.write_all(std::mem::take(out)).await;
    *out = b;
    out.clear();
}

/// Waits for a complete head; returns it with the time its first byte was
/// seen. `Ok(None)`: the client closed (or went idle past the timeout, or
/// the worker drains) between requests.
async fn read_head(
    w: &Worker,
    cin: &mut ClientIn,
    timer: &mut ConnTimer,
) -> Result<Option<(RequestHead, Instant)>, Error> {
    let limits = w.cfg().server.limits;
    let mut first_byte_at: Option<Instant> = None;
    loop {
        if !cin.buf().is_empty() && !cin.in_flight() {
            let t0 = *first_byte_at.get_or_insert_with(Instant::now);
            match request::parse(cin.buf())? {
                Some(h) => {
                    if h.len > limits.max_header_bytes {
                        return Err(header_too_large(limits.max_header_bytes));
                    }
                    return Ok(Some((h, t0)));
                }
                None if cin.buf().len() > limits.max_header_bytes => {
                    return Err(header_too_large(limits.max_header_bytes));
                }
                None => {}
            }
        }
        let read = match first_byte_at {
            // Between requests: idle timeout, and drain closes at once.
            None => {
                if w.drain.is_raised() {
                    return Ok(None);
                }
                // `biased`: the first branch is polled first, every time
                // (here and in every select on the request path). Random
                // order is for fairness among many branches; between a
                // read and its timer, the read should win a tie, and the
                // random start cost a thread-local RNG draw per poll.
                monoio::select! {
                    biased;
                    r = idle_wait(w, cin, &limits, timer) => r,
                    _ = w.drain.wait() => return Ok(None),
                }
            }
            Some(t0) => {
                monoio::select! {
                    biased;
                    r = cin.complete() => Some(r),
                    _ = timer.at(t0 + limits.header_timeout) => None,
                }
            }
        };
        match read {
            Some(Ok(0) | Err(_)) => {
                // EOF mid-head is the client's loss; nothing to answer.
                return Ok(None);
            }
            Some(Ok(_)) => {}
            None if first_byte_at.is_none() => return Ok(None),
            None => {
                return Err(Error::new(
                    Kind::RequestTimeout,
                    "request head not received in time",
                ));
            }
        }
    }
}

/// Waits for the next request's first bytes on a keep-alive connection,
/// up to the idle timeout (`None`: timed out). Past `idle_buffer_release`
/// the connection is parked: its read buffer and its timer are freed, it
/// waits for readiness, and the worker's idle sweeper keeps its deadline.
async fn idle_wait(
    w: &Worker,
    cin: &mut ClientIn,
    limits: &Limits,
    timer: &mut ConnTimer,
) -> Option<std::io::Result<usize>> {
    let start = Instant::now();
    let parks = limits.idle_buffer_release < limits.idle_timeout && cin.buf().is_empty();
    let first = if parks {
        limits.idle_buffer_release
    } else {
        limits.idle_timeout
    };
    monoio::select! {
        biased;
        r = cin.complete() => return Some(r),
        _ = timer.at(start + first) => {}
    }
    if !parks {
        return None;
    }
    timer.release();
    let parked = async {
        if let Some(r) = cin.park().await {
            return r;
        }
        let parked = w.shared.conns.parked();
        cin.readable().await?;
        drop(parked);
        cin.complete().await
    };
    monoio::select! {
        biased;
        r = parked => Some(r),
        _ = w.idle.until(start + limits.idle_timeout) => None,
    }
}

fn header_too_large(max: usize) -> Error {
    Error::msg(
        Kind::HeadersTooLarge,
        format!("request head is larger than the limit of {max} bytes"),
    )
}

/// The request body: a range of the connection buffer, or decoded chunks.
pub enum Body {
    /// `buf[range]`; the request occupies `buf[..range.end]`.
    InBuf(std::ops::Range<usize>),
    /// Decoded chunked body; the request occupied `wire_len` buffer bytes.
    Decoded { data: Vec<u8>, wire_len: usize },
}

impl Body {
    /// The body bytes.
    pub fn bytes<'a>(&'a self, buf: &'a [u8]) -> &'a [u8] {
        match self {
            Body::InBuf(r) => &buf[r.clone()],
            Body::Decoded { data, .. } => data,
        }
    }

    /// Buffer bytes the whole request (head and body) used.
    pub fn request_len(&self) -> usize {
        match self {
            Body::InBuf(r) => r.end,
            Body::Decoded { wire_len, .. } => *wire_len,
        }
    }
}

/// Reads the body announced by `head` within the size and time limits.
async fn read_body(
    w: &Worker,
    cin: &mut ClientIn,
    wr: &mut ClientOut,
    head: &RequestHead,
    timer: &mut ConnTimer,
) -> Result<Body, Error> {
    let limits = w.cfg().server.limits;
    // Set on the first wait: a body that came with its head reads no clock.
    let mut deadline = None;
    let mut deadline = || *deadline.get_or_insert_with(|| Instant::now() + limits.body_timeout);
    let too_large = || {
        Error::msg(
            Kind::BodyTooLarge,
            format!(
                "request body is larger than the limit of {} bytes",
                limits.max_body_bytes
            ),
        )
    };
    match head.body {
        BodyFraming::None => Ok(Body::InBuf(head.len..head.len)),
        BodyFraming::Length(n) => {
            if n > limits.max_body_bytes as u64 {
                return Err(too_large());
            }
            let end = head.len + n as usize;
            cin.reserve_total(end);
            if cin.buf().len() < end && head.expect_continue {
                send_continue(wr).await?;
            }
            while cin.buf().len() < end {
                read_more(cin, timer, deadline()).await?;
            }
            Ok(Body::InBuf(head.len..end))
        }
        BodyFraming::Chunked => {
            if head.expect_continue {
                send_continue(wr).await?;
            }
            let mut dec = ChunkedDecoder::new();
            let mut data = Vec::new();
            let mut pos = head.len;
            loop {
                let mut over = false;
                let used = dec
                    .feed(&cin.buf()[pos..], |d| {
                        if data.len() + d.len() > limits.max_body_bytes {
                            over = true;
                        } else {
                            data.extend_from_slice(d);
                        }
                    })
                    .map_err(|e| Error::msg(Kind::BadRequest, e.to_string()))?;
                if over {
                    return Err(too_large());
                }
                pos += used;
                if dec.is_done() {
                    return Ok(Body::Decoded {
                        data,
                        wire_len: pos,
                    });
                }
                // Framing overhead (sizes, extensions) is bounded too: a
                // body of tiny chunks with long extensions must not make
                // the buffer grow without limit.
                if pos - head.len > 2 * limits.max_body_bytes + 64 * 1024 {
                    return Err(too_large());
                }
                read_more(cin, timer, deadline()).await?;
            }
        }
    }
}

async fn send_continue(wr: &mut ClientOut) -> Result<(), Error> {
    let (res, _) = wr.write_all(CONTINUE_100).await;
    res.map(|_| ())
        .map_err(|_| Error::new(Kind::BadRequest, "client closed the connection"))
}

async fn read_more(
    cin: &mut ClientIn,
    timer: &mut ConnTimer,
    deadline: Instant,
) -> Result<(), Error> {
    let left = deadline.saturating_duration_since(Instant::now());
    match timer
        .within(left.max(Duration::from_millis(1)), cin.complete())
        .await
    {
        Ok(Ok(0)) | Ok(Err(_)) => Err(Error::new(
            Kind::BadRequest,
            "client closed the connection before the body was complete",
        )),
        Ok(Ok(_)) => Ok(()),
        Err(_) => Err(Error::new(
            Kind::RequestTimeout,
            "request body not received in time",
        )),
    }
}
