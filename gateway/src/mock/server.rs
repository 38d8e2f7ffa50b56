//! The mock's connection loop: HTTP/1.1 keep-alive, Content-Length and
//! chunked request bodies, faults applied at write time.

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};
use serde_json::Value;

use super::openai::{self, Answer, Api, Ask};
use super::{Faults, MockOptions, Stats};
use crate::error::{Error, Kind};
use crate::http::chunked::{ChunkedDecoder, LAST_CHUNK, encode_chunk};
use crate::http::response::{Local, full, header, status_line};
use crate::http::{BodyFraming, RequestHead, request};

type Headers<'a> = &'a [(&'a [u8], &'a [u8])];

/// Largest request the mock reads.
const MAX_REQUEST: usize = 64 * 1024 * 1024;

pub async fn accept_loop(listener: TcpListener, opts: Arc<MockOptions>, stats: Arc<Stats>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            monoio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        stats.open.fetch_add(1, Ordering::Relaxed);
        let (opts, stats) = (opts.clone(), stats.clone());
        monoio::spawn(async move {
            serve(stream, &opts, &stats).await;
            stats.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn read_more(s: &mut TcpStream, mut buf: Vec<u8>) -> (usize, Vec<u8>) {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16 * 1024);
    }
    let len = buf.len();
    let cap = buf.capacity();
    let (res, slice) = s.read(buf.slice_mut(len..cap)).await;
    (res.unwrap_or(0), slice.into_inner())
}

async fn serve(mut s: TcpStream, opts: &MockOptions, stats: &Stats) {
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        // Head.
        let head = loop {
            match request::parse(&buf) {
                Ok(Some(h)) => break h,
                Ok(None) if buf.len() < 64 * 1024 => {}
                _ => return,
            }
            let (n, b) = read_more(&mut s, buf).await;
            buf = b;
            if n == 0 {
                return;
            }
        };
        // Body.
        let (body, used) = match head.body {
            BodyFraming::None => (Vec::new(), head.len),
            BodyFraming::Length(n) => {
                let end = head.len + n as usize;
                if end > MAX_REQUEST {
                    return;
                }
                while buf.len() < end {
                    let (n, b) = read_more(&mut s, buf).await;
                    buf = b;
                    if n == 0 {
                        return;
                    }
                }
                (buf[head.len..end].to_vec(), end)
            }
            BodyFraming::Chunked => {
                let mut dec = ChunkedDecoder::new();
                let mut data = Vec::new();
                let mut pos = head.len;
                loop {
                    let Ok(u) = dec.feed(&buf[pos..], |d| data.extend_from_slice(d)) else {
                        return;
                    };
                    pos += u;
                    if dec.is_done() {
                        break (data, pos);
                    }
                    let (n, b) = read_more(&mut s, buf).await;
                    buf = b;
                    if n == 0 || buf.len() > MAX_REQUEST {
                        return;
                    }
                }
            }
        };
        stats.requests.fetch_add(1, Ordering::Relaxed);
        // The stats endpoint is for the operator (and readiness checks):
        // faults never apply to it.
        let faults = if head.path(&buf) == b"/mock/stats" {
            Faults::default()
        } else {
            opts.faults.with_headers(&buf, &head)
        };
        let reply = respond(opts, stats, &buf, &head, &body, &faults);
        let keep_alive = head.keep_alive;
        buf.drain(..used);
        if faults.stall {
            // Hold the connection without answering until the peer leaves.
            loop {
                let (n, b) = read_more(&mut s, buf).await;
                buf = b;
                if n == 0 {
                    return;
                }
            }
        }
        if !faults.delay.is_zero() {
            monoio::time::sleep(faults.delay).await;
        }
        if !write_reply(&mut s, reply, &faults).await || !keep_alive {
            return;
        }
    }
}

/// Writes a reply applying split, chunk delay and reset. Returns false
/// when the connection is finished.
async fn write_reply(s: &mut TcpStream, reply: Reply, f: &Faults) -> bool {
    let events: &[Vec<u8>] = match reply.events.as_deref() {
        Some(Rendered::Events(e)) => e,
        _ => &[],
    };
    let plain = f.chunk_delay.is_zero() && f.split.is_none() && f.reset_after.is_none();
    if plain {
        // One write for the whole answer, as a fast provider would.
        let mut all = reply.head;
        all.reserve(events.iter().map(Vec::len).sum());
        for e in events {
            all.extend_from_slice(e);
        }
        return s.write_all(all).await.0.is_ok();
    }
    let mut written = 0usize;
    let segments = std::iter::once(reply.head.as_slice()).chain(events.iter().map(Vec::as_slice));
    for (i, seg) in segments.enumerate() {
        if i > 0 && !f.chunk_delay.is_zero() {
            monoio::time::sleep(f.chunk_delay).await;
        }
        let step = f.split.unwrap_or(seg.len()).max(1);
        let mut off = 0;
        while off < seg.len() {
            let mut end = (off + step).min(seg.len());
            let mut reset = false;
            if let Some(limit) = f.reset_after.filter(|&l| written + (end - off) >= l) {
                end = off + limit.saturating_sub(written);
                reset = true;
            }
            if end > off {
                let (res, _) = s.write_all(seg[off..end].to_vec()).await;
                if res.is_err() {
                    return false;
                }
                written += end - off;
            }
            if reset {
                let _ = crate::sys::reset_on_close(s.as_raw_fd());
                return false;
            }
            off = end;
        }
    }
    true
}

