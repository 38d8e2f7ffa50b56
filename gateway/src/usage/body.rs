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
//! The usage object itself is read by hand when it has the usual shape
//! (plain keys, the two counts as JSON integers, other members skipped as
//! validated values), and by serde otherwise.
//!
//! Anything else (no such key, a nested one, a value that is not an object
//! or `null`, a key spelled with `\u` escapes) falls back to the full
//! parse, which stays the reference. The one difference: a body with two
//! top-level `usage` members gets the last one here, where serde refuses
//! the duplicate (and the answer would have no usage).

use crate::json_bytes::{closes_top_level, quote_escaped, skip_ws};
use crate::sse::Usage;

#[derive(serde::Deserialize, Default)]
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
    // The last `"usage"`, found from its `u` (SIMD `memrchr`); the key
    // sits near the end, so this stops after a few candidates where a
    // reverse substring search pays its set-up on every answer.
    let at = memchr::memrchr_iter(b'u', body)
        .find(|&u| u > 0 && body[u - 1] == b'"' && body[u..].starts_with(&KEY[1..]))?
        - 1;
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
        let (usage, len) = match usage_object(&body[i..]) {
            Some(read) => read,
            None => {
                let mut values =
                    serde_json::Deserializer::from_slice(&body[i..]).into_iter::<Fields>();
                let fields = values.next()?.ok()?;
                (Usage::from(fields), values.byte_offset())
            }
        };
        (Some(usage), i + len)
    } else {
        return None;
    };
    closes_top_level(&body[end..]).then_some(usage)
}

/// The usage object at the start of `t` (which holds `{`) and its length,
/// read as serde reads [`Fields`], for the usual shape; `None` for
/// anything else (escaped or non-ASCII keys, a count that is not a plain
/// JSON integer that fits a u64, a duplicate count, invalid JSON), which
/// serde then answers. Shared with the stream decoder's fast path
/// (`sse::fast`), whose usage chunk holds the same object.
pub(crate) fn usage_object(t: &[u8]) -> Option<(Usage, usize)> {
    let mut prompt = None;
    let mut completion = None;
    let mut i = skip_ws(t, 1);
    if t.get(i) == Some(&b'}') {
        return Some((Usage::default(), i + 1));
    }
    loop {
        if t.get(i) != Some(&b'"') {
            return None;
        }
        let (count, end) = usage_key(t, i)?;
        i = skip_ws(t, end + 1);
        if t.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(t, i + 1);
        let count = match count {
            Some(Count::Prompt) => Some(&mut prompt),
            Some(Count::Completion) => Some(&mut completion),
            None => None,
        };
        i = match count {
            // serde refuses a duplicate field.
            Some(Some(_)) => return None,
            Some(slot) => {
                let (n, after) = json_u64(t, i)?;
                *slot = Some(n);
                after
            }
            // Other counts (`total_tokens`) are plain integers too: skipped
            // as one, any other value validated as serde would.
            None => match json_u64(t, i) {
                Some((_, after)) => after,
                None => crate::route::extract::value_end(t, i)?,
            },
        };
        i = skip_ws(t, i);
        match t.get(i) {
            Some(b',') => i = skip_ws(t, i + 1),
            Some(b'}') => {
                let usage = Usage {
                    prompt: prompt.unwrap_or(0),
                    completion: completion.unwrap_or(0),
                };
                return Some((usage, i + 1));
            }
            _ => return None,
        }
    }
}

/// The two counts serde reads.
enum Count {
    Prompt,
    Completion,
}

/// The key whose opening quote is at `t[at]`: which count it names, if
/// any, and where its closing quote is; `None` for a key serde must read
/// (escaped, non-ASCII, control characters) or no key at all.
fn usage_key(t: &[u8], at: usize) -> Option<(Option<Count>, usize)> {
    let rest = t.get(at + 1..)?;
    // OpenAI's keys, recognised with their closing quote in one compare.
    for (name, count) in [
        (&b"prompt_tokens\""[..], Some(Count::Prompt)),
        (b"completion_tokens\"", Some(Count::Completion)),
        (b"total_tokens\"", None),
    ] {
        if rest.starts_with(name) {
            return Some((count, at + name.len()));
        }
    }
    // Others (`prompt_tokens_details`, a provider's own): a byte loop,
    // keys are short. Anything but printable ASCII before the closing
    // quote (an escape included) is left to serde.
    let len = rest
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || !(0x20..0x80).contains(&c))?;
    if rest[len] != b'"' {
        return None;
    }
    // The counts' names were matched above, so this names neither.
    Some((None, at + 1 + len))
}

