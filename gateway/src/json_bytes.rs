//! Byte-level steps over JSON text that the scanners which look for one
//! key without parsing the whole document share (`sse::fast`,
//! `sse::deferred`, `usage::body`): where a string ends, whether a quote
//! is escaped, skipping whitespace, whether a member belongs to the
//! outermost object; and the 16-byte finder of the bytes that stop a
//! string's plain run, which the routing scan shares with them (and its
//! twin for an SSE line's end, `sse::hold`'s).

/// End of the JSON string whose opening quote is at `open`: the index of
/// its closing quote and whether the string has escapes. `None` when the
/// text ends first.
pub(crate) fn string_end(t: &[u8], open: usize) -> Option<(usize, bool)> {
    let mut i = open + 1;
    let mut escaped = false;
    loop {
        i = next_special(t, i);
        match t.get(i)? {
            b'"' => return Some((i, escaped)),
            b'\\' => {
                escaped = true;
                i += 2;
            }
            // A control byte: invalid JSON, not the string's end.
            _ => i += 1,
        }
    }
}

/// Index of the first `"` of `t` at or after `i`, skipping whatever else
/// [`next_special`] stops at.
pub(crate) fn next_quote(t: &[u8], mut i: usize) -> Option<usize> {
    loop {
        i = next_special(t, i);
        match t.get(i)? {
            b'"' => return Some(i),
            _ => i += 1,
        }
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

/// Index of the first byte at or after `i` that stops a string's plain
/// run: `"`, `\\` or a control character (< 0x20); `b.len()` when there
/// is none. Bytes of 0x80 and up are plain.
#[inline]
pub(crate) fn next_special(b: &[u8], mut i: usize) -> usize {
    // Most strings end within a few lanes. A longer run (a prompt's text)
    // goes on a block of four lanes a step: one branch and one mask per
    // 64 bytes instead of four, ~0.5 instructions a byte against ~1.1.
    for _ in 0..BLOCK / LANES {
        let Some(chunk) = b.get(i..i + LANES) else {
            break;
        };
        let hits = special_lanes(chunk);
        if hits != 0 {
            return i + hits.trailing_zeros() as usize;
        }
        i += LANES;
    }
    i = skip_plain_blocks(b, i);
    // A space is plain.
    next_hit(b, i, special_lanes, b' ').unwrap_or(b.len())
}

/// From `i`, past every whole [`BLOCK`] with no byte [`special_lanes`]
/// marks: the start of the first block that has one, or of the last
/// partial block. Two 32-byte AVX2 registers a block where the CPU has
/// AVX2 (~0.3 instructions a byte), four SSE2 ones elsewhere (~0.5).
#[cfg(target_arch = "x86_64")]
#[inline(never)]
fn skip_plain_blocks(b: &[u8], i: usize) -> usize {
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above, which is all
        // `skip_plain_blocks_avx2` asks of its caller.
        unsafe { skip_plain_blocks_avx2(b, i) }
    } else {
        skip_plain_blocks_with(b, i, special_in_block)
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn skip_plain_blocks(b: &[u8], i: usize) -> usize {
    skip_plain_blocks_with(b, i, special_in_block)
}

#[inline(always)]
fn skip_plain_blocks_with(b: &[u8], mut i: usize, special: impl Fn(&[u8]) -> bool) -> usize {
    while let Some(block) = b.get(i..i + BLOCK) {
        if special(block) {
            break;
        }
        i += BLOCK;
    }
    i
}

/// [`skip_plain_blocks`] with AVX2.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn skip_plain_blocks_avx2(b: &[u8], i: usize) -> usize {
    use std::arch::x86_64::{
        _mm256_cmpeq_epi8, _mm256_loadu_si256, _mm256_max_epu8, _mm256_min_epu8,
        _mm256_movemask_epi8, _mm256_or_si256, _mm256_set1_epi8,
    };
    skip_plain_blocks_with(b, i, |block| {
        assert!(block.len() >= BLOCK);
        let p = block.as_ptr();
        // SAFETY: the assert keeps both unaligned 32-byte loads (at 0 and
        // 32) inside `block`; `_mm256_loadu_si256` has no alignment
        // requirement, and the function's contract guarantees AVX2.
        let (v0, v1) = unsafe {
            (
                _mm256_loadu_si256(p.cast()),
                _mm256_loadu_si256(p.add(2 * LANES).cast()),
            )
        };
        let quote = _mm256_set1_epi8(b'"' as i8);
        let backslash = _mm256_set1_epi8(b'\\' as i8);
        let marks =
            |v| _mm256_or_si256(_mm256_cmpeq_epi8(v, quote), _mm256_cmpeq_epi8(v, backslash));
        let low = _mm256_set1_epi8(0x1f);
        let control = _mm256_cmpeq_epi8(_mm256_max_epu8(_mm256_min_epu8(v0, v1), low), low);
        let any = _mm256_or_si256(_mm256_or_si256(marks(v0), marks(v1)), control);
        _mm256_movemask_epi8(any) != 0
    })
}

/// Index of the first byte of `b[i..i + LANES]` that stops a string's
/// plain run, looking at those sixteen bytes only: `None` when none of
/// them does or fewer remain. The inline first step of a string skip,
/// which settles most keys and short values without a call.
#[inline(always)]
pub(crate) fn special_within(b: &[u8], i: usize) -> Option<usize> {
    match special_lanes(b.get(i..i + LANES)?) {
        0 => None,
        hits => Some(i + hits.trailing_zeros() as usize),
    }
}

/// Index of the first byte at or after `i` that `lanes` marks, 16 bytes
/// a step; the tail is padded with `pad`, a byte `lanes` does not mark.
#[inline(always)]
fn next_hit(b: &[u8], mut i: usize, lanes: impl Fn(&[u8]) -> u32, pad: u8) -> Option<usize> {
    while let Some(chunk) = b.get(i..i + LANES) {
        let hits = lanes(chunk);
        if hits != 0 {
            return Some(i + hits.trailing_zeros() as usize);
        }
        i += LANES;
    }
    let rest = b.get(i..).unwrap_or_default();
    let mut tail = [pad; LANES];
    tail[..rest.len()].copy_from_slice(rest);
    match lanes(&tail) {
        0 => None,
        hits => Some(i + hits.trailing_zeros() as usize),
    }
}

/// Index of the first CR or LF at or after `i`: where an SSE line ends.
/// For the few dozen bytes after a line's known prefix, where a `memchr2`
/// call's set-up costs more than the search itself (~130 instructions
/// against ~40 for 50 bytes, counted).
#[inline]
pub(crate) fn next_line_end(b: &[u8], i: usize) -> Option<usize> {
    // A NUL ends no line.
    next_hit(b, i, eol_lanes, 0)
}

/// Bit `k` set when `chunk[k]` (of at least [`LANES`] bytes) is CR or LF.
#[cfg(target_arch = "x86_64")]
#[inline]
fn eol_lanes(chunk: &[u8]) -> u32 {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    assert!(chunk.len() >= LANES);
    // SAFETY: as in `special_lanes`: the assert keeps the unaligned
    // 16-byte load inside `chunk`; the rest are register-only SSE2
    // instructions of the x86-64 baseline.
    unsafe {
        let v = _mm_loadu_si128(chunk.as_ptr().cast());
        let lf = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\n' as i8));
        let cr = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\r' as i8));
        _mm_movemask_epi8(_mm_or_si128(lf, cr)) as u32
    }
}

/// [`eol_lanes`] a word at a time (other targets, and the tests): only
/// the lowest hit, the one read, is exact.
#[cfg(any(test, not(target_arch = "x86_64")))]
#[inline]
fn eol_lanes_swar(chunk: &[u8]) -> u32 {
    lanes_swar(chunk, |x| {
        zero_bytes(x ^ (ONES * u64::from(b'\n'))) | zero_bytes(x ^ (ONES * u64::from(b'\r')))
    })
}

#[cfg(not(target_arch = "x86_64"))]
use eol_lanes_swar as eol_lanes;

/// Bytes classified per call of [`special_lanes`] (one SSE2 register;
/// `sse::deferred`'s finder steps by as many).
pub(crate) const LANES: usize = 16;

/// Bit `k` set when `chunk[k]` (of exactly [`LANES`] bytes) is `"`, `\\`
/// or below 0x20. SSE2, which every x86-64 CPU has.
#[cfg(target_arch = "x86_64")]
#[inline]
fn special_lanes(chunk: &[u8]) -> u32 {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };
    assert!(chunk.len() >= LANES);
    // SAFETY: the assert above keeps the 16-byte load inside `chunk`, and
    // `_mm_loadu_si128` has no alignment requirement. The rest are
    // register-only SSE2 instructions, part of the x86-64 baseline, so
    // they exist on every CPU this target runs on.
    unsafe {
        let v = _mm_loadu_si128(chunk.as_ptr().cast());
        let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
        // Unsigned v <= 0x1f exactly when max(v, 0x1f) == 0x1f.
        let low = _mm_set1_epi8(0x1f);
        let control = _mm_cmpeq_epi8(_mm_max_epu8(v, low), low);
        _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control)) as u32
    }
}

