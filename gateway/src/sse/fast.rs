//! The fast path of the event decoder, for the events that make up almost
//! every stream: a content delta (`{"choices":[{"delta":{"content":"…"}}],
//! "usage":null, …}`) and the usage chunk that ends it
//! (`{"choices":[],"usage":{"prompt_tokens":…}, …}`).
//!
//! Why: a full serde_json pass costs ~0.45 µs per event on this machine,
//! more than relaying the event; a 1,000-event stream spent more CPU in
//! the gateway than in nginx because of it, and the one usage chunk of a
//! short stream still cost a tenth of the stream's user-space
//! instructions. This path walks the event's strings once, 16 bytes at a step
//! (every key is a string followed by `:`) and looks only at the keys
//! accounting needs. It gives up, and the caller runs the full decoder,
//! on anything it does not handle exactly like the full decoder: `error`,
//! `tool_calls`, `refusal`, `text` or `message` that is not null, a
//! `content` that is neither a string nor null, an escaped key, more than
//! [`MAX_PIECES`] text pieces, invalid UTF-8 or a bad escape; and for
//! usage, anything but one `usage` key, a member of the top-level object,
//! whose object has the usual shape (the counts as plain integers; read by
//! `usage::body`'s reader, which answers as serde does or not at all), and
//! an empty `choices` that is not the only `choices` or sits anywhere but
//! the top level. Text is reported only once the whole event was read, so
//! giving up never reports a piece twice.
//!
//! It does not validate the JSON around those keys: an event that is not
//! JSON but looks like a content delta yields its text here where the full
//! decoder would yield none, and a usage chunk with broken JSON elsewhere
//! yields its usage where the full decoder would drop it. Providers'
//! events are JSON; accounting of a broken provider is an estimate either
//! way.

use std::borrow::Cow;

use super::decode::Decoded;
use crate::json_bytes::{brackets, closes_top_level, next_quote, string_end};
use crate::usage::body::usage_object;

/// Most text pieces (choices) read on the fast path.
pub const MAX_PIECES: usize = 4;

fn skip_ws(t: &[u8], mut i: usize) -> usize {
    while t.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
        i += 1;
    }
    i
}

/// The string value `t[open..=close]` as text.
fn text(t: &[u8], open: usize, close: usize, escaped: bool) -> Option<Cow<'_, str>> {
    if escaped {
        serde_json::from_slice::<String>(t.get(open..=close)?)
            .ok()
            .map(Cow::Owned)
    } else {
        std::str::from_utf8(t.get(open + 1..close)?)
            .ok()
            .map(Cow::Borrowed)
    }
}

