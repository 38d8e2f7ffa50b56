//! Per-worker cache of message token counts.
//!
//! A multi-turn chat resends its whole history every turn; with this cache
//! only the messages a worker has not seen recently go through the BPE.
//! The unit is one message's counted texts (role, content, name, call
//! arguments, …: everything but the fixed framing, which the caller adds),
//! or one tools block, or one completions / embeddings input string.
//!
//! Identity: the unit's bytes themselves. An entry keeps a copy of the
//! encoding and of each text's length and bytes, found by a seeded
//! `foldhash` of the same and compared whole on every hit, so a count is
//! never taken for a different unit: exact by construction, whatever the
//! hash does. A 64-bit hash alone (the keyed SipHash-1-3 this cache used
//! before) made a wrong count a 2^-64 chance, at ~2.5 instructions a
//! byte: for a 32 KiB prompt, ~80,000 instructions per request, the
//! largest cost of a long prompt. The seeded hash and the compare are
//! ~0.1 a byte together. Units over [`MAX_STORED`] bytes (a megabyte
//! pasted into one message) keep the keyed SipHash and their length, not
//! a copy: for them, memory is the cost to avoid.
//!
//! A second kind of unit, keyed the same way on a tagged encoding byte:
//! one chat message's raw JSON bytes, as the client sent them (see
//! [`message_tokens`]). A hit there skips parsing the message at all,
//! which is most of a long chat history's cost; equal bytes are the same
//! message, so the count is the same by construction.
//!
//! Bound: two generations of at most [`GENERATION`] entries and
//! [`GENERATION_BYTES`] stored bytes each (so at most 4,096 entries and
//! 4 MiB per worker). Inserting into a full current generation drops the
//! previous one and starts a new one; a hit
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

/// Bytes of stored units per generation.
const GENERATION_BYTES: usize = 2 << 20;

/// Larger units are known by their keyed hash, not by a copy.
const MAX_STORED: usize = 256 << 10;

/// Smaller units are not cached.
const MIN_BYTES: usize = 8;

/// A unit as the cache identifies it.
#[derive(Clone, Copy)]
enum Unit<'a> {
    /// Counted texts (a message's, a tools block's, an input string).
    Texts(Encoding, &'a [Cow<'a, str>]),
    /// A chat message's raw JSON bytes.
    Raw(Encoding, &'a [u8]),
}

impl Unit<'_> {
    /// The encoding, tagged by kind: the two kinds never share an identity.
    fn tag(self) -> u8 {
        match self {
            Unit::Texts(e, _) => e as u8,
            Unit::Raw(e, _) => e as u8 | 0x80,
        }
    }

    /// Length of the identity: the tag, then each text's length (8
    /// bytes) and bytes, or the raw bytes.
    fn len(self) -> usize {
        1 + match self {
            Unit::Texts(_, texts) => texts.iter().map(|t| 8 + t.len()).sum(),
            Unit::Raw(_, raw) => raw.len(),
        }
    }

    fn hash(self, h: &mut impl Hasher) {
        h.write_u8(self.tag());
        match self {
            Unit::Texts(_, texts) => {
                for t in texts {
                    h.write_u64(t.len() as u64);
                    h.write(t.as_bytes());
                }
            }
            Unit::Raw(_, raw) => h.write(raw),
        }
    }

    /// The identity's bytes, for an entry to keep.
    fn copy(self) -> Box<[u8]> {
        let mut v = Vec::with_capacity(self.len());
        v.push(self.tag());
        match self {
            Unit::Texts(_, texts) => {
                for t in texts {
                    v.extend_from_slice(&(t.len() as u64).to_le_bytes());
                    v.extend_from_slice(t.as_bytes());
                }
            }
            Unit::Raw(_, raw) => v.extend_from_slice(raw),
        }
        v.into_boxed_slice()
    }

    /// True when `copy` is this unit's identity.
    fn is(self, copy: &[u8]) -> bool {
        let Some((&tag, mut rest)) = copy.split_first() else {
            return false;
        };
        if tag != self.tag() {
            return false;
        }
        match self {
            Unit::Raw(_, raw) => rest == raw,
            Unit::Texts(_, texts) => {
                for t in texts {
                    let Some((len, tail)) = rest.split_first_chunk::<8>() else {
                        return false;
                    };
                    let Some((bytes, tail)) = tail.split_at_checked(t.len()) else {
                        return false;
                    };
                    if u64::from_le_bytes(*len) != t.len() as u64 || bytes != t.as_bytes() {
                        return false;
                    }
                    rest = tail;
                }
                rest.is_empty()
            }
        }
    }
}