/// Bytes per step of [`next_special`]'s long runs: four lanes.
const BLOCK: usize = 4 * LANES;

/// True when `block` (of at least [`BLOCK`] bytes) holds a byte
/// [`special_lanes`] marks. The four lanes' quote and backslash compares
/// are OR-ed, and their unsigned minimum stands for all four in the one
/// control-range test: one mask for 64 bytes.
#[cfg(target_arch = "x86_64")]
#[inline]
fn special_in_block(block: &[u8]) -> bool {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_min_epu8, _mm_movemask_epi8,
        _mm_or_si128, _mm_set1_epi8,
    };
    assert!(block.len() >= BLOCK);
    // SAFETY: the assert keeps the four unaligned 16-byte loads (at 0, 16,
    // 32 and 48) inside `block`; `_mm_loadu_si128` has no alignment
    // requirement. The rest are register-only SSE2 instructions, part of
    // the x86-64 baseline.
    unsafe {
        let p = block.as_ptr();
        let v0 = _mm_loadu_si128(p.cast());
        let v1 = _mm_loadu_si128(p.add(LANES).cast());
        let v2 = _mm_loadu_si128(p.add(2 * LANES).cast());
        let v3 = _mm_loadu_si128(p.add(3 * LANES).cast());
        let quote = _mm_set1_epi8(b'"' as i8);
        let backslash = _mm_set1_epi8(b'\\' as i8);
        let marks = |v| _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash));
        let marked = _mm_or_si128(
            _mm_or_si128(marks(v0), marks(v1)),
            _mm_or_si128(marks(v2), marks(v3)),
        );
        // Some byte of the four is <= 0x1f exactly when their minimum is.
        let low = _mm_set1_epi8(0x1f);
        let least = _mm_min_epu8(_mm_min_epu8(v0, v1), _mm_min_epu8(v2, v3));
        let control = _mm_cmpeq_epi8(_mm_max_epu8(least, low), low);
        _mm_movemask_epi8(_mm_or_si128(marked, control)) != 0
    }
}

