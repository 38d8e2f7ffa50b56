//! Key material: where a client's key is read from, how it is hashed, and
//! how new keys are made. Keys are only ever held as SHA-256 digests; the
//! clear text exists in a request buffer and, once, in the admin answer
//! that creates it.

use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};

use crate::http::headers::names;

/// A key digest.
pub type Digest = [u8; 32];

/// SHA-256 of a key.
pub fn hash(key: &[u8]) -> Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, key).as_ref());
    out
}

/// Lower-case hex of bytes.
pub fn to_hex(b: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(char::from(H[usize::from(x >> 4)]));
        s.push(char::from(H[usize::from(x & 15)]));
    }
    s
}

/// Parses 64 hex digits.
pub fn from_hex(s: &str) -> Option<Digest> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nib(b[2 * i])? << 4) | nib(b[2 * i + 1])?;
    }
    Some(out)
}

/// A new random key, `tg-` and 43 base62 characters (256 bits).
pub fn generate() -> Result<String, String> {
    const ALPHA: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let rng = SystemRandom::new();
    let mut s = String::from("tg-");
    let mut bytes = [0u8; 64];
    while s.len() < 46 {
        rng.fill(&mut bytes)
            .map_err(|_| "no system randomness".to_string())?;
        // Rejection sampling keeps the alphabet uniform.
        for &b in &bytes {
            if b < 248 && s.len() < 46 {
                s.push(char::from(ALPHA[usize::from(b % 62)]));
            }
        }
    }
    Ok(s)
}

/// The client's key from `Authorization: Bearer …` or `x-api-key` /
/// `api-key` (Anthropic and Azure clients), in that order.
pub fn from_headers<'a>(
    buf: &'a [u8],
    headers: &[(std::ops::Range<usize>, std::ops::Range<usize>)],
) -> Option<&'a [u8]> {
    let mut alt = None;
    for (n, v) in headers {
        let (Some(name), Some(value)) = (buf.get(n.clone()), buf.get(v.clone())) else {
            continue;
        };
        if names::AUTHORIZATION.is(name) {
            let value = value.trim_ascii();
            if value.len() > 7 && value[..7].eq_ignore_ascii_case(b"bearer ") {
                let k = value[7..].trim_ascii();
                if !k.is_empty() {
                    return Some(k);
                }
            }
        } else if (names::X_API_KEY.is(name) || names::API_KEY.is(name)) && alt.is_none() {
            let k = value.trim_ascii();
            if !k.is_empty() {
                alt = Some(k);
            }
        }
    }
    alt
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_matches_sha256_and_hex_round_trips() {
        let h = hash(b"abc");
        assert_eq!(
            to_hex(&h),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(from_hex(&to_hex(&h)), Some(h));
        assert_eq!(from_hex("zz"), None);
        assert_eq!(from_hex(&"g".repeat(64)), None);
    }

    #[test]
    fn generated_keys_are_distinct_and_well_formed() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 46);
        assert!(a.starts_with("tg-"));
        assert!(a[3..].bytes().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn key_from_bearer_or_api_key_headers() {
        let buf = b"Authorization: Bearer tg-1\r\nx-api-key: tg-2\r\n";
        let auth = (0..13, 15..26);
        let xk = (28..37, 39..43);
        assert_eq!(&buf[auth.1.clone()], b"Bearer tg-1");
        assert_eq!(
            from_headers(buf, &[xk.clone(), auth.clone()]),
            Some(&b"tg-1"[..])
        );
        assert_eq!(
            from_headers(buf, std::slice::from_ref(&xk)),
            Some(&b"tg-2"[..])
        );
        assert_eq!(from_headers(buf, &[]), None);
        let basic = b"authorization: Basic Zm9v";
        assert_eq!(from_headers(basic, &[(0..13, 15..25)]), None);
    }
}
