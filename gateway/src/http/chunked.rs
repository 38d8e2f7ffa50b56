//! Incremental decoder for HTTP/1.1 chunked transfer coding (RFC 9112 §7.1).
//!
//! It is fed whatever a read returned, split anywhere, and hands out the
//! payload slices it finds without copying. The same decoder finds the end
//! of a chunked upstream response that is forwarded as-is and decodes
//! chunked request bodies.
//!
//! Strictness: chunk lines must end in CRLF, sizes are hex without sign,
//! at most 16 digits; extensions and trailers are skipped but bounded, so a
//! peer cannot make the decoder buffer or spin without limit.

/// Longest chunk-extension or trailer section accepted.
const MAX_META: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits of a chunk size.
    Size { digits: u8 },
    /// After the size: optional whitespace, then `;ext` or CR.
    SizeTail,
    /// Inside a chunk extension, until CR.
    Ext,
    /// Expecting the LF of a size line.
    SizeLf,
    /// Inside chunk data; `remaining` bytes left.
    Data,
    /// Expecting CR after data.
    DataCr,
    /// Expecting LF after data.
    DataLf,
    /// At the start of a trailer line (or the final CRLF).
    TrailerStart,
    /// Inside a trailer field line.
    Trailer,
    /// Expecting LF ending a trailer line.
    TrailerLf,
    /// Expecting the LF of the final empty line.
    EndLf,
    /// The message body is complete.
    Done,
}

/// Malformed chunked framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkError(pub &'static str);

impl std::fmt::Display for ChunkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid chunked encoding: {}", self.0)
    }
}

/// The decoder.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    remaining: u64,
    meta: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    /// A decoder at the start of a body.
    pub fn new() -> Self {
        ChunkedDecoder {
            state: State::Size { digits: 0 },
            size: 0,
            remaining: 0,
            meta: 0,
        }
    }

    /// True between two chunks (nothing of the next size line read yet):
    /// the body could be ended here with a last-chunk marker.
    pub fn at_chunk_start(&self) -> bool {
        self.state == State::Size { digits: 0 }
    }

    /// True once the last chunk and trailers have been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Feeds `input`, calling `on_data` with each payload slice. Returns
    /// how many bytes belong to this body: all of `input` unless the body
    /// ended inside it (the rest is the next message).
    pub fn feed(
        &mut self,
        input: &[u8],
        mut on_data: impl FnMut(&[u8]),
    ) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Done => return Ok(i),
                State::Data => {
                    let avail = (input.len() - i) as u64;
                    let take = avail.min(self.remaining) as usize;
                    on_data(&input[i..i + take]);
                    i += take;
                    self.remaining -= take as u64;
                    if self.remaining == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::Size { digits: 0 } if let Some((size, len)) = size_line(&input[i..]) => {
                    // The common case, a whole `hex CRLF` size line in the
                    // input, read in one step; anything else byte by byte.
                    i += len;
                    if size == 0 {
                        self.meta = 0;
                        self.state = State::TrailerStart;
                    } else if let Some(end) = whole_chunk(input, i, size) {
                        // The whole chunk and its CRLF are here too (an
                        // SSE event usually is one chunk): taken in the
                        // same step, the state stays at a chunk start.
                        on_data(&input[i..end]);
                        i = end + 2;
                    } else {
                        self.remaining = size;
                        self.state = State::Data;
                    }
                    continue;
                }
                State::DataCr if input[i..].starts_with(b"\r\n") => {
                    i += 2;
                    self.state = State::Size { digits: 0 };
                    continue;
                }
                State::Size { digits } => {
                    let v = match hex_digit(b) {
                        Some(v) => v,
                        None if digits == 0 => return Err(ChunkError("missing chunk size")),
                        None => {
                            self.state = State::SizeTail;
                            continue;
                        }
                    };
                    if digits == 16 {
                        return Err(ChunkError("chunk size too large"));
                    }
                    self.size = (self.size << 4) | u64::from(v);
                    self.state = State::Size { digits: digits + 1 };
                }
                State::SizeTail => match b {
                    b' ' | b'\t' => {}
                    b';' => {
                        self.meta = 0;
                        self.state = State::Ext;
                    }
                    b'\r' => self.state = State::SizeLf,
                    _ => return Err(ChunkError("invalid byte after chunk size")),
                },
                State::Ext => {
                    if b == b'\r' {
                        self.state = State::SizeLf;
                    } else {
                        self.meta += 1;
                        if self.meta > MAX_META {
                            return Err(ChunkError("chunk extension too long"));
                        }
                    }
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError("expected LF after chunk size"));
                    }
                    if self.size == 0 {
                        self.meta = 0;
                        self.state = State::TrailerStart;
                    } else {
                        self.remaining = self.size;
                        self.state = State::Data;
                    }
                    self.size = 0;
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError("expected CR after chunk data"));
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError("expected LF after chunk data"));
                    }
                    self.state = State::Size { digits: 0 };
                }
                State::TrailerStart => {
                    if b == b'\r' {
                        self.state = State::EndLf;
                    } else {
                        self.state = State::Trailer;
                        continue;
                    }
                }
                State::Trailer => {
                    self.meta += 1;
                    if self.meta > MAX_META {
                        return Err(ChunkError("trailers too long"));
                    }
                    if b == b'\r' {
                        self.state = State::TrailerLf;
                    }
                }
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError("expected LF after trailer"));
                    }
                    self.state = State::TrailerStart;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkError("expected LF at end of body"));
                    }
                    self.state = State::Done;
                    return Ok(i + 1);
                }
            }
            i += 1;
        }
        Ok(i)
    }
}