/// [`special_in_block`] lane by lane (other targets, and the tests).
#[cfg(any(test, not(target_arch = "x86_64")))]
#[inline]
fn special_in_block_lanes(block: &[u8], lanes: impl Fn(&[u8]) -> u32) -> bool {
    block[..BLOCK].chunks_exact(LANES).any(|c| lanes(c) != 0)
}

#[cfg(not(target_arch = "x86_64"))]
fn special_in_block(block: &[u8]) -> bool {
    special_in_block_lanes(block, special_lanes)
}

/// [`special_lanes`] a word at a time, where SSE2 is not available (and
/// in tests, against the same reference). The zero-byte trick only
/// misreports bytes above a real hit, so the lowest set bit, the only one
/// read, is exact.
#[cfg(any(test, not(target_arch = "x86_64")))]
#[inline]
fn special_lanes_swar(chunk: &[u8]) -> u32 {
    lanes_swar(chunk, |x| {
        let quote = zero_bytes(x ^ (ONES * u64::from(b'"')));
        let backslash = zero_bytes(x ^ (ONES * u64::from(b'\\')));
        let control = x.wrapping_sub(ONES * 0x20) & !x & HI;
        quote | backslash | control
    })
}

#[cfg(not(target_arch = "x86_64"))]
use special_lanes_swar as special_lanes;

#[cfg(any(test, not(target_arch = "x86_64")))]
const ONES: u64 = 0x0101_0101_0101_0101;
#[cfg(any(test, not(target_arch = "x86_64")))]
const HI: u64 = 0x8080_8080_8080_8080;

