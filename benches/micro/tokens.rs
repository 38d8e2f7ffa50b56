//! Token counting: prompt tokens of 1 KB / 16 KB / 128 KB chat bodies
//! (`tollgate::tokens::chat_prompt_tokens_with`), by engine — bpe-openai
//! with its piece cache (production), bpe-openai alone, tiktoken-rs — with
//! the per-worker message cache off (every message new) and on (every
//! message seen before: a resent history), and the realistic next turn:
//! the history cached plus one new ~1 KB user message. The `*_scanned`
//! cases are the gateway's path (`chat_prompt_tokens_scanned_with`): the
//! messages located by the routing scan, each looked up by its raw bytes
//! and parsed only on a miss (`new_turn_scanned` includes that scan, which
//! the gateway runs for routing anyway). Plus plain text counting
//! (`Encoding::count`, the stream accountant's path) on 16 KB of English,
//! code and CJK.
//!
//! The chats mix English prose, code with tabs and whitespace runs, and
//! CJK text, in alternating user / assistant turns after a system prompt.
//! All engines must agree on every body before they are timed.
#![expect(
    clippy::expect_used,
    reason = "bench setup; a failure here is a broken bench"
)]

use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use tollgate::route::extract;
use tollgate::tokens::{
    Counting, Encoding, Engine, chat_prompt_tokens_scanned_with, chat_prompt_tokens_with,
};

const SIZES: [(&str, usize); 3] = [("1KB", 1 << 10), ("16KB", 16 << 10), ("128KB", 128 << 10)];

const ENGLISH: &str = "Start with the pieces that need a single point of view: routing by \
model, per-key quotas and usage accounting. Retries and failover come next, because they \
depend on knowing which upstreams serve which models. It's worth measuring before caching \
anything; we'll revisit prompt rewriting once there are numbers for 2024-11-25.\n\n";

const CODE: &str = "```rust\nfn route(req: &Request) -> Result<&str, Error> {\n    let body = \
req.body();\n\tlet v: Value = serde_json::from_slice(body)?;\n        Ok(v[\"model\"].as_str()\
.ok_or(Error::new(\"no model\"))?)   // 3 spaces\n}\n```\n";

const CJK: &str = "ゲートウェイはモデル名でルーティングし、トークン数を数えます。\
网关根据模型名称路由请求，并统计每个请求的令牌数量。게이트웨이는 토큰을 셉니다. ";

/// A chat body of about `size` bytes (never more, apart from the
/// smallest possible turn).
fn chat_body(size: usize) -> Vec<u8> {
    body_of(&chat_messages(size))
}

fn body_of(messages: &[serde_json::Value]) -> Vec<u8> {
    serde_json::to_vec(&json!({"model": "gpt-4o", "messages": messages, "stream": true}))
        .expect("serializable")
}

/// The messages of [`chat_body`].
fn chat_messages(size: usize) -> Vec<serde_json::Value> {
    let pieces = [ENGLISH, CODE, CJK];
    let mut messages = vec![json!({
        "role": "system",
        "content": "You are a careful assistant for an engineering team. Answer concisely."
    })];
    let mut turn = 0;
    loop {
        let role = if turn % 2 == 0 { "user" } else { "assistant" };
        // Grow the turn piece by piece until the body is full.
        let mut content = String::new();
        let mut best = None;
        for i in 0..3 {
            content.push_str(pieces[(turn + i) % pieces.len()]);
            messages.push(json!({"role": role, "content": content}));
            let b = body_of(&messages);
            messages.pop();
            if b.len() > size {
                break;
            }
            best = Some(content.clone());
        }
        match best {
            Some(c) => messages.push(json!({"role": role, "content": c})),
            None => return messages,
        }
        turn += 1;
    }
}

