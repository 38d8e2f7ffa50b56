//! Token counting with OpenAI's BPE encodings, for the quota check (prompt
//! tokens before forwarding) and the stream accountant (completion text
//! when the provider sends no usage).
//!
//! - [`Encoding`]: o200k_base or cl100k_base, chosen per served model
//!   ([`Encoding::for_model`]) or by the per-model config setting
//!   ([`Tokenizer`], [`resolve`]).
//! - [`Encoding::count`]: tokens of a text, identical to tiktoken's
//!   `encode_ordinary(text).len()` (special-token text counts as ordinary
//!   text, as the API does for user content).
//! - [`chat_prompt_tokens`], [`completion_prompt_tokens`],
//!   [`embeddings_input_tokens`]: prompt tokens of a raw request body,
//!   parsed into borrowed views (`parse`), counted by the rules in `prompt`
//!   and `tools`.
//!
//! # Implementation
//!
//! Counting uses the `bpe-openai` crate (GitHub's `rust-gems`), which
//! splits text with the same pre-tokenizer pattern as tiktoken and counts
//! each piece with an exact BPE, plus a per-worker cache of short pieces
//! (`bpe`). It was chosen over tiktoken-rs by measurement
//! (`benches/RESULTS.md`, "Token counting"); tiktoken-rs stays as the
//! reference the tests compare against ([`Engine::Tiktoken`]).
//!
//! Chats resend their history every turn, so each message's count is kept
//! in a bounded per-worker cache (`cache`): only new messages cost BPE
//! work. Both caches are `thread_local`: no locks on the request path.
//!
//! Encoders are built once per process on first use (about 45 ms for
//! o200k_base, 20 ms for cl100k_base) and shared read-only by every thread;
//! [`warm_up`] builds the ones the configured models use ahead of the first
//! request.
//!
//! # Failure behavior
//!
//! Fail-open. Counting needs no I/O and cannot fail on valid UTF-8; a body
//! that is not JSON or not shaped like the API's request gives `None`
//! ("not counted"), and the caller forwards the request anyway: the
//! provider rejects such bodies itself, and the provider's `usage` remains
//! the truth for billing. The estimate is exact for text-only chats and
//! approximate where OpenAI does not document its accounting (tools,
//! tool calls, images): see `prompt` and `tools`.

mod bpe;
mod cache;
mod parse;
mod prompt;
mod tools;

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;
use serde_json::Value;

pub use prompt::{
    chat_prompt_tokens, chat_prompt_tokens_scanned, chat_prompt_tokens_scanned_with,
    chat_prompt_tokens_value, chat_prompt_tokens_with, completion_prompt_tokens,
    embeddings_input_tokens,
};

/// A BPE encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// o200k_base: gpt-4o, gpt-4.1, gpt-4.5, gpt-5, o1, o3, o4,
    /// chatgpt-4o (and gpt-oss, whose o200k_harmony only adds special
    /// tokens).
    O200k,
    /// cl100k_base: gpt-4, gpt-3.5, text-embedding-*, and the documented
    /// default for unknown families.
    Cl100k,
}

/// Model-name prefixes of the o200k_base families.
const O200K_FAMILIES: &[&str] = &[
    "gpt-4o",
    "gpt-4.1",
    "gpt-4.5",
    "gpt-5",
    "o1",
    "o3",
    "o4",
    "chatgpt-4o",
    "gpt-oss",
];

