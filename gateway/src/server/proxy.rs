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

use super::account::Accountant;
use super::client::ClientIn;
use super::conn::{Body, ClientOut};
use super::relay::{Attempt, relay};
use super::timer::ConnTimer;
use super::worker::Worker;
use crate::auth::KeyEntry;
use crate::error::{Error, Kind};
use crate::failover::plan::{Candidates, Pick};
use crate::failover::{Class, Effect, Outcome, Transition, now_ms};
use crate::http::RequestHead;
use crate::limits::period::wall_ms;
use crate::limits::{Admission, Demand, Kind as LimitKind, Refusal, Refused};
use crate::route::rewrite::{Edit, StreamUsage, json_string, splice, stream_usage};
use crate::route::{BodyInfo, ExtractError, RouteId, UpstreamId, extract};
use crate::text::Text;
use crate::tokens::Encoding;
use crate::upstream::request::{Forward, build, room};
use crate::usage::UsageRecord;

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
    /// The request id as text (what the usage record and a synthesised
    /// usage chunk carry), made once per request.
    pub id: Text,
    /// Requested model.
    pub model: Text,
    /// Upstream name.
    pub upstream: Option<Arc<str>>,
    /// Time to the upstream response head.
    pub ttfb: Option<Duration>,
    /// Local port of the upstream connection (0 unless eBPF maps it).
    pub tcp_port: u16,
    /// Its retransmit count when the request was written.
    pub tcp_retrans0: u32,
}

/// Result of `handle`: an error carries whether the connection must close.
pub type Handled = Result<Done, (Error, bool)>;

/// A request ready to send, with what the response side needs to know.
pub struct Prepared {
    /// Target upstream.
    pub upstream: UpstreamId,
    /// The full upstream request bytes.
    pub request: Vec<u8>,
    /// Model name sent upstream.
    pub served: Arc<str>,
    /// Streaming request.
    pub stream: bool,
    /// Drop the usage-only chunk (the gateway asked for usage, not the client).
    pub strip_usage: bool,
    /// Add an estimated usage chunk if the provider sends none (the client asked).
    pub add_usage: bool,
}

/// The request as kept for attempts after the first (only when the route
/// has more than one candidate): the client buffer is reused for the next
/// request once the first attempt is sent.
struct Kept {
    buf: Vec<u8>,
    body: Vec<u8>,
}