/// What an entry knows its unit by.
enum Known {
    /// A copy of the identity, compared whole.
    Copy(Box<[u8]>),
    /// A unit over [`MAX_STORED`]: the identity's length; the map's key
    /// is its keyed SipHash.
    Keyed(usize),
}

struct Entry {
    known: Known,
    tokens: u64,
}

impl Entry {
    fn is(&self, unit: Unit<'_>) -> bool {
        match &self.known {
            Known::Copy(copy) => unit.is(copy),
            // Only a unit over MAX_STORED has this length, and only such a
            // unit is looked up by its keyed hash.
            Known::Keyed(len) => *len == unit.len(),
        }
    }

    /// Bytes it holds beyond the map's slot.
    fn cost(&self) -> usize {
        match &self.known {
            Known::Copy(copy) => copy.len(),
            Known::Keyed(_) => 0,
        }
    }
}

/// The keys are already hashes: use them as they are.
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
    /// Seeded per thread; finds a stored unit, which the compare confirms.
    seed: foldhash::fast::RandomState,
    /// Keyed per thread; the identity of units over [`MAX_STORED`].
    keys: RandomState,
    current: Map,
    /// Bytes the current generation's entries hold.
    current_bytes: usize,
    previous: Map,
}

impl Cache {
    fn new() -> Self {
        Cache {
            seed: foldhash::fast::RandomState::default(),
            keys: RandomState::new(),
            current: Map::with_capacity_and_hasher(GENERATION, Default::default()),
            current_bytes: 0,
            previous: Map::default(),
        }
    }

    fn key(&self, unit: Unit<'_>) -> u64 {
        if unit.len() > MAX_STORED {
            let mut h = self.keys.build_hasher();
            unit.hash(&mut h);
            h.finish()
        } else {
            let mut h = self.seed.build_hasher();
            unit.hash(&mut h);
            h.finish()
        }
    }

    /// The tokens stored for `unit` under `key`: only an entry that is
    /// this unit answers, whatever else shares the key.
    fn get(&mut self, key: u64, unit: Unit<'_>) -> Option<u64> {
        if let Some(e) = self.current.get(&key) {
            return e.is(unit).then_some(e.tokens);
        }
        if !self.previous.get(&key)?.is(unit) {
            return None;
        }
        let e = self.previous.remove(&key)?;
        let tokens = e.tokens;
        self.put(key, e);
        Some(tokens)
    }

    fn insert(&mut self, key: u64, unit: Unit<'_>, tokens: u64) {
        let known = if unit.len() > MAX_STORED {
            Known::Keyed(unit.len())
        } else {
            Known::Copy(unit.copy())
        };
        self.put(key, Entry { known, tokens });
    }

