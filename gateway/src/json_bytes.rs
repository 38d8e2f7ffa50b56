//! Byte-level steps over JSON text that the scanners which look for one
//! key without parsing the whole document share (`sse::fast`,
//! `sse::deferred`, `usage::body`): where a string ends, whether a quote
//! is escaped, skipping whitespace, whether a member belongs to the
//! outermost object.

/// End of the JSON string whose opening quote is at `open`: the index of
/// its closing quote and whether the string has escapes. `None` when the
/// text ends first.
pub(crate) fn string_end(t: &[u8], open: usize) -> Option<(usize, bool)> {
    let mut i = open + 1;
    let mut escaped = false;
    loop {
        let rel = memchr::memchr2(b'"', b'\\', t.get(i..)?)?;
        let at = i + rel;
        if t[at] == b'"' {
            return Some((at, escaped));
        }
        escaped = true;
        i = at + 2;
    }
}

/// The quote at `at` is escaped (an odd number of backslashes before it):
/// text inside a string, not JSON structure.
pub(crate) fn quote_escaped(t: &[u8], at: usize) -> bool {
    t[..at].iter().rev().take_while(|&&b| b == b'\\').count() % 2 == 1
}

/// The index of the first byte at or after `i` that is not JSON
/// whitespace (space, tab, LF, CR).
pub(crate) fn skip_ws(t: &[u8], mut i: usize) -> usize {
    while t
        .get(i)
        .is_some_and(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
    {
        i += 1;
    }
    i
}

/// The brackets (`{`, `[`, `}`, `]`) of `t` that lie outside strings, in
/// order, with their offsets: the walk the depth checks below share. A
/// string that does not end yields its opening quote, `"`, and ends it.
pub(crate) fn brackets(t: &[u8]) -> impl Iterator<Item = (usize, u8)> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        while let Some(&c) = t.get(i) {
            let at = i;
            i += 1;
            match c {
                b'"' => match string_end(t, at) {
                    Some((close, _)) => i = close + 1,
                    None => {
                        i = t.len();
                        return Some((at, c));
                    }
                },
                b'{' | b'[' | b'}' | b']' => return Some((at, c)),
                _ => {}
            }
        }
        None
    })
}

/// `rest` (what follows a member's value) closes the object the member is
/// in, and that object was the outermost: exactly one unmatched `}`,
/// followed only by whitespace.
pub(crate) fn closes_top_level(rest: &[u8]) -> bool {
    let mut depth = 0usize;
    for (at, c) in brackets(rest) {
        match c {
            b'{' | b'[' => depth += 1,
            b'}' | b']' if depth > 0 => depth -= 1,
            b'}' => return skip_ws(rest, at + 1) == rest.len(),
            // An unmatched `]`, or a string that does not end.
            _ => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_quotes_and_whitespace() {
        let t = br#"{"a\"b\\":"c"}"#;
        assert_eq!(string_end(t, 1), Some((8, true)));
        assert_eq!(string_end(t, 10), Some((12, false)));
        assert_eq!(string_end(br#""open"#, 0), None);
        assert_eq!(string_end(br#""tail\"#, 0), None);
        assert!(quote_escaped(t, 4));
        assert!(
            !quote_escaped(t, 8),
            "the backslash before it is escaped itself"
        );
        assert!(!quote_escaped(t, 1));
        assert_eq!(skip_ws(b" \t\r\n:x", 0), 4);
        assert_eq!(skip_ws(b"\x0c:", 0), 0, "form feed is not JSON whitespace");
        assert_eq!(skip_ws(b"  ", 0), 2);
    }

    #[test]
    fn brackets_outside_strings() {
        let t = br#"{"a[":[1,"]\\"],"b":{}}"#;
        let got: Vec<_> = brackets(t).collect();
        assert_eq!(
            got,
            [
                (0, b'{'),
                (6, b'['),
                (14, b']'),
                (20, b'{'),
                (21, b'}'),
                (22, b'}')
            ]
        );
        assert_eq!(
            brackets(br#"[{"open"#).collect::<Vec<_>>(),
            [(0, b'['), (1, b'{'), (2, b'"')]
        );
        assert!(closes_top_level(br#","x":[1,{"}":"]"}]} "#));
        assert!(!closes_top_level(br#"}}"#));
        assert!(!closes_top_level(br#"],"x":1}"#));
        assert!(!closes_top_level(br#","x":"}"#));
        assert!(!closes_top_level(br#","x":1"#));
    }
}
