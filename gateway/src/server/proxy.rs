//! Proxied requests: body -> model -> route -> target -> upstream request,
//! then the upstream response relayed to the client as it arrives.
//!
//! Data path invariants:
//! - The upstream request is one buffer (head + body), one write.
//! - Every upstream read is written to the client before the next read:
//!   no buffering, so SSE events reach the client with no added delay.
//! - While the request is in flight, the client connection's next read is
//!   pending (see `client.rs`); EOF there cancels the upstream request and
//!   the upstream connection is dropped, never pooled.
//! - An upstream connection is pooled only after a response that ended
//!   exactly at its framing boundary with keep-alive allowed.
//! - A pooled connection that fails before any response byte (the server
//!   closed it while idle) is retried on another connection; nothing was
//!   processed upstream in that case.

use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::io::AsyncWriteRentExt;

use super::client::ClientIn;
use super::conn::{Body, ClientOut};
use super::worker::Worker;
use crate::error::{Error, Kind};
use crate::http::RequestHead;
use crate::http::chunked::ChunkedDecoder;
use crate::route::rewrite::{json_string, splice};
use crate::route::{ExtractError, UpstreamId, extract};
use crate::upstream::UpConn;
use crate::upstream::request::{Forward, build};
use crate::upstream::response::{self, Added, ClientFraming, Framing, ResponseHead};

/// The OpenAI endpoints routed by model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/chat/completions`
    ChatCompletions,
    /// `/v1/completions`
    Completions,
    /// `/v1/embeddings`
    Embeddings,
}

impl Endpoint {
    /// Maps a request path.
    pub fn from_path(path: &[u8]) -> Option<Self> {
        match path {
            b"/v1/chat/completions" => Some(Endpoint::ChatCompletions),
            b"/v1/completions" => Some(Endpoint::Completions),
            b"/v1/embeddings" => Some(Endpoint::Embeddings),
            _ => None,
        }
    }

    /// Path below the upstream's API prefix.
    pub fn suffix(self) -> &'static [u8] {
        match self {
            Endpoint::ChatCompletions => b"/chat/completions",
            Endpoint::Completions => b"/completions",
            Endpoint::Embeddings => b"/embeddings",
        }
    }
}

/// How a request ended, for the connection loop.
pub enum Done {
    /// A local response is in the output buffer.
    Local,
    /// The upstream response was relayed completely.
    Relayed {
        /// Status sent.
        status: u16,
        /// The client connection must close.
        close: bool,
    },
    /// The exchange broke after the response started, or the client left;
    /// the connection is closed.
    Aborted {
        /// Status sent, or 499 when the client left first.
        status: u16,
    },
}

/// What the access log says about the route.
#[derive(Debug, Default)]
pub struct RouteLog {
    /// Requested model.
    pub model: String,
    /// Upstream name.
    pub upstream: Option<Arc<str>>,
    /// Time to the upstream response head.
    pub ttfb: Option<Duration>,
}

/// Result of `handle`: an error carries whether the connection must close.
pub type Handled = Result<Done, (Error, bool)>;

struct Prepared {
    upstream: UpstreamId,
    request: Vec<u8>,
    served: Arc<str>,
}

/// Handles a proxied request whose body has been read. Consumes the
/// request's bytes from `cin` on every path.
#[allow(clippy::too_many_arguments)]
pub async fn handle(
    w: &Worker,
    cin: &mut ClientIn,
    wr: &mut ClientOut,
    head: &RequestHead,
    body: Body,
    ep: Endpoint,
    rid: &[u8],
    keep_alive: bool,
    log: &mut RouteLog,
) -> Handled {
    let prepared = prepare(w, cin.buf(), head, &body, ep, rid, log);
    cin.consume(body.request_len());
    let p = prepared.map_err(|e| (e, false))?;
    let fut = pin!(relay(w, wr, p, head.minor, !keep_alive, rid, log));
    let mut fut = fut;
    if cin.buf().is_empty() && !cin.is_closed() {
        monoio::select! {
            r = &mut fut => return r,
            r = cin.complete() => {
                if !matches!(r, Ok(n) if n > 0) {
                    // Client gone: dropping the relay drops the upstream
                    // connection and cancels its I/O.
                    return Ok(Done::Aborted { status: 499 });
                }
                // Pipelined bytes: keep them for later, finish unwatched.
            }
        }
    }
    fut.await
}

