use serde_json::{Value, json};

use super::*;

const BOTH: [Encoding; 2] = [Encoding::O200k, Encoding::Cl100k];

fn chat(enc: Encoding, body: &Value) -> Option<u64> {
    let bytes = serde_json::to_vec(body).unwrap();
    let n = chat_prompt_tokens(enc, &bytes);
    // Every path counts the same: bytes or parsed, each engine, cached or
    // not.
    assert_eq!(chat_prompt_tokens_value(enc, body), n, "value path");
    for engine in [Engine::Bpe, Engine::BpePlain, Engine::Tiktoken] {
        for message_cache in [false, true] {
            let how = Counting {
                engine,
                message_cache,
            };
            assert_eq!(chat_prompt_tokens_with(enc, &bytes, how), n, "{how:?}");
        }
    }
    // The gateway's path (raw messages after the route scan) too, twice
    // so the second call is served by the raw-message cache.
    if let Some(obj) = body.as_object() {
        let mut obj = obj.clone();
        obj.entry("model").or_insert_with(|| json!("m"));
        let bytes = serde_json::to_vec(&obj).unwrap();
        let info = crate::route::extract(&bytes).unwrap();
        for message_cache in [false, true, true] {
            let how = Counting {
                engine: Engine::Bpe,
                message_cache,
            };
            assert_eq!(
                chat_prompt_tokens_scanned_with(enc, &bytes, &info, how),
                n,
                "scanned, {how:?}"
            );
        }
    }
    n
}

#[test]
fn families() {
    let o200k = [
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4o-2024-08-06",
        "chatgpt-4o-latest",
        "gpt-4.1-nano",
        "gpt-4.5-preview",
        "gpt-5",
        "gpt-5.1",
        "gpt-5-mini",
        "o1",
        "o1-mini",
        "o3-mini",
        "o4-mini-2025-04-16",
        "gpt-oss-120b",
        "openai/gpt-4o",
        "ft:gpt-4o-mini:acme::abc123",
    ];
    for m in o200k {
        assert_eq!(Encoding::for_model(m), Encoding::O200k, "{m}");
    }
    let cl100k = [
        "gpt-4",
        "gpt-4-0613",
        "gpt-4-turbo",
        "gpt-3.5-turbo",
        "text-embedding-3-small",
        "text-embedding-ada-002",
        "llama-3-70b",
        "o1x",
        "gpt-4omega",
        "",
    ];
    for m in cl100k {
        assert_eq!(Encoding::for_model(m), Encoding::Cl100k, "{m}");
    }
}

#[test]
fn tokenizer_setting() {
    assert_eq!("o200k_base".parse(), Ok(Tokenizer::O200kBase));
    assert_eq!("cl100k_base".parse(), Ok(Tokenizer::Cl100kBase));
    assert_eq!("none".parse(), Ok(Tokenizer::None));
    let err = "p50k_base".parse::<Tokenizer>().unwrap_err().to_string();
    assert_eq!(
        err,
        r#"unknown tokenizer "p50k_base": expected one of "o200k_base", "cl100k_base", "none""#
    );
    for t in [Tokenizer::O200kBase, Tokenizer::Cl100kBase, Tokenizer::None] {
        assert_eq!(t.to_string().parse(), Ok(t));
        assert_eq!(
            serde_json::from_value::<Tokenizer>(json!(t.name())).unwrap(),
            t
        );
    }
    let err = serde_json::from_value::<Tokenizer>(json!("O200K")).unwrap_err();
    assert!(
        err.to_string()
            .contains(r#""o200k_base", "cl100k_base", "none""#),
        "{err}"
    );

    assert_eq!(resolve(None, "gpt-4o-mini"), Some(Encoding::O200k));
    assert_eq!(resolve(None, "my-azure-deployment"), Some(Encoding::Cl100k));
    assert_eq!(
        resolve(Some(Tokenizer::O200kBase), "llama-3"),
        Some(Encoding::O200k)
    );
    assert_eq!(
        resolve(Some(Tokenizer::Cl100kBase), "gpt-4o"),
        Some(Encoding::Cl100k)
    );
    assert_eq!(resolve(Some(Tokenizer::None), "gpt-4o"), None);
}

#[test]
fn cookbook_example() {
    // The cookbook's example conversation is 129 prompt tokens for
    // gpt-4 / gpt-3.5-turbo-0613 and 124 for gpt-4o (as the API reported).
    let msgs: Vec<Value> = serde_json::from_str(include_str!("cookbook_messages.json")).unwrap();
    assert_eq!(Encoding::Cl100k.chat_prompt(&msgs), 129);
    assert_eq!(Encoding::O200k.chat_prompt(&msgs), 124);
    let body = json!({"model": "gpt-4o", "messages": msgs, "temperature": 0});
    assert_eq!(chat(Encoding::Cl100k, &body), Some(129));
    assert_eq!(chat(Encoding::O200k, &body), Some(124));
}

#[test]
fn tools_cookbook_example() {
    // Section 7 of the cookbook: 105 prompt tokens for gpt-3.5-turbo and
    // gpt-4, 101 for gpt-4o and gpt-4o-mini, as the API reported.
    let body = json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant that can answer to questions about the weather."},
            {"role": "user", "content": "What's the weather like in San Francisco?"}
        ],
        "tools": [{
            "type": "function",
            "function": {
                "name": "get_current_weather",
                "description": "Get the current weather in a given location",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                        "unit": {"type": "string", "description": "The unit of temperature to return", "enum": ["celsius", "fahrenheit"]}
                    },
                    "required": ["location"]
                }
            }
        }]
    });
    assert_eq!(chat(Encoding::Cl100k, &body), Some(105));
    assert_eq!(chat(Encoding::O200k, &body), Some(101));
    // The legacy `functions` parameter counts the same.
    let mut legacy = body.clone();
    legacy["functions"] = json!([body["tools"][0]["function"]]);
    legacy.as_object_mut().unwrap().remove("tools");
    assert_eq!(chat(Encoding::Cl100k, &legacy), Some(105));
    assert_eq!(chat(Encoding::O200k, &legacy), Some(101));
}

