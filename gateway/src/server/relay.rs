//! The response side of a proxied request: get an upstream connection,
//! send the request, relay the answer.
//!
//! Invariants:
//! - Every upstream read is written to the client before the next read:
//!   no buffering, so SSE events reach the client with no added delay. The
//!   one exception is the rewrite mode of the accountant (see
//!   `account.rs`), which holds the bytes of an event until it is complete.
//! - In the normal (raw) mode the client gets the upstream bytes as they
//!   are, chunk framing included; the accountant only looks at the payload.
//! - An upstream connection is pooled only after a response that ended
//!   exactly at its framing boundary with keep-alive allowed.
//! - A pooled connection that fails before any response byte after idling
//!   for a while (the server closed it at its keep-alive timeout) is
//!   retried on another connection; nothing was processed upstream. One
//!   that fails that way moments after its last use means the server is
//!   gone: failover decides at once, and this worker's other idle
//!   connections to it are dropped.

use std::time::{Duration, Instant};

use monoio::io::AsyncWriteRentExt;

use super::account::Accountant;
use super::conn::ClientOut;
use super::proxy::{Done, Prepared, RouteLog};
use super::timer::ConnTimer;
use super::worker::Worker;
use crate::error::{Error, Kind};
use crate::failover::{Class, Outcome};
use crate::http::chunked::{ChunkedDecoder, LAST_CHUNK, begin_chunk, encode_chunk, end_chunk};
use crate::http::response::Digits;
use crate::upstream::response::{self, Added, ClientFraming, Framing, ResponseHead};
use crate::upstream::{Take, UpConn};

/// Largest upstream response head accepted.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Upstream read buffer size.
const READ_BUF: usize = super::spares::READ_SIZE;
/// Read buffer size once a body read has filled the buffer (the upstream
/// sends faster than the relay goes: a fast model, a cached answer, a slow
/// client). Fewer, larger reads and writes cut the CPU per 1,000-event
/// stream by a quarter (measured, `benches/RESULTS.md`); a stream arriving
/// at model speed never fills 16 KiB and keeps the small buffer.
const BACKLOG_READ_BUF: usize = 64 * 1024;
/// How soon after sending a pooled connection must fail to count as
/// stale (closed by the server while idle) rather than as a failure.
const STALE_WINDOW: Duration = Duration::from_millis(250);
/// How long a pooled connection must have been idle for its early death
/// to count as stale. Servers close idle keep-alive connections after
/// seconds (uvicorn, which vLLM runs on, 5 s; Node 5 s; nginx 75 s); a
/// connection that dies sooner after its last answer says its server
/// went away.
const STALE_MIN_IDLE: Duration = Duration::from_secs(1);
/// Stale pooled connections tried before insisting on a new one.
const STALE_RETRIES: u32 = 3;

enum HeadError {
    /// The connection closed or reset before any response byte.
    ClosedEarly(Error),
    /// Any other failure.
    Fail(Error),
}

/// How body bytes reach the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Emit {
    /// Upstream bytes as they are.
    Raw,
    /// The payload (as the accountant passes it on), chunk-framed by the
    /// gateway when `chunked`, else raw until close.
    Payload { chunked: bool },
}

/// What the failover loop tells one attempt.
pub struct Attempt<'a> {
    /// 1 for the first attempt.
    pub number: u32,
    /// Cut the wait for the response head here (a fallback condition
    /// on latency would take over anyway, or the model's deadline ends).
    pub first_byte_limit: Option<Duration>,
    /// `first_byte_limit` is the rest of the model's deadline.
    pub deadline_cut: bool,
    /// Asked when the attempt failed before anything reached the client:
    /// true when another target will be tried (this response is dropped).
    pub decide: &'a mut dyn FnMut(&Outcome) -> bool,
    /// Called with the status of the response that will be relayed, as
    /// soon as its head is in (the breaker learns the outcome before the
    /// client has the whole answer).
    pub on_head: &'a mut dyn FnMut(u16),
    /// Headers added to the client response (`x-ratelimit-*`).
    pub headers: &'a [(&'static [u8], Vec<u8>)],
    /// The connection's timer, for the waits on the upstream.
    pub timer: &'a mut ConnTimer,
}

