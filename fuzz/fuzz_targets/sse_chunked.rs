//! Chunked decoding + SSE scanning + event decoding on arbitrary bytes,
//! split into reads at points derived from the input.
//!
//! Input: `[mode, seed0, seed1, seed2, rest..]`. The seed drives a small
//! PRNG that picks read sizes (1..=64 bytes, sometimes the whole rest) and
//! chunk sizes. Mode bit 0: `rest` is the raw wire (arbitrary framing,
//! usually rejected early by the decoder); otherwise `rest` is the SSE
//! payload, framed into valid chunks first so the scanner sees it all.
//!
//! Checked: nothing panics; `offset()` counts every payload byte; events
//! come in order with `start < end <= offset()`, never overlapping, with
//! `data` no longer than the event; with a cap larger than the input, the
//! split reads give exactly the events of one whole-payload feed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::http::chunked::{ChunkedDecoder, LAST_CHUNK, encode_chunk};
use tollgate::sse::{Event, Scanner, decode};

/// Owned copy of an event, to compare runs.
#[derive(Debug, PartialEq, Eq)]
struct Ev {
    start: u64,
    end: u64,
    event: Option<Vec<u8>>,
    data: Vec<u8>,
    id: Option<Vec<u8>>,
    oversize: bool,
}

struct Rng(u32);

impl Rng {
    fn next(&mut self) -> u32 {
        // xorshift32; zero state is fixed up so it never sticks at zero.
        let mut x = self.0 | 1;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x
    }

    fn size(&mut self, rest: usize) -> usize {
        let r = self.next();
        if r % 16 == 0 {
            rest
        } else {
            1 + (r as usize >> 4) % 64
        }
    }
}

/// Scans `payload_reads` (already dechunked slices, in order) with `cap`,
/// checking the invariants; returns the events.
struct Checked {
    scanner: Scanner,
    fed: u64,
    last_end: u64,
    events: Vec<Ev>,
    text: usize,
}

impl Checked {
    fn new(cap: usize) -> Self {
        Checked {
            scanner: Scanner::new(cap),
            fed: 0,
            last_end: 0,
            events: Vec::new(),
            text: 0,
        }
    }

    fn on_event(&mut self, e: Event<'_>, upto: u64) {
        assert!(e.start < e.end, "empty event range {e:?}");
        assert!(e.start >= self.last_end, "events overlap or go back");
        assert!(e.end <= upto, "event ends past the bytes fed");
        assert!(
            e.data.len() as u64 <= e.end - e.start,
            "data longer than event"
        );
        self.last_end = e.end;
        let d = decode(&e.data, |t| self.text += t.len());
        assert!(!(d.done && (d.usage.is_some() || d.error)));
        self.events.push(Ev {
            start: e.start,
            end: e.end,
            event: e.event.map(|c| c.into_owned()),
            data: e.data.into_owned(),
            id: e.id.map(|c| c.into_owned()),
            oversize: e.oversize,
        });
    }

    fn feed(&mut self, payload: &[u8]) {
        self.fed += payload.len() as u64;
        let upto = self.fed;
        let mut scanner = std::mem::replace(&mut self.scanner, Scanner::new(0));
        scanner.feed(payload, |e| self.on_event(e, upto));
        assert_eq!(scanner.offset(), self.fed);
        self.scanner = scanner;
    }

    fn finish(mut self) -> Vec<Ev> {
        let upto = self.fed;
        let mut scanner = std::mem::replace(&mut self.scanner, Scanner::new(0));
        scanner.finish(|e| self.on_event(e, upto));
        assert!(scanner.is_idle());
        self.events
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&[mode, a, b, c], rest)) = input.split_first_chunk::<4>() else {
        return;
    };
    let mut rng = Rng(u32::from_le_bytes([mode, a, b, c]));
    let (wire, payload) = if mode & 1 == 1 {
        (rest.to_vec(), None)
    } else {
        let mut wire = Vec::new();
        let mut p = rest;
        while !p.is_empty() {
            let n = rng.size(p.len()).min(p.len());
            encode_chunk(&mut wire, &p[..n]);
            p = &p[n..];
        }
        wire.extend_from_slice(LAST_CHUNK);
        (wire, Some(rest))
    };

    let mut dec = ChunkedDecoder::new();
    let mut big = Checked::new(1 << 20);
    let mut tiny = Checked::new(usize::from(b % 32));
    let mut w = &wire[..];
    while !w.is_empty() && !dec.is_done() {
        let n = rng.size(w.len()).min(w.len());
        let read = &w[..n];
        w = &w[n..];
        let res = dec.feed(read, |p| {
            big.feed(p);
            tiny.feed(p);
        });
        match res {
            Ok(used) => assert!(used <= read.len()),
            Err(_) => break,
        }
    }
    let fed = big.fed;
    let split = big.finish();
    let _ = tiny.finish();

    if let Some(payload) = payload {
        // Valid framing: every payload byte came through, and the split
        // reads saw what one whole feed sees.
        assert!(dec.is_done());
        assert_eq!(fed, payload.len() as u64);
        let mut whole = Checked::new(1 << 20);
        whole.feed(payload);
        assert_eq!(split, whole.finish());
    }
});
