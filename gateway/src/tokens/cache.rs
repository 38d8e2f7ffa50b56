//! Per-worker cache of message token counts.
//!
//! A multi-turn chat resends its whole history every turn; with this cache
//! only the messages a worker has not seen recently go through the BPE.
//! The unit is one message's counted texts (role, content, name, call
//! arguments, …: everything but the fixed framing, which the caller adds),
//! or one tools block, or one completions / embeddings input string.
//!
//! Key: a keyed SipHash-1-3 (`std`'s `RandomState`, random per thread) of
//! the encoding and each text's length and bytes. The entry also stores
//! the texts' total length, checked on every hit.
//!
//! A second kind of unit, keyed the same way on a tagged encoding byte:
//! one chat message's raw JSON bytes, as the client sent them (see
//! [`message_tokens`]). A hit there skips parsing the message at all,
//! which is most of a long chat history's cost; equal bytes are the same
//! message, so the count is the same by construction. A wrong count needs two
//! different units of equal length with equal 64-bit keyed hashes: about
//! 2^-64 per pair by chance, and a client cannot aim for it without the
//! key.
//!
//! Bound: two generations of at most [`GENERATION`] entries (so at most
//! 4,096 entries, about 100 KiB per worker). Inserting into a full
//! current generation drops the previous one and starts a new one; a hit
//! in the previous generation is promoted to the current. Units under
//! [`MIN_BYTES`] are counted directly. Short messages are cached too:
//! under load the pre-tokenising regex (shared by all threads, with a
//! pooled cache that is lock-free only for its first thread) costs more
//! than the lookup, even for a 30-byte message.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};

use super::{Counting, Encoding};

/// Entries per generation.
const GENERATION: usize = 2048;

/// Smaller units are not cached.
const MIN_BYTES: usize = 8;

#[derive(Clone, Copy)]
struct Entry {
    /// Total length of the unit's texts.
    bytes: u64,
    /// Their tokens.
    tokens: u64,
}

/// The keys are already keyed hashes: use them as they are.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Map = HashMap<u64, Entry, BuildHasherDefault<Identity>>;

struct Cache {
    keys: RandomState,
    current: Map,
    previous: Map,
}

impl Cache {
    fn new() -> Self {
        Cache {
            keys: RandomState::new(),
            current: Map::with_capacity_and_hasher(GENERATION, Default::default()),
            previous: Map::default(),
        }
    }