/// An attempt that ended before anything reached the client.
pub struct Failure {
    /// The error the client gets if nothing else is tried.
    pub err: Error,
    /// Status, latency, class.
    pub outcome: Outcome,
    /// `Retry-After` of a 429.
    pub retry_after: Option<Duration>,
    /// `decide` chose to try another target.
    pub retry: bool,
}

fn fail(
    err: Error,
    class: Class,
    started: Instant,
    decide: &mut dyn FnMut(&Outcome) -> bool,
) -> Failure {
    let outcome = Outcome {
        status: err.status(),
        latency: started.elapsed(),
        class,
    };
    let retry = decide(&outcome);
    Failure {
        err,
        outcome,
        retry_after: None,
        retry,
    }
}

/// The process behind a pooled connection went away (a crash, a
/// restart): the connection died moments after its last answer. Failover
/// decides at once, as for any failure: a new connection to a process
/// that is still exiting would be accepted by its listener and wait for
/// it to close, which takes as long as the kernel needs to tear the
/// process down (milliseconds here, far longer for a model server with
/// gigabytes mapped). Returns the failure when another target will be
/// tried; `None` when there is nowhere else to go, and the request is
/// sent once more on a new connection (it got no answer, so resending
/// is safe).
fn gone(err: Error, started: Instant, decide: &mut dyn FnMut(&Outcome) -> bool) -> Option<Failure> {
    let f = fail(err, Class::Reset, started, decide);
    f.retry.then_some(f)
}

