//! Decoders for OpenAI streaming event data: what accounting needs from
//! one `chat.completion.chunk` (or legacy `text_completion`) event.
//!
//! The common event, a content delta, is read by a fast path (`fast.rs`)
//! that only searches for the few keys that matter; anything else (usage,
//! errors, tool calls, refusals, legacy text, an empty `choices`) takes one
//! serde_json pass into small borrowed structs: only `choices`,
//! `usage` and `error` are read, everything else is skipped without being
//! built (no `serde_json::Value`). Strings without escapes are borrowed
//! from the event; a string field of an unexpected JSON type is ignored
//! rather than failing the event, so an odd `content` cannot hide `usage`.
//!
//! Text reported to `on_text`, per choice in order: `delta.content`,
//! `delta.refusal`, each `delta.tool_calls[].function.arguments`, then the
//! legacy `text`. `message` is read like `delta`, so a non-streaming
//! response body decodes the same way.
//!
//! Tool call *names* (`function.name`) are not reported. OpenAI documents
//! how tool *definitions* count toward the prompt (cookbook "How to count
//! tokens with tiktoken") but not how a generated call is tokenised: the
//! arguments are model output text, while the name and the call framing
//! are emitted through special tokens the stream does not show. An
//! estimate from arguments alone is the documented part; the provider's
//! `usage` stays the truth.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::scanner::Event;

/// Token usage as the provider reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// `prompt_tokens`.
    pub prompt: u64,
    /// `completion_tokens`.
    pub completion: u64,
}

/// What one event's data says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decoded {
    /// `data: [DONE]`.
    pub done: bool,
    /// The event is an error (`{"error": ...}` or `event: error`).
    pub error: bool,
    /// `usage` was present and not null.
    pub usage: Option<Usage>,
    /// `choices` is an empty array and `usage` is present: the usage-only
    /// final chunk of `stream_options.include_usage`.
    pub usage_only: bool,
    /// Some choice carried a non-null `finish_reason`.
    pub finished: bool,
}

/// Decodes one event's data, calling `on_text` with every generated text
/// piece in order: `choices[].delta.content`, `delta.refusal`,
/// `delta.tool_calls[].function.arguments` (chat) and `choices[].text`
/// (legacy completions). Malformed JSON gives `Decoded::default()` and no
/// text: the stream is the provider's business, accounting just sees less.
pub fn decode(data: &[u8], mut on_text: impl FnMut(&str)) -> Decoded {
    if data.trim_ascii() == b"[DONE]" {
        return Decoded {
            done: true,
            ..Decoded::default()
        };
    }
    if let Some(d) = super::fast::decode(data, &mut on_text) {
        return d;
    }
    decode_full(data, on_text)
}

/// [`decode`] without the fast path: one serde_json pass (kept public for
/// the equivalence tests and benches).
pub fn decode_full(data: &[u8], mut on_text: impl FnMut(&str)) -> Decoded {
    if data.trim_ascii() == b"[DONE]" {
        return Decoded {
            done: true,
            ..Decoded::default()
        };
    }
    let Ok(chunk) = serde_json::from_slice::<Chunk<'_>>(data) else {
        return Decoded::default();
    };
    let usage = chunk.usage.map(|u| Usage {
        prompt: u.prompt_tokens.unwrap_or(0),
        completion: u.completion_tokens.unwrap_or(0),
    });
    let mut finished = false;
    for choice in &chunk.choices.list {
        finished |= choice.finish_reason.is_some();
        for part in [&choice.delta, &choice.message].into_iter().flatten() {
            part.content.emit(&mut on_text);
            part.refusal.emit(&mut on_text);
            for call in part.tool_calls.iter().flatten() {
                if let Some(f) = &call.function {
                    f.arguments.emit(&mut on_text);
                }
            }
        }
        choice.text.emit(&mut on_text);
    }
    Decoded {
        done: false,
        error: chunk.error.is_some(),
        usage_only: chunk.choices.present_empty && usage.is_some(),
        usage,
        finished,
    }
}

/// [`decode`] for a scanned event: also an error when the event type is
/// `error` (whatever its data).
pub fn decode_event(event: &Event<'_>, on_text: impl FnMut(&str)) -> Decoded {
    let mut d = decode(&event.data, on_text);
    d.error |= event.event.as_deref() == Some(b"error");
    d
}

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(borrow, default)]
    choices: Choices<'a>,
    #[serde(default)]
    usage: Option<RawUsage>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct RawUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
}

/// `choices`, remembering whether it was an empty array (as opposed to
/// absent or null).
#[derive(Default)]
struct Choices<'a> {
    list: Vec<Choice<'a>>,
    present_empty: bool,
}

impl<'de: 'a, 'a> Deserialize<'de> for Choices<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let list = Option::<Vec<Choice<'a>>>::deserialize(d)?;
        Ok(match list {
            Some(list) => Choices {
                present_empty: list.is_empty(),
                list,
            },
            None => Choices::default(),
        })
    }
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(borrow, default)]
    delta: Option<Part<'a>>,
    #[serde(borrow, default)]
    message: Option<Part<'a>>,
    #[serde(borrow, default)]
    text: Text<'a>,
    #[serde(default)]
    finish_reason: Option<IgnoredAny>,
}

/// A chat `delta` or `message`.
#[derive(Deserialize)]
struct Part<'a> {
    #[serde(borrow, default)]
    content: Text<'a>,
    #[serde(borrow, default)]
    refusal: Text<'a>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ToolCall<'a>>>,
}

#[derive(Deserialize)]
struct ToolCall<'a> {
    #[serde(borrow, default)]
    function: Option<Function<'a>>,
}

#[derive(Deserialize)]
struct Function<'a> {
    #[serde(borrow, default)]
    arguments: Text<'a>,
}

/// A string field: borrowed when it has no escapes; any other JSON type
/// (null, number, array, object) is skipped and reads as absent.
#[derive(Default)]
struct Text<'a>(Option<Cow<'a, str>>);

impl Text<'_> {
    fn emit(&self, on_text: &mut impl FnMut(&str)) {
        if let Some(s) = &self.0 {
            on_text(s);
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextVisitor(std::marker::PhantomData))
    }
}

struct TextVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for TextVisitor<'a> {
    type Value = Text<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Text(Some(Cow::Borrowed(v))))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Text(Some(Cow::Owned(v.to_owned()))))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Text(Some(Cow::Owned(v))))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Text(None))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Text(None))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Text(None))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Text(None))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Text(None))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Text(None))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Text(None))
    }
}

#[cfg(test)]
mod tests;
