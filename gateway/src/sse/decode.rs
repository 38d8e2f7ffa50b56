//! Decoders for OpenAI streaming event data. (Contract; implementation in
//! progress.)

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
pub fn decode(data: &[u8], on_text: impl FnMut(&str)) -> Decoded {
    let _ = (data, on_text);
    Decoded::default()
}