/// Sends the request and relays the response.
#[expect(
    clippy::too_many_arguments,
    reason = "the per-request pieces live in different owners (connection, worker, accountant); a struct would only rename them"
)]
pub async fn relay(
    w: &Worker,
    wr: &mut ClientOut,
    p: Prepared,
    client_minor: u8,
    close_after: bool,
    rid: &[u8],
    log: &mut RouteLog,
    acct: &mut Accountant,
    at: Attempt<'_>,
) -> Result<Done, Failure> {
    let decide = at.decide;
    let timer = at.timer;
    let up = &w.shared.upstreams[p.upstream as usize];
    let cfg = &up.cfg;
    let started = Instant::now();
    let mut request = p.request;
    let mut stale = 0;
    let mut fresh_only = false;
    let (conn, mut buf, head) = loop {
        let taken = if stale < STALE_RETRIES && !fresh_only {
            w.pool
                .borrow_mut()
                .take(p.upstream, cfg.idle_timeout, STALE_MIN_IDLE)
        } else {
            Take::Empty
        };
        let (pooled, idle) = match taken {
            Take::Idle(c, idle) => (Some(c), Some(idle)),
            Take::Empty => (None, None),
            Take::Gone => {
                let e = Error::msg(
                    Kind::UpstreamProtocol,
                    format!(
                        "upstream `{}` closed an idle connection moments after its last answer",
                        cfg.name
                    ),
                );
                match gone(e, started, decide) {
                    Some(f) => return Err(f),
                    None => fresh_only = true,
                }
                continue;
            }
        };
        let sent_at = if stale == 0 { started } else { Instant::now() };
        let mut conn = match pooled {
            Some(c) => c,
            // Boxed: a connect (and TLS handshake) future is large and
            // holds a 128-byte-aligned monoio timer; inline, every request's
            // boxed proxy future would carry both (server/timer.rs says
            // why the alignment costs). Only a new connection pays this.
            None => match Box::pin(UpConn::connect(up)).await {
                Ok(c) => c,
                Err(e) => {
                    let class = match e.kind {
                        Kind::UpstreamTimeout => Class::ConnectTimeout,
                        Kind::UpstreamTls => Class::TlsError,
                        _ => Class::ConnectRefused,
                    };
                    return Err(fail(e, class, started, decide));
                }
            },
        };
        log.tcp_port = conn.port();
        log.tcp_retrans0 = w.shared.health.tcp(log.tcp_port).map_or(0, |t| t.1);
        let (res, back) = conn.write_all(request).await;
        request = back;
        let early = match res {
            Ok(_) => {
                let wait = at
                    .first_byte_limit
                    .map_or(cfg.response_timeout, |l| l.min(cfg.response_timeout));
                let head_buf = w.spares.take(READ_BUF);
                match read_head(&mut conn, timer, wait, &up.cfg.name, head_buf).await {
                    Ok((buf, head)) => break (conn, buf, head),
                    // One that dies later may have been working on the
                    // request: a failed attempt, failover decides.
                    Err(HeadError::ClosedEarly(e)) if sent_at.elapsed() < STALE_WINDOW => e,
                    Err(HeadError::ClosedEarly(e) | HeadError::Fail(e)) => {
                        let by_deadline = at.deadline_cut && wait < cfg.response_timeout;
                        let class = match e.kind {
                            Kind::UpstreamTimeout if by_deadline => Class::TotalTimeout,
                            Kind::UpstreamTimeout => Class::FirstByteTimeout,
                            _ => Class::Reset,
                        };
                        return Err(fail(e, class, started, decide));
                    }
                }
            }
            Err(e) => upstream_io(up.cfg.name.as_ref(), "write failed", &e),
        };
        // The connection failed before any response byte.
        match idle {
            // A new connection: the upstream is failing.
            None => return Err(fail(early, Class::Reset, started, decide)),
            // Idle long enough for the server to have closed it (its
            // keep-alive timeout): not a failure, resend.
            Some(idle) if idle >= STALE_MIN_IDLE => stale += 1,
            // Used moments ago: the process behind it is gone.
            Some(_) => {
                w.pool.borrow_mut().purge(p.upstream);
                match gone(early, started, decide) {
                    Some(f) => return Err(f),
                    None => fresh_only = true,
                }
            }
        }
    };
    w.spares.give(request);
    log.ttfb = Some(started.elapsed());
    let status = head.status;
    let class = Class::of_status(status, &buf[head.len..]);
    if class == Class::Auth {
        // The provider refused the gateway's key: the client can do
        // nothing about it, and no other target would fix it.
        return Err(Failure {
            err: Error::msg(
                Kind::UpstreamAuth,
                format!(
                    "upstream `{}` rejected the gateway's credentials ({status}); check the key in api_key_env for this upstream",
                    cfg.name
                ),
            ),
            outcome: Outcome {
                status,
                latency: started.elapsed(),
                class,
            },
            retry_after: None,
            retry: false,
        });
    }
    if class.may_fail_over() {
        let outcome = Outcome {
            status,
            latency: started.elapsed(),
            class,
        };
        if decide(&outcome) {
            // Dropped unread: the connection is closed, not pooled.
            return Err(Failure {
                err: Error::msg(
                    Kind::UpstreamProtocol,
                    format!("upstream `{}` answered {status}", cfg.name),
                ),
                outcome,
                retry_after: retry_after(&buf, &head),
                retry: true,
            });
        }
    }
    (at.on_head)(status);
    let rewrite = acct.start(status, p.strip_usage, p.add_usage);

    let mut out = w.spares.take(1024 + buf.len());
    let prompt_value = acct.prompt_estimate().map(Digits::new);
    let attempts_value = Digits::new(u64::from(at.number));
    // At most four headers of the gateway's own, on the stack.
    let mut route_headers: [(&[u8], &[u8]); 4] = [(&[], &[]); 4];
    let mut n = 0;
    let mut add = |name: &'static [u8], value| {
        route_headers[n] = (name, value);
        n += 1;
    };
    add(b"x-tollgate-attempts", attempts_value.as_bytes());
    if w.cfg().server.expose_route_headers {
        add(b"x-tollgate-upstream", cfg.name.as_bytes());
        add(b"x-tollgate-model", p.served.as_bytes());
    }
    if let Some(v) = &prompt_value {
        add(b"x-tollgate-prompt-tokens", v.as_bytes());
    }
    let added = Added {
        request_id: rid,
        route: &route_headers[..n],
        extra: at.headers,
        close: close_after,
        rechunk: rewrite,
    };
    let framing = response::client_head(&mut out, &buf, &head, client_minor, &added);
    let emit = match framing {
        ClientFraming::Passthrough | ClientFraming::Close => Emit::Raw,
        ClientFraming::Dechunk => Emit::Payload { chunked: false },
        ClientFraming::Rechunk => Emit::Payload { chunked: true },
    };
    let mut body = BodyState::new(head.framing);
    if let (Framing::Length(n), Emit::Raw) = (head.framing, emit)
        && let Some(whole) = usize::try_from(n)
            .ok()
            .and_then(|n| buf.get(head.len..)?.get(..n))
    {
        acct.whole_body(whole);
    }
    let at = begin_payload(&mut out, emit);
    let fed = match feed(&mut body, acct, emit, &buf[head.len..], &mut out) {
        Ok(f) => f,
        // Nothing reached the client yet: an answerable (and retryable)
        // upstream failure, not a silent close.
        Err(e) => return Err(fail(e, Class::Reset, started, decide)),
    };
    match emit {
        Emit::Raw => out.extend_from_slice(&buf[head.len..head.len + fed.forward]),
        Emit::Payload { chunked } => {
            if fed.done {
                acct.end(Some(&mut out));
            }
            end_payload(&mut out, at, chunked, fed.done);
        }
    }
    if fed.done && emit == Emit::Raw {
        acct.end(None);
    }
    let reusable = head.keep_alive && head.framing != Framing::Close;
    let mut conn = Some(conn);
    // The upstream connection goes back to the pool as soon as its body
    // is complete, before the last client write: the next request (maybe
    // already waiting on another client connection) can use it at once.
    let mut complete = fed.done;
    // The last read filled the buffer: more was waiting.
    let mut backlog = buf.len() == buf.capacity();
    if complete && reusable && !fed.extra {
        release(w, p.upstream, &mut conn);
    }
    let (res, back) = wr.write_all(out).await;
    out = back;
    if res.is_err() {
        return Ok(Done::Aborted { status: 499 });
    }
    while !complete {
        buf.clear();
        if backlog && buf.capacity() < BACKLOG_READ_BUF {
            let larger = w.spares.take(BACKLOG_READ_BUF);
            w.spares.give(std::mem::replace(&mut buf, larger));
        }
        let Some(up_conn) = conn.as_mut() else { break };
        let read = timer.within(cfg.read_timeout, up_conn.read_more(buf)).await;
        let n = match read {
            Ok((Ok(n), b)) => {
                buf = b;
                backlog = n == buf.capacity();
                n
            }
            Ok((Err(_), _)) | Err(_) => {
                cut_stream(wr, emit, &body, acct).await;
                return Ok(Done::Aborted { status });
            }
        };
        out.clear();
        if n == 0 {
            if head.framing != Framing::Close {
                // Upstream closed before the end of its body: a stream
                // gets a clean SSE error end where the framing allows;
                // anything else a truncated (unterminated) body.
                cut_stream(wr, emit, &body, acct).await;
                return Ok(Done::Aborted { status });
            }
            // Close-delimited body: EOF is its end.
            match emit {
                Emit::Raw => acct.end(None),
                Emit::Payload { chunked } => {
                    let at = begin_payload(&mut out, emit);
                    acct.end(Some(&mut out));
                    end_payload(&mut out, at, chunked, true);
                    let (res, back) = wr.write_all(out).await;
                    out = back;
                    if res.is_err() {
                        return Ok(Done::Aborted { status: 499 });
                    }
                }
            }
            break;
        }
        let at = begin_payload(&mut out, emit);
        let fed = match feed(&mut body, acct, emit, &buf, &mut out) {
            Ok(f) => f,
            Err(_) => return Ok(Done::Aborted { status }),
        };
        complete = fed.done;
        if complete && reusable && !fed.extra {
            release(w, p.upstream, &mut conn);
        }
        let res = match emit {
            Emit::Raw => {
                if fed.done {
                    acct.end(None);
                }
                buf.truncate(fed.forward);
                let (res, back) = wr.write_all(buf).await;
                buf = back;
                res
            }
            Emit::Payload { chunked } => {
                if fed.done {
                    acct.end(Some(&mut out));
                }
                if !end_payload(&mut out, at, chunked, fed.done) && !fed.done {
                    continue;
                }
                let (res, back) = wr.write_all(out).await;
                out = back;
                res
            }
        };
        if res.is_err() {
            return Ok(Done::Aborted { status: 499 });
        }
    }
    w.spares.give(buf);
    w.spares.give(out);
    Ok(Done::Relayed {
        status,
        close: close_after || framing == ClientFraming::Dechunk || framing == ClientFraming::Close,
    })
}

