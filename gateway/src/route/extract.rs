//! Finds the top-level `"model"` of an OpenAI-style JSON request body
//! without building a document.
//!
//! The body is checked as UTF-8 in one pass (std's, which runs at memory
//! speed on ASCII), then scanned once, left to right, by a validating JSON
//! scanner that only descends as far as it must: top-level keys are read,
//! every other value is skipped structurally. Strings, which are almost all
//! of a chat body, are skipped sixteen bytes at a time (SSE2 on x86-64, a
//! word-at-a-time fallback elsewhere) to the next quote, backslash or
//! control character; with UTF-8 already checked, nothing else inside a
//! string needs a look. The items of `messages` are delimited in the same
//! pass, so the prompt count does not walk them again.
//!
//! Invariants:
//! - The whole body is validated as JSON (RFC 8259): UTF-8, grammar,
//!   escapes, numbers, nesting below [`MAX_DEPTH`] (where serde_json's
//!   default recursion limit stops). Invalid JSON is an error even when a
//!   model was found before the fault, so the gateway never forwards a
//!   body that the upstream would parse differently.
//! - Only keys of the top-level object count; `model` keys inside
//!   `messages`, `tools` or any nested value are never taken.
//! - Key names are compared after unescaping (`"mod\u0065l"` is `model`),
//!   as every JSON parser upstream would.
//! - Duplicate rule: a body with more than one top-level `model` key is
//!   rejected ([`ExtractError::DuplicateModel`]). Parsers disagree on
//!   duplicates (first wins, last wins, error), so accepting one would let a
//!   client be routed, authorised and billed for one model while the
//!   upstream serves another.

use std::borrow::Cow;
use std::ops::Range;

use crate::json_bytes::{next_special, special_within};

/// serde_json's recursion limit: a body may nest at most one container
/// fewer than this (127 levels, the top-level object included).
pub const MAX_DEPTH: usize = 128;

/// What the gateway needs from the top level of a request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyInfo<'a> {
    /// The `model` value, unescaped.
    pub model: Cow<'a, str>,
    /// Byte range of the model string token in the body, quotes included,
    /// so a rewrite can splice a new token in without re-serialising.
    pub model_span: Range<usize>,
    /// `true` when the top-level `stream` is the literal `true`.
    pub stream: bool,
    /// Byte offset of the `}` that closes the top-level object.
    pub object_end: usize,
    /// Byte range of the top-level `stream_options` value, if present.
    pub stream_options: Option<Range<usize>>,
    /// Byte ranges of the items of the last top-level `messages` value,
    /// when that value is an array (the prompt count reads them without
    /// scanning the body again); `None` when absent or not an array.
    pub messages: Option<Vec<Range<usize>>>,
    /// A top-level `tools` or `functions` key is present.
    pub tool_definitions: bool,
}

/// Why a body has no usable model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtractError {
    /// The body is empty or only whitespace.
    Empty,
    /// The body is not valid JSON; `offset` is where the scanner stopped.
    InvalidJson {
        /// Byte offset of the fault.
        offset: usize,
        /// What was wrong there.
        reason: &'static str,
    },
    /// Valid JSON, but the top level is not an object.
    NotObject,
    /// No top-level `model` key.
    MissingModel,
    /// `model` is present but is not a string (or is an empty string).
    ModelNotString,
    /// More than one top-level `model` key.
    DuplicateModel,
}

impl std::fmt::Display for ExtractError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExtractError::Empty => f.write_str("request body is empty; expected a JSON object"),
            ExtractError::InvalidJson { offset, reason } => {
                write!(
                    f,
                    "request body is not valid JSON: {reason} at byte {offset}"
                )
            }
            ExtractError::NotObject => f.write_str("request body must be a JSON object"),
            ExtractError::MissingModel => {
                f.write_str("you must provide a model parameter (top-level \"model\" string)")
            }
            ExtractError::ModelNotString => f.write_str("\"model\" must be a non-empty string"),
            ExtractError::DuplicateModel => {
                f.write_str("\"model\" appears more than once at the top level of the body")
            }
        }
    }
}

