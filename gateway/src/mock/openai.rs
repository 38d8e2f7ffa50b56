//! OpenAI-shaped answers of the mock: chat completions, legacy
//! completions and embeddings, whole or as SSE events.

use serde_json::{Value, json};

use super::text::{Words, seed_for};
use crate::tokens::Encoding;

/// Which API was called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `/v1/chat/completions`
    Chat,
    /// `/v1/completions`
    Completions,
    /// `/v1/embeddings`
    Embeddings,
}

/// A generated answer.
pub enum Answer {
    /// One JSON body.
    Json(String),
    /// SSE event payloads (without `data: ` and the blank line), ending
    /// with `[DONE]`. The last `tail` of them (the usage chunk, `[DONE]`)
    /// are not tokens: a provider sends them right after the finish
    /// event, so they go out with it, and only tokens are paced.
    Events { events: Vec<String>, tail: usize },
}

/// Everything about the request that shapes the answer.
pub struct Ask {
    /// API.
    pub api: Api,
    /// Parsed body.
    pub body: Value,
    /// Default `max_tokens`.
    pub default_max_tokens: u64,
    /// Text seed.
    pub seed: u64,
    /// Leave out usage.
    pub omit_usage: bool,
    /// Headers to echo, if asked.
    pub echo: Option<Value>,
}

fn prompt_value(api: Api, body: &Value) -> &Value {
    let key = match api {
        Api::Chat => "messages",
        Api::Completions => "prompt",
        Api::Embeddings => "input",
    };
    body.get(key).unwrap_or(&Value::Null)
}

/// Prompt tokens by the gateway's own counters, so that the gateway's
/// estimate and the mock's `usage` agree by construction (tools, names,
/// token-id arrays included). The server caches whole answers, so this
/// runs once per distinct request.
fn prompt_tokens(api: Api, enc: Encoding, body: &Value) -> usize {
    let n = match api {
        Api::Chat => crate::tokens::chat_prompt_tokens_value(enc, body),
        Api::Completions | Api::Embeddings => {
            let bytes = serde_json::to_vec(body).unwrap_or_default();
            if api == Api::Completions {
                crate::tokens::completion_prompt_tokens(enc, &bytes)
            } else {
                crate::tokens::embeddings_input_tokens(enc, &bytes)
            }
        }
    };
    n.unwrap_or(0) as usize
}

/// Builds the answer.
pub fn answer(ask: &Ask) -> Answer {
    let body = &ask.body;
    let model = body.get("model").and_then(Value::as_str).unwrap_or("mock");
    let enc = Encoding::for_model(model);
    let prompt = prompt_value(ask.api, body);
    let prompt_text = prompt.to_string();
    let hash = seed_for(prompt_text.as_bytes(), ask.seed);
    let p_tokens = prompt_tokens(ask.api, enc, body);
    let created = 1_700_000_000u64;
    if ask.api == Api::Embeddings {
        return Answer::Json(embeddings(body, model, p_tokens, hash, ask));
    }
    let explicit = body
        .get("max_completion_tokens")
        .or_else(|| body.get("max_tokens"))
        .and_then(Value::as_u64);
    let n_tokens = explicit.unwrap_or(ask.default_max_tokens) as usize;
    let finish = if explicit.is_some() { "length" } else { "stop" };
    let words: Vec<&str> = Words::new(hash).take(n_tokens).collect();
    let usage = json!({
        "prompt_tokens": p_tokens,
        "completion_tokens": n_tokens,
        "total_tokens": p_tokens + n_tokens,
    });
    let stream = body.get("stream") == Some(&Value::Bool(true));
    let (id, object) = match ask.api {
        // Ids are a function of the prompt, like the text, so identical
        // requests give byte-identical answers (tests compare streams).
        Api::Chat => (format!("chatcmpl-mock{hash:016x}"), "chat.completion"),
        _ => (format!("cmpl-mock{hash:016x}"), "text_completion"),
    };
    if !stream {
        let choice = match ask.api {
            Api::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": words.concat(), "refusal": null},
                "logprobs": null,
                "finish_reason": finish,
            }),
            _ => {
                json!({"index": 0, "text": words.concat(), "logprobs": null, "finish_reason": finish})
            }
        };
        let mut v = json!({
            "id": id,
            "object": object,
            "created": created,
            "model": model,
            "system_fingerprint": "fp_mock",
            "choices": [choice],
        });
        if !ask.omit_usage {
            v["usage"] = usage;
        }
        if let Some(e) = &ask.echo {
            v["mock_echo"] = e.clone();
        }
        return Answer::Json(v.to_string());
    }
    let include_usage = !ask.omit_usage
        && body
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            == Some(&Value::Bool(true));
    let chunk_object = match ask.api {
        Api::Chat => "chat.completion.chunk",
        _ => "text_completion",
    };
    let mut events = Vec::with_capacity(n_tokens + 4);
    let event = |choices: Value| {
        let mut v = json!({
            "id": id,
            "object": chunk_object,
            "created": created,
            "model": model,
            "system_fingerprint": "fp_mock",
            "choices": choices,
        });
        if include_usage {
            v["usage"] = Value::Null;
        }
        v.to_string()
    };
    if ask.api == Api::Chat {
        events.push(event(json!([{
            "index": 0, "delta": {"role": "assistant", "content": "", "refusal": null},
            "logprobs": null, "finish_reason": null
        }])));
    }
    for w in &words {
        let choice = match ask.api {
            Api::Chat => {
                json!({"index": 0, "delta": {"content": w}, "logprobs": null, "finish_reason": null})
            }
            _ => json!({"index": 0, "text": w, "logprobs": null, "finish_reason": null}),
        };
        events.push(event(json!([choice])));
    }
    let last = match ask.api {
        Api::Chat => json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": finish}),
        _ => json!({"index": 0, "text": "", "logprobs": null, "finish_reason": finish}),
    };
    events.push(event(json!([last])));
    if include_usage {
        let v = json!({
            "id": id,
            "object": chunk_object,
            "created": created,
            "model": model,
            "system_fingerprint": "fp_mock",
            "choices": [],
            "usage": usage,
        });
        events.push(v.to_string());
    }
    events.push("[DONE]".to_string());
    Answer::Events {
        events,
        tail: 1 + usize::from(include_usage),
    }
}

fn embeddings(body: &Value, model: &str, p_tokens: usize, hash: u64, ask: &Ask) -> String {
    let dims = body
        .get("dimensions")
        .and_then(Value::as_u64)
        .unwrap_or(8)
        .clamp(1, 4096) as usize;
    let inputs = match body.get("input") {
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => a.len(),
        _ => 1,
    };
    let mut x = hash;
    let data: Vec<Value> = (0..inputs)
        .map(|i| {
            let v: Vec<f64> = (0..dims)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    ((x >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
                })
                .collect();
            json!({"object": "embedding", "index": i, "embedding": v})
        })
        .collect();
    let mut v = json!({"object": "list", "data": data, "model": model});
    if !ask.omit_usage {
        v["usage"] = json!({"prompt_tokens": p_tokens, "total_tokens": p_tokens});
    }
    v.to_string()
}

/// The model list the mock serves.
pub fn models() -> String {
    let ids = [
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4",
        "gpt-3.5-turbo",
        "llama-3-70b",
        "text-embedding-3-small",
    ];
    let data: Vec<Value> = ids
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": 1_700_000_000u64, "owned_by": "mock"}))
        .collect();
    json!({"object": "list", "data": data}).to_string()
}
