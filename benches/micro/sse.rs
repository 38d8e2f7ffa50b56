//! SSE scanner throughput (`tollgate::sse::Scanner`) and scanner + event
//! decoding (`tollgate::sse::decode`) on OpenAI-like streams.
//!
//! - `scan/50_events_1.5KB_reads`: a realistic 50-event
//!   `chat.completion.chunk` stream (role chunk, 46 content deltas, finish
//!   chunk, usage-only chunk, `[DONE]`), fed in 1,500-byte reads so most
//!   reads end inside an event and go through the carry-over.
//! - `scan/10MB_16KB_reads`: that stream repeated to 10 MB, 16 KiB reads.
//! - `decode/50_events`: `decode` alone on those events' data, next to
//!   `serde_json::from_slice::<IgnoredAny>` on the same data (the floor for
//!   any decoder built on serde_json).
//! - `scan_decode/50_events_1.5KB_reads`: the first, plus `decode` of
//!   every event, summing text lengths and usage.
//! - `scan_deferred/…`: what the accountant does since text is deferred
//!   (`tollgate::sse::deferred`): scan, read usage and `[DONE]` at once,
//!   hold the other events; `…_usage_came` never decodes the held text
//!   (the provider's usage arrived), `…_text_read` decodes it at the end
//!   (a stream without usage).
//! - `relay_payload/1000_events_16KB_reads_{raw,rewrite}`: the whole
//!   per-byte path of a relayed stream as `server::relay` runs it: a
//!   1,000-event chunked body (one event per chunk, as providers send
//!   them) in 16 KiB reads through the chunked decoder into the
//!   accountant; `raw` as when the client asked for usage itself,
//!   `rewrite` as when the gateway asked for it and hides the usage chunk
//!   (the bytes to send are built in a reused buffer).
#![expect(
    clippy::expect_used,
    reason = "bench setup; a failure here is a broken bench"
)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::sync::Arc;

use tollgate::http::chunked::ChunkedDecoder;
use tollgate::server::account::Accountant;
use tollgate::sse::deferred::DeferredText;
use tollgate::sse::{Scanner, decode};
use tollgate::tokens::Encoding;

const MAX_EVENT: usize = 1 << 20;

/// Deltas as a model streams them: mostly one token (a word or a piece of
/// one), some punctuation, newlines, non-ASCII and quotes.
const WORDS: &[&str] = &[
    "The",
    " quick",
    " brown",
    " fox",
    " jumps",
    " over",
    " the",
    " lazy",
    " dog",
    ".",
    "\n\n",
    "In",
    " Rust",
    ",",
    " `memchr`",
    " finds",
    " bytes",
    " with",
    " SIMD",
    ";",
    " it",
    "’s",
    " fast",
    ":",
    " \"",
    "quoted",
    "\"",
    " text",
    ",",
    " 日本",
    "語",
    " and",
    " emoji",
    " 🚀",
    "!\n",
    "-",
    " item",
    " one",
    "\n",
    "-",
    " item",
    " two",
    "\n",
    "Done",
    ".",
    " Thanks",
];

fn chunk(delta: &str, finish: &str) -> String {
    format!(
        "{{\"id\":\"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG\",\"object\":\"chat.completion.chunk\",\
         \"created\":1741569952,\"model\":\"gpt-4o-2024-08-06\",\"service_tier\":\"default\",\
         \"system_fingerprint\":\"fp_eb9dce56a8\",\"choices\":[{{\"index\":0,\"delta\":{delta},\
         \"logprobs\":null,\"finish_reason\":{finish}}}],\"usage\":null}}"
    )
}

/// The 50-event stream, LF line endings as OpenAI sends them.
fn stream_50() -> Vec<u8> {
    let mut datas = vec![chunk(
        r#"{"role":"assistant","content":"","refusal":null}"#,
        "null",
    )];
    for w in WORDS {
        let content = serde_json::to_string(w).expect("string");
        datas.push(chunk(&format!("{{\"content\":{content}}}"), "null"));
    }
    datas.push(chunk("{}", "\"stop\""));
    datas.push(
        "{\"id\":\"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG\",\"object\":\"chat.completion.chunk\",\
         \"created\":1741569952,\"model\":\"gpt-4o-2024-08-06\",\"service_tier\":\"default\",\
         \"system_fingerprint\":\"fp_eb9dce56a8\",\"choices\":[],\"usage\":{\"prompt_tokens\":19,\
         \"completion_tokens\":46,\"total_tokens\":65,\"prompt_tokens_details\":{\"cached_tokens\":0,\
         \"audio_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0,\"audio_tokens\":0,\
         \"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}}"
            .to_owned(),
    );
    datas.push("[DONE]".to_owned());
    assert_eq!(datas.len(), 50);
    let mut out = Vec::new();
    for d in datas {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(d.as_bytes());
        out.extend_from_slice(b"\n\n");
    }
    out
}