/// The JSON integer at `t[at..]` and the index after it, when it is one
/// that fits a u64 (no sign, fraction or exponent; no leading zero).
fn json_u64(t: &[u8], at: usize) -> Option<(u64, usize)> {
    let mut n = 0u64;
    let mut end = at;
    while let Some(&c) = t.get(end).filter(|c| c.is_ascii_digit()) {
        n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
        end += 1;
    }
    let digits = end - at;
    if digits == 0 || (digits > 1 && t[at] == b'0') {
        return None;
    }
    if matches!(t.get(end), Some(b'.' | b'e' | b'E')) {
        return None;
    }
    Some((n, end))
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

    fn member_value() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => any::<u64>().prop_map(|n| n.to_string()),
            4 => (0u64..1000).prop_map(|n| n.to_string()),
            1 => Just("18446744073709551616".to_string()),
            1 => Just("01".to_string()),
            1 => Just("1.0".to_string()),
            1 => Just("2e3".to_string()),
            1 => Just("-1".to_string()),
            1 => Just("null".to_string()),
            1 => Just("\"7\"".to_string()),
            1 => Just("{\"cached_tokens\":0,\"audio_tokens\":0}".to_string()),
            1 => Just("[1,2,]".to_string()),
            1 => Just("{\"a\":}".to_string()),
            1 => value().prop_map(|v| v.to_string()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// The hand reader of the usage object agrees with serde's: when
        /// it answers, it answers what serde does, to the same length.
        #[test]
        fn usage_object_agrees_with_serde(
            members in proptest::collection::vec((
                prop_oneof![
                    4 => Just("prompt_tokens"),
                    4 => Just("completion_tokens"),
                    2 => Just("total_tokens"),
                    1 => Just("prompt_tokens_details"),
                    1 => Just("prompt\\u005ftokens"),
                    1 => Just("x\u{1}"),
                    1 => Just("é"),
                ],
                member_value(),
            ), 0..5),
            ws in proptest::collection::vec(prop_oneof![Just(""), Just(" "), Just("\n  ")], 4),
            tail in prop_oneof![Just(""), Just("}"), Just(",\"x\":1}"), Just(" ]")],
        ) {
            let body: Vec<String> = members
                .iter()
                .map(|(k, v)| format!("{}\"{k}\"{}:{}{v}{}", ws[0], ws[1], ws[2], ws[3]))
                .collect();
            let text = format!("{{{}}}{tail}", body.join(","));
            let t = text.as_bytes();
            let mut values = serde_json::Deserializer::from_slice(t).into_iter::<Fields>();
            let reference = match values.next() {
                Some(Ok(f)) => Some((f.prompt_tokens, f.completion_tokens, values.byte_offset())),
                _ => None,
            };
            if let Some((f, len)) = usage_object(t) {
                prop_assert_eq!(Some((f.prompt, f.completion, len)), reference, "{}", text);
            }
            // The usual shape is read by hand, not left to serde.
            let plain = members.iter().all(|(k, v)| {
                k.is_ascii() && !k.contains('\\') && !k.contains('\u{1}')
                    && (!k.ends_with("_tokens") || k.starts_with("total") || v.parse::<u64>().is_ok_and(|n| n.to_string() == *v))
                    && serde_json::from_str::<serde_json::Value>(v).is_ok()
            });
            let counts: Vec<_> = members.iter().map(|(k, _)| *k).filter(|k| *k == "prompt_tokens" || *k == "completion_tokens").collect();
            let unique = counts.iter().collect::<std::collections::HashSet<_>>().len() == counts.len();
            if plain && unique {
                prop_assert!(usage_object(t).is_some(), "{}", text);
            }
        }

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