fn respond(
    opts: &MockOptions,
    stats: &Stats,
    buf: &[u8],
    head: &RequestHead,
    body: &[u8],
    f: &Faults,
) -> Reply {
    let mut out = Vec::with_capacity(1024);
    let rid = head.request_id.clone().map_or(&b"mock"[..], |r| &buf[r]);
    let local = Local {
        request_id: rid,
        close: !head.keep_alive,
        head_only: false,
    };
    let path = head.path(buf);
    let api = match path {
        b"/v1/chat/completions" => Some(Api::Chat),
        b"/v1/completions" => Some(Api::Completions),
        b"/v1/embeddings" => Some(Api::Embeddings),
        b"/v1/models" => {
            full(
                &mut out,
                200,
                &[],
                b"application/json",
                openai::models().as_bytes(),
                local,
            );
            return Reply {
                head: out,
                events: None,
            };
        }
        b"/mock/stats" => {
            full(
                &mut out,
                200,
                &[],
                b"application/json",
                stats.json().as_bytes(),
                local,
            );
            return Reply {
                head: out,
                events: None,
            };
        }
        _ => None,
    };
    let fail = |out: &mut Vec<u8>, status: u16, code: &str, msg: &str, extra: &[(&[u8], &[u8])]| {
        let body = serde_json::json!({"error": {"message": msg, "type": code, "param": null, "code": code}});
        full(
            out,
            status,
            extra,
            b"application/json",
            body.to_string().as_bytes(),
            local,
        );
    };
    let Some(api) = api else {
        fail(&mut out, 404, "not_found", "mock: unknown endpoint", &[]);
        return Reply {
            head: out,
            events: None,
        };
    };
    if let Some(key) = &opts.api_key {
        let sent = head
            .headers
            .iter()
            .find(|(n, _)| buf[n.clone()].eq_ignore_ascii_case(b"authorization"))
            .map(|(_, v)| &buf[v.clone()]);
        let want = format!("Bearer {key}");
        if sent != Some(want.as_bytes()) {
            fail(
                &mut out,
                401,
                "invalid_api_key",
                "mock: incorrect API key provided",
                &[],
            );
            return Reply {
                head: out,
                events: None,
            };
        }
    }
    if let Some(status) = f.status.filter(|s| *s >= 400) {
        let (code, extra): (&str, Headers<'_>) = match status {
            429 => ("rate_limit_exceeded", &[(b"retry-after", b"1")]),
            529 => ("overloaded_error", &[]),
            400..=499 => ("invalid_request_error", &[]),
            _ => ("server_error", &[]),
        };
        fail(
            &mut out,
            status,
            code,
            &format!("mock: injected status {status}"),
            extra,
        );
        return Reply {
            head: out,
            events: None,
        };
    }
    let rendered = if f.echo {
        render(opts, api, body, f, echo_headers(buf, head))
    } else {
        cached(opts, api, body, f)
    };
    let rendered = match rendered {
        Ok(r) => r,
        Err(e) => {
            full(
                &mut out,
                400,
                &[],
                b"application/json",
                e.to_json().as_bytes(),
                local,
            );
            return Reply {
                head: out,
                events: None,
            };
        }
    };
    match &*rendered {
        Rendered::Json(j) => {
            full(&mut out, 200, &[], b"application/json", j, local);
            Reply {
                head: out,
                events: None,
            }
        }
        Rendered::Events(_) => {
            status_line(&mut out, 200);
            header(
                &mut out,
                b"content-type",
                b"text/event-stream; charset=utf-8",
            );
            header(&mut out, b"cache-control", b"no-cache");
            header(&mut out, b"transfer-encoding", b"chunked");
            header(&mut out, b"x-request-id", rid);
            if !head.keep_alive {
                out.extend_from_slice(b"connection: close\r\n");
            }
            out.extend_from_slice(b"\r\n");
            Reply {
                head: out,
                events: Some(rendered),
            }
        }
    }
}

/// A response: its head (or whole body for JSON answers) and, for
/// streams, the pre-framed event chunks.
struct Reply {
    head: Vec<u8>,
    events: Option<Rc<Rendered>>,
}

/// An answer rendered once, reusable for identical requests.
enum Rendered {
    /// A JSON body.
    Json(Vec<u8>),
    /// SSE events, each already framed as an HTTP chunk; the last entry is
    /// the terminating zero chunk.
    Events(Vec<Vec<u8>>),
}

/// (api | crlf flag, omit_usage, body hash) -> (body, answer).
type AnswerCache = HashMap<(u8, bool, u64), (Vec<u8>, Rc<Rendered>)>;