/// A size line without extension at the start of `input`: (size, line
/// length with its CRLF). `None` when it is not all there or has an
/// extension, whitespace or a fault (the byte-wise path decides).
fn size_line(input: &[u8]) -> Option<(u64, usize)> {
    let mut size = 0u64;
    // At most 15 digits here, so the size cannot overflow.
    for (k, &b) in input.iter().take(16).enumerate() {
        let v = match hex_digit(b) {
            Some(v) => v,
            None if b == b'\r' && k > 0 => {
                return (input.get(k + 1) == Some(&b'\n')).then_some((size, k + 2));
            }
            None => return None,
        };
        size = (size << 4) | u64::from(v);
    }
    None
}

/// The end of the `size` bytes of chunk data starting at `at` when they
/// and the CRLF after them are all in `input`; `None` otherwise (the
/// byte-wise path reads them, and reports a missing CRLF).
fn whole_chunk(input: &[u8], at: usize, size: u64) -> Option<usize> {
    let end = at.checked_add(usize::try_from(size).ok()?)?;
    (input.get(end..end.checked_add(2)?)? == b"\r\n").then_some(end)
}

/// The value of a hex digit: one load from a table (every forwarded
/// chunk's size line is read digit by digit).
#[inline(always)]
fn hex_digit(b: u8) -> Option<u8> {
    match HEX[usize::from(b)] {
        NOT_HEX => None,
        v => Some(v),
    }
}

const NOT_HEX: u8 = 0xff;