/// A chunked body of `n` events, one per chunk: a role chunk, content
/// deltas, a finish chunk, the usage-only chunk and `[DONE]`.
fn chunked_stream(n: usize) -> Vec<u8> {
    framed_stream(n, true)
}

/// The events of `chunked_stream`, framed in chunks or not.
fn framed_stream(n: usize, chunked: bool) -> Vec<u8> {
    let mut datas = vec![chunk(
        r#"{"role":"assistant","content":"","refusal":null}"#,
        "null",
    )];
    for w in WORDS.iter().cycle().take(n - 4) {
        let content = serde_json::to_string(w).expect("string");
        datas.push(chunk(&format!("{{\"content\":{content}}}"), "null"));
    }
    datas.push(chunk("{}", "\"length\""));
    datas.push(format!(
        "{{\"id\":\"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG\",\"object\":\"chat.completion.chunk\",\
         \"created\":1741569952,\"model\":\"gpt-4o-2024-08-06\",\"choices\":[],\"usage\":\
         {{\"prompt_tokens\":19,\"completion_tokens\":{},\"total_tokens\":{}}}}}",
        n - 3,
        n + 16
    ));
    datas.push("[DONE]".to_owned());
    let mut out = Vec::new();
    for d in datas {
        let event = format!("data: {d}\n\n");
        if chunked {
            out.extend_from_slice(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes());
        } else {
            out.extend_from_slice(event.as_bytes());
        }
    }
    if chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    out
}

/// Relays `body` in `read`-byte reads the way `server::relay` does;
/// returns (bytes the client would get in rewrite mode, completion
/// tokens).
fn relay_payload(body: &[u8], read: usize, rewrite: bool, chunked: bool) -> (u64, u64) {
    let mut acct = Accountant::new(
        Some(Encoding::O200k),
        true,
        Some(19),
        true,
        tollgate::text::Text::new("req"),
        Arc::from("gpt-4o"),
    );
    acct.start(200, rewrite, false);
    let mut dec = ChunkedDecoder::new();
    let mut out = Vec::with_capacity(read + 1024);
    let mut sent = 0u64;
    for r in body.chunks(read) {
        out.clear();
        if !chunked {
            acct.payload(r, rewrite.then_some(&mut out));
            sent += out.len() as u64;
            continue;
        }
        let fwd = if rewrite {
            let at = acct.open_payload(&mut out);
            let fwd = dec.feed(r, |p| out.extend_from_slice(p));
            acct.close_payload(&mut out, at);
            fwd
        } else {
            dec.feed(r, |p| acct.payload(p, None))
        };
        assert_eq!(fwd, Ok(r.len()));
        sent += out.len() as u64;
    }
    out.clear();
    acct.end(rewrite.then_some(&mut out));
    sent += out.len() as u64;
    (sent, acct.tally().completion.0)
}

/// Scans `stream` in `read`-byte feeds; returns (events, data bytes).
fn scan(stream: &[u8], read: usize) -> (u64, u64) {
    let mut s = Scanner::new(MAX_EVENT);
    let (mut n, mut bytes) = (0u64, 0u64);
    for r in stream.chunks(read) {
        s.feed(r, |e| {
            n += 1;
            bytes += e.data.len() as u64;
        });
    }
    s.finish(|e| {
        n += 1;
        bytes += e.data.len() as u64;
    });
    (n, bytes)
}

/// Scans and decodes; returns (text bytes, completion tokens).
fn scan_decode(stream: &[u8], read: usize) -> (u64, u64) {
    let mut s = Scanner::new(MAX_EVENT);
    let (mut text, mut completion) = (0u64, 0u64);
    let mut on_event = |e: tollgate::sse::Event<'_>| {
        let d = decode(&e.data, |t| text += t.len() as u64);
        if let Some(u) = d.usage {
            completion = u.completion;
        }
    };
    for r in stream.chunks(read) {
        s.feed(r, &mut on_event);
    }
    s.finish(&mut on_event);
    (text, completion)
}

/// Scans with deferred text; returns (text bytes if `read_text`, else 0,
/// completion tokens).
fn scan_deferred(stream: &[u8], read: usize, read_text: bool) -> (u64, u64) {
    let mut s = Scanner::new(MAX_EVENT);
    let mut held = DeferredText::default();
    let mut completion = 0u64;
    let mut on_event = |e: tollgate::sse::Event<'_>| {
        if let Some(u) = held.event(&e).usage {
            completion = u.completion;
        }
    };
    for r in stream.chunks(read) {
        s.feed(r, &mut on_event);
    }
    s.finish(&mut on_event);
    let text = if read_text {
        held.text().len() as u64
    } else {
        0
    };
    (text, completion)
}

