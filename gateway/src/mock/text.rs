//! Deterministic completion text: a function of the prompt and a seed.
//!
//! Every word of the vocabulary starts with a space and is exactly one
//! token in both cl100k_base and o200k_base (a unit test checks), and BPE
//! pre-tokenisation never merges across such words, so N words are exactly
//! N completion tokens: the mock's `usage` is exact by construction and the
//! streamed deltas are one token each, like a real model's.

/// One-token words (with their leading space).
pub const VOCAB: &[&str] = &[
    " the", " of", " and", " to", " in", " is", " that", " for", " it", " as", " with", " was",
    " on", " be", " at", " by", " this", " had", " not", " are", " but", " from", " or", " have",
    " an", " they", " which", " one", " you", " were", " all", " we",
];

/// FNV-1a over the prompt bytes and the seed.
pub fn seed_for(prompt: &[u8], seed: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for &b in prompt {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h | 1
}

/// An endless deterministic word stream.
pub struct Words(u64);

impl Words {
    /// Starts from a seed (see [`seed_for`]).
    pub fn new(seed: u64) -> Self {
        Words(seed | 1)
    }
}

impl Iterator for Words {
    type Item = &'static str;

    fn next(&mut self) -> Option<&'static str> {
        // xorshift64*
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
        Some(VOCAB[(r >> 59) as usize % VOCAB.len()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::Encoding;

    #[test]
    fn every_word_is_one_token_and_they_do_not_merge() {
        for enc in [Encoding::Cl100k, Encoding::O200k] {
            for w in VOCAB {
                assert_eq!(enc.count(w), 1, "{w:?} in {}", enc.name());
            }
            let text: String = Words::new(seed_for(b"hello", 7)).take(500).collect();
            assert_eq!(enc.count(&text), 500, "{}", enc.name());
        }
    }

    #[test]
    fn deterministic() {
        let a: Vec<_> = Words::new(seed_for(b"p", 1)).take(20).collect();
        let b: Vec<_> = Words::new(seed_for(b"p", 1)).take(20).collect();
        let c: Vec<_> = Words::new(seed_for(b"q", 1)).take(20).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