impl Encoding {
    /// The encoding OpenAI uses for a model. A provider prefix
    /// (`openai/gpt-4o`) and a fine-tune prefix (`ft:gpt-4o-mini:org::id`)
    /// are skipped; a family matches when the name equals it or continues
    /// with `-`, `.`, `:`, `_` or `@` (so `o1-mini` but not `o1x`).
    /// Unknown families (other vendors, Azure deployment names) get
    /// cl100k_base, the documented default; set `tokenizer` per model in
    /// the config to override.
    pub fn for_model(model: &str) -> Encoding {
        // After the last `/` (a byte scan: `rsplit` runs a char searcher).
        let name = match model.bytes().rposition(|b| b == b'/') {
            Some(slash) => &model[slash + 1..],
            None => model,
        };
        let name = name.strip_prefix("ft:").unwrap_or(name);
        let family = |p: &&str| {
            name.strip_prefix(*p)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['-', '.', ':', '_', '@']))
        };
        if O200K_FAMILIES.iter().any(family) {
            Encoding::O200k
        } else {
            Encoding::Cl100k
        }
    }

    /// Config name.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::O200k => "o200k_base",
            Encoding::Cl100k => "cl100k_base",
        }
    }

    /// Tokens in `text`, special-token text counted as ordinary text (as
    /// the API does for user content). Equal to tiktoken's
    /// `encode_ordinary(text).len()`. The fast path: bpe-openai with the
    /// per-worker piece cache; used for prompts and for completion text.
    pub fn count(self, text: &str) -> usize {
        bpe::count(self, text)
    }

    /// [`Encoding::count`] with a chosen implementation (tests, benches).
    pub fn count_with(self, text: &str, engine: Engine) -> usize {
        match engine {
            Engine::Bpe => bpe::count(self, text),
            Engine::BpePlain => bpe::count_plain(self, text),
            Engine::Tiktoken => self.tiktoken().encode_ordinary(text).len(),
        }
    }

    fn tiktoken(self) -> &'static tiktoken_rs::CoreBPE {
        match self {
            Encoding::O200k => tiktoken_rs::o200k_base_singleton(),
            Encoding::Cl100k => tiktoken_rs::cl100k_base_singleton(),
        }
    }

    /// Prompt tokens of a chat request's `messages` (already parsed, as the
    /// mock has them): the same rules and caches as
    /// [`chat_prompt_tokens`], so the mock's `usage.prompt_tokens` and the
    /// gateway's estimate agree. Tool definitions are not part of
    /// `messages`; [`chat_prompt_tokens_value`] counts the whole body.
    pub fn chat_prompt(self, messages: &[Value]) -> usize {
        let n = prompt::messages_value(self, messages, Counting::DEFAULT);
        usize::try_from(n).unwrap_or(usize::MAX)
    }
}

/// Which BPE implementation counts (all give identical counts; the tests
/// check it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// bpe-openai with the per-worker piece cache (production).
    Bpe,
    /// bpe-openai without the piece cache.
    BpePlain,
    /// tiktoken-rs `encode_ordinary` (the reference).
    Tiktoken,
}

/// How prompt counting runs: [`Counting::DEFAULT`] in production, the
/// others for benches and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counting {
    /// BPE implementation.
    pub engine: Engine,
    /// Use the per-worker message cache.
    pub message_cache: bool,
}

impl Counting {
    /// bpe-openai with both caches.
    pub const DEFAULT: Counting = Counting {
        engine: Engine::Bpe,
        message_cache: true,
    };
}

/// Builds the encoders `encs` now rather than on the first request that
/// needs one. Each costs tens of MB resident (measured, release build:
/// o200k_base 84 MB, cl100k_base 44 MB, against 29 MB for the rest of an
/// idle gateway) and tens of ms to build, so only those the configured
/// models use are built; another is built on first use.
pub fn warm_up(encs: &[Encoding]) {
    for enc in encs {
        enc.count("warm");
    }
}

/// The per-model `tokenizer` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tokenizer {
    /// `"o200k_base"`
    O200kBase,
    /// `"cl100k_base"`
    Cl100kBase,
    /// `"none"`: do not count this model's tokens (no estimate; only the
    /// provider's usage is recorded).
    None,
}

/// The config names of [`Tokenizer`], in error messages.
const TOKENIZER_NAMES: &str = "\"o200k_base\", \"cl100k_base\", \"none\"";

/// A `tokenizer` value that names no tokenizer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown tokenizer {0:?}: expected one of \"o200k_base\", \"cl100k_base\", \"none\"")]
pub struct UnknownTokenizer(pub String);

impl FromStr for Tokenizer {
    type Err = UnknownTokenizer;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "o200k_base" => Ok(Tokenizer::O200kBase),
            "cl100k_base" => Ok(Tokenizer::Cl100kBase),
            "none" => Ok(Tokenizer::None),
            other => Err(UnknownTokenizer(other.to_owned())),
        }
    }
}

impl Tokenizer {
    /// Config name.
    pub fn name(self) -> &'static str {
        match self {
            Tokenizer::O200kBase => "o200k_base",
            Tokenizer::Cl100kBase => "cl100k_base",
            Tokenizer::None => "none",
        }
    }
}

impl fmt::Display for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Tokenizer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Tokenizer;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "one of {TOKENIZER_NAMES}")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Tokenizer, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// The encoding to count a served model's tokens with: the configured
/// `tokenizer` if set (`None` for `"none"`: don't count), else the family
/// default of [`Encoding::for_model`].
pub fn resolve(setting: Option<Tokenizer>, served_model: &str) -> Option<Encoding> {
    match setting {
        Some(Tokenizer::O200kBase) => Some(Encoding::O200k),
        Some(Tokenizer::Cl100kBase) => Some(Encoding::Cl100k),
        Some(Tokenizer::None) => None,
        None => Some(Encoding::for_model(served_model)),
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod corpus;