/// Handles a proxied request whose body has been read. Consumes the
/// request's bytes from `cin` on every path; tries targets and fallbacks
/// while nothing was sent to the client; emits the usage record.
#[expect(
    clippy::too_many_arguments,
    reason = "the per-request pieces live in different owners (connection, worker, accountant); a struct would only rename them"
)]
pub async fn handle(
    w: &Worker,
    cin: &mut ClientIn,
    wr: &mut ClientOut,
    head: &RequestHead,
    body: Body,
    ep: Endpoint,
    rid: &[u8],
    keep_alive: bool,
    started: Instant,
    log: &mut RouteLog,
    timer: &mut ConnTimer,
) -> Handled {
    let table = &w.cfg().routes;
    log.id = Text::new(&id_text(rid));
    let key = match w.shared.auth.authenticate(cin.buf(), &head.headers) {
        Ok(k) => k,
        Err(e) => {
            cin.consume(body.request_len());
            return Err((e, false));
        }
    };
    let info = extract(body.bytes(cin.buf())).map_err(extract_error);
    let first = info
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|i| route(w, i, log))
        .and_then(|r| {
            permit(key.as_deref(), table.route(r.0), log)
                .inspect_err(|_| w.shared.auth.metrics.model_not_allowed())
                .map(|()| r)
        });
    let (route_id, idx) = match first {
        Ok(r) => r,
        Err(e) => {
            cin.consume(body.request_len());
            return Err((e, false));
        }
    };
    let route_cfg = table.route(route_id);
    let scopes = key
        .as_ref()
        .map_or(Vec::new(), |k| k.scopes(&route_cfg.name));
    // Output the client allows, reserved against token and money limits.
    let counts_tokens = scopes
        .iter()
        .any(|c| c.windows.iter().any(|(k, _)| *k != LimitKind::Requests));
    let out_cap = if counts_tokens {
        crate::limits::output_cap(body.bytes(cin.buf()))
    } else {
        0
    };
    let mut cands = Candidates::new(table, route_id, idx);
    let Some(mut pick) = cands.first(table, now_ms()) else {
        cin.consume(body.request_len());
        return Err((
            Error::msg(
                Kind::NoHealthyTarget,
                format!(
                    "every target of `{}` is unavailable (circuit breakers open) and no fallback applies",
                    log.model
                ),
            ),
            false,
        ));
    };
    let multi = route_cfg.targets.len() > 1 || !route_cfg.fallbacks.is_empty();
    let kept = multi.then(|| Kept {
        buf: cin.buf()[..head.len].to_vec(),
        body: body.bytes(cin.buf()).to_vec(),
    });
    let first = match &info {
        Ok(i) => prepare(
            w,
            cin.buf(),
            head,
            body.bytes(cin.buf()),
            i,
            ep,
            rid,
            log,
            pick,
        ),
        Err(e) => Err(e.clone()),
    };
    drop(info);
    cin.consume(body.request_len());
    let (p, mut acct) = first.map_err(|e| (e, false))?;
    let admission = if scopes.is_empty() {
        Admission::none()
    } else {
        let prompt = acct.prompt_estimate().unwrap_or(0);
        let demand = Demand {
            tokens: prompt + out_cap,
            micros: route_cfg.price.map_or(0, |pr| pr.micros(prompt, out_cap)),
            stream: p.stream,
        };
        w.shared
            .auth
            .limiter
            .admit(&scopes, demand, wall_ms())
            .map_err(|r| {
                w.shared.auth.metrics.refused(&r);
                (refused(r, demand), false)
            })?
    };
    drop(scopes);
    let rate_headers = admission.headers.pairs();
    let mut served = p.served.clone();
    let mut upstream = w.shared.upstreams[p.upstream as usize].cfg.name.clone();
    let stream = p.stream;
    // The route's deadline covers the gateway's work, not the client's
    // upload: it starts now, once the body is in.
    let deadline = route_cfg.deadline.map(|d| Instant::now() + d);
    let first_byte_limit = route_cfg
        .fallbacks
        .iter()
        .filter_map(|f| f.when.as_ref()?.latency_trigger())
        .min();
    let result = {
        let attempts = async {
            let mut p = p;
            let mut attempt = 1u32;
            loop {
                let target = &table.route(pick.route).targets[pick.target];
                let mut next = None;
                let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                let last = attempt >= route_cfg.max_attempts;
                let r = {
                    let mut decide = |o: &Outcome| {
                        if !last && deadline.is_none_or(|d| Instant::now() < d) {
                            next = cands.next(table, o, now_ms());
                        }
                        next.is_some()
                    };
                    let trigger = (pick.route == route_id)
                        .then_some(first_byte_limit)
                        .flatten();
                    let (limit, deadline_cut) = match (trigger, left) {
                        (Some(t), Some(l)) if l < t => (Some(l), true),
                        (None, Some(l)) => (Some(l), true),
                        (t, _) => (t, false),
                    };
                    let mut on_head = |status: u16| {
                        let effect = Class::of_status(status, b"").breaker_effect();
                        record_outcome(w, pick, effect, None, rid);
                    };
                    let ctx = Attempt {
                        number: attempt,
                        first_byte_limit: limit,
                        deadline_cut,
                        decide: &mut decide,
                        on_head: &mut on_head,
                        headers: &rate_headers,
                        timer: &mut *timer,
                    };
                    relay(w, wr, p, head.minor, !keep_alive, rid, log, &mut acct, ctx).await
                };
                let class = match &r {
                    Ok(Done::Relayed { status, .. }) => Class::of_status(*status, b""),
                    Ok(Done::Aborted { status: 499 } | Done::Local) => Class::Ok,
                    Ok(Done::Aborted { .. }) => Class::Reset,
                    Err(f) => f.outcome.class,
                };
                target.failures.add(class);
                // Relayed answers were recorded when their head came in.
                let late = match &r {
                    Ok(Done::Relayed { .. } | Done::Local | Done::Aborted { status: 499 }) => None,
                    // Cut after the head: the upstream failed mid-answer.
                    Ok(Done::Aborted { .. }) => Some((Effect::Failure, None)),
                    Err(f) => Some((f.outcome.class.breaker_effect(), f.retry_after)),
                };
                if let Some((effect, retry_after)) = late {
                    record_outcome(w, pick, effect, retry_after, rid);
                }
                let f = match r {
                    Ok(done) => return Ok(done),
                    Err(f) => f,
                };
                let Some(n) = next.filter(|_| f.retry) else {
                    return Err((f.err, false));
                };
                let to = &table.route(n.route);
                tracing::warn!(
                    target: "tollgate::failover",
                    request_id = log.id.as_str(),
                    model = log.model.as_str(),
                    upstream = &*upstream,
                    served = &*served,
                    class = f.outcome.class.name(),
                    status = f.outcome.status,
                    latency_ms = f.outcome.latency.as_secs_f64() * 1000.0,
                    attempt,
                    next_model = &*to.name,
                    next_upstream = &*w.shared.upstreams[to.targets[n.target].upstream as usize].cfg.name,
                    "attempt failed; trying the next target"
                );
                pick = n;
                attempt += 1;
                let Some(k) = &kept else {
                    return Err((f.err, false));
                };
                let (np, na) = extract(&k.body)
                    .map_err(extract_error)
                    .and_then(|i| prepare(w, &k.buf, head, &k.body, &i, ep, rid, log, pick))
                    .map_err(|e| (e, false))?;
                served = np.served.clone();
                upstream = w.shared.upstreams[np.upstream as usize].cfg.name.clone();
                acct = na;
                p = np;
            }
        };
        let fut = pin!(attempts);
        let mut fut = fut;
        let mut watched = None;
        if cin.buf().is_empty() && !cin.is_closed() {
            // `biased`: an answer that is done wins over a client read
            // completing in the same turn (see `conn::read_head`).
            monoio::select! {
                biased;
                r = &mut fut => watched = Some(r),
                r = cin.complete() => {
                    if !matches!(r, Ok(n) if n > 0) {
                        // Client gone: dropping the attempts drops the
                        // upstream connection and cancels its I/O.
                        watched = Some(Ok(Done::Aborted { status: 499 }));
                    }
                    // Pipelined bytes: keep them for later, finish unwatched.
                }
            }
        }
        match watched {
            Some(r) => r,
            None => fut.await,
        }
    };
    let status = match &result {
        Ok(Done::Relayed { status, .. } | Done::Aborted { status }) => *status,
        Ok(Done::Local) => 200,
        Err((e, _)) => e.status(),
    };
    let tally = acct.tally();
    let cost_micros = table
        .route(pick.route)
        .price
        .map_or(0, |pr| pr.micros(tally.prompt.0, tally.completion.0));
    admission.settle(tally.prompt.0 + tally.completion.0, cost_micros, wall_ms());
    let rec = UsageRecord {
        request_id: log.id.clone(),
        key_id: key.as_ref().map(|k| k.id.clone()),
        tenant: key.as_ref().map(|k| k.tenant.id.clone()),
        cost_micros,
        requested_model: log.model.clone(),
        served_model: served,
        upstream,
        prompt_tokens: tally.prompt.0,
        prompt_source: tally.prompt.1,
        completion_tokens: tally.completion.0,
        completion_source: tally.completion.1,
        status,
        ttfb: log.ttfb,
        total: started.elapsed(),
        stream,
        upstream_tcp: w
            .shared
            .health
            .tcp(log.tcp_port)
            .map(|(srtt, r)| (srtt, r.saturating_sub(log.tcp_retrans0))),
    };
    w.shared.sinks.record(&rec);
    result
}

