//! Realistic OpenAI chat-completion request bodies of a chosen size, shared
//! by the `extract` and `route` benches.
//!
//! Each body has a system prompt, a tools array whose JSON schema has its
//! own `"model"` keys, a tool call round trip whose arguments (JSON inside a
//! string) mention `"model"` again, user/assistant turns of prose, code with
//! escapes and non-ASCII text, sampling parameters and `"stream": true`. So
//! a scanner must skip nested `model` keys and real escapes, as in traffic.

const SYSTEM: &str = "You are a careful assistant for an engineering team. Answer concisely, \
cite the files you used, and ask before running anything destructive.";

const TOOLS: &str = r#"[{"type":"function","function":{"name":"lookup_pricing","description":"Price per million tokens for a model.","parameters":{"type":"object","properties":{"model":{"type":"string","description":"Model id, e.g. gpt-4o"},"tier":{"type":"string","enum":["standard","batch"]}},"required":["model"],"default":{"model":"gpt-4o-mini","tier":"standard"}}}}]"#;

const TOOL_ROUND_TRIP: &str = r#"{"role":"assistant","content":null,"tool_calls":[{"id":"call_7hQ2","type":"function","function":{"name":"lookup_pricing","arguments":"{\"model\":\"gpt-4o\",\"tier\":\"batch\"}"}}]},{"role":"tool","tool_call_id":"call_7hQ2","content":"{\"model\":\"gpt-4o\",\"usd_per_mtok\":{\"input\":1.25,\"output\":5.0}}"}"#;

/// Conversation turns, cycled until the body is big enough.
const TURNS: [(&str, &str); 4] = [
    (
        "user",
        "We are moving our inference traffic behind a gateway. The current setup \
         sends every request from the application servers straight to the provider, \
         so retries, rate limits and cost accounting are all done in three different \
         services. What would you put in the gateway first, and what can wait?",
    ),
    (
        "assistant",
        "Start with the pieces that need a single point of view: routing by model, \
         per-key quotas and usage accounting. Retries and failover come next, because \
         they depend on knowing which upstreams serve which models.\n\n\
         1. Routing: map each model name to one or more upstreams with weights.\n\
         2. Quotas: count tokens per key, reject early with a clear error.\n\
         3. Accounting: record usage from the final streamed chunk.\n\n\
         Caching and prompt rewriting can wait until you have numbers.",
    ),
    (
        "user",
        "This handler fails to compile:\n```rust\nfn route(req: &Request) -> Result<&str, Error> {\n    \
         let body = req.body();\n    let v: Value = serde_json::from_slice(body)?;\n    \
         Ok(v[\"model\"].as_str().ok_or(Error::new(\"no \\\"model\\\"\"))?)\n}\n```\n\
         The error is \"returns a value referencing data owned by the current function\". \
         Why, and how do I avoid parsing the whole body?",
    ),
    (
        "assistant",
        "`v` owns the parsed document, so a `&str` into it cannot outlive the \
         function. Either return an owned `String`, or borrow from the request body \
         itself with a scanner that only reads the top-level keys. Noms d'équipe, \
         naïve café résumé — “quotes”, 日本語のテキスト, and an emoji 🚀 are fine: \
         the body is UTF-8 and the scanner validates it once.",
    ),
];

/// ASCII filler without escapes, so its encoded length is its length.
const FILLER: &str = "Please keep the answer short and list the trade-offs you considered. ";

fn message(role: &str, content: &str) -> String {
    let content = serde_json::to_string(content).unwrap_or_default();
    format!(r#"{{"role":"{role}","content":{content}}}"#)
}

fn assemble(model: &str, model_first: bool, messages: &[String]) -> String {
    let model = format!(r#""model":"{model}""#);
    let rest = format!(
        r#""messages":[{}],"tools":{TOOLS},"tool_choice":"auto","temperature":0.7,"max_tokens":1024,"user":"team-infra-42","stream":true,"stream_options":{{"include_usage":true}}"#,
        messages.join(",")
    );
    if model_first {
        format!("{{{model},{rest}}}")
    } else {
        format!("{{{rest},{model}}}")
    }
}

/// A chat body of exactly `size` bytes (or the smallest complete body, if
/// `size` is below it) with `"model": model` as the first or the last key.
pub fn chat_body(size: usize, model: &str, model_first: bool) -> Vec<u8> {
    let mut messages = vec![message("system", SYSTEM), TOOL_ROUND_TRIP.to_string()];
    let empty_user = message("user", "").len() + 1; // plus the separating comma
    for (role, content) in TURNS.iter().cycle() {
        let next = message(role, content);
        let len = assemble(model, model_first, &messages).len();
        if len + next.len() + 1 + empty_user > size {
            break;
        }
        messages.push(next);
    }
    let len = assemble(model, model_first, &messages).len() + empty_user;
    let pad = size.saturating_sub(len);
    let filler: String = FILLER.chars().cycle().take(pad).collect();
    messages.push(message("user", &filler));
    assemble(model, model_first, &messages).into_bytes()
}