/// The lowest lane of `chunk`'s first [`LANES`] bytes where `hits`
/// (of a little-endian word, high bit of each byte) found one, as a
/// one-bit mask; 0 when none did.
#[cfg(any(test, not(target_arch = "x86_64")))]
#[inline]
fn lanes_swar(chunk: &[u8], hits: impl Fn(u64) -> u64) -> u32 {
    let word = |w: &[u8]| -> u32 {
        match hits(word_le(w)) {
            0 => 0,
            m => 1 << (m.trailing_zeros() / 8),
        }
    };
    match word(&chunk[..8]) {
        0 => word(&chunk[8..LANES]) << 8,
        lo => lo,
    }
}

/// Eight bytes as a little-endian word.
#[cfg(any(test, not(target_arch = "x86_64")))]
#[inline]
fn word_le(w: &[u8]) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(w);
    u64::from_le_bytes(x)
}

/// The high bit of every zero byte of `v` (and maybe of bytes above the
/// lowest zero one: the borrow; the lowest set bit is exact).
#[cfg(any(test, not(target_arch = "x86_64")))]
#[inline]
fn zero_bytes(v: u64) -> u64 {
    v.wrapping_sub(ONES) & !v & HI
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks a 16-byte finder against `hit` byte by byte: every byte
    /// value at every position of bodies around the lane width, after
    /// plain bytes of several kinds (`fills`), from several starts; and
    /// its word-at-a-time lanes (other targets), whose lowest hit must be
    /// exact.
    fn finder_is_exact(
        find: impl Fn(&[u8], usize) -> Option<usize>,
        swar: fn(&[u8]) -> u32,
        hit: fn(u8) -> bool,
        fills: &[u8],
    ) {
        let reference = |b: &[u8], i: usize| (i..b.len()).find(|&k| hit(b[k]));
        for len in [0, 1, 7, 8, 15, 16, 17, 31, 32, 33, 40, 50] {
            for pos in 0..len.max(1) {
                for byte in 0..=255u8 {
                    for &fill in fills {
                        let mut b = vec![fill; len];
                        if pos < len {
                            b[pos] = byte;
                        }
                        for start in [0, pos.saturating_sub(1), pos, pos + 1, len + 3] {
                            assert_eq!(
                                find(&b, start),
                                reference(&b, start),
                                "byte {byte:#x} at {pos} of {len}, fill {fill:#x}, from {start}"
                            );
                        }
                    }
                }
            }
        }
        for pos in 0..LANES {
            for byte in 0..=255u8 {
                for &fill in fills {
                    let mut lane = [fill; LANES];
                    lane[pos] = byte;
                    let want = if hit(byte) { pos } else { LANES };
                    let got = match swar(&lane) {
                        0 => LANES,
                        m => m.trailing_zeros() as usize,
                    };
                    assert_eq!(got, want, "byte {byte:#x} at {pos}, fill {fill:#x}");
                }
            }
        }
    }

    #[test]
    fn special_byte_finder_is_exact() {
        // ASCII, non-ASCII, the borders of the control range.
        finder_is_exact(
            |b, i| Some(next_special(b, i)).filter(|&k| k < b.len()),
            special_lanes_swar,
            |c| c == b'"' || c == b'\\' || c < 0x20,
            &[b'a', b' ', b'~', 0x21, 0x7f, 0x80, 0xe6, 0xff],
        );
        // Two hits in one lane: the first is found; none: the length.
        let b = b"abc\\\"def\"ghijklmnopq";
        assert_eq!(next_special(b, 0), 3);
        assert_eq!(next_special(b"", 0), 0);
        assert_eq!(next_special(b"abc", 3), 3);
    }

    /// Long runs: the first four lanes one by one, then 64-byte blocks,
    /// then the lanes again (the block with the hit, and the tail). Every
    /// byte value at every position of bodies around those borders, from
    /// starts that shift the blocks; and the block test itself against
    /// the lane-by-lane one, for each byte at each position.
    #[test]
    fn special_byte_finder_is_exact_over_long_runs() {
        let hit = |c: u8| c == b'"' || c == b'\\' || c < 0x20;
        for len in [128, 129, 144, 200] {
            for pos in 0..len {
                for byte in 0..=255u8 {
                    for fill in [b'a', 0xe6] {
                        let mut b = vec![fill; len];
                        b[pos] = byte;
                        for start in [0, 15, pos] {
                            let want = (start..len).find(|&k| hit(b[k])).unwrap_or(len);
                            assert_eq!(
                                next_special(&b, start),
                                want,
                                "byte {byte:#x} at {pos} of {len}, fill {fill:#x}, from {start}"
                            );
                        }
                    }
                }
            }
        }
        // Each block skipper, whichever `next_special` picked above.
        type Skip = fn(&[u8], usize) -> usize;
        let skippers: [(&str, Skip); 2] = [
            ("sse2", |b, i| {
                skip_plain_blocks_with(b, i, special_in_block)
            }),
            #[cfg(target_arch = "x86_64")]
            ("avx2", |b, i| {
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: AVX2 was detected.
                    unsafe { skip_plain_blocks_avx2(b, i) }
                } else {
                    skip_plain_blocks_with(b, i, special_in_block)
                }
            }),
            #[cfg(not(target_arch = "x86_64"))]
            ("lanes", |b, i| {
                skip_plain_blocks_with(b, i, special_in_block)
            }),
        ];
        for (name, skip) in skippers {
            for len in [0, 63, 65, 130] {
                for pos in 0..len {
                    for byte in 0..=255u8 {
                        let mut b = vec![b'a'; len];
                        b[pos] = byte;
                        for start in [0, pos] {
                            // The block holding the first hit, or the last
                            // partial one.
                            let mut want = start;
                            while want + BLOCK <= len && !(want..want + BLOCK).any(|k| hit(b[k])) {
                                want += BLOCK;
                            }
                            assert_eq!(
                                skip(&b, start),
                                want,
                                "{name}: byte {byte:#x} at {pos} of {len}, from {start}"
                            );
                        }
                    }
                }
            }
        }
        for pos in 0..BLOCK {
            for byte in 0..=255u8 {
                let mut block = [b'a'; BLOCK];
                block[pos] = byte;
                assert_eq!(
                    special_in_block(&block),
                    hit(byte),
                    "byte {byte:#x} at {pos}"
                );
                assert_eq!(
                    special_in_block_lanes(&block, special_lanes_swar),
                    hit(byte),
                    "swar: byte {byte:#x} at {pos}"
                );
            }
        }
    }

    #[test]
    fn special_within_reads_sixteen_bytes_only() {
        let hit = |c: u8| c == b'"' || c == b'\\' || c < 0x20;
        for len in [0, 1, 15, 16, 17, 31, 40] {
            for pos in 0..len.max(1) {
                for byte in 0..=255u8 {
                    let mut b = vec![b'a'; len];
                    if pos < len {
                        b[pos] = byte;
                    }
                    for start in [
                        0,
                        pos.saturating_sub(15),
                        pos.saturating_sub(3),
                        pos,
                        pos + 1,
                    ] {
                        // Fewer than sixteen bytes left: no answer, not a
                        // look past the end.
                        let want = (start + LANES <= len)
                            .then(|| (start..start + LANES).find(|&k| hit(b[k])))
                            .flatten();
                        assert_eq!(
                            special_within(&b, start),
                            want,
                            "byte {byte:#x} at {pos} of {len}, from {start}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn line_end_finder_is_exact() {
        // Other control bytes, and bytes whose low bits are CR's or LF's.
        finder_is_exact(
            next_line_end,
            eol_lanes_swar,
            |c| c == b'\n' || c == b'\r',
            &[b'a', 0, 0x0b, 0x0c, 0x8a, 0x8d, 0xff],
        );
        assert_eq!(next_line_end(b"ab\r\ncd\n", 0), Some(2));
        assert_eq!(next_line_end(b"ab\r\ncd\n", 3), Some(3));
        assert_eq!(next_line_end(b"ab\r\ncd\n", 4), Some(6));
    }

    #[test]
    fn strings_quotes_and_whitespace() {
        let t = br#"{"a\"b\\":"c"}"#;
        assert_eq!(string_end(t, 1), Some((8, true)));
        assert_eq!(string_end(t, 10), Some((12, false)));
        assert_eq!(string_end(br#""open"#, 0), None);
        assert_eq!(string_end(br#""tail\"#, 0), None);
        // The finder also stops at control bytes: skipped, not an end.
        assert_eq!(string_end(b"\"a\x01b\x1f\"", 0), Some((5, false)));
        // Past the 16-byte steps, into the padded tail.
        let long = [&b"\""[..], &[b'x'; 40], b"\\\"\""].concat();
        assert_eq!(string_end(&long, 0), Some((43, true)));
        assert_eq!(next_quote(b"{\\\x02 \"k\"", 0), Some(4));
        assert_eq!(next_quote(&long, 1), Some(42));
        assert_eq!(next_quote(b"{1 \\ \x03}", 0), None);
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
