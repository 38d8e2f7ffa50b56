//! The fast counter: bpe-openai's pre-tokenizer and exact BPE, with a
//! per-worker cache of short pieces.
//!
//! The pre-tokenizer splits text into pieces (words with their leading
//! space, digit groups, punctuation runs, whitespace) exactly as tiktoken's
//! regex does, and BPE never merges across pieces, so a text's count is
//! the sum of its pieces' counts. Prose and code repeat a small vocabulary
//! of pieces, and about half of bpe-openai's time goes to running the BPE
//! on each piece (it allocates per piece). The piece cache keeps the count
//! of recently seen pieces of up to [`WIDTH`] bytes.
//!
//! Piece cache: direct-mapped, [`SLOTS`] slots per encoding, each holding
//! the piece bytes themselves (zero-padded), its length and its count, so
//! a hit is an exact byte comparison: a collision only evicts, it can
//! never return another piece's count. 2 × 4096 × 18 B = 144 KiB per
//! thread, allocated on the thread's first count.

use std::cell::RefCell;

use super::Encoding;

/// Longest piece kept in the cache, in bytes. Most English words with
/// their leading space fit; longer pieces go straight to the BPE.
const WIDTH: usize = 16;

/// Slots per encoding (a power of two).
const SLOTS: usize = 4096;

#[derive(Clone, Copy)]
struct Slot {
    /// The piece, zero-padded to `WIDTH`.
    bytes: [u8; WIDTH],
    /// Piece length; 0 = empty slot (empty pieces never occur).
    len: u8,
    /// Its token count (at most `WIDTH`: every byte is a token).
    tokens: u8,
}

const EMPTY: Slot = Slot {
    bytes: [0; WIDTH],
    len: 0,
    tokens: 0,
};

struct PieceCache {
    o200k: Box<[Slot]>,
    cl100k: Box<[Slot]>,
}

thread_local! {
    static PIECES: RefCell<Option<PieceCache>> = const { RefCell::new(None) };
}

fn tokenizer(enc: Encoding) -> &'static bpe_openai::Tokenizer {
    match enc {
        Encoding::O200k => bpe_openai::o200k_base(),
        Encoding::Cl100k => bpe_openai::cl100k_base(),
    }
}

/// bpe-openai without the piece cache.
pub(super) fn count_plain(enc: Encoding, text: &str) -> usize {
    let tok = tokenizer(enc);
    tok.split(text).map(|p| tok.bpe.count(p.as_bytes())).sum()
}

/// Tokens of `text` (the production path).
pub(super) fn count(enc: Encoding, text: &str) -> usize {
    if text.is_empty() {
        return 0;
    }
    let tok = tokenizer(enc);
    let cached = PIECES.try_with(|cell| {
        // Not re-entrant, but a thread being torn down (or a future
        // caller inside a count) falls back to the plain path.
        let mut guard = cell.try_borrow_mut().ok()?;
        let cache = guard.get_or_insert_with(|| PieceCache {
            o200k: vec![EMPTY; SLOTS].into_boxed_slice(),
            cl100k: vec![EMPTY; SLOTS].into_boxed_slice(),
        });
        let slots = match enc {
            Encoding::O200k => &mut cache.o200k,
            Encoding::Cl100k => &mut cache.cl100k,
        };
        Some(
            tok.split(text)
                .map(|p| piece(tok, slots, p.as_bytes()))
                .sum(),
        )
    });
    match cached {
        Ok(Some(n)) => n,
        _ => count_plain(enc, text),
    }
}

/// Count of one piece, through the cache when it fits.
#[inline]
fn piece(tok: &bpe_openai::Tokenizer, slots: &mut [Slot], p: &[u8]) -> usize {
    if p.len() > WIDTH || p.is_empty() {
        return tok.bpe.count(p);
    }
    let mut bytes = [0u8; WIDTH];
    bytes[..p.len()].copy_from_slice(p);
    let i = slot_index(&bytes, p.len());
    let Some(slot) = slots.get_mut(i) else {
        return tok.bpe.count(p);
    };
    if usize::from(slot.len) == p.len() && slot.bytes == bytes {
        return usize::from(slot.tokens);
    }
    let n = tok.bpe.count(p);
    // n <= p.len() <= WIDTH, so both fit a u8.
    *slot = Slot {
        bytes,
        len: p.len() as u8,
        tokens: n as u8,
    };
    n
}

/// Slot of a zero-padded piece: a multiply-xorshift mix of its two words.
#[inline]
fn slot_index(bytes: &[u8; WIDTH], len: usize) -> usize {
    let (a, b) = bytes.split_at(8);
    let a = u64::from_le_bytes(a.try_into().unwrap_or_default());
    let b = u64::from_le_bytes(b.try_into().unwrap_or_default());
    let mut h = (a ^ (len as u64).rotate_right(8)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h ^= b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    h ^= h >> 29;
    h = h.wrapping_mul(0x1656_67B1_9E37_79F9);
    (h >> 40) as usize & (SLOTS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn piece_cache_is_per_encoding_and_exact() {
        // The same pieces count differently in the two encodings; the
        // cache must not mix them, in either order.
        let text = "中文测试，汉字和标点符号。 hello hello world";
        for _ in 0..3 {
            for enc in [Encoding::O200k, Encoding::Cl100k] {
                assert_eq!(count(enc, text), count_plain(enc, text), "{}", enc.name());
            }
        }
        assert_eq!(count(Encoding::Cl100k, ""), 0);
    }

    #[test]
    fn slot_index_in_range() {
        let mut b = [0u8; WIDTH];
        for i in 0..=255u8 {
            b[0] = i;
            b[15] = i.wrapping_mul(7);
            assert!(slot_index(&b, usize::from(i % 17)) < SLOTS);
        }
    }
}