/// Returns a connection whose response ended cleanly to the pool.
fn release(w: &Worker, up: crate::route::UpstreamId, conn: &mut Option<UpConn>) {
    if let Some(c) = conn.take() {
        let max_idle = w.shared.upstreams[up as usize].cfg.max_idle;
        w.pool.borrow_mut().put(up, c, max_idle);
    }
}

/// Feeds one read to the framing tracker, passing payload to the
/// accountant (and, in payload mode, writing what to send to `out`).
fn feed(
    body: &mut BodyState,
    acct: &mut Accountant,
    emit: Emit,
    input: &[u8],
    out: &mut Vec<u8>,
) -> Result<Fed, Error> {
    match emit {
        Emit::Raw => body.feed(input, |p| acct.payload(p, None)),
        Emit::Payload { .. } => {
            // The read's payload is copied to `out` as one run, then
            // looked at (and rewritten) there in one pass.
            let at = acct.open_payload(out);
            let fed = body.feed(input, |p| out.extend_from_slice(p));
            acct.close_payload(out, at);
            fed
        }
    }
}

/// In payload mode, starts the client's copy of one read's payload in
/// `out` (a chunk the payload is written into directly when `chunked`);
/// returns where it starts.
fn begin_payload(out: &mut Vec<u8>, emit: Emit) -> usize {
    match emit {
        Emit::Payload { chunked: true } => begin_chunk(out),
        _ => out.len(),
    }
}