fn prepare(
    w: &Worker,
    buf: &[u8],
    head: &RequestHead,
    body: &Body,
    ep: Endpoint,
    rid: &[u8],
    log: &mut RouteLog,
) -> Result<Prepared, Error> {
    let bytes = body.bytes(buf);
    let info = extract(bytes).map_err(extract_error)?;
    log.model.push_str(&info.model);
    let table = &w.cfg().routes;
    let Some(route_id) = table.lookup(&info.model) else {
        return Err(Error::msg(
            Kind::UnknownModel,
            format!(
                "The model `{}` does not exist or is not served by this gateway. GET /v1/models lists the available models.",
                info.model
            ),
        ));
    };
    let idx = w.picker.borrow_mut().pick(table, route_id);
    let target = &table.route(route_id).targets[idx];
    let up = &w.shared.upstreams[target.upstream as usize];
    log.upstream = Some(up.cfg.name.clone());
    // The name sent upstream: the target's rewrite, else the route's own
    // name for exact routes (so aliases reach the provider under the real
    // name), else what the client asked for (globs pass names through).
    let route = table.route(route_id);
    let served: Arc<str> = match (&target.model, route.is_glob) {
        (Some(m), _) => m.clone(),
        (None, false) => route.name.clone(),
        (None, true) => Arc::from(info.model.as_ref()),
    };
    let token = (*served != *info.model).then(|| json_string(&served));
    let parts = splice(
        bytes,
        info.model_span.clone(),
        token.as_deref().map(str::as_bytes),
    );
    let mut request = Vec::new();
    build(
        &mut request,
        up,
        &Forward {
            buf,
            head,
            endpoint: ep.suffix(),
            body: parts,
            request_id: rid,
        },
    );
    Ok(Prepared {
        upstream: target.upstream,
        request,
        served,
    })
}

fn extract_error(e: ExtractError) -> Error {
    let kind = match e {
        ExtractError::Empty => Kind::EmptyBody,
        ExtractError::InvalidJson { .. } => Kind::InvalidJson,
        ExtractError::NotObject => Kind::NotObject,
        ExtractError::MissingModel => Kind::MissingModel,
        ExtractError::ModelNotString => Kind::ModelNotString,
        ExtractError::DuplicateModel => Kind::DuplicateModel,
    };
    Error::msg(kind, e.to_string())
}

/// Largest upstream response head accepted.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Upstream read buffer size.
const READ_BUF: usize = 16 * 1024;
/// Pooled connections tried before insisting on a new one.
const STALE_RETRIES: u32 = 3;

enum HeadError {
    /// The connection closed or reset before any response byte.
    ClosedEarly(Error),
    /// Any other failure.
    Fail(Error),
}