/// Scans `body` and returns its top-level model and the facts around it.
pub fn extract(body: &[u8]) -> Result<BodyInfo<'_>, ExtractError> {
    let mut s = Scanner {
        b: body,
        text: "",
        pos: 0,
    };
    s.skip_ws();
    if s.pos == body.len() {
        return Err(ExtractError::Empty);
    }
    // Outside strings the grammar admits only ASCII, so this one check is
    // the UTF-8 check of every string; the scanner relies on it. SIMD
    // (simdutf8, the widest the CPU has): ~0.1 instructions a byte where
    // std's word-at-a-time check took ~0.45, ~15,000 for a 32 KiB prompt.
    s.text = simdutf8::compat::from_utf8(body).map_err(|e| ExtractError::InvalidJson {
        offset: e.valid_up_to(),
        reason: "invalid UTF-8",
    })?;
    if body[s.pos] != b'{' {
        s.skip_value()?;
        s.expect_end()?;
        return Err(ExtractError::NotObject);
    }
    s.pos += 1;
    let mut model: Option<(Cow<'_, str>, Range<usize>)> = None;
    let mut model_bad = false;
    let mut stream = false;
    let mut stream_options = None;
    let mut messages = None;
    let mut tool_definitions = false;
    s.skip_ws();
    if s.peek() == Some(b'}') {
        s.pos += 1;
        s.expect_end()?;
        return Err(ExtractError::MissingModel);
    }
    let object_end = loop {
        s.skip_ws();
        if s.peek() != Some(b'"') {
            return Err(s.err("expected a string key"));
        }
        let key = s.key()?;
        s.skip_ws();
        if s.peek() != Some(b':') {
            return Err(s.err("expected ':' after key"));
        }
        s.pos += 1;
        s.skip_ws();
        let start = s.pos;
        match key.as_ref() {
            b"model" => {
                if model.is_some() || model_bad {
                    // Keep validating so invalid JSON still wins over the
                    // duplicate, then report the duplicate.
                    s.skip_value()?;
                    s.rest_of_object()?;
                    return Err(ExtractError::DuplicateModel);
                }
                if s.peek() == Some(b'"') {
                    let v = s.string()?;
                    if v.is_empty() {
                        model_bad = true;
                    } else {
                        model = Some((v, start..s.pos));
                    }
                } else {
                    s.skip_value()?;
                    model_bad = true;
                }
            }
            b"stream" => {
                s.skip_value()?;
                stream = &body[start..s.pos] == b"true";
            }
            b"stream_options" => {
                s.skip_value()?;
                stream_options = Some(start..s.pos);
            }
            b"messages" => {
                messages = if s.peek() == Some(b'[') {
                    Some(s.array_items()?)
                } else {
                    s.skip_value()?;
                    None
                };
            }
            b"tools" | b"functions" => {
                s.skip_value()?;
                tool_definitions = true;
            }
            _ => s.skip_value()?,
        }
        s.skip_ws();
        match s.peek() {
            Some(b',') => s.pos += 1,
            Some(b'}') => {
                let end = s.pos;
                s.pos += 1;
                break end;
            }
            _ => return Err(s.err("expected ',' or '}' in object")),
        }
    };
    s.expect_end()?;
    match model {
        Some((model, model_span)) => Ok(BodyInfo {
            model,
            model_span,
            stream,
            object_end,
            stream_options,
            messages,
            tool_definitions,
        }),
        None if model_bad => Err(ExtractError::ModelNotString),
        None => Err(ExtractError::MissingModel),
    }
}

/// End of the JSON value that starts at `at`, validated as the scanner
/// validates a skipped value (grammar, escapes, nesting) except for UTF-8
/// inside its strings, which the caller checks or, like serde_json for
/// ignored values, does not need; `None` when it is not one valid value.
pub(crate) fn value_end(b: &[u8], at: usize) -> Option<usize> {
    let mut s = Scanner {
        b,
        text: "",
        pos: at,
    };
    s.skip_value().ok()?;
    Some(s.pos)
}

struct Scanner<'a> {
    b: &'a [u8],
    /// `b` as text, once checked; string values are sliced from it.
    text: &'a str,
    pos: usize,
}