/// Ends what [`begin_payload`] started (and the body, with the
/// last-chunk marker, when `done`); returns whether any payload was
/// written.
fn end_payload(out: &mut Vec<u8>, at: usize, chunked: bool, done: bool) -> bool {
    let wrote = if chunked {
        end_chunk(out, at) > 0
    } else {
        out.len() > at
    };
    if chunked && done {
        out.extend_from_slice(LAST_CHUNK);
    }
    wrote
}

/// The SSE event that ends a stream the upstream cut.
const CUT_EVENT: &[u8] = b"data: {\"error\":{\"message\":\"the upstream connection was lost mid-stream\",\"type\":\"upstream_error\",\"param\":null,\"code\":\"upstream_stream_cut\"}}\n\n";

/// Ends a cut stream cleanly for the client: an OpenAI-shaped error event,
/// then the end of the chunked body. Only possible when the gateway frames
/// the body or the upstream's framing stopped between two chunks; otherwise
/// the connection is just closed (the client sees an unterminated body).
async fn cut_stream(wr: &mut ClientOut, emit: Emit, body: &BodyState, acct: &Accountant) {
    let clean = match emit {
        // Rewrite mode forwards whole events only, in the gateway's chunks.
        Emit::Payload { chunked } => chunked,
        Emit::Raw => {
            body.framing == Framing::Chunked
                && body.chunked.at_chunk_start()
                && acct.at_event_boundary()
        }
    };
    if !(acct.is_stream() && clean) {
        return;
    }
    let mut out = Vec::with_capacity(CUT_EVENT.len() + 16);
    encode_chunk(&mut out, CUT_EVENT);
    out.extend_from_slice(LAST_CHUNK);
    let _ = wr.write_all(out).await;
}

