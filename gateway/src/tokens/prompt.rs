//! Prompt tokens of chat, completions and embeddings requests.
//!
//! # Chat format
//!
//! OpenAI's cookbook "How to count tokens with tiktoken"
//! (`num_tokens_from_messages`, the rules for gpt-3.5-turbo-0125,
//! gpt-4-0613, gpt-4o and gpt-4o-mini; the cookbook checks it against the
//! API's `prompt_tokens`): every message costs [`PER_MESSAGE`] tokens plus
//! the tokens of each of its string fields (`role`, `content`, `name`,
//! `tool_call_id`, ...), a `name` field one more ([`PER_NAME`]), and the
//! reply is primed with [`REPLY_PRIMING`] tokens
//! (`<|start|>assistant<|message|>`). Content arrays count the `text` (and
//! `refusal`) of their parts. For text-only chats this is exact.
//!
//! Approximate (OpenAI documents none of these; the estimate is what the
//! quota check sees, the provider's usage stays the truth):
//! - Tool and function definitions: see `tools` (the cookbook's
//!   `num_tokens_for_tools`).
//! - Tool calls in assistant messages (`tool_calls[].function`, legacy
//!   `function_call`): the `name` and `arguments` text plus
//!   [`PER_TOOL_CALL`] tokens per call. The constant is fitted to the one
//!   public measurement found (OpenAI community forum, "Strange token cost
//!   calculation for tool_calls": gpt-3.5-turbo, one call and its result,
//!   40 prompt tokens; test `tools_community_tool_call_example`). The same
//!   thread reports a one-off extra of about 24 tokens once a chat has a
//!   second call; that is not modelled.
//! - Images, audio and file parts are not counted (undercount).
//!
//! # Completions and embeddings
//!
//! `prompt` / `input`: a string, an array of strings, an array of token ids
//! or an array of arrays of token ids; strings count their tokens, token
//! arrays their length. No per-request overhead.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::MapAccess;
use serde_json::Value;

use super::parse::{Fields, List, Obj, Str, WithFunction, ignore_rest, skip};
use super::{Counting, Encoding, cache, tools};

/// Tokens per message (`<|start|>{role}<|message|>…<|end|>` framing).
pub(super) const PER_MESSAGE: u64 = 3;
/// Extra tokens for a message with a `name`.
pub(super) const PER_NAME: u64 = 1;
/// Tokens priming the reply.
pub(super) const REPLY_PRIMING: u64 = 3;
/// Framing tokens per tool call in an assistant message (approximate, see
/// the module doc).
pub(super) const PER_TOOL_CALL: u64 = 3;

/// One message: the texts it is charged for and its framing.
#[derive(Debug, Default)]
pub(super) struct Message<'a> {
    /// Every counted text: string fields, text parts, call names and
    /// arguments.
    texts: Vec<Cow<'a, str>>,
    /// Has a `name` field.
    name: bool,
    /// Tool / function calls.
    calls: u64,
}

impl<'de> Fields<'de> for Message<'de> {
    fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "tool_calls" => {
                let calls: List<Obj<ToolCall<'de>>> = map.next_value()?;
                for call in calls.0.into_iter().flatten() {
                    self.calls += 1;
                    if let Some(f) = call.0.and_then(|c| c.function.0) {
                        self.texts.extend(f.name.0);
                        self.texts.extend(f.arguments.0);
                    }
                }
            }
            "function_call" => {
                let call: Obj<FunctionCall<'de>> = map.next_value()?;
                if let Some(f) = call.0 {
                    self.calls += 1;
                    self.texts.extend(f.name.0);
                    self.texts.extend(f.arguments.0);
                }
            }
            _ => {
                if key == "name" {
                    self.name = true;
                }
                let c: Content<'de> = map.next_value()?;
                match c {
                    Content::None => {}
                    Content::Text(t) => self.texts.push(t),
                    Content::Parts(parts) => {
                        for p in parts.into_iter().flat_map(|p| p.0) {
                            self.texts.extend(p.text.0);
                            self.texts.extend(p.refusal.0);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// A message field's value: a string, an array of content parts, or
/// something not counted.
enum Content<'a> {
    None,
    Text(Cow<'a, str>),
    Parts(Vec<Obj<Part<'a>>>),
}

impl<'de> Deserialize<'de> for Content<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{self, SeqAccess, Visitor};
        use std::fmt;
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Content<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Content<'de>, E> {
                Ok(Content::Text(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Content<'de>, E> {
                Ok(Content::Text(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Content<'de>, E> {
                Ok(Content::Text(Cow::Owned(s)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Content<'de>, A::Error> {
                let mut parts = Vec::new();
                while let Some(p) = seq.next_element()? {
                    parts.push(p);
                }
                Ok(Content::Parts(parts))
            }
            ignore_rest!(Content::None; bool num unit map);
        }
        d.deserialize_any(V)
    }
}

/// A content part: `{"type": "text", "text": …}` or a refusal part.
#[derive(Debug, Default)]
struct Part<'a> {
    text: Str<'a>,
    refusal: Str<'a>,
}

impl<'de> Fields<'de> for Part<'de> {
    fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "text" => self.text = map.next_value()?,
            "refusal" => self.refusal = map.next_value()?,
            _ => skip(map)?,
        }
        Ok(())
    }
}

/// `tool_calls[]` item.
type ToolCall<'a> = WithFunction<FunctionCall<'a>>;

/// A call's `function`: `{"name", "arguments"}`.
#[derive(Debug, Default)]
struct FunctionCall<'a> {
    name: Str<'a>,
    arguments: Str<'a>,
}

impl<'de> Fields<'de> for FunctionCall<'de> {
    fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "name" => self.name = map.next_value()?,
            "arguments" => self.arguments = map.next_value()?,
            _ => skip(map)?,
        }
        Ok(())
    }
}