impl<'a> Scanner<'a> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    #[inline]
    fn err(&self, reason: &'static str) -> ExtractError {
        ExtractError::InvalidJson {
            offset: self.pos,
            reason,
        }
    }

    #[inline]
    fn skip_ws(&mut self) {
        while let Some(&c) = self.b.get(self.pos) {
            if matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    fn expect_end(&mut self) -> Result<(), ExtractError> {
        self.skip_ws();
        if self.pos == self.b.len() {
            Ok(())
        } else {
            Err(self.err("trailing characters after the JSON value"))
        }
    }

    /// Validates the remaining members of the top-level object after a
    /// value, through its closing brace and the end of input.
    fn rest_of_object(&mut self) -> Result<(), ExtractError> {
        loop {
            self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_ws();
                    self.key_colon()?;
                    self.skip_value()?;
                }
                Some(b'}') => {
                    self.pos += 1;
                    return self.expect_end();
                }
                _ => return Err(self.err("expected ',' or '}' in object")),
            }
        }
    }

    /// Reads a string token at `pos` (which holds `"`), returns its value.
    fn string(&mut self) -> Result<Cow<'a, str>, ExtractError> {
        let start = self.pos + 1;
        let escaped = self.skip_string()?;
        // Both ends are ASCII quotes, so always character boundaries.
        let raw = self
            .text
            .get(start..self.pos - 1)
            .ok_or(ExtractError::InvalidJson {
                offset: start,
                reason: "invalid UTF-8",
            })?;
        if escaped {
            unescape(raw)
                .map(Cow::Owned)
                .ok_or(ExtractError::InvalidJson {
                    offset: start,
                    reason: "invalid escape in string",
                })
        } else {
            Ok(Cow::Borrowed(raw))
        }
    }

    /// Reads a key at `pos` (which holds `"`) as bytes: compared as they
    /// stand, or unescaped when the key has escapes (`"mod\u0065l"`).
    fn key(&mut self) -> Result<Cow<'a, [u8]>, ExtractError> {
        let start = self.pos + 1;
        if self.skip_string()? {
            self.pos = start - 1;
            return self
                .string()
                .map(|k| Cow::Owned(k.into_owned().into_bytes()));
        }
        Ok(Cow::Borrowed(&self.b[start..self.pos - 1]))
    }

    /// Skips a string token at `pos` (which holds `"`); returns whether it
    /// contained escapes. A string that ends, unescaped, within sixteen
    /// bytes (most keys and short values) is settled here, inline; the
    /// rest go to [`Self::skip_string_rest`]. The call and its error
    /// result through memory cost ~60 instructions a string, and a chat
    /// body has a dozen short ones.
    #[inline(always)]
    fn skip_string(&mut self) -> Result<bool, ExtractError> {
        if let Some(at) = special_within(self.b, self.pos + 1)
            && self.b[at] == b'"'
        {
            self.pos = at + 1;
            return Ok(false);
        }
        self.skip_string_rest()
    }

    /// [`Self::skip_string`] for any string: jumps from one quote,
    /// backslash or control character to the next ([`next_special`]);
    /// UTF-8 was checked for the whole body before the scan.
    #[inline(never)]
    fn skip_string_rest(&mut self) -> Result<bool, ExtractError> {
        let b = self.b;
        let mut i = self.pos + 1;
        let mut escaped = false;
        loop {
            i = next_special(b, i);
            match b.get(i) {
                Some(b'"') => {
                    self.pos = i + 1;
                    return Ok(escaped);
                }
                Some(b'\\') => {
                    escaped = true;
                    match b.get(i + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                        Some(b'u') => {
                            let hex = b.get(i + 2..i + 6);
                            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                                self.pos = i;
                                return Err(self.err("invalid \\u escape"));
                            }
                            i += 6;
                        }
                        _ => {
                            self.pos = i;
                            return Err(self.err("invalid escape in string"));
                        }
                    }
                }
                Some(_) => {
                    self.pos = i;
                    return Err(self.err("control character in string"));
                }
                None => {
                    self.pos = b.len();
                    return Err(self.err("unterminated string"));
                }
            }
        }
    }

    /// The items of the array at `pos` (which holds `[`), validated, as
    /// byte ranges of the body; `pos` ends after the `]`.
    fn array_items(&mut self) -> Result<Vec<Range<usize>>, ExtractError> {
        let mut items = Vec::new();
        self.pos += 1;
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(items);
        }
        loop {
            self.skip_ws();
            let start = self.pos;
            // One level deeper than a top-level value: the array.
            self.skip_value_in(1)?;
            items.push(start..self.pos);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(items);
                }
                _ => return Err(self.err("expected ',' or ']' in array")),
            }
        }
    }

    /// Skips one JSON value of any kind, validating it.
    fn skip_value(&mut self) -> Result<(), ExtractError> {
        self.skip_value_in(0)
    }

    /// [`Self::skip_value`] for a value `outer` containers below a
    /// top-level value, so the depth limit counts them.
    fn skip_value_in(&mut self, outer: usize) -> Result<(), ExtractError> {
        // Open containers as a bit stack (bit set: an object), `depth`
        // deep. Nesting is bounded by MAX_DEPTH, so 128 bits hold it and
        // no skip allocates.
        const _: () = assert!(MAX_DEPTH <= 128);
        let mut objects: u128 = 0;
        let mut depth = 0usize;
        loop {
            // A value is expected here.
            self.skip_ws();
            match self.peek() {
                Some(b'"') => {
                    self.skip_string()?;
                }
                Some(b'{') | Some(b'[') => {
                    let is_obj = self.b[self.pos] == b'{';
                    if outer + depth + 2 >= MAX_DEPTH {
                        return Err(self.err("nesting too deep"));
                    }
                    self.pos += 1;
                    self.skip_ws();
                    let close = if is_obj { b'}' } else { b']' };
                    if self.peek() == Some(close) {
                        self.pos += 1;
                    } else {
                        objects = (objects << 1) | u128::from(is_obj);
                        depth += 1;
                        if is_obj {
                            self.key_colon()?;
                        }
                        continue;
                    }
                }
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                Some(b'-' | b'0'..=b'9') => self.number()?,
                _ => return Err(self.err("expected a JSON value")),
            }
            // A value just ended: close containers or move to the next item.
            loop {
                if depth == 0 {
                    return Ok(());
                }
                let is_obj = objects & 1 == 1;
                self.skip_ws();
                match self.peek() {
                    Some(b',') => {
                        self.pos += 1;
                        if is_obj {
                            self.skip_ws();
                            self.key_colon()?;
                        }
                        break;
                    }
                    Some(b'}') if is_obj => {
                        self.pos += 1;
                        objects >>= 1;
                        depth -= 1;
                    }
                    Some(b']') if !is_obj => {
                        self.pos += 1;
                        objects >>= 1;
                        depth -= 1;
                    }
                    _ => return Err(self.err("expected ',' or a closing bracket")),
                }
            }
        }
    }

    fn key_colon(&mut self) -> Result<(), ExtractError> {
        if self.peek() != Some(b'"') {
            return Err(self.err("expected a string key"));
        }
        self.skip_string()?;
        self.skip_ws();
        if self.peek() != Some(b':') {
            return Err(self.err("expected ':' after key"));
        }
        self.pos += 1;
        Ok(())
    }

    fn literal(&mut self, lit: &'static [u8]) -> Result<(), ExtractError> {
        if self.b[self.pos..].starts_with(lit) {
            self.pos += lit.len();
            Ok(())
        } else {
            Err(self.err("invalid literal"))
        }
    }

    fn number(&mut self) -> Result<(), ExtractError> {
        let b = self.b;
        let mut i = self.pos;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                while b.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
            }
            _ => {
                self.pos = i;
                return Err(self.err("invalid number"));
            }
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            let digits = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == digits {
                self.pos = i;
                return Err(self.err("invalid number"));
            }
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let digits = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == digits {
                self.pos = i;
                return Err(self.err("invalid number"));
            }
        }
        self.pos = i;
        Ok(())
    }
}

/// Decodes the escapes of a string body already checked by `skip_string`.
/// Returns `None` for a lone or mismatched UTF-16 surrogate.
fn unescape(raw: &str) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.char_indices();
    while let Some((i, c)) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let (_, e) = chars.next()?;
        match e {
            '"' => out.push('"'),
            '\\' => out.push('\\'),
            '/' => out.push('/'),
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'u' => {
                let hi = hex4(raw.get(i + 2..i + 6)?)?;
                for _ in 0..4 {
                    chars.next();
                }
                let cp = if (0xD800..0xDC00).contains(&hi) {
                    if raw.get(i + 6..i + 8)? != "\\u" {
                        return None;
                    }
                    let lo = hex4(raw.get(i + 8..i + 12)?)?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return None;
                    }
                    for _ in 0..6 {
                        chars.next();
                    }
                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                } else if (0xDC00..0xE000).contains(&hi) {
                    return None;
                } else {
                    hi
                };
                out.push(char::from_u32(cp)?);
            }
            _ => return None,
        }
    }
    Some(out)
}

fn hex4(s: &str) -> Option<u32> {
    u32::from_str_radix(s, 16).ok()
}

#[cfg(test)]
mod tests;