/// `Retry-After` in seconds (the HTTP-date form is not used by LLM APIs).
fn retry_after(buf: &[u8], head: &ResponseHead) -> Option<Duration> {
    head.headers
        .iter()
        .find(|(n, _)| buf[n.clone()].eq_ignore_ascii_case(b"retry-after"))
        .and_then(|(_, v)| {
            std::str::from_utf8(&buf[v.clone()])
                .ok()?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .filter(|s| s.is_finite() && *s >= 0.0 && *s < 86_400.0)
        .map(Duration::from_secs_f64)
}

async fn read_head(
    conn: &mut UpConn,
    timer: &mut ConnTimer,
    timeout: Duration,
    name: &str,
    mut buf: Vec<u8>,
) -> Result<(Vec<u8>, ResponseHead), HeadError> {
    let work = async move {
        loop {
            let (res, b) = conn.read_more(buf).await;
            buf = b;
            match res {
                Ok(0) if buf.is_empty() => {
                    return Err(HeadError::ClosedEarly(Error::msg(
                        Kind::UpstreamProtocol,
                        format!("upstream `{name}` closed the connection without a response"),
                    )));
                }
                Ok(0) => {
                    return Err(HeadError::Fail(Error::msg(
                        Kind::UpstreamProtocol,
                        format!("upstream `{name}` closed the connection inside the response head"),
                    )));
                }
                Ok(_) => {}
                Err(e) if buf.is_empty() => {
                    return Err(HeadError::ClosedEarly(upstream_io(name, "read failed", &e)));
                }
                Err(e) => return Err(HeadError::Fail(upstream_io(name, "read failed", &e))),
            }
            loop {
                match response::parse(&buf) {
                    Ok(Some(h)) if (100..200).contains(&h.status) && h.status != 101 => {
                        // Interim response (100 Continue, 103 Early Hints): skip.
                        buf.drain(..h.len);
                    }
                    Ok(Some(h)) => return Ok((buf, h)),
                    Ok(None) => break,
                    Err(e) => return Err(HeadError::Fail(e)),
                }
            }
            if buf.len() > MAX_RESPONSE_HEAD {
                return Err(HeadError::Fail(Error::msg(
                    Kind::UpstreamProtocol,
                    format!(
                        "upstream `{name}` sent a response head over {MAX_RESPONSE_HEAD} bytes"
                    ),
                )));
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(READ_BUF);
            }
        }
    };
    match timer.within(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(HeadError::Fail(Error::msg(
            Kind::UpstreamTimeout,
            format!("upstream `{name}` sent no response within {timeout:?}"),
        ))),
    }
}

fn upstream_io(name: &str, what: &str, e: &std::io::Error) -> Error {
    Error::msg(
        Kind::UpstreamProtocol,
        format!("upstream `{name}`: {what}: {e}"),
    )
}

/// Tracks where the upstream body ends and hands out its payload.
struct BodyState {
    framing: Framing,
    remaining: u64,
    chunked: ChunkedDecoder,
}

/// Result of feeding one read.
struct Fed {
    /// Bytes of the input that belong to this body (to forward raw).
    forward: usize,
    /// The body is complete.
    done: bool,
    /// The input held bytes past the end of the body.
    extra: bool,
}

impl BodyState {
    fn new(framing: Framing) -> Self {
        BodyState {
            framing,
            remaining: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            chunked: ChunkedDecoder::new(),
        }
    }

    /// Feeds bytes read from upstream; `on_payload` gets the body payload
    /// (chunk framing removed) in order.
    fn feed(&mut self, input: &[u8], mut on_payload: impl FnMut(&[u8])) -> Result<Fed, Error> {
        Ok(match self.framing {
            Framing::Empty => Fed {
                forward: 0,
                done: true,
                extra: !input.is_empty(),
            },
            Framing::Length(_) => {
                let take = (input.len() as u64).min(self.remaining) as usize;
                self.remaining -= take as u64;
                if take > 0 {
                    on_payload(&input[..take]);
                }
                Fed {
                    forward: take,
                    done: self.remaining == 0,
                    extra: take < input.len(),
                }
            }
            Framing::Close => {
                if !input.is_empty() {
                    on_payload(input);
                }
                Fed {
                    forward: input.len(),
                    done: false,
                    extra: false,
                }
            }
            Framing::Chunked => {
                let used = self
                    .chunked
                    .feed(input, on_payload)
                    .map_err(|e| Error::msg(Kind::UpstreamProtocol, e.to_string()))?;
                Fed {
                    forward: used,
                    done: self.chunked.is_done(),
                    extra: used < input.len(),
                }
            }
        })
    }
}