/// The counted parts of a chat request body.
#[derive(Debug, Default)]
struct ChatBody<'a> {
    messages: List<Obj<Message<'a>>>,
    tools: List<Obj<tools::Tool<'a>>>,
    functions: List<Obj<tools::Function<'a>>>,
}

impl<'de> Fields<'de> for ChatBody<'de> {
    fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "messages" => self.messages = map.next_value()?,
            "tools" => self.tools = map.next_value()?,
            "functions" => self.functions = map.next_value()?,
            _ => skip(map)?,
        }
        Ok(())
    }
}

/// Prompt tokens of a `/v1/chat/completions` request body: messages by
/// the cookbook's rules, plus tool / function definitions (see the module
/// doc for what is approximate). `None` when the body is not a JSON object
/// with a `messages` array.
pub fn chat_prompt_tokens(enc: Encoding, body: &[u8]) -> Option<u64> {
    chat_prompt_tokens_with(enc, body, Counting::DEFAULT)
}

/// [`chat_prompt_tokens`] with a chosen engine and caching (benches).
pub fn chat_prompt_tokens_with(enc: Encoding, body: &[u8], how: Counting) -> Option<u64> {
    let body: Obj<ChatBody<'_>> = serde_json::from_slice(body).ok()?;
    chat_body(enc, body.0?, how)
}

/// [`chat_prompt_tokens`] of a body that [`crate::route::extract`]
/// already scanned (the gateway's path): the same count, but each
/// message is looked up by its raw bytes first and parsed only when this
/// worker has not counted those exact bytes recently. A body with tool or
/// function definitions takes the full parse.
pub fn chat_prompt_tokens_scanned(
    enc: Encoding,
    body: &[u8],
    info: &crate::route::BodyInfo<'_>,
) -> Option<u64> {
    chat_prompt_tokens_scanned_with(enc, body, info, Counting::DEFAULT)
}

/// [`chat_prompt_tokens_scanned`] with a chosen engine and caching.
pub fn chat_prompt_tokens_scanned_with(
    enc: Encoding,
    body: &[u8],
    info: &crate::route::BodyInfo<'_>,
    how: Counting,
) -> Option<u64> {
    if info.tool_definitions {
        return chat_prompt_tokens_with(enc, body, how);
    }
    let mut n = REPLY_PRIMING;
    for item in info.messages.as_ref()? {
        let raw = body.get(item.clone())?;
        n += PER_MESSAGE;
        n += cache::message_tokens(enc, raw, how, || {
            let m: Obj<Message<'_>> = serde_json::from_slice(raw).ok()?;
            Some(m.0.map_or(0, |m| {
                let texts = m.texts.iter().map(|t| enc.count_with(t, how.engine) as u64);
                PER_NAME * u64::from(m.name) + PER_TOOL_CALL * m.calls + texts.sum::<u64>()
            }))
        })?;
    }
    Some(n)
}

/// [`chat_prompt_tokens`] of an already parsed body (the mock).
pub fn chat_prompt_tokens_value(enc: Encoding, body: &Value) -> Option<u64> {
    let body = Obj::<ChatBody<'_>>::deserialize(body).ok()?;
    chat_body(enc, body.0?, Counting::DEFAULT)
}

fn chat_body(enc: Encoding, body: ChatBody<'_>, how: Counting) -> Option<u64> {
    let messages = body.messages.0?;
    let mut n = messages_tokens(enc, &messages, how);
    let defs = body
        .tools
        .0
        .into_iter()
        .flatten()
        .filter_map(|t| t.0.and_then(|t| t.function.0))
        .chain(body.functions.0.into_iter().flatten().filter_map(|f| f.0));
    n += tools::definitions_tokens(enc, defs, how);
    Some(n)
}