#[test]
fn tools_community_tool_call_example() {
    // OpenAI community forum, "Strange token cost calculation for
    // tool_calls": this gpt-3.5-turbo request reported 40 prompt tokens.
    // PER_TOOL_CALL is fitted to it.
    let body = json!({
        "model": "gpt-3.5-turbo",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "How much is 2 plus 2?"}]},
            {"role": "assistant", "tool_calls": [{
                "id": "a", "type": "function",
                "function": {"name": "calculator", "arguments": "{\"a\":2, \"b\":2}"}
            }]},
            {"role": "tool", "tool_call_id": "a", "content": "4"}
        ]
    });
    assert_eq!(chat(Encoding::Cl100k, &body), Some(40));
}

#[test]
fn message_rules() {
    for enc in BOTH {
        let c = |s: &str| enc.count(s) as u64;
        // 3 per message + 3 priming + every string field; +1 for a name.
        let body = json!({"messages": [{"role": "user", "content": "hello there"}]});
        assert_eq!(chat(enc, &body), Some(3 + 3 + c("user") + c("hello there")));
        let body = json!({"messages": [{"role": "user", "name": "bob", "content": "hi"}]});
        assert_eq!(
            chat(enc, &body),
            Some(3 + 3 + 1 + c("user") + c("bob") + c("hi"))
        );
        // Content parts: text (and refusal) parts count; images don't.
        let body = json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "look at"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            {"type": "text", "text": " this picture"}
        ]}]});
        assert_eq!(
            chat(enc, &body),
            Some(3 + 3 + c("user") + c("look at") + c(" this picture"))
        );
        // null content (assistant with tool calls), numbers, objects: not
        // counted, and no error.
        let body = json!({"messages": [
            {"role": "assistant", "content": null, "x": 5, "audio": {"id": "a1"}},
            "not an object",
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"ok\":true}"}
        ]});
        let want = 3 * 3 + 3 + c("assistant") + c("tool") + c("call_1") + c("{\"ok\":true}");
        assert_eq!(chat(enc, &body), Some(want));
        // Escaped strings count as their decoded text.
        let body = json!({"messages": [{"role": "user", "content": "line\n\t\"quoted\" \u{e9}"}]});
        assert_eq!(
            chat(enc, &body),
            Some(6 + c("user") + c("line\n\t\"quoted\" \u{e9}"))
        );
        assert_eq!(chat(enc, &json!({"messages": []})), Some(3));
    }
}