/// Feeds an attempt's outcome to its target's breaker; logs and shares
/// (through the store) a transition.
fn record_outcome(
    w: &Worker,
    pick: Pick,
    effect: Effect,
    retry_after: Option<Duration>,
    rid: &[u8],
) {
    let target = &w.cfg().routes.route(pick.route).targets[pick.target];
    let Some(t) = target
        .breaker
        .record(pick.permit, effect, retry_after, now_ms())
    else {
        return;
    };
    breaker_log(w, pick, t, rid);
    if let (Transition::Opened(d), Some((sync, offsets))) = (t, &w.shared.breaker_sync) {
        sync.publish(offsets[pick.route as usize] + pick.target, d);
    }
}

fn breaker_log(w: &Worker, pick: Pick, t: Transition, rid: &[u8]) {
    let route = w.cfg().routes.route(pick.route);
    let target = &route.targets[pick.target];
    let upstream = &w.shared.upstreams[target.upstream as usize].cfg.name;
    match t {
        Transition::Opened(d) => tracing::warn!(
            target: "tollgate::breaker",
            model = &*route.name,
            upstream = &**upstream,
            target_model = target.model.as_deref().unwrap_or("-"),
            break_ms = d.as_millis() as u64,
            request_id = %id_text(rid),
            "circuit breaker opened"
        ),
        Transition::Closed => tracing::info!(
            target: "tollgate::breaker",
            model = &*route.name,
            upstream = &**upstream,
            target_model = target.model.as_deref().unwrap_or("-"),
            request_id = %id_text(rid),
            "circuit breaker closed"
        ),
    }
}