/// [`hex_digit`]'s table.
static HEX: [u8; 256] = {
    let mut t = [NOT_HEX; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// Appends `data` as one chunk (no-op for empty data, which would end
/// the body).
pub fn encode_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    // Hex size without formatting machinery: this runs once per
    // forwarded read in the gateway's rewrite mode.
    let mut n = data.len();
    let mut hex = [0u8; 16];
    let mut i = hex.len();
    loop {
        i -= 1;
        hex[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&hex[i..]);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Digits of a chunk size written by [`begin_chunk`]: sizes up to 4 GiB,
/// far above any read the gateway forwards.
const SIZE_DIGITS: usize = 8;

/// Starts a chunk whose data the caller appends to `out` right after:
/// the size line is written with [`SIZE_DIGITS`] placeholder digits and
/// filled in by [`end_chunk`] (leading zeros are valid: `chunk-size =
/// 1*HEXDIG`, RFC 9112 §7.1). Spares copying the data a second time to
/// put its size in front. Returns where the chunk starts.
pub fn begin_chunk(out: &mut Vec<u8>) -> usize {
    let at = out.len();
    out.extend_from_slice(&[b'0'; SIZE_DIGITS]);
    out.extend_from_slice(b"\r\n");
    at
}

/// Ends the chunk started at `at`: fills in its size, or removes it when
/// no data followed (an empty chunk would end the body). Returns the
/// chunk's data length.
pub fn end_chunk(out: &mut Vec<u8>, at: usize) -> usize {
    let data = at + SIZE_DIGITS + 2;
    let n = out.len().saturating_sub(data);
    if n == 0 {
        out.truncate(at);
        return 0;
    }
    let mut v = n;
    for d in out[at..at + SIZE_DIGITS].iter_mut().rev() {
        *d = b"0123456789abcdef"[v & 15];
        v >>= 4;
    }
    debug_assert_eq!(v, 0, "chunk of {n} bytes does not fit {SIZE_DIGITS} digits");
    out.extend_from_slice(b"\r\n");
    n
}

/// The last-chunk marker with no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hex_digit_table_is_every_hex_digit_and_nothing_else() {
        for b in 0..=255u8 {
            let want = (b as char).to_digit(16).map(|v| v as u8);
            assert_eq!(hex_digit(b), want, "byte {b}");
        }
    }

    #[test]
    fn chunks_begun_before_their_data_decode_to_it() {
        let mut out = b"head".to_vec();
        let at = begin_chunk(&mut out);
        out.extend_from_slice(&[7u8; 300]);
        assert_eq!(end_chunk(&mut out, at), 300);
        let at = begin_chunk(&mut out);
        assert_eq!(end_chunk(&mut out, at), 0, "an empty chunk is dropped");
        out.extend_from_slice(LAST_CHUNK);
        assert_eq!(&out[4..14], b"0000012c\r\n");
        let (data, used, done) = decode_all(&[&out[4..]]).unwrap();
        assert_eq!((data, used, done), (vec![7u8; 300], out.len() - 4, true));
    }

    fn decode_all(parts: &[&[u8]]) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        let mut used = 0;
        for p in parts {
            used += d.feed(p, |s| out.extend_from_slice(s))?;
        }
        Ok((out, used, d.is_done()))
    }

    #[test]
    fn basic_with_ext_and_trailers() {
        let body = b"5;name=v\r\nhello\r\n6 \r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let (out, used, done) = decode_all(&[body]).unwrap();
        assert_eq!(out, b"hello world");
        assert!(done);
        assert_eq!(&body[used..], b"NEXT");
    }

    #[test]
    fn chunk_sizes_in_hex() {
        for n in [1usize, 9, 10, 15, 16, 255, 256, 4096, 1 << 20] {
            let mut out = Vec::new();
            encode_chunk(&mut out, &vec![b'x'; n]);
            let head = format!("{n:x}\r\n");
            assert!(out.starts_with(head.as_bytes()), "{n}");
            assert_eq!(out.len(), head.len() + n + 2);
        }
    }

    #[test]
    fn rejects_bad_framing() {
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloXX",
            b"5\nhello\r\n",
            b"11111111111111111\r\n",
            b"-1\r\n",
        ] {
            assert!(
                decode_all(&[bad]).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    proptest! {
        #[test]
        fn whole_lines_decode_as_byte_by_byte(
            chunks in prop::collection::vec((0usize..40, any::<bool>(), any::<bool>()), 0..8),
            flips in prop::collection::vec(
                (any::<prop::sample::Index>(), prop::sample::select(b"0aF\r\n; G".to_vec())),
                0..3,
            ),
        ) {
            // Chunks with and without extensions, upper- and lower-case
            // sizes, then a few bytes overwritten.
            let mut wire = Vec::new();
            for (n, ext, upper) in &chunks {
                let size = if *upper { format!("{n:X}") } else { format!("{n:x}") };
                wire.extend_from_slice(size.as_bytes());
                if *ext {
                    wire.extend_from_slice(b";a=b");
                }
                wire.extend_from_slice(b"\r\n");
                wire.extend(std::iter::repeat_n(b'x', *n));
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b"0\r\n\r\n");
            for (at, b) in &flips {
                let i = at.index(wire.len());
                wire[i] = *b;
            }
            // Whole size lines take the one-step path; one byte at a time
            // always takes the byte-wise one. Same payload, same end, same
            // faults.
            let mut whole = ChunkedDecoder::new();
            let mut a = Vec::new();
            let ra = whole.feed(&wire, |s| a.extend_from_slice(s));
            let mut bytewise = ChunkedDecoder::new();
            let mut b = Vec::new();
            let mut rb = Ok(0);
            for i in 0..wire.len() {
                match bytewise.feed(&wire[i..i + 1], |s| b.extend_from_slice(s)) {
                    Ok(n) => {
                        rb = Ok(rb.unwrap_or(0) + n);
                        if n == 0 { break; }
                    }
                    Err(e) => { rb = Err(e); break; }
                }
            }
            prop_assert_eq!(ra, rb);
            prop_assert_eq!(a, b);
            prop_assert_eq!(whole.is_done(), bytewise.is_done());
        }

        #[test]
        fn any_split_decodes_the_same(
            payload in prop::collection::vec(any::<u8>(), 0..2000),
            sizes in prop::collection::vec(1usize..300, 1..20),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..30),
        ) {
            let mut wire = Vec::new();
            let mut rest = &payload[..];
            let mut k = 0;
            while !rest.is_empty() {
                let n = sizes[k % sizes.len()].min(rest.len());
                encode_chunk(&mut wire, &rest[..n]);
                rest = &rest[n..];
                k += 1;
            }
            wire.extend_from_slice(LAST_CHUNK);
            let body_len = wire.len();
            wire.extend_from_slice(b"GET / HTTP/1.1\r\n");
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
            points.push(0);
            points.push(wire.len());
            points.sort_unstable();
            let parts: Vec<&[u8]> = points.windows(2).map(|w| &wire[w[0]..w[1]]).collect();
            let mut d = ChunkedDecoder::new();
            let mut out = Vec::new();
            let mut used = 0;
            for p in &parts {
                if d.is_done() { break; }
                used += d.feed(p, |s| out.extend_from_slice(s)).unwrap();
            }
            prop_assert!(d.is_done());
            prop_assert_eq!(used, body_len);
            prop_assert_eq!(out, payload);
        }
    }
}
