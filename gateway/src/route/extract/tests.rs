use super::*;
use proptest::prelude::*;
use serde_json::{Map, Value};

fn model_of(body: &str) -> Result<String, ExtractError> {
    extract(body.as_bytes()).map(|i| i.model.into_owned())
}

#[test]
fn plain_and_escaped() {
    assert_eq!(model_of(r#"{"model":"gpt-4o"}"#).unwrap(), "gpt-4o");
    assert_eq!(model_of(r#"{"model":"gpt-4\u006f"}"#).unwrap(), "gpt-4o");
    assert_eq!(model_of(r#"{"mod\u0065l":"x"}"#).unwrap(), "x");
    assert_eq!(model_of(r#"{"model":"a\"b\\c\/d"}"#).unwrap(), "a\"b\\c/d");
    assert_eq!(model_of(r#"{"model":"\ud83d\ude00"}"#).unwrap(), "😀");
}

#[test]
fn whitespace_anywhere() {
    let body = " \n\t{ \r\n \"model\" \t:\n \"m\" , \"stream\" : true \n} \n";
    let info = extract(body.as_bytes()).unwrap();
    assert_eq!(info.model, "m");
    assert!(info.stream);
    assert_eq!(&body[info.model_span.clone()], "\"m\"");
    assert_eq!(&body[info.object_end..=info.object_end], "}");
}

#[test]
fn nested_model_keys_are_never_taken() {
    let body = r#"{"messages":[{"role":"user","content":"hi","model":"evil"}],
        "tools":[{"type":"function","function":{"name":"f","parameters":{"model":"x"}}}],
        "model":"good"}"#;
    assert_eq!(model_of(body).unwrap(), "good");
    assert_eq!(
        model_of(r#"{"messages":[{"model":"evil"}]}"#),
        Err(ExtractError::MissingModel)
    );
    // A string value that looks like a key must not be taken either.
    assert_eq!(
        model_of(r#"{"x":"\"model\":\"evil\"","model":"ok"}"#).unwrap(),
        "ok"
    );
}

#[test]
fn model_after_large_fields() {
    let big = "word ".repeat(200_000);
    let body = format!(r#"{{"messages":[{{"role":"user","content":"{big}"}}],"model":"late"}}"#);
    assert_eq!(model_of(&body).unwrap(), "late");
}

#[test]
fn errors() {
    assert_eq!(model_of(""), Err(ExtractError::Empty));
    assert_eq!(model_of("  \n"), Err(ExtractError::Empty));
    assert_eq!(model_of("[1,2]"), Err(ExtractError::NotObject));
    assert_eq!(model_of("{}"), Err(ExtractError::MissingModel));
    assert_eq!(
        model_of(r#"{"model":4}"#),
        Err(ExtractError::ModelNotString)
    );
    assert_eq!(
        model_of(r#"{"model":null}"#),
        Err(ExtractError::ModelNotString)
    );
    assert_eq!(
        model_of(r#"{"model":""}"#),
        Err(ExtractError::ModelNotString)
    );
    assert_eq!(
        model_of(r#"{"model":"a","model":"b"}"#),
        Err(ExtractError::DuplicateModel)
    );
    assert_eq!(
        model_of(r#"{"model":1,"model":"b"}"#),
        Err(ExtractError::DuplicateModel)
    );
    for bad in [
        "{",
        r#"{"model":"a""#,
        r#"{"model":"a",}"#,
        r#"{"model":"a"} x"#,
        r#"{"model":"a","n":01}"#,
        r#"{"model":"a","n":1.}"#,
        r#"{"model":"a","n":tru}"#,
        r#"{"model":"a","s":"\x"}"#,
        "{\"model\":\"a\",\"s\":\"tab\there\"}",
        r#"{"model":"a","a":[1,]}"#,
        r#"{"model":"a","o":{"k"}}"#,
        r#"{"model":"\ud800"}"#,
        // A duplicate must not hide invalid JSON after it.
        r#"{"model":"a","model":"b","x":}"#,
    ] {
        assert!(
            matches!(model_of(bad), Err(ExtractError::InvalidJson { .. })),
            "{bad:?} gave {:?}",
            model_of(bad)
        );
    }
    assert!(matches!(
        extract(b"{\"model\":\"\xff\"}"),
        Err(ExtractError::InvalidJson { .. })
    ));
}

#[test]
fn depth_limit() {
    let ok = format!(
        r#"{{"model":"m","x":{}{}}}"#,
        "[".repeat(126),
        "]".repeat(126)
    );
    assert_eq!(model_of(&ok).unwrap(), "m");
    let deep = format!(
        r#"{{"model":"m","x":{}{}}}"#,
        "[".repeat(500),
        "]".repeat(500)
    );
    assert!(matches!(
        model_of(&deep),
        Err(ExtractError::InvalidJson { .. })
    ));
    // The limit sits where serde_json's does, also inside the `messages`
    // items, which the scan walks one by one.
    for key in ["x", "messages"] {
        for depth in 120..=130 {
            let body = format!(
                r#"{{"model":"m","{key}":[{}{}]}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            );
            let serde_ok = serde_json::from_str::<Value>(&body).is_ok();
            assert_eq!(model_of(&body).is_ok(), serde_ok, "{key} at depth {depth}");
        }
    }
}

#[test]
fn utf8_in_strings() {
    assert_eq!(model_of(r#"{"model":"m","x":"日本語 😀 é"}"#).unwrap(), "m");
    assert_eq!(model_of(r#"{"model":"日本"}"#).unwrap(), "日本");
    for bad in [
        &b"{\"model\":\"\xc0\xaf\"}"[..],
        b"{\"model\":\"m\",\"x\":\"\xed\xa0\x80\"}",
        b"{\"model\":\"m\",\"x\":\"\xe6\x97\"}",
    ] {
        assert!(
            matches!(extract(bad), Err(ExtractError::InvalidJson { .. })),
            "{bad:?}"
        );
    }
}

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        // Binary fractions: exact in decimal, so they survive a round trip.
        (-1e9f64..1e9).prop_map(|f| Value::from((f * 8.0).round() / 8.0)),
        ".*".prop_map(Value::String),
        prop_oneof![
            Just("model"),
            Just("stream"),
            Just("gpt-4o"),
            Just("mo\"del")
        ]
        .prop_map(|s| Value::String(s.to_string())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("model".to_string()),
        Just("messages".to_string()),
        Just("stream".to_string()),
        Just("tools".to_string()),
        ".{0,8}",
    ]
}

/// Serialises with random whitespace between tokens and random escaping of
/// ASCII letters, so the scanner sees shapes serde_json never emits.
fn render(v: &Value, ws: &mut impl Iterator<Item = u8>, out: &mut String) {
    let pad = |ws: &mut dyn Iterator<Item = u8>, out: &mut String| {
        for _ in 0..(ws.next().unwrap_or(0) % 3) {
            out.push([' ', '\n', '\t', '\r'][(ws.next().unwrap_or(0) % 4) as usize]);
        }
    };
    pad(ws, out);
    match v {
        Value::Object(m) => {
            out.push('{');
            for (i, (k, val)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                pad(ws, out);
                render_str(k, ws, out);
                pad(ws, out);
                out.push(':');
                render(val, ws, out);
            }
            pad(ws, out);
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, val) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                render(val, ws, out);
            }
            pad(ws, out);
            out.push(']');
        }
        Value::String(s) => render_str(s, ws, out),
        other => out.push_str(&other.to_string()),
    }
    pad(ws, out);
}

fn render_str(s: &str, ws: &mut impl Iterator<Item = u8>, out: &mut String) {
    let plain = serde_json::to_string(s).unwrap();
    // Escape some ASCII letters as \u00XX, outside existing escapes.
    let inner = &plain[1..plain.len() - 1];
    out.push('"');
    let mut in_escape = 0usize; // chars left in the current escape
    for c in inner.chars() {
        if in_escape > 0 {
            in_escape -= 1;
            if in_escape == 4 && c != 'u' {
                in_escape = 0;
            }
            out.push(c);
        } else if c == '\\' {
            in_escape = 5;
            out.push(c);
        } else if c.is_ascii_alphabetic() && ws.next().unwrap_or(0).is_multiple_of(5) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out.push('"');
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// For any valid object, the scanner agrees with serde_json about the
    /// top-level model (serde's map keeps the last duplicate; we reject
    /// duplicates, which the generated objects cannot contain).
    #[test]
    fn agrees_with_serde_json(
        fields in prop::collection::vec((key(), arb_value()), 0..8),
        noise in prop::collection::vec(any::<u8>(), 64..512),
    ) {
        let obj = Value::Object(fields.into_iter().collect());
        let mut text = String::new();
        render(&obj, &mut noise.iter().copied().cycle(), &mut text);
        let parsed: Value = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(parsed.get("model"), obj.get("model"));
        let got = extract(text.as_bytes());
        match parsed.get("model") {
            Some(Value::String(s)) if !s.is_empty() => {
                let info = got.unwrap();
                prop_assert_eq!(info.model.as_ref(), s.as_str());
                let token: Value = serde_json::from_str(&text[info.model_span.clone()]).unwrap();
                prop_assert_eq!(token.as_str(), Some(s.as_str()));
                prop_assert_eq!(info.stream, parsed.get("stream") == Some(&Value::Bool(true)));
                prop_assert_eq!(text.as_bytes()[info.object_end], b'}');
                // The items of `messages`, as the scan delimited them.
                let items = info.messages.as_ref().map(|items| {
                    items
                        .iter()
                        .map(|r| serde_json::from_str::<Value>(&text[r.clone()]).unwrap())
                        .collect::<Vec<_>>()
                });
                match parsed.get("messages") {
                    Some(Value::Array(want)) => prop_assert_eq!(items.as_ref(), Some(want)),
                    _ => prop_assert!(items.is_none()),
                }
                prop_assert_eq!(
                    info.tool_definitions,
                    parsed.get("tools").is_some() || parsed.get("functions").is_some()
                );
            }
            Some(_) => prop_assert_eq!(got, Err(ExtractError::ModelNotString)),
            None => prop_assert_eq!(got, Err(ExtractError::MissingModel)),
        }
    }

    /// Validity agrees with serde_json on arbitrary mutations of valid JSON.
    #[test]
    fn validity_agrees_with_serde_json(
        v in arb_value(),
        cut in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut bytes = serde_json::to_vec(&serde_json::json!({"model": "m", "v": v})).unwrap();
        let i = cut.index(bytes.len());
        bytes[i] = byte;
        // serde_json skips UTF-8 checks inside ignored strings; JSON requires UTF-8.
        let serde_ok = std::str::from_utf8(&bytes).is_ok()
            && serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok();
        let ours_ok = !matches!(extract(&bytes), Err(ExtractError::InvalidJson { .. }) | Err(ExtractError::Empty));
        prop_assert_eq!(ours_ok, serde_ok, "{:?}", String::from_utf8_lossy(&bytes));
    }
}