/// 403 when the key may not use the model.
fn permit(
    key: Option<&KeyEntry>,
    route: &crate::route::Route,
    log: &RouteLog,
) -> Result<(), Error> {
    match key {
        Some(k) if !k.allows(&log.model, &route.name) => Err(Error::msg(
            Kind::ModelNotAllowed,
            format!(
                "The API key `{}` is not allowed to use the model `{}`.",
                k.id, log.model
            ),
        )),
        _ => Ok(()),
    }
}

/// The 429 (or 503) for a refused admission, with OpenAI's headers.
fn refused(r: Refused, d: Demand) -> Error {
    let scope = &r.scope;
    let (kind, msg) = match (r.kind, r.why) {
        (_, Refusal::StoreDown { .. }) => (
            Kind::StoreUnavailable,
            format!(
                "Limits for {scope} cannot be checked: the limits store is unreachable (fail_closed)."
            ),
        ),
        (None, _) => (
            Kind::RateLimited,
            format!("Too many concurrent streams for {scope}. Wait for one to finish."),
        ),
        (Some(k @ (LimitKind::Requests | LimitKind::Tokens)), Refusal::TooLarge) => (
            Kind::RateLimited,
            format!(
                "Request too large for {scope} on {}: Limit {}, Requested {}.",
                per_minute(k),
                r.limit,
                d.tokens
            ),
        ),
        (Some(k @ (LimitKind::Requests | LimitKind::Tokens)), _) => (
            Kind::RateLimited,
            format!(
                "Rate limit reached for {scope} on {}: Limit {}. Please try again in {}.",
                per_minute(k),
                r.limit,
                crate::limits::reset_string(r.retry_after_s() * 1000)
            ),
        ),
        (Some(k), _) => (
            Kind::QuotaExceeded,
            format!(
                "Budget used up for {scope} ({}: limit {}). It resets in {}.",
                k.name(),
                r.limit,
                crate::limits::reset_string(r.retry_after_s() * 1000)
            ),
        ),
    };
    let mut e = Error::msg(kind, msg)
        .with_header(b"retry-after", r.retry_after_s().to_string().into_bytes());
    for (n, v) in r.headers.pairs() {
        e = e.with_header(n, v);
    }
    e
}