async fn relay(
    w: &Worker,
    wr: &mut ClientOut,
    p: Prepared,
    client_minor: u8,
    close_after: bool,
    rid: &[u8],
    log: &mut RouteLog,
) -> Handled {
    let up = &w.shared.upstreams[p.upstream as usize];
    let cfg = &up.cfg;
    let started = Instant::now();
    let mut request = p.request;
    let mut stale = 0;
    let (mut conn, mut buf, head) = loop {
        let pooled = if stale < STALE_RETRIES {
            w.pool.borrow_mut().take(p.upstream, cfg.idle_timeout)
        } else {
            None
        };
        let reused = pooled.is_some();
        let mut conn = match pooled {
            Some(c) => c,
            None => UpConn::connect(up).await.map_err(|e| (e, false))?,
        };
        let (res, back) = conn.write_all(request).await;
        request = back;
        if let Err(e) = res {
            if reused {
                stale += 1;
                continue;
            }
            return Err((upstream_io(up.cfg.name.as_ref(), "write failed", &e), false));
        }
        match read_head(&mut conn, cfg.response_timeout, &up.cfg.name).await {
            Ok((buf, head)) => break (conn, buf, head),
            Err(HeadError::ClosedEarly(_)) if reused => stale += 1,
            Err(HeadError::ClosedEarly(e) | HeadError::Fail(e)) => return Err((e, false)),
        }
    };
    log.ttfb = Some(started.elapsed());
    let status = head.status;

    let mut out = Vec::with_capacity(1024 + buf.len());
    let route: [(&[u8], &[u8]); 2] = [
        (b"x-tollgate-upstream", cfg.name.as_bytes()),
        (b"x-tollgate-model", p.served.as_bytes()),
    ];
    let added = Added {
        request_id: rid,
        route: if w.cfg().server.expose_route_headers {
            &route
        } else {
            &[]
        },
        close: close_after,
    };
    let framing = response::client_head(&mut out, &buf, &head, client_minor, &added);
    let mut body = BodyState::new(head.framing, framing);
    let fed = match body.feed(&buf[head.len..], &mut out) {
        Ok(f) => f,
        Err(_) => return Ok(Done::Aborted { status }),
    };
    let mut extra = fed.extra;
    let mut complete = fed.done;
    let (res, back) = wr.write_all(out).await;
    out = back;
    if res.is_err() {
        return Ok(Done::Aborted { status: 499 });
    }
    while !complete {
        buf.clear();
        let read = monoio::time::timeout(cfg.read_timeout, conn.read_more(buf)).await;
        let n = match read {
            Ok((Ok(n), b)) => {
                buf = b;
                n
            }
            Ok((Err(_), _)) | Err(_) => return Ok(Done::Aborted { status }),
        };
        if n == 0 {
            if head.framing == Framing::Close {
                break;
            }
            // Upstream closed before the end of its body: the client sees
            // a truncated (and, if chunked, unterminated) body.
            return Ok(Done::Aborted { status });
        }
        out.clear();
        let fed = match body.feed(&buf, &mut out) {
            Ok(f) => f,
            Err(_) => return Ok(Done::Aborted { status }),
        };
        extra |= fed.extra;
        complete = fed.done;
        let res = if framing == ClientFraming::Dechunk {
            let (res, back) = wr.write_all(out).await;
            out = back;
            res
        } else {
            buf.truncate(fed.forward);
            let (res, back) = wr.write_all(buf).await;
            buf = back;
            res
        };
        if res.is_err() {
            return Ok(Done::Aborted { status: 499 });
        }
    }
    if head.keep_alive && !extra && head.framing != Framing::Close {
        w.pool.borrow_mut().put(p.upstream, conn, cfg.max_idle);
    }
    Ok(Done::Relayed {
        status,
        close: close_after || framing != ClientFraming::Passthrough,
    })
}

async fn read_head(
    conn: &mut UpConn,
    timeout: Duration,
    name: &str,
) -> Result<(Vec<u8>, ResponseHead), HeadError> {
    let work = async {
        let mut buf = Vec::with_capacity(READ_BUF);
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
    match monoio::time::timeout(timeout, work).await {
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

/// Tracks where the upstream body ends.
struct BodyState {
    framing: Framing,
    client: ClientFraming,
    remaining: u64,
    chunked: ChunkedDecoder,
}

/// Result of feeding one read.
struct Fed {
    /// Bytes of the input to forward as they are (passthrough modes).
    forward: usize,
    /// The body is complete.
    done: bool,
    /// The input held bytes past the end of the body.
    extra: bool,
}

impl BodyState {
    fn new(framing: Framing, client: ClientFraming) -> Self {
        BodyState {
            framing,
            client,
            remaining: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            chunked: ChunkedDecoder::new(),
        }
    }

    /// Feeds bytes read from upstream. In passthrough modes, the first
    /// `forward` bytes of `input` are to be sent as they are, and on the
    /// first call (when `out` holds the head) they are appended to `out`;
    /// in dechunk mode the payload is appended to `out`.
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Fed, Error> {
        let head_pending = !out.is_empty();
        let fed = match self.framing {
            Framing::Empty => Fed {
                forward: 0,
                done: true,
                extra: !input.is_empty(),
            },
            Framing::Length(_) => {
                let take = (input.len() as u64).min(self.remaining) as usize;
                self.remaining -= take as u64;
                Fed {
                    forward: take,
                    done: self.remaining == 0,
                    extra: take < input.len(),
                }
            }
            Framing::Close => Fed {
                forward: input.len(),
                done: false,
                extra: false,
            },
            Framing::Chunked => {
                let dechunk = self.client == ClientFraming::Dechunk;
                let used = self
                    .chunked
                    .feed(input, |d| {
                        if dechunk {
                            out.extend_from_slice(d);
                        }
                    })
                    .map_err(|e| Error::msg(Kind::UpstreamProtocol, e.to_string()))?;
                if dechunk {
                    return Ok(Fed {
                        forward: 0,
                        done: self.chunked.is_done(),
                        extra: used < input.len(),
                    });
                }
                Fed {
                    forward: used,
                    done: self.chunked.is_done(),
                    extra: used < input.len(),
                }
            }
        };
        if head_pending {
            out.extend_from_slice(&input[..fed.forward]);
        }
        Ok(fed)
    }
}