/// Messages plus reply priming.
fn messages_tokens(enc: Encoding, messages: &[Obj<Message<'_>>], how: Counting) -> u64 {
    let mut n = REPLY_PRIMING;
    for m in messages {
        n += PER_MESSAGE;
        if let Some(m) = &m.0 {
            n += PER_NAME * u64::from(m.name) + PER_TOOL_CALL * m.calls;
            n += cache::texts_tokens(enc, &m.texts, how);
        }
    }
    n
}

/// [`Encoding::chat_prompt`]: `messages` already parsed.
pub(super) fn messages_value(enc: Encoding, messages: &[Value], how: Counting) -> u64 {
    let parsed: Vec<Obj<Message<'_>>> = messages
        .iter()
        .map(|m| Obj::deserialize(m).unwrap_or_default())
        .collect();
    messages_tokens(enc, &parsed, how)
}

/// `prompt` / `input`: strings and token-id arrays.
#[derive(Debug, Default)]
struct Input<'a> {
    texts: Vec<Cow<'a, str>>,
    ids: u64,
}

/// A `prompt` / `input` value or one of its array items.
enum InputItem<'a> {
    Text(Cow<'a, str>),
    Id,
    Ids(u64),
    Other,
}

impl<'de> Deserialize<'de> for InputItem<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{self, IgnoredAny, SeqAccess, Visitor};
        use std::fmt;
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = InputItem<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(InputItem::Text(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(InputItem::Text(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(InputItem::Text(Cow::Owned(s)))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(InputItem::Id)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(InputItem::Id)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(InputItem::Other)
            }
            ignore_rest!(InputItem::Other; bool unit map);
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                // Only reached for a nested array: count its elements
                // (token ids).
                let mut n = 0;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(InputItem::Ids(n))
            }
        }
        d.deserialize_any(V)
    }
}

/// The top-level `prompt` / `input` value: a string or an array of
/// [`InputItem`]s; `None` for anything else.
#[derive(Debug, Default)]
struct InputValue<'a>(Option<Input<'a>>);

impl<'de> Deserialize<'de> for InputValue<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut input = Input::default();
        let items = match TopInput::deserialize(d)? {
            TopInput::One(InputItem::Text(t)) => vec![InputItem::Text(t)],
            TopInput::One(_) => return Ok(InputValue(None)),
            TopInput::Many(items) => items,
        };
        for item in items {
            match item {
                InputItem::Text(t) => input.texts.push(t),
                InputItem::Id => input.ids += 1,
                InputItem::Ids(n) => input.ids += n,
                InputItem::Other => {}
            }
        }
        Ok(InputValue(Some(input)))
    }
}

/// A top-level array is a list of items; anything else is one item.
enum TopInput<'a> {
    One(InputItem<'a>),
    Many(Vec<InputItem<'a>>),
}

impl<'de> Deserialize<'de> for TopInput<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{self, SeqAccess, Visitor};
        use std::fmt;
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TopInput<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(TopInput::One(InputItem::Text(Cow::Borrowed(s))))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(TopInput::One(InputItem::Text(Cow::Owned(s.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(TopInput::One(InputItem::Text(Cow::Owned(s))))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(TopInput::Many(items))
            }
            ignore_rest!(TopInput::One(InputItem::Other); bool num unit map);
        }
        d.deserialize_any(V)
    }
}

/// A body with one counted field, `prompt` or `input`.
#[derive(Debug, Default)]
struct InputBody<'a, const EMBEDDINGS: bool>(InputValue<'a>);

impl<'de, const EMBEDDINGS: bool> Fields<'de> for InputBody<'de, EMBEDDINGS> {
    fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        let want = if EMBEDDINGS { "input" } else { "prompt" };
        if key == want {
            self.0 = map.next_value()?;
            Ok(())
        } else {
            skip(map)
        }
    }
}

fn input_tokens<const EMBEDDINGS: bool>(enc: Encoding, body: &[u8]) -> Option<u64> {
    let body: Obj<InputBody<'_, EMBEDDINGS>> = serde_json::from_slice(body).ok()?;
    let input = body.0?.0.0?;
    let mut n = input.ids;
    for t in &input.texts {
        n += cache::texts_tokens(enc, std::slice::from_ref(t), Counting::DEFAULT);
    }
    Some(n)
}

/// Prompt tokens of a `/v1/completions` request body (`prompt`: string,
/// strings, token ids or arrays of token ids). `None` when the body has no
/// usable `prompt`.
pub fn completion_prompt_tokens(enc: Encoding, body: &[u8]) -> Option<u64> {
    input_tokens::<false>(enc, body)
}

/// Input tokens of a `/v1/embeddings` request body (`input`, same shapes
/// as `prompt`). `None` when the body has no usable `input`.
pub fn embeddings_input_tokens(enc: Encoding, body: &[u8]) -> Option<u64> {
    input_tokens::<true>(enc, body)
}