/// Decodes a content-delta event, or `None` when the full decoder must.
pub fn decode(data: &[u8], on_text: &mut impl FnMut(&str)) -> Option<Decoded> {
    let t = data.trim_ascii();
    if t.first() != Some(&b'{') || t.last() != Some(&b'}') {
        return None;
    }
    let mut d = Decoded::default();
    let mut pieces: [Option<Cow<'_, str>>; MAX_PIECES] = Default::default();
    let mut n = 0;
    let mut i = 0;
    // `usage` and `choices` keys seen at any depth; where an empty
    // `choices` key is.
    let (mut usage_keys, mut choices_keys, mut empty_choices) = (0u32, 0u32, None);
    while let Some(open) = next_quote(t, i) {
        let (close, escaped) = string_end(t, open)?;
        let colon = skip_ws(t, close + 1);
        if t.get(colon) != Some(&b':') {
            // A string value, not a key.
            i = close + 1;
            continue;
        }
        if escaped {
            return None;
        }
        let v = skip_ws(t, colon + 1);
        let next = t.get(v).copied();
        match &t[open + 1..close] {
            b"content" => match next {
                Some(b'"') => {
                    let (end, esc) = string_end(t, v)?;
                    let slot = pieces.get_mut(n)?;
                    *slot = Some(text(t, v, end, esc)?);
                    n += 1;
                    i = end + 1;
                    continue;
                }
                Some(b'n') => {}
                _ => return None,
            },
            b"usage" => {
                usage_keys += 1;
                match next {
                    Some(b'n') => {}
                    Some(b'{') => {
                        // A member of the outermost object: what follows
                        // its value closes exactly one object, the last.
                        let (usage, len) = usage_object(&t[v..])?;
                        if !closes_top_level(&t[v + len..]) {
                            return None;
                        }
                        d.usage = Some(usage);
                        i = v + len;
                        continue;
                    }
                    _ => return None,
                }
            }
            b"refusal" | b"text" if next != Some(b'n') => return None,
            b"error" | b"tool_calls" | b"message" => return None,
            b"choices" => {
                choices_keys += 1;
                if next == Some(b'[') && t.get(skip_ws(t, v + 1)) == Some(&b']') {
                    empty_choices = Some(open);
                }
            }
            b"finish_reason" => d.finished |= next != Some(b'n'),
            _ => {}
        }
        i = v;
    }
    // serde refuses a duplicate member; a nested one it ignores, and
    // telling the two apart is the full decoder's job.
    if (d.usage.is_some() && usage_keys > 1)
        || (empty_choices.is_some() && (choices_keys > 1 || n > 0))
    {
        return None;
    }
    // An empty `choices` matters only beside usage (the usage-only chunk);
    // only then is its depth looked at.
    if let (Some(at), Some(_)) = (empty_choices, d.usage) {
        if !top_level(t, at) {
            return None;
        }
        d.usage_only = true;
    }
    for p in pieces.iter().flatten() {
        on_text(p);
    }
    Some(d)
}

/// The key whose opening quote is at `key` is a member of the outermost
/// object (`t[0]`, a `{`): one level deep, and that object did not close
/// before it. Walks what precedes it, strings skipped whole; called only
/// for the rare keys whose depth matters.
fn top_level(t: &[u8], key: usize) -> bool {
    // Strings before the key end before it: the decoder found the key by
    // walking them.
    let Some(before) = t.get(..key) else {
        return false;
    };
    let mut depth = 0usize;
    for (_, c) in brackets(before) {
        match c {
            b'{' | b'[' => depth += 1,
            // A string that does not end.
            b'"' => return false,
            _ => match depth.checked_sub(1) {
                Some(d) if d > 0 => depth = d,
                _ => return false,
            },
        }
    }
    depth == 1
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::super::decode::{decode, decode_full};

    fn both(data: &[u8]) -> ((super::Decoded, Vec<String>), (super::Decoded, Vec<String>)) {
        let mut a = Vec::new();
        let da = decode(data, |t| a.push(t.to_owned()));
        let mut b = Vec::new();
        let db = decode_full(data, |t| b.push(t.to_owned()));
        ((da, a), (db, b))
    }

    #[test]
    fn content_deltas_take_the_fast_path() {
        let ev = br#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"Hi \"x\""},"logprobs":null,"finish_reason":null}],"usage":null}"#;
        let mut got = Vec::new();
        let d = super::decode(ev, &mut |t: &str| got.push(t.to_owned())).unwrap();
        assert_eq!(got, ["Hi \"x\""]);
        assert!(!d.finished);
        let (fast, full) = both(ev);
        assert_eq!(fast, full);
    }

    #[test]
    fn everything_else_goes_to_the_full_decoder() {
        for ev in [
            &br#"{"error":{"message":"x"}}"#[..],
            // Usage the fast path cannot tell from serde's answer: nested,
            // duplicated, after the outermost object, an unusual count.
            br#"{"x":{"usage":{"prompt_tokens":1}},"choices":[]}"#,
            br#"{"choices":[],"usage":{"prompt_tokens":1},"usage":null}"#,
            br#"{"usage":null,"choices":[],"usage":{"prompt_tokens":1}}"#,
            br#"{"choices":[],"usage":{"prompt_tokens":1.0}}"#,
            br#"{"choices":[],"usage":{"prompt_tokens":null}}"#,
            br#"{"choices":[],"usage":{"prompt_tokens":1,"prompt_tokens":2}}"#,
            br#"{"choices":[],"usage":{"prompt_\u0074okens":1}}"#,
            br#"{"choices":[],"usage":[1]}"#,
            br#"{"choices":[],"choices":[{"delta":{"content":"x"}}],"usage":{}}"#,
            br#"{"x":{"choices":[]},"usage":{"prompt_tokens":1}}"#,
            br#"{"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"{}"}}]}}]}"#,
            br#"{"choices":[{"delta":{"refusal":"no"}}]}"#,
            br#"{"choices":[{"text":"legacy"}]}"#,
            br#"{"choices":[{"message":{"content":"x"}}]}"#,
            br#"{"choices":[{"delta":{"content":["a"]}}]}"#,
            br#"{"choices":[{"delta":{"con\u0074ent":"x"}}]}"#,
            br#"{"choices":[{"delta":{"content":"bad \x"}}]}"#,
            br#"[1]"#,
        ] {
            assert!(
                super::decode(ev, &mut |_: &str| {}).is_none(),
                "{}",
                String::from_utf8_lossy(ev)
            );
            let (fast, full) = both(ev);
            assert_eq!(fast, full, "{}", String::from_utf8_lossy(ev));
        }
    }

    #[test]
    fn usage_chunks_take_the_fast_path() {
        let ev = br#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0}},"obfuscation":"usage"}"#;
        let d = super::decode(ev, &mut |_: &str| panic!("no text")).unwrap();
        assert_eq!(
            d.usage,
            Some(crate::sse::Usage {
                prompt: 12,
                completion: 3
            })
        );
        assert!(d.usage_only && !d.finished);
        let (fast, full) = both(ev);
        assert_eq!(fast, full);
        // Usage on a content delta (vLLM's continuous usage stats).
        let ev = br#"{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}],"usage":{"prompt_tokens":4,"completion_tokens":1}}"#;
        let mut got = Vec::new();
        let d = super::decode(ev, &mut |t: &str| got.push(t.to_owned())).unwrap();
        assert_eq!(got, ["Hi"]);
        assert!(d.usage.is_some() && !d.usage_only);
        let (fast, full) = both(ev);
        assert_eq!(fast, full);
    }

    fn chunk(contents: Vec<Option<String>>, finish: bool, usage_null: bool, extra: bool) -> Value {
        let choices: Vec<Value> = contents
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                json!({
                    "index": i,
                    "delta": match c { Some(c) => json!({"content": c}), None => json!({"role": "assistant", "content": null}) },
                    "logprobs": null,
                    "finish_reason": if finish { json!("stop") } else { Value::Null },
                })
            })
            .collect();
        let mut v = json!({
            "id": "chatcmpl-\"x\"",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": "gpt-4o",
            "choices": choices,
        });
        if usage_null {
            v["usage"] = Value::Null;
        }
        if extra {
            v["system_fingerprint"] = json!("fp_: \"content\": \"no\"");
            v["x_meta"] = json!({"nested": {"k": [1, "two", {"three": null}]}});
        }
        v
    }

    proptest! {
        #[test]
        fn fast_and_full_decoders_agree(
            contents in proptest::collection::vec(proptest::option::of(any::<String>()), 1..6),
            finish in any::<bool>(),
            usage_null in any::<bool>(),
            extra in any::<bool>(),
            pretty in any::<bool>(),
        ) {
            let v = chunk(contents, finish, usage_null, extra);
            let s = if pretty { serde_json::to_string_pretty(&v).unwrap() } else { v.to_string() };
            let (fast, full) = both(s.as_bytes());
            prop_assert_eq!(fast, full, "{}", s);
        }

        /// Usage chunks (an empty `choices`) and usage on content deltas:
        /// the fast path answers what serde does, and answers itself
        /// unless another `usage` key sits somewhere in the event.
        #[test]
        fn fast_and_full_decoders_agree_on_usage(
            prompt in any::<u64>(),
            completion in any::<u64>(),
            details in any::<bool>(),
            contents in proptest::collection::vec(proptest::option::of(any::<String>()), 0..3),
            nested in any::<bool>(),
            pretty in any::<bool>(),
        ) {
            let mut usage = json!({
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt / 2 + completion / 2,
            });
            if details {
                usage["prompt_tokens_details"] = json!({"cached_tokens": 0, "usage": {"x": [1, "}"]}});
            }
            let mut v = chunk(contents, false, false, true);
            v["usage"] = usage;
            if nested {
                v["x_meta"]["usage"] = json!({"prompt_tokens": 1});
            }
            let s = if pretty { serde_json::to_string_pretty(&v).unwrap() } else { v.to_string() };
            let (fast, full) = both(s.as_bytes());
            prop_assert_eq!(&fast, &full, "{}", s);
            prop_assert!(full.0.usage.is_some());
            let answered = super::decode(s.as_bytes(), &mut |_: &str| {}).is_some();
            prop_assert_eq!(answered, !nested, "{}", s);
        }
    }
}