/// Each event's data, owned.
fn event_datas(stream: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut s = Scanner::new(MAX_EVENT);
    s.feed(stream, |e| out.push(e.data.into_owned()));
    s.finish(|e| out.push(e.data.into_owned()));
    out
}

fn bench(c: &mut Criterion) {
    let small = stream_50();
    let mut big = Vec::with_capacity(10 << 20);
    while big.len() + small.len() <= 10 << 20 {
        big.extend_from_slice(&small);
    }
    // Sanity before timing: every event found, text and usage decoded.
    assert_eq!(scan(&small, 1500).0, 50);
    assert_eq!(
        scan(&big, 16 << 10).0,
        50 * (big.len() / small.len()) as u64
    );
    let words: usize = WORDS.iter().map(|w| w.len()).sum();
    assert_eq!(scan_decode(&small, 1500), (words as u64, 46));
    assert_eq!(scan_deferred(&small, 1500, true), (words as u64, 46));
    assert_eq!(scan_deferred(&small, 1500, false), (0, 46));

    let mut g = c.benchmark_group("scan");
    g.throughput(Throughput::Bytes(small.len() as u64));
    g.bench_with_input(
        BenchmarkId::from_parameter(format!("50_events_{}B_1.5KB_reads", small.len())),
        &small,
        |b, s| b.iter(|| scan(black_box(s), 1500)),
    );
    g.throughput(Throughput::Bytes(big.len() as u64));
    g.bench_with_input(
        BenchmarkId::from_parameter("10MB_16KB_reads"),
        &big,
        |b, s| b.iter(|| scan(black_box(s), 16 << 10)),
    );
    g.finish();

    // Decoding alone, on the 50 events' data (pre-extracted), against the
    // floor of any serde_json-based decoder: skipping the same JSON.
    let datas = event_datas(&small);
    let data_bytes: usize = datas.iter().map(Vec::len).sum();
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Bytes(data_bytes as u64));
    g.bench_with_input(BenchmarkId::from_parameter("50_events"), &datas, |b, ds| {
        b.iter(|| {
            let mut text = 0usize;
            for d in ds {
                black_box(decode(black_box(d), |t| text += t.len()));
            }
            text
        })
    });
    g.bench_with_input(
        BenchmarkId::from_parameter("50_events_serde_ignored_any_floor"),
        &datas,
        |b, ds| {
            b.iter(|| {
                for d in ds {
                    let _ = black_box(serde_json::from_slice::<serde::de::IgnoredAny>(black_box(
                        d,
                    )));
                }
            })
        },
    );
    g.finish();

    let mut g = c.benchmark_group("scan_decode");
    g.throughput(Throughput::Bytes(small.len() as u64));
    g.bench_with_input(
        BenchmarkId::from_parameter(format!("50_events_{}B_1.5KB_reads", small.len())),
        &small,
        |b, s| b.iter(|| scan_decode(black_box(s), 1500)),
    );
    g.finish();

    let body = chunked_stream(1000);
    let (raw_sent, raw_tokens) = relay_payload(&body, 16 << 10, false, true);
    let (sent, tokens) = relay_payload(&body, 16 << 10, true, true);
    let plain = framed_stream(1000, false);
    assert_eq!((raw_sent, raw_tokens), (0, 997));
    assert_eq!(tokens, 997);
    // The client gets every event but the usage chunk.
    assert!(sent > 0 && sent < body.len() as u64, "{sent}");
    let mut g = c.benchmark_group("relay_payload");
    g.throughput(Throughput::Bytes(body.len() as u64));
    for (name, rewrite) in [("raw", false), ("rewrite", true)] {
        g.bench_with_input(
            BenchmarkId::from_parameter(format!("1000_events_16KB_reads_{name}")),
            &body,
            |b, s| b.iter(|| relay_payload(black_box(s), 16 << 10, rewrite, true)),
        );
        g.bench_with_input(
            BenchmarkId::from_parameter(format!("1000_events_16KB_reads_{name}_unchunked")),
            &plain,
            |b, s| b.iter(|| relay_payload(black_box(s), 16 << 10, rewrite, false)),
        );
    }
    g.finish();

    let mut g = c.benchmark_group("scan_deferred");
    g.throughput(Throughput::Bytes(small.len() as u64));
    for (name, read_text) in [("usage_came", false), ("text_read", true)] {
        g.bench_with_input(
            BenchmarkId::from_parameter(format!("50_events_1.5KB_reads_{name}")),
            &small,
            |b, s| b.iter(|| scan_deferred(black_box(s), 1500, read_text)),
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
