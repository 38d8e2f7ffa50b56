//! Model rewrite in place: the forwarded body is the client's bytes with
//! only the model string token swapped, so field order, whitespace, number
//! formatting and unknown fields reach the upstream untouched, and the cost
//! is one copy instead of a parse and re-serialisation.

use std::ops::Range;

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

/// The body to forward: `body` with the bytes in `span` replaced by
/// `token` (when given), as (prefix, token, suffix) slices whose
/// concatenation is the new body.
pub fn splice<'a>(body: &'a [u8], span: Range<usize>, token: Option<&'a [u8]>) -> [&'a [u8]; 3] {
    match token {
        Some(t) => [&body[..span.start], t, &body[span.end..]],
        None => [body, &[], &[]],
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
        let parts = splice(body, info.model_span.clone(), Some(tok.as_bytes()));
        let out: Vec<u8> = parts.concat();
        assert_eq!(
            out,
            br#"{ "a" : 1.50, "model" : "gpt-4-0613", "messages":[{"model":"x"}] }"#.to_vec()
        );
        assert_eq!(extract(&out).unwrap().model, "gpt-4-0613");
        let same: Vec<u8> = splice(body, info.model_span, None).concat();
        assert_eq!(same, body.to_vec());
    }

    #[test]
    fn escaping() {
        assert_eq!(json_string("a\"b\\c\n"), r#""a\"b\\c\u000a""#);
        let v: String = serde_json::from_str(&json_string("x\u{1}é\"")).unwrap();
        assert_eq!(v, "x\u{1}é\"");
    }
}
