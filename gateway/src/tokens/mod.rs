//! Token counting with OpenAI's BPE encodings (tiktoken-rs).
//!
//! Encoders are built once per process (tiktoken-rs singletons) on first
//! use, then shared read-only by every thread.
//!
//! The chat prompt count follows OpenAI's cookbook "How to count tokens
//! with tiktoken" for current chat models: 3 tokens per message, +1 when a
//! `name` is present, and 3 tokens priming the reply, plus the encoded
//! text of every string field of each message.

use serde_json::Value;
use tiktoken_rs::CoreBPE;

/// A BPE encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// gpt-4o, gpt-4.1, o1, o3, o4 families.
    O200k,
    /// gpt-4, gpt-3.5, text-embedding-3 and the documented default.
    Cl100k,
}

impl Encoding {
    /// The encoding OpenAI uses for a model; unknown families get
    /// cl100k_base (documented default).
    pub fn for_model(model: &str) -> Encoding {
        const O200K: &[&str] = &[
            "gpt-4o",
            "gpt-4.1",
            "gpt-4.5",
            "gpt-5",
            "o1",
            "o3",
            "o4",
            "chatgpt-4o",
        ];
        if O200K.iter().any(|p| model.starts_with(p)) {
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

    fn bpe(self) -> &'static CoreBPE {
        match self {
            Encoding::O200k => tiktoken_rs::o200k_base_singleton(),
            Encoding::Cl100k => tiktoken_rs::cl100k_base_singleton(),
        }
    }

    /// Tokens in `text`, special-token text counted as ordinary text (as
    /// the API does for user content).
    pub fn count(self, text: &str) -> usize {
        self.bpe().encode_ordinary(text).len()
    }

    /// Prompt tokens of a chat request's `messages`.
    pub fn chat_prompt(self, messages: &[Value]) -> usize {
        const PER_MESSAGE: usize = 3;
        const PER_NAME: usize = 1;
        const REPLY_PRIMING: usize = 3;
        let mut n = REPLY_PRIMING;
        for m in messages {
            n += PER_MESSAGE;
            let Some(obj) = m.as_object() else { continue };
            for (k, v) in obj {
                n += self.value_text(v);
                if k == "name" {
                    n += PER_NAME;
                }
            }
        }
        n
    }

    /// Tokens of a field value: strings, and the text parts of content arrays.
    fn value_text(self, v: &Value) -> usize {
        match v {
            Value::String(s) => self.count(s),
            Value::Array(parts) => parts
                .iter()
                .map(|p| match p.get("text") {
                    Some(Value::String(t)) => self.count(t),
                    _ => 0,
                })
                .sum(),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families() {
        assert_eq!(Encoding::for_model("gpt-4o-mini"), Encoding::O200k);
        assert_eq!(Encoding::for_model("o3-mini"), Encoding::O200k);
        assert_eq!(Encoding::for_model("gpt-4-0613"), Encoding::Cl100k);
        assert_eq!(Encoding::for_model("llama-3-70b"), Encoding::Cl100k);
    }

    #[test]
    fn cookbook_example() {
        // The cookbook's example conversation is 129 prompt tokens for
        // gpt-4 / gpt-3.5-turbo-0613 and 124 for gpt-4o (as the API reported).
        let msgs: Vec<Value> =
            serde_json::from_str(include_str!("cookbook_messages.json")).unwrap();
        assert_eq!(Encoding::Cl100k.chat_prompt(&msgs), 129);
        assert_eq!(Encoding::O200k.chat_prompt(&msgs), 124);
    }
}