    fn key(&self, enc: Encoding, texts: &[Cow<'_, str>]) -> u64 {
        let mut h = self.keys.build_hasher();
        h.write_u8(enc as u8);
        for t in texts {
            h.write_usize(t.len());
            h.write(t.as_bytes());
        }
        h.finish()
    }

    /// Key of a message's raw bytes: the encoding byte is tagged so the
    /// two kinds of unit never share a key by construction.
    fn raw_key(&self, enc: Encoding, raw: &[u8]) -> u64 {
        let mut h = self.keys.build_hasher();
        h.write_u8(enc as u8 | 0x80);
        h.write(raw);
        h.finish()
    }

    fn get(&mut self, key: u64, bytes: u64) -> Option<u64> {
        if let Some(e) = self.current.get(&key) {
            return (e.bytes == bytes).then_some(e.tokens);
        }
        let e = self.previous.get(&key).copied()?;
        if e.bytes != bytes {
            return None;
        }
        self.insert(key, e);
        Some(e.tokens)
    }

    fn insert(&mut self, key: u64, e: Entry) {
        if self.current.len() >= GENERATION {
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.clear();
        }
        self.current.insert(key, e);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

thread_local! {
    static CACHE: RefCell<Option<Cache>> = const { RefCell::new(None) };
}

/// Runs `f` on this thread's cache; `None` if it is unavailable (thread
/// teardown, re-entry).
fn with_cache<R>(f: impl FnOnce(&mut Cache) -> R) -> Option<R> {
    CACHE
        .try_with(|c| {
            let mut g = c.try_borrow_mut().ok()?;
            Some(f(g.get_or_insert_with(Cache::new)))
        })
        .ok()
        .flatten()
}

/// Tokens of a unit's texts (their sum), through the cache when `how`
/// says so.
pub(super) fn texts_tokens(enc: Encoding, texts: &[Cow<'_, str>], how: Counting) -> u64 {
    let count = || -> u64 {
        texts
            .iter()
            .map(|t| enc.count_with(t, how.engine) as u64)
            .sum()
    };
    let bytes: usize = texts.iter().map(|t| t.len()).sum();
    if !how.message_cache || bytes < MIN_BYTES {
        return count();
    }
    let bytes = bytes as u64;
    let Some((key, hit)) = with_cache(|c| {
        let key = c.key(enc, texts);
        (key, c.get(key, bytes))
    }) else {
        return count();
    };
    if let Some(tokens) = hit {
        return tokens;
    }
    let tokens = count();
    with_cache(|c| c.insert(key, Entry { bytes, tokens }));
    tokens
}

/// Tokens one chat message is charged beyond the fixed per-message
/// framing, looked up by the message's raw JSON bytes; `count` parses and
/// counts it on a miss (`None`: it cannot be counted, nothing is stored).
pub(super) fn message_tokens(
    enc: Encoding,
    raw: &[u8],
    how: Counting,
    count: impl FnOnce() -> Option<u64>,
) -> Option<u64> {
    if !how.message_cache || raw.len() < MIN_BYTES {
        return count();
    }
    let bytes = raw.len() as u64;
    let Some((key, hit)) = with_cache(|c| {
        let key = c.raw_key(enc, raw);
        (key, c.get(key, bytes))
    }) else {
        return count();
    };
    if hit.is_some() {
        return hit;
    }
    let tokens = count()?;
    with_cache(|c| c.insert(key, Entry { bytes, tokens }));
    Some(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(s: &str) -> Vec<Cow<'_, str>> {
        vec![Cow::Borrowed("user"), Cow::Borrowed(s)]
    }

    #[test]
    fn hits_equal_misses_and_encodings_are_separate() {
        let text = "The cache must return exactly what the BPE says, per encoding: 中文测试 👩‍👩‍👧‍👦";
        for enc in [Encoding::O200k, Encoding::Cl100k] {
            let direct = texts_tokens(
                enc,
                &unit(text),
                Counting {
                    message_cache: false,
                    ..Counting::DEFAULT
                },
            );
            for _ in 0..3 {
                assert_eq!(texts_tokens(enc, &unit(text), Counting::DEFAULT), direct);
            }
        }
    }

    #[test]
    fn split_points_are_part_of_the_key() {
        let a = "x".repeat(100);
        let one = vec![Cow::Borrowed(a.as_str()), Cow::Borrowed("yz")];
        let two = vec![Cow::Borrowed(&a[..99]), Cow::Borrowed("xyz")];
        let c = Cache::new();
        assert_ne!(c.key(Encoding::O200k, &one), c.key(Encoding::O200k, &two));
        assert_ne!(c.key(Encoding::O200k, &one), c.key(Encoding::Cl100k, &one));
    }

    #[test]
    fn raw_units_are_keyed_apart_from_texts() {
        let c = Cache::new();
        let text = "a message of some length";
        let texts = vec![Cow::Borrowed(text)];
        for enc in [Encoding::O200k, Encoding::Cl100k] {
            assert_ne!(c.key(enc, &texts), c.raw_key(enc, text.as_bytes()));
        }
        assert_ne!(
            c.raw_key(Encoding::O200k, b"{\"x\":1}"),
            c.raw_key(Encoding::Cl100k, b"{\"x\":1}")
        );
    }

    #[test]
    fn raw_unit_counted_once_and_failures_not_stored() {
        let raw = br#"{"role":"user","content":"counted once, then found by its bytes"}"#;
        let mut calls = 0;
        for _ in 0..3 {
            let n = message_tokens(Encoding::O200k, raw, Counting::DEFAULT, || {
                calls += 1;
                Some(42)
            });
            assert_eq!(n, Some(42));
        }
        assert_eq!(calls, 1);
        let other = br#"{"role":"user","content":"this one cannot be counted at all"}"#;
        for _ in 0..2 {
            let n = message_tokens(Encoding::O200k, other, Counting::DEFAULT, || {
                calls += 1;
                None
            });
            assert_eq!(n, None);
        }
        assert_eq!(calls, 3);
    }

    #[test]
    fn bounded_and_length_checked() {
        let mut c = Cache::new();
        for k in 0..(3 * GENERATION as u64) {
            c.insert(
                k,
                Entry {
                    bytes: 1,
                    tokens: k,
                },
            );
        }
        assert!(c.len() <= 2 * GENERATION);
        let last = 3 * GENERATION as u64 - 1;
        assert_eq!(c.get(last, 1), Some(last));
        // Same key, other length: a miss, never the stored count.
        assert_eq!(c.get(last, 2), None);
        // Promoted from the previous generation.
        let old = 2 * GENERATION as u64 - 1;
        assert_eq!(c.get(old, 1), Some(old));
        assert!(c.current.contains_key(&old));
        assert!(c.len() <= 2 * GENERATION);
    }
}
