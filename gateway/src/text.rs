//! Short owned text kept inline: the request id and the model name.
//!
//! Every request carries both from the connection into the stream
//! accountant, the usage record and the ledger's record, which another
//! thread drops. As `String`s that was six allocations per request, two of
//! them freed on the ledger's thread (mimalloc's cross-thread free, the
//! costliest kind: ~800 instructions per request on the writer). Ids the
//! gateway makes are 24 bytes and model names rarely pass 40, so both
//! fit in 46 inline bytes and a copy is a memcpy; longer text (a client's
//! own long `x-request-id`) falls back to one heap block.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

/// Bytes held without allocating (the whole value is 48 bytes).
const INLINE: usize = 46;

/// Immutable text, inline up to [`INLINE`] bytes.
#[derive(Clone)]
pub struct Text(Repr);

#[derive(Clone)]
enum Repr {
    /// `bytes[..len]` is valid UTF-8, copied from a `&str`.
    Inline {
        len: u8,
        bytes: [u8; INLINE],
    },
    Heap(Box<str>),
}

impl Text {
    /// Copies `s`.
    pub fn new(s: &str) -> Text {
        if s.len() <= INLINE {
            let mut bytes = [0u8; INLINE];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            Text(Repr::Inline {
                len: s.len() as u8,
                bytes,
            })
        } else {
            Text(Repr::Heap(s.into()))
        }
    }

    /// The text.
    #[inline]
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline { len, bytes } => {
                let b = &bytes[..usize::from(*len).min(INLINE)];
                // SAFETY: `Inline` is built only by `new`, which copies
                // exactly `len` bytes of a `&str` (valid UTF-8, cut at its
                // end, so at a char boundary) and never changes them.
                unsafe { std::str::from_utf8_unchecked(b) }
            }
            Repr::Heap(s) => s,
        }
    }

    /// True when the text is held inline.
    pub fn is_inline(&self) -> bool {
        matches!(self.0, Repr::Inline { .. })
    }
}

impl Default for Text {
    fn default() -> Self {
        Text::new("")
    }
}

impl Deref for Text {
    type Target = str;
    #[inline]
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Text::new(s)
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        if s.len() <= INLINE {
            Text::new(&s)
        } else {
            Text(Repr::Heap(s.into_boxed_str()))
        }
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Text {}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Hash for Text {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_at_every_length_across_the_inline_limit() {
        // Multi-byte characters put the limit inside and beside a char.
        for unit in ["a", "é", "€", "😀"] {
            for n in 0..=INLINE + 4 {
                let s = unit.repeat(n);
                let t = Text::new(&s);
                assert_eq!(t.as_str(), s);
                assert_eq!(t.is_inline(), s.len() <= INLINE, "{} bytes", s.len());
                assert_eq!(Text::from(s.clone()), t);
                assert_eq!(t.clone().as_str(), s);
            }
        }
    }

    #[test]
    fn equality_and_hash_follow_the_text_not_the_storage() {
        use std::collections::hash_map::DefaultHasher;
        let long = "m".repeat(INLINE + 1);
        let (a, b) = (Text::new(&long), Text::from(long.clone()));
        assert_eq!(a, b);
        assert_ne!(Text::new("gpt-4o"), Text::new("gpt-4o-mini"));
        let h = |t: &Text| {
            let mut s = DefaultHasher::new();
            t.hash(&mut s);
            s.finish()
        };
        let mut s = DefaultHasher::new();
        "gpt-4o".hash(&mut s);
        assert_eq!(h(&Text::new("gpt-4o")), s.finish());
        assert_eq!(h(&a), h(&b));
        assert_eq!(format!("{:?}", Text::new("x\"y")), "\"x\\\"y\"");
        assert_eq!(Text::default().as_str(), "");
    }

    #[test]
    fn the_value_stays_small() {
        assert_eq!(std::mem::size_of::<Text>(), 48);
    }
}