thread_local! {
    /// Answers by request: benchmarks repeat one body, and the answer is a
    /// pure function of it, so it is rendered once per worker. The body
    /// is stored and compared, so a hash collision cannot return a wrong
    /// answer.
    static ANSWERS: RefCell<AnswerCache> = RefCell::new(HashMap::new());
}

fn cached(opts: &MockOptions, api: Api, body: &[u8], f: &Faults) -> Result<Rc<Rendered>, Error> {
    let key = (
        api as u8,
        f.omit_usage,
        super::text::seed_for(body, opts.seed),
    );
    let hit = ANSWERS.with(|c| {
        c.borrow()
            .get(&key)
            .filter(|(b, _)| b.as_slice() == body)
            .map(|(_, r)| r.clone())
    });
    if let Some(r) = hit {
        return Ok(r);
    }
    let r = render(opts, api, body, f, None)?;
    ANSWERS.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= 1024 {
            c.clear();
        }
        c.insert(key, (body.to_vec(), r.clone()));
    });
    Ok(r)
}

fn echo_headers(buf: &[u8], head: &RequestHead) -> Option<Value> {
    let mut m = serde_json::Map::new();
    for (n, v) in &head.headers {
        m.insert(
            String::from_utf8_lossy(&buf[n.clone()]).to_ascii_lowercase(),
            Value::String(String::from_utf8_lossy(&buf[v.clone()]).into_owned()),
        );
    }
    Some(Value::Object(m))
}

fn render(
    opts: &MockOptions,
    api: Api,
    body: &[u8],
    f: &Faults,
    echo: Option<Value>,
) -> Result<Rc<Rendered>, Error> {
    let parsed: Value = serde_json::from_slice(body)
        .map_err(|e| Error::msg(Kind::InvalidJson, format!("mock: invalid JSON body: {e}")))?;
    let ask = Ask {
        api,
        body: parsed,
        default_max_tokens: opts.default_max_tokens,
        seed: opts.seed,
        omit_usage: f.omit_usage,
        echo,
    };
    Ok(Rc::new(match openai::answer(&ask) {
        Answer::Json(j) => Rendered::Json(j.into_bytes()),
        Answer::Events { events, tail } => {
            // One write segment per paced event: the tail and the end of
            // the body go with the event before them.
            let paced = events.len().saturating_sub(tail);
            let mut segs: Vec<Vec<u8>> = Vec::with_capacity(paced + 1);
            for (i, e) in events.into_iter().enumerate() {
                let mut payload = Vec::with_capacity(e.len() + 8);
                let nl: &[u8] = if f.crlf { b"\r\n" } else { b"\n" };
                payload.extend_from_slice(b"data: ");
                payload.extend_from_slice(e.as_bytes());
                payload.extend_from_slice(nl);
                payload.extend_from_slice(nl);
                let mut chunk = Vec::with_capacity(payload.len() + 12);
                encode_chunk(&mut chunk, &payload);
                match segs.last_mut() {
                    Some(last) if i >= paced => last.extend_from_slice(&chunk),
                    _ => segs.push(chunk),
                }
            }
            match segs.last_mut() {
                Some(last) => last.extend_from_slice(LAST_CHUNK),
                None => segs.push(LAST_CHUNK.to_vec()),
            }
            Rendered::Events(segs)
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DriverChoice, TaskRun};

    fn segments(body: &str) -> Vec<String> {
        let opts = MockOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            workers: 1,
            seed: 1,
            default_max_tokens: 16,
            api_key: None,
            faults: Faults::default(),
            pin_base: None,
            task_run: TaskRun::Defer,
            driver: DriverChoice::Auto,
        };
        let r = render(&opts, Api::Chat, body.as_bytes(), &Faults::default(), None).unwrap();
        let Rendered::Events(segs) = &*r else {
            panic!("not a stream")
        };
        segs.iter()
            .map(|s| String::from_utf8(s.clone()).unwrap())
            .collect()
    }

    #[test]
    fn only_tokens_are_paced_the_usage_chunk_and_done_follow_the_finish_event() {
        let plain = r#"{"model":"m","stream":true,"max_tokens":5}"#;
        let usage =
            r#"{"model":"m","stream":true,"max_tokens":5,"stream_options":{"include_usage":true}}"#;
        for (body, tail) in [(plain, 2), (usage, 3)] {
            let segs = segments(body);
            // The role event, five words, then one write: the finish event,
            // the usage chunk if asked, `[DONE]`, the end of the body.
            assert_eq!(segs.len(), 1 + 5 + 1, "{segs:?}");
            let last = segs.last().unwrap();
            assert_eq!(last.matches("data: ").count(), tail, "{last}");
            assert!(last.contains("\"finish_reason\":\"length\""), "{last}");
            assert_eq!(last.contains("\"usage\":{"), tail == 3, "{last}");
            assert!(last.ends_with("data: [DONE]\n\n\r\n0\r\n\r\n"), "{last:?}");
            assert!(segs[..6].iter().all(|s| s.matches("data: ").count() == 1));
        }
    }
}
