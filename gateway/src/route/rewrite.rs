//! Model rewrite in place: the forwarded body is the client's bytes with
//! only the model string token swapped, so field order, whitespace, number
//! formatting and unknown fields reach the upstream untouched, and the cost
//! is one copy instead of a parse and re-serialisation.

use std::ops::Range;

use super::BodyInfo;

/// Encodes `s` as a JSON string token (quotes included).
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One replacement of `range` in the body by `with`.
#[derive(Debug, Clone)]
pub struct Edit<'a> {
    /// Bytes replaced (empty for an insertion).
    pub range: Range<usize>,
    /// New bytes.
    pub with: &'a [u8],
}

/// The body to forward as slices whose concatenation is `body` with the
/// edits applied. Edits must not overlap; they are applied in body order.
pub fn splice<'a>(body: &'a [u8], edits: &mut [Edit<'a>]) -> Vec<&'a [u8]> {
    edits.sort_by_key(|e| e.range.start);
    let mut parts = Vec::with_capacity(edits.len() * 2 + 1);
    let mut at = 0;
    for e in edits.iter() {
        parts.push(&body[at..e.range.start]);
        parts.push(e.with);
        at = e.range.end;
    }
    parts.push(&body[at..]);
    parts
}

/// What a streaming request needs so the provider reports usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamUsage {
    /// The client itself asked for `stream_options.include_usage`.
    pub client_asked: bool,
    /// The edit that turns usage on, when the client did not.
    pub edit: Option<(Range<usize>, Vec<u8>)>,
}

/// Plans `"stream_options": {"include_usage": true}` for a streaming body:
/// inserted before the closing brace when absent, merged into the client's
/// `stream_options` object when present without it. A `stream_options`
/// that is not an object (or null) is left for the upstream to reject.
pub fn stream_usage(body: &[u8], info: &BodyInfo<'_>) -> StreamUsage {
    let Some(r) = info.stream_options.clone() else {
        return StreamUsage {
            client_asked: false,
            edit: Some((
                info.object_end..info.object_end,
                br#","stream_options":{"include_usage":true}"#.to_vec(),
            )),
        };
    };
    match serde_json::from_slice::<serde_json::Value>(&body[r.clone()]) {
        Ok(serde_json::Value::Object(mut m)) => {
            if m.get("include_usage") == Some(&serde_json::Value::Bool(true)) {
                return StreamUsage {
                    client_asked: true,
                    edit: None,
                };
            }
            m.insert("include_usage".into(), serde_json::Value::Bool(true));
            let with = serde_json::to_vec(&m).unwrap_or_default();
            StreamUsage {
                client_asked: false,
                edit: (!with.is_empty()).then_some((r, with)),
            }
        }
        Ok(serde_json::Value::Null) => StreamUsage {
            client_asked: false,
            edit: Some((r, br#"{"include_usage":true}"#.to_vec())),
        },
        _ => StreamUsage {
            client_asked: false,
            edit: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::extract;

    #[test]
    fn rewrite_keeps_everything_else() {
        let body = br#"{ "a" : 1.50, "model" : "gpt-4", "messages":[{"model":"x"}] }"#;
        let info = extract(body).unwrap();
        let tok = json_string("gpt-4-0613");
        let parts = splice(
            body,
            &mut [Edit {
                range: info.model_span.clone(),
                with: tok.as_bytes(),
            }],
        );
        let out: Vec<u8> = parts.concat();
        assert_eq!(
            out,
            br#"{ "a" : 1.50, "model" : "gpt-4-0613", "messages":[{"model":"x"}] }"#.to_vec()
        );
        assert_eq!(extract(&out).unwrap().model, "gpt-4-0613");
        assert_eq!(splice(body, &mut []).concat(), body.to_vec());
    }

    fn with_usage(body: &str) -> (bool, serde_json::Value) {
        let info = extract(body.as_bytes()).unwrap();
        let plan = stream_usage(body.as_bytes(), &info);
        let mut edits: Vec<Edit<'_>> = plan
            .edit
            .iter()
            .map(|(r, w)| Edit {
                range: r.clone(),
                with: w,
            })
            .collect();
        let tok = json_string("served");
        edits.push(Edit {
            range: info.model_span.clone(),
            with: tok.as_bytes(),
        });
        let out = splice(body.as_bytes(), &mut edits).concat();
        (plan.client_asked, serde_json::from_slice(&out).unwrap())
    }

    #[test]
    fn stream_usage_is_inserted_or_merged() {
        let (asked, v) = with_usage(r#"{"model":"m","stream":true}"#);
        assert!(!asked);
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["model"], "served");
        let (asked, v) = with_usage(r#"{"stream_options":{"x":1},"model":"m","stream":true}"#);
        assert!(!asked);
        assert_eq!(
            v["stream_options"],
            serde_json::json!({"x": 1, "include_usage": true})
        );
        let (asked, v) =
            with_usage(r#"{"model":"m","stream":true,"stream_options":{"include_usage":false}}"#);
        assert!(!asked);
        assert_eq!(v["stream_options"]["include_usage"], true);
        let (asked, v) = with_usage(r#"{"model":"m","stream":true,"stream_options":null}"#);
        assert!(!asked);
        assert_eq!(v["stream_options"]["include_usage"], true);
        let (asked, v) =
            with_usage(r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#);
        assert!(asked);
        assert_eq!(v["stream_options"]["include_usage"], true);
    }

    #[test]
    fn escaping() {
        assert_eq!(json_string("a\"b\\c\n"), r#""a\"b\\c\u000a""#);
        let v: String = serde_json::from_str(&json_string("x\u{1}é\"")).unwrap();
        assert_eq!(v, "x\u{1}é\"");
    }
}
