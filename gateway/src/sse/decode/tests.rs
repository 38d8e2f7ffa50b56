use std::borrow::Cow;

use super::*;

fn run(data: &str) -> (Decoded, Vec<String>) {
    let mut texts = Vec::new();
    let d = decode(data.as_bytes(), |t| texts.push(t.to_owned()));
    (d, texts)
}

#[test]
fn done_marker() {
    for data in ["[DONE]", " [DONE] "] {
        let (d, texts) = run(data);
        assert!(d.done);
        assert!(texts.is_empty());
    }
    assert!(!run("[DONE]x").0.done);
}

#[test]
fn content_delta_with_escapes_and_unicode() {
    let (d, texts) = run(
        r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"a \"q\"\n日本 \ud83d\ude00"},"logprobs":null,"finish_reason":null}]}"#,
    );
    assert_eq!(texts, vec!["a \"q\"\n日本 😀"]);
    assert_eq!(d, Decoded::default());
}

#[test]
fn order_within_and_across_choices() {
    let (d, texts) = run(r#"{"choices":[
            {"index":0,"delta":{"tool_calls":[
                {"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\""}},
                {"index":1,"function":{"arguments":":1}"}}],
              "refusal":"R","content":"C"},"finish_reason":null},
            {"index":1,"text":"legacy","finish_reason":"length"}]}"#);
    // content, refusal, tool call arguments (never names), then text.
    assert_eq!(texts, vec!["C", "R", "{\"a\"", ":1}", "legacy"]);
    assert!(d.finished);
    assert!(!d.usage_only);
}

#[test]
fn legacy_completion_text() {
    let (d, texts) = run(
        r#"{"id":"cmpl-1","object":"text_completion","choices":[{"text":" world","index":0,"logprobs":null,"finish_reason":"stop"}],"model":"gpt-3.5-turbo-instruct"}"#,
    );
    assert_eq!(texts, vec![" world"]);
    assert!(d.finished);
}

#[test]
fn usage_only_final_chunk() {
    let (d, texts) = run(
        r#"{"id":"c","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46,"completion_tokens_details":{"reasoning_tokens":0}}}"#,
    );
    assert!(texts.is_empty());
    assert_eq!(
        d.usage,
        Some(Usage {
            prompt: 12,
            completion: 34
        })
    );
    assert!(d.usage_only);
}

#[test]
fn usage_null_absent_or_with_choices() {
    assert_eq!(run(r#"{"choices":[],"usage":null}"#).0, Decoded::default());
    assert_eq!(run(r#"{"choices":[]}"#).0, Decoded::default());
    // Usage on a chunk that also has choices: usage, but not usage-only.
    let (d, texts) = run(
        r#"{"choices":[{"delta":{"content":"x"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#,
    );
    assert_eq!(texts, vec!["x"]);
    assert!(d.finished && !d.usage_only);
    assert_eq!(d.usage.map(|u| (u.prompt, u.completion)), Some((1, 2)));
    // `choices` missing or null is not "an empty array".
    let (d, _) = run(r#"{"usage":{"prompt_tokens":1,"completion_tokens":2}}"#);
    assert!(d.usage.is_some() && !d.usage_only);
    let (d, _) = run(r#"{"choices":null,"usage":{"prompt_tokens":1}}"#);
    assert_eq!(d.usage.map(|u| u.completion), Some(0));
    assert!(!d.usage_only);
}

#[test]
fn error_events() {
    let (d, texts) = run(
        r#"{"error":{"message":"The server had an error","type":"server_error","param":null,"code":null}}"#,
    );
    assert!(d.error);
    assert!(texts.is_empty());
    assert!(!run(r#"{"error":null,"choices":[]}"#).0.error);
    let ev = Event {
        start: 0,
        end: 1,
        event: Some(Cow::Borrowed(b"error")),
        data: Cow::Borrowed(b"overloaded"),
        id: None,
        oversize: false,
    };
    assert!(decode_event(&ev, |_| {}).error);
}

#[test]
fn malformed_gives_default_and_no_text() {
    for data in [
        "",
        "not json",
        r#"{"choices":[{"delta":{"content":"lost"}}]"#,
        r#"{"choices":[{"delta":{"content":"lost"}}]} trailing"#,
        r#"["a"]"#,
        r#"{"choices":[{"delta":{"content":"x"}}],"usage":{"prompt_tokens":"many"}}"#,
    ] {
        let (d, texts) = run(data);
        assert_eq!(d, Decoded::default(), "{data}");
        assert!(texts.is_empty(), "{data}");
    }
}

#[test]
fn odd_types_in_text_fields_are_skipped() {
    let (d, texts) = run(
        r#"{"choices":[{"delta":{"content":[{"type":"text","text":"x"}],"refusal":null,"tool_calls":[{"function":{"arguments":{"a":1}}}]},"text":7,"finish_reason":null}],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#,
    );
    assert!(texts.is_empty());
    assert_eq!(d.usage.map(|u| u.prompt + u.completion), Some(7));
}

#[test]
fn non_streaming_message_body() {
    let (d, texts) = run(
        r#"{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hi there"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}"#,
    );
    assert_eq!(texts, vec!["Hi there"]);
    assert!(d.finished);
    assert_eq!(d.usage.map(|u| u.completion), Some(3));
}

#[test]
fn text_without_escapes_is_borrowed() {
    let data = br#"{"choices":[{"delta":{"content":"plain"}}]}"#;
    let range = data.as_ptr_range();
    let mut borrowed = false;
    let _ = decode(data, |t| borrowed = range.contains(&t.as_ptr()));
    assert!(borrowed);
}