fn prompt(c: &mut Criterion) {
    let mut group = c.benchmark_group("prompt");
    for (label, size) in SIZES {
        let body = chat_body(size);
        let uncached = |engine| Counting {
            engine,
            message_cache: false,
        };
        let want = chat_prompt_tokens_with(Encoding::O200k, &body, uncached(Engine::Tiktoken))
            .expect("a chat body");
        for engine in [Engine::Bpe, Engine::BpePlain] {
            assert_eq!(
                chat_prompt_tokens_with(Encoding::O200k, &body, uncached(engine)),
                Some(want)
            );
        }
        let messages =
            serde_json::from_slice::<serde_json::Value>(&body).expect("JSON")["messages"]
                .as_array()
                .map_or(0, Vec::len);
        eprintln!(
            "prompt/{label}: {} bytes, {messages} messages, {want} prompt tokens (o200k_base)",
            body.len()
        );
        group.throughput(Throughput::Bytes(body.len() as u64));
        let cases = [
            ("bpe/uncached", Engine::Bpe, false),
            ("bpe_plain/uncached", Engine::BpePlain, false),
            ("tiktoken/uncached", Engine::Tiktoken, false),
            ("bpe/cached", Engine::Bpe, true),
            ("tiktoken/cached", Engine::Tiktoken, true),
        ];
        for (name, engine, message_cache) in cases {
            let how = Counting {
                engine,
                message_cache,
            };
            group.bench_with_input(BenchmarkId::new(name, label), &body, |b, body| {
                b.iter(|| chat_prompt_tokens_with(Encoding::O200k, black_box(body), how))
            });
        }
        let info = extract(&body).expect("a routable body");
        assert_eq!(
            chat_prompt_tokens_scanned_with(Encoding::O200k, &body, &info, Counting::DEFAULT),
            Some(want)
        );
        group.bench_with_input(
            BenchmarkId::new("bpe/cached_scanned", label),
            &body,
            |b, body| {
                b.iter(|| {
                    chat_prompt_tokens_scanned_with(
                        Encoding::O200k,
                        black_box(body),
                        &info,
                        Counting::DEFAULT,
                    )
                })
            },
        );
    }
    // The next turn of a conversation: the history was counted on the
    // previous turn (cached), one new user message is not.
    for (label, size) in SIZES {
        let history = chat_messages(size);
        let mut turn = 0u64;
        let new_turn = |turn: u64| {
            let mut m = history.clone();
            let q = format!("Question {turn}: {}", ENGLISH.repeat(3));
            m.push(json!({"role": "user", "content": q}));
            body_of(&m)
        };
        let warm = new_turn(0);
        chat_prompt_tokens_with(Encoding::O200k, &warm, Counting::DEFAULT);
        group.throughput(Throughput::Bytes(warm.len() as u64));
        group.bench_function(BenchmarkId::new("bpe/new_turn", label), |b| {
            b.iter_batched(
                || {
                    turn += 1;
                    new_turn(turn)
                },
                |body| chat_prompt_tokens_with(Encoding::O200k, &body, Counting::DEFAULT),
                BatchSize::SmallInput,
            )
        });
        group.bench_function(BenchmarkId::new("bpe/new_turn_scanned", label), |b| {
            b.iter_batched(
                || {
                    turn += 1;
                    new_turn(turn)
                },
                |body| {
                    let info = extract(&body).expect("a routable body");
                    chat_prompt_tokens_scanned_with(
                        Encoding::O200k,
                        &body,
                        &info,
                        Counting::DEFAULT,
                    )
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn text(c: &mut Criterion) {
    let mut group = c.benchmark_group("text");
    for (label, piece) in [("english", ENGLISH), ("code", CODE), ("cjk", CJK)] {
        let mut t = String::new();
        while t.len() + piece.len() <= 16 << 10 {
            t.push_str(piece);
        }
        for enc in [Encoding::O200k, Encoding::Cl100k] {
            let want = enc.count_with(&t, Engine::Tiktoken);
            assert_eq!(enc.count(&t), want);
            group.throughput(Throughput::Bytes(t.len() as u64));
            for (name, engine) in [
                ("bpe", Engine::Bpe),
                ("bpe_plain", Engine::BpePlain),
                ("tiktoken", Engine::Tiktoken),
            ] {
                let id = BenchmarkId::new(name, format!("{label}_16KB/{}", enc.name()));
                group.bench_with_input(id, &t, |b, t| {
                    b.iter(|| enc.count_with(black_box(t), engine))
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, prompt, text);
criterion_main!(benches);