fn per_minute(k: LimitKind) -> &'static str {
    match k {
        LimitKind::Requests => "requests per min (RPM)",
        _ => "tokens per min (TPM)",
    }
}

/// Finds the route of the body's model and the balancer's first pick.
fn route(w: &Worker, info: &BodyInfo<'_>, log: &mut RouteLog) -> Result<(RouteId, usize), Error> {
    log.model = Text::new(&info.model);
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
    let idx = w.shared.health.prefer_fast(table.route(route_id), idx);
    Ok((route_id, idx))
}

/// Builds the upstream request for one picked target.
#[expect(
    clippy::too_many_arguments,
    reason = "the per-request pieces live in different owners (connection, worker, accountant); a struct would only rename them"
)]
fn prepare(
    w: &Worker,
    buf: &[u8],
    head: &RequestHead,
    bytes: &[u8],
    info: &BodyInfo<'_>,
    ep: Endpoint,
    rid: &[u8],
    log: &mut RouteLog,
    pick: Pick,
) -> Result<(Prepared, Accountant), Error> {
    let table = &w.cfg().routes;
    let route = table.route(pick.route);
    let target = &route.targets[pick.target];
    let up = &w.shared.upstreams[target.upstream as usize];
    log.upstream = Some(up.cfg.name.clone());
    // The name sent upstream: the route's fixed one, else what the client
    // asked for (globs pass names through).
    let served: Arc<str> = match route.fixed_served(target) {
        Some(name) => name.clone(),
        None => Arc::from(info.model.as_ref()),
    };
    let token = (*served != *info.model).then(|| json_string(&served));
    // Empty (no allocation) unless the body is rewritten.
    let mut edits: Vec<Edit<'_>> = Vec::new();
    if let Some(t) = &token {
        edits.push(Edit {
            range: info.model_span.clone(),
            with: t.as_bytes(),
        });
    }
    let stream = info.stream && ep != Endpoint::Embeddings;
    let plan = if stream && up.cfg.stream_usage {
        stream_usage(bytes, info)
    } else {
        StreamUsage {
            client_asked: false,
            edit: None,
        }
    };
    if let Some((range, with)) = &plan.edit {
        edits.push(Edit {
            range: range.clone(),
            with,
        });
    }
    let parts = splice(bytes, &mut edits);
    let forward = Forward {
        buf,
        head,
        endpoint: ep.suffix(),
        body: &parts,
        request_id: rid,
    };
    let mut request = w.spares.take(room(up, &forward));
    build(&mut request, up, &forward);
    let enc = route.encoding(pick.target, &served);
    let prompt_estimate = enc.and_then(|e| prompt_tokens(ep, e, bytes, info));
    let acct = Accountant::new(
        enc,
        stream,
        prompt_estimate,
        ep == Endpoint::ChatCompletions,
        log.id.clone(),
        served.clone(),
    );
    Ok((
        Prepared {
            upstream: target.upstream,
            request,
            served,
            stream,
            strip_usage: plan.edit.is_some() && !plan.client_asked,
            add_usage: plan.client_asked,
        },
        acct,
    ))
}

/// A request id as text. Ids are ASCII in practice: std's `from_utf8`
/// takes them in one fast pass, where `from_utf8_lossy` walks them in
/// chunks.
pub(super) fn id_text(rid: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(rid) {
        Ok(id) => std::borrow::Cow::Borrowed(id),
        Err(_) => String::from_utf8_lossy(rid),
    }
}

/// Prompt tokens of a request body, before forwarding.
fn prompt_tokens(ep: Endpoint, enc: Encoding, body: &[u8], info: &BodyInfo<'_>) -> Option<u64> {
    match ep {
        Endpoint::ChatCompletions => crate::tokens::chat_prompt_tokens_scanned(enc, body, info),
        Endpoint::Completions => crate::tokens::completion_prompt_tokens(enc, body),
        Endpoint::Embeddings => crate::tokens::embeddings_input_tokens(enc, body),
    }
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
