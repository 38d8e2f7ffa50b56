//! Field names compared with a known name regardless of case, eight
//! bytes at a time.
//!
//! Every header of every request and response is checked against the
//! names the gateway acts on (framing, `Connection`, the hop-by-hop and
//! credential lists). `eq_ignore_ascii_case` lowers both sides a byte at
//! a time, ~6 instructions a byte once the lengths match: ~90 for
//! `content-length`, and a request meets several such names. Here the
//! known name is lowercase and fixed, so its words and a mask are made
//! at compile time: OR-ing 0x20 into a byte where the name has a letter
//! maps that letter's upper case onto it and nothing else onto it, and
//! where the name has no letter the byte must match exactly. A name of
//! 8 to 24 bytes is then two or three loads, ORs and compares.

/// A lowercase ASCII field name to compare others with.
pub struct Name {
    bytes: &'static [u8],
    /// The name's bytes at offsets 0, `min(8, len - 8)` and `len - 8`
    /// (overlapping), little-endian; used when it is at least 8 long.
    words: [u64; 3],
    /// 0x20 in each byte where the name has a letter.
    masks: [u64; 3],
}

impl Name {
    /// `bytes` must be lowercase ASCII, at most 24 bytes (checked when
    /// the constant is made).
    pub const fn new(bytes: &'static [u8]) -> Name {
        let n = bytes.len();
        assert!(n <= 24, "a Name is at most 24 bytes");
        let mut i = 0;
        while i < n {
            assert!(
                bytes[i].is_ascii() && !bytes[i].is_ascii_uppercase(),
                "a Name is lowercase ASCII"
            );
            i += 1;
        }
        let mut words = [0; 3];
        let mut masks = [0; 3];
        if n >= 8 {
            let offs = [0, if n >= 16 { 8 } else { n - 8 }, n - 8];
            let mut k = 0;
            while k < 3 {
                let mut j = 0;
                while j < 8 {
                    let b = bytes[offs[k] + j];
                    words[k] |= (b as u64) << (8 * j);
                    if b.is_ascii_lowercase() {
                        masks[k] |= 0x20 << (8 * j);
                    }
                    j += 1;
                }
                k += 1;
            }
        }
        Name {
            bytes,
            words,
            masks,
        }
    }

    /// True when `name` is this name, ASCII case aside
    /// (`eq_ignore_ascii_case`).
    #[inline]
    pub fn is(&self, name: &[u8]) -> bool {
        let n = self.bytes.len();
        if name.len() != n {
            return false;
        }
        if n < 8 {
            return name.iter().zip(self.bytes).all(|(&c, &l)| {
                let m = if l.is_ascii_lowercase() { 0x20 } else { 0 };
                c | m == l
            });
        }
        let word = |o: usize| {
            let mut w = [0; 8];
            w.copy_from_slice(&name[o..o + 8]);
            u64::from_le_bytes(w)
        };
        let mid = if n >= 16 { 8 } else { n - 8 };
        (word(0) | self.masks[0]) == self.words[0]
            && (word(mid) | self.masks[1]) == self.words[1]
            && (word(n - 8) | self.masks[2]) == self.words[2]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: &[&[u8]] = &[
        b"te",
        b"host",
        b"api-key",
        b"expect",
        b"trailer",
        b"connection",
        b"keep-alive",
        b"x-api-key",
        b"x-request-id",
        b"authorization",
        b"content-length",
        b"accept-encoding",
        b"proxy-connection",
        b"transfer-encoding",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"x-ratelimit-remaining-t",
        b"a1-_.~!#$%&'*+^`|z",
        b"",
    ];

    /// Every byte value at every position of every name (and the name's
    /// upper case, and other lengths) answers as `eq_ignore_ascii_case`.
    #[test]
    fn answers_as_eq_ignore_ascii_case_for_every_byte_at_every_place() {
        for &n in NAMES {
            let name = Name::new(n);
            assert!(name.is(n));
            assert!(name.is(&n.to_ascii_uppercase()));
            let mut longer = n.to_vec();
            longer.push(b'x');
            assert!(!name.is(&longer));
            if let Some((_, shorter)) = n.split_last() {
                assert!(!name.is(shorter));
            }
            for at in 0..n.len() {
                for b in 0..=255u8 {
                    let mut m = n.to_vec();
                    m[at] = b;
                    assert_eq!(
                        name.is(&m),
                        m.eq_ignore_ascii_case(n),
                        "{} with byte {b:#04x} at {at}",
                        String::from_utf8_lossy(n)
                    );
                }
            }
        }
    }
}