    fn put(&mut self, key: u64, e: Entry) {
        if self.current.len() >= GENERATION || self.current_bytes + e.cost() > GENERATION_BYTES {
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.clear();
            self.current_bytes = 0;
        }
        self.current_bytes += e.cost();
        if let Some(old) = self.current.insert(key, e) {
            self.current_bytes -= old.cost();
        }
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
    // Counting texts cannot fail, so the cache always answers.
    through_cache(Unit::Texts(enc, texts), || Some(count())).unwrap_or_else(count)
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
    through_cache(Unit::Raw(enc, raw), count)
}

/// The tokens of `unit`: the cached count, else `count`'s, stored (a
/// `None` is not). Counts directly when the cache is unavailable.
fn through_cache(unit: Unit<'_>, count: impl FnOnce() -> Option<u64>) -> Option<u64> {
    let Some((key, hit)) = with_cache(|c| {
        let key = c.key(unit);
        (key, c.get(key, unit))
    }) else {
        return count();
    };
    if hit.is_some() {
        return hit;
    }
    let tokens = count()?;
    with_cache(|c| c.insert(key, unit, tokens));
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
    fn split_points_and_encodings_are_part_of_the_identity() {
        let a = "x".repeat(100);
        let one = vec![Cow::Borrowed(a.as_str()), Cow::Borrowed("yz")];
        let two = vec![Cow::Borrowed(&a[..99]), Cow::Borrowed("xyz")];
        let stored = Unit::Texts(Encoding::O200k, &one).copy();
        assert!(Unit::Texts(Encoding::O200k, &one).is(&stored));
        assert!(!Unit::Texts(Encoding::O200k, &two).is(&stored));
        assert!(!Unit::Texts(Encoding::Cl100k, &one).is(&stored));
        // A prefix or an extension of the texts is another unit.
        assert!(!Unit::Texts(Encoding::O200k, &one[..1]).is(&stored));
        let three = vec![one[0].clone(), one[1].clone(), Cow::Borrowed("")];
        assert!(!Unit::Texts(Encoding::O200k, &three).is(&stored));
    }

    #[test]
    fn raw_units_are_apart_from_texts() {
        let text = "a message of some length";
        let texts = vec![Cow::Borrowed(text)];
        for enc in [Encoding::O200k, Encoding::Cl100k] {
            let raw = Unit::Raw(enc, text.as_bytes());
            assert!(!raw.is(&Unit::Texts(enc, &texts).copy()));
            assert!(!Unit::Texts(enc, &texts).is(&raw.copy()));
        }
        let json = b"{\"x\":1}".as_slice();
        assert!(!Unit::Raw(Encoding::O200k, json).is(&Unit::Raw(Encoding::Cl100k, json).copy()));
    }

    /// Exact by construction: an entry answers only for its own unit, even
    /// when another unit comes with the same key (a hash collision, forced
    /// here), stored or known by its keyed hash.
    #[test]
    fn a_shared_key_never_returns_another_unit_s_count() {
        let mut c = Cache::new();
        let a = Unit::Raw(Encoding::O200k, b"{\"role\":\"user\",\"content\":\"a\"}");
        let b = Unit::Raw(Encoding::O200k, b"{\"role\":\"user\",\"content\":\"b\"}");
        c.insert(7, a, 11);
        assert_eq!(c.get(7, a), Some(11));
        assert_eq!(c.get(7, b), None);
        let big_a = vec![b'a'; MAX_STORED + 1];
        let big_b = vec![b'b'; MAX_STORED + 2];
        let (big_a, big_b) = (
            Unit::Raw(Encoding::O200k, &big_a),
            Unit::Raw(Encoding::O200k, &big_b),
        );
        c.insert(8, big_a, 12);
        assert_eq!(c.get(8, big_a), Some(12));
        assert_eq!(c.get(8, big_b), None);
        // A small unit is not confused with a large one's key either.
        assert_eq!(c.get(8, a), None);
        // The large unit holds no copy.
        assert_eq!(c.current_bytes, a.len());
        // Its key is the keyed hash, not the seeded one of small units.
        assert_eq!(c.key(big_a), {
            let mut h = c.keys.build_hasher();
            big_a.hash(&mut h);
            h.finish()
        });
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
    fn bounded_by_entries_and_bytes() {
        let mut c = Cache::new();
        let texts: Vec<Vec<Cow<'_, str>>> = (0..3 * GENERATION)
            .map(|k| vec![Cow::Owned(format!("message {k}"))])
            .collect();
        for (k, t) in texts.iter().enumerate() {
            let u = Unit::Texts(Encoding::O200k, t);
            c.insert(c.key(u), u, k as u64);
        }
        assert!(c.len() <= 2 * GENERATION);
        let last = Unit::Texts(Encoding::O200k, &texts[3 * GENERATION - 1]);
        assert_eq!(c.get(c.key(last), last), Some(3 * GENERATION as u64 - 1));
        // Promoted from the previous generation, its copy moved along.
        let old = Unit::Texts(Encoding::O200k, &texts[2 * GENERATION - 1]);
        let key = c.key(old);
        assert_eq!(c.get(key, old), Some(2 * GENERATION as u64 - 1));
        assert!(c.current.contains_key(&key) && !c.previous.contains_key(&key));
        assert!(c.len() <= 2 * GENERATION);
        let held: usize = c.current.values().map(Entry::cost).sum();
        assert_eq!(held, c.current_bytes);

        // Large stored units: the bytes bound starts a new generation
        // long before the entry count would.
        let mut c = Cache::new();
        // With its tag, each identity is MAX_STORED bytes: stored.
        let bodies: Vec<Vec<u8>> = (0..40u8).map(|k| vec![k; MAX_STORED - 1]).collect();
        for (k, b) in bodies.iter().enumerate() {
            let u = Unit::Raw(Encoding::O200k, b);
            c.insert(c.key(u), u, k as u64);
            assert!(c.current_bytes <= GENERATION_BYTES);
        }
        let stored: usize = c
            .current
            .values()
            .chain(c.previous.values())
            .map(Entry::cost)
            .sum();
        assert!(stored <= 2 * GENERATION_BYTES, "{stored}");
        let u = Unit::Raw(Encoding::O200k, &bodies[39]);
        assert_eq!(c.get(c.key(u), u), Some(39));
    }
}