#[test]
fn not_counted_without_messages() {
    for enc in BOTH {
        for body in [
            &br#"{"model": "gpt-4o"}"#[..],
            br#"{"messages": "hi"}"#,
            br#"{"messages": null}"#,
            br#"[{"role": "user"}]"#,
            br#"{"messages": [{"role": "user""#,
            b"not json",
            b"",
        ] {
            assert_eq!(
                chat_prompt_tokens(enc, body),
                None,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}

#[test]
fn scanned_path_matches_on_odd_bodies() {
    // Formatting, duplicate keys (the last `messages` counts, as in the
    // full parse), escapes and non-object items: the raw path agrees.
    for enc in BOTH {
        for body in [
            &br#"{"model":"m","messages":[{"role":"user","content":"a"}],"messages":[{"role":"user","content":"bb bb"},7]}"#[..],
            br#"{ "model" : "m" , "messages" : [ { "content" : "x\u00e9\ny" , "role" : "user" , "name" : "n" } , null , [] ] }"#,
            br#"{"model":"m","messages":"not an array"}"#,
            br#"{"model":"m"}"#,
            br#"{"model":"m","messages":[]}"#,
            br#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"function":{"name":"f","arguments":"{}"}}]}]}"#,
        ] {
            let info = crate::route::extract(body).unwrap();
            let want = chat_prompt_tokens(enc, body);
            for _ in 0..2 {
                assert_eq!(
                    chat_prompt_tokens_scanned(enc, body, &info),
                    want,
                    "{}",
                    String::from_utf8_lossy(body)
                );
            }
        }
    }
}

#[test]
fn odd_tool_shapes_are_tolerated() {
    let body = json!({
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [
            {"type": "function", "function": {"name": "f", "parameters": {
                "type": "object",
                "properties": {
                    "n": {"type": ["integer", "null"], "enum": [1, 2, 3]},
                    "nested": {"type": "object", "properties": {"deep": {"type": "string", "description": "Deep."}}},
                    "list": {"type": "array", "items": {"type": "object", "properties": {"x": {"type": "number"}}}},
                    "weird": 7
                }
            }}},
            {"type": "custom", "custom": {"name": "g"}},
            "garbage",
            {"type": "function", "function": {"name": "h", "description": "No parameters."}}
        ]
    });
    for enc in BOTH {
        let c = |s: &str| enc.count(s) as i64;
        let func_init = if enc == Encoding::O200k { 7 } else { 10 };
        let f = func_init
            + c("f:")
            + 3
            + 3
            + (-3 + 3 * 3 + c("1") + c("2") + c("3"))
            + c("n:integer | null:")
            + 3
            + c("nested:object:")
            + 3
            + 3
            + c("deep:string:Deep")
            + 3
            + c("list:array:")
            + 3
            + 3
            + c("x:number:")
            + 3;
        let h = func_init + c("h:No parameters");
        let messages = 3 + 3 + c("user") + c("hi");
        let want = messages + f + h + 12;
        assert_eq!(chat(enc, &body), Some(want as u64), "{}", enc.name());
    }
}

#[test]
fn completions_and_embeddings() {
    for enc in BOTH {
        let c = |s: &str| enc.count(s) as u64;
        let cases = [
            (json!("Say this is a test"), Some(c("Say this is a test"))),
            (json!(["one", "two three"]), Some(c("one") + c("two three"))),
            (json!([1, 2, 3]), Some(3)),
            (json!([[1, 2], [3]]), Some(3)),
            (json!(""), Some(0)),
            (json!([]), Some(0)),
            (json!(5), None),
            (json!({"a": 1}), None),
        ];
        for (input, want) in cases {
            let body = serde_json::to_vec(&json!({"model": "m", "prompt": input})).unwrap();
            assert_eq!(completion_prompt_tokens(enc, &body), want, "{input}");
            assert_eq!(embeddings_input_tokens(enc, &body), None);
            let body = serde_json::to_vec(&json!({"model": "m", "input": input})).unwrap();
            assert_eq!(embeddings_input_tokens(enc, &body), want, "{input}");
            assert_eq!(completion_prompt_tokens(enc, &body), None);
        }
        let long = "long prompt text that is over the cache threshold ".repeat(4);
        let body = serde_json::to_vec(&json!({"prompt": long})).unwrap();
        for _ in 0..2 {
            assert_eq!(completion_prompt_tokens(enc, &body), Some(c(&long)));
        }
    }
}

#[test]
fn history_hits_the_message_cache() {
    // Turn after turn the history is resent; counts stay exact.
    let mut messages = vec![json!({"role": "system", "content": "You are terse. ".repeat(20)})];
    for turn in 0..20 {
        messages.push(json!({"role": "user", "content": format!("question {turn}: {}", "why? ".repeat(turn))}));
        for enc in BOTH {
            let body = serde_json::to_vec(&json!({"messages": messages})).unwrap();
            let uncached = Counting {
                message_cache: false,
                ..Counting::DEFAULT
            };
            let expected = chat_prompt_tokens_with(enc, &body, uncached);
            assert_eq!(chat_prompt_tokens(enc, &body), expected);
            let with_model =
                serde_json::to_vec(&json!({"model": "m", "messages": messages})).unwrap();
            let info = crate::route::extract(&with_model).unwrap();
            assert_eq!(
                chat_prompt_tokens_scanned(enc, &with_model, &info),
                expected
            );
        }
        messages.push(json!({"role": "assistant", "content": format!("answer {turn}")}));
    }
}
