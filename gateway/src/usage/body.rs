//! The provider's `usage` in a non-streaming answer, without parsing the
//! whole answer.
//!
//! A full serde parse of a 600-byte chat answer only to read two numbers
//! cost about half a microsecond per request, most of it validating the
//! generated text. Providers put `usage` after `choices` (OpenAI, vLLM,
//! llama.cpp, …), so the last `"usage"` key is looked for from the end
//! and only its value is parsed. Two checks make that exact rather than a
//! guess:
//! - the key's opening quote is not escaped, so it is JSON structure, not
//!   text a model wrote (inside a JSON string every `"` is escaped), and
//!   a colon follows, so it is a key;
//! - what follows its value closes exactly one object and then the body:
//!   the key is a member of the top-level object, not of a nested one.
//!
//! Anything else (no such key, a nested one, a value that is not an object
//! or `null`, a key spelled with `\u` escapes) falls back to the full
//! parse, which stays the reference. The one difference: a body with two
//! top-level `usage` members gets the last one here, where serde refuses
//! the duplicate (and the answer would have no usage).

use std::sync::LazyLock;

use memchr::memmem;

use crate::json_bytes::{quote_escaped, skip_ws, string_end};
use crate::sse::Usage;

#[derive(serde::Deserialize)]
struct Fields {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

#[derive(serde::Deserialize)]
struct Body {
    usage: Option<Fields>,
}

impl From<Fields> for Usage {
    fn from(f: Fields) -> Usage {
        Usage {
            prompt: f.prompt_tokens,
            completion: f.completion_tokens,
        }
    }
}

/// `usage` of a non-streaming JSON answer: `None` when it has none (or is
/// not JSON).
pub fn body_usage(body: &[u8]) -> Option<Usage> {
    match from_the_end(body) {
        Some(found) => found,
        None => full_parse(body),
    }
}

/// The reference: parse the whole body.
fn full_parse(body: &[u8]) -> Option<Usage> {
    let b: Body = serde_json::from_slice(body).ok()?;
    b.usage.map(Usage::from)
}

/// `Some(answer)` when the last `"usage"` key is provably a top-level
/// member; `None` when unsure.
fn from_the_end(body: &[u8]) -> Option<Option<Usage>> {
    const KEY: &[u8] = b"\"usage\"";
    static FINDER: LazyLock<memmem::FinderRev<'static>> =
        LazyLock::new(|| memmem::FinderRev::new(KEY));
    let at = FINDER.rfind(body)?;
    if quote_escaped(body, at) {
        return None;
    }
    let mut i = skip_ws(body, at + KEY.len());
    if body.get(i) != Some(&b':') {
        return None;
    }
    i = skip_ws(body, i + 1);
    let (usage, end) = if body[i..].starts_with(b"null") {
        (None, i + 4)
    } else if body.get(i) == Some(&b'{') {
        let mut values = serde_json::Deserializer::from_slice(&body[i..]).into_iter::<Fields>();
        let fields = values.next()?.ok()?;
        (Some(Usage::from(fields)), i + values.byte_offset())
    } else {
        return None;
    };
    closes_top_level(&body[end..]).then_some(usage)
}

/// `rest` (what follows a member's value) closes the object the member is
/// in, and that object was the outermost: exactly one unmatched `}`,
/// followed only by whitespace.
fn closes_top_level(rest: &[u8]) -> bool {
    let mut depth = 0usize;
    let mut i = 0;
    while i < rest.len() {
        match rest[i] {
            b'"' => match string_end(rest, i) {
                Some((e, _)) => i = e,
                None => return false,
            },
            b'{' | b'[' => depth += 1,
            b'}' | b']' if depth > 0 => depth -= 1,
            b'}' => return skip_ws(rest, i + 1) == rest.len(),
            b']' => return false,
            _ => {}
        }
        i += 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn u(prompt: u64, completion: u64) -> Option<Usage> {
        Some(Usage { prompt, completion })
    }

    #[test]
    fn reads_openai_answers_from_the_end() {
        let body = br#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15,"prompt_tokens_details":{"cached_tokens":0}},"system_fingerprint":"fp_1"}"#;
        assert_eq!(from_the_end(body), Some(u(12, 3)));
        assert_eq!(body_usage(body), u(12, 3));
        let pretty = b"{\n  \"choices\": [],\n  \"usage\" : {\"prompt_tokens\": 5, \"completion_tokens\": 7}\n}\n";
        assert_eq!(from_the_end(pretty), Some(u(5, 7)));
        assert_eq!(from_the_end(br#"{"choices":[],"usage":null}"#), Some(None));
    }

    #[test]
    fn text_that_looks_like_usage_is_not_taken_for_it() {
        // A model's text can only hold escaped quotes: `\"usage\"` is not
        // the key, and the real usage before it is found.
        let body = r#"{"usage":{"prompt_tokens":100,"completion_tokens":50},"choices":[{"message":{"content":"\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}"}}]}"#;
        assert_eq!(from_the_end(body.as_bytes()), Some(u(100, 50)));
        // A key ending in `\"usage`: its `"usage"` has an escaped opening
        // quote, so the fast path is unsure and the full parse answers.
        let body = r#"{"usage":{"prompt_tokens":100,"completion_tokens":50},"a\"usage":{"prompt_tokens":1,"completion_tokens":1}}"#;
        assert_eq!(from_the_end(body.as_bytes()), None);
        assert_eq!(body_usage(body.as_bytes()), u(100, 50));
    }

    #[test]
    fn a_nested_usage_key_falls_back_to_the_full_parse() {
        let body = br#"{"usage":{"prompt_tokens":9,"completion_tokens":4},"choices":[{"x":{"usage":{"prompt_tokens":1}}}]}"#;
        assert_eq!(from_the_end(body), None);
        assert_eq!(body_usage(body), u(9, 4));
        assert_eq!(
            body_usage(br#"{"choices":[{"usage":{"prompt_tokens":1}}]}"#),
            None
        );
        assert_eq!(body_usage(b"not json"), None);
        assert_eq!(body_usage(br#"{"role":"usage"}"#), None);
        assert_eq!(body_usage(br#"{"usage":{"prompt_tokens":"x"}}"#), None);
    }

    fn value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(json!(null)),
            any::<u32>().prop_map(|n| json!(n)),
            "[ -~]{0,12}".prop_map(|s| json!(s)),
            Just(json!("\"usage\":{\"prompt_tokens\":1}}")),
            Just(json!("\\\\\"usage\":")),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                proptest::collection::vec(
                    (prop_oneof![Just("usage".to_string()), "[a-z]{1,6}"], inner),
                    0..4
                )
                .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// The fast path never disagrees with the full parse: when it
        /// answers, it answers what serde does.
        #[test]
        fn agrees_with_the_full_parse(
            before in proptest::collection::vec(("[a-z]{1,6}", value()), 0..4),
            usage in proptest::option::of((any::<u32>(), any::<u32>())),
            after in proptest::collection::vec(("[a-z]{1,6}", value()), 0..3),
            pretty in any::<bool>(),
        ) {
            let mut s = String::from("{");
            let mut members: Vec<String> = before
                .iter()
                .filter(|(k, _)| k != "usage")
                .map(|(k, v)| format!("{}:{}", json!(k), v))
                .collect();
            if let Some((p, c)) = usage {
                members.push(format!(r#""usage":{{"prompt_tokens":{p},"completion_tokens":{c}}}"#));
            }
            members.extend(after.iter().filter(|(k, _)| k != "usage").map(|(k, v)| format!("{}:{}", json!(k), v)));
            s.push_str(&members.join(if pretty { ",\n  " } else { "," }));
            s.push('}');
            let body = s.as_bytes();
            let reference = full_parse(body);
            if let Some(fast) = from_the_end(body) {
                prop_assert_eq!(fast, reference, "{}", s);
            }
            prop_assert_eq!(body_usage(body), reference);
            if let Some((p, c)) = usage {
                prop_assert_eq!(reference, u(u64::from(p), u64::from(c)));
            }
        }
    }
}
