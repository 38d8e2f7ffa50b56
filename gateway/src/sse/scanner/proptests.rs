//! Split invariance on a recorded OpenAI-like stream: however the payload
//! (or its chunked framing) is cut into reads, the scanner reports the
//! same events and decoding them gives the same text and usage.

use proptest::prelude::*;
use serde_json::json;

use super::tests::{Ev, scan_parts};
use crate::http::chunked::{ChunkedDecoder, LAST_CHUNK, encode_chunk};
use crate::sse::decode::{Usage, decode};

const CAP: usize = 1 << 20;

/// Content deltas: prose, CJK, emoji with ZWJ and flags, combining marks,
/// quotes, backslashes, newlines, tabs, control characters, code with
/// whitespace runs, a very long word, an empty delta.
const PIECES: &[&str] = &[
    "Hello",
    ", world",
    "!",
    "\n\n",
    "Here is \"quoted\" text",
    " and a back\\slash",
    "日本語のテキストです。",
    "中文，标点。",
    "👩‍👩‍👧‍👦 family",
    " 🇯🇵🇫🇷",
    "e\u{301}le\u{300}ve",
    "",
    "```rust\nfn main() {\n    println!(\"hi\\n\");\n}\n```",
    "\ttab\tseparated\r\nline",
    "ctl\u{1}\u{1f}",
    " \u{2028}sep\u{2029}",
    "    indented    ",
    "한국어 텍스트",
];

/// Tool call argument deltas (the first tool chunk carries the name).
const ARGS: &[&str] = &[
    "",
    "{\"loc",
    "ation\": \"Par",
    "is, 東京 \\\"x\\\"\",",
    " \"unit\": \"c\"}",
];

/// A recorded stream: its bytes, and what decoding it must give.
pub(super) struct Recorded {
    pub bytes: Vec<u8>,
    pub text: String,
    pub usage: Usage,
    pub events: usize,
}

fn chunk(choices: serde_json::Value, usage: Option<serde_json::Value>) -> String {
    let mut v = json!({
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion.chunk",
        "created": 1_741_569_952,
        "model": "gpt-4o-2024-08-06",
        "service_tier": "default",
        "system_fingerprint": "fp_eb9dce56a8",
        "choices": choices,
    });
    if let Some(u) = usage {
        v["usage"] = u;
    }
    serde_json::to_string(&v).unwrap_or_default()
}

/// ~50 `chat.completion.chunk` events. `style[i % len]` picks event i's
/// line endings (LF, CRLF, CR), whether it gets a comment line, and
/// whether its JSON is split over two `data:` lines (valid: the join puts
/// a `\n`, JSON whitespace, between two members).
pub(super) fn recorded_stream(style: &[u8]) -> Recorded {
    let mut datas: Vec<String> = Vec::new();
    let mut text = String::new();
    datas.push(chunk(
        json!([{"index": 0, "delta": {"role": "assistant", "content": "", "refusal": null},
                "logprobs": null, "finish_reason": null}]),
        None,
    ));
    for i in 0..38 {
        let piece = PIECES[i % PIECES.len()];
        text.push_str(piece);
        datas.push(chunk(
            json!([{"index": 0, "delta": {"content": piece}, "logprobs": null, "finish_reason": null}]),
            None,
        ));
    }
    // A very long word in one delta.
    let long = "supercalifragilistic".repeat(40);
    text.push_str(&long);
    datas.push(chunk(
        json!([{"index": 0, "delta": {"content": long}, "finish_reason": null}]),
        None,
    ));
    datas.push(chunk(
        json!([{"index": 0, "delta": {"refusal": "I can't share that."}, "finish_reason": null}]),
        None,
    ));
    text.push_str("I can't share that.");
    for (k, a) in ARGS.iter().enumerate() {
        let call = if k == 0 {
            json!({"index": 0, "id": "call_DdmO9pD3xa9XTPNJ32zg2hcA", "type": "function",
                   "function": {"name": "get_weather", "arguments": a}})
        } else {
            json!({"index": 0, "function": {"arguments": a}})
        };
        text.push_str(a);
        datas.push(chunk(
            json!([{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": null}]),
            None,
        ));
    }
    datas.push(chunk(
        json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "tool_calls"}]),
        None,
    ));
    let usage = Usage {
        prompt: 57,
        completion: 321,
    };
    datas.push(chunk(
        json!([]),
        Some(
            json!({"prompt_tokens": 57, "completion_tokens": 321, "total_tokens": 378,
                    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                    "completion_tokens_details": {"reasoning_tokens": 0}}),
        ),
    ));
    datas.push("[DONE]".to_owned());

    let mut bytes = Vec::new();
    let events = datas.len();
    for (i, d) in datas.iter().enumerate() {
        let s = style.get(i % style.len().max(1)).copied().unwrap_or(0);
        let eol: &[u8] = match s % 3 {
            0 => b"\n",
            1 => b"\r\n",
            _ => b"\r",
        };
        if s & 4 != 0 {
            bytes.extend_from_slice(b": keep-alive");
            bytes.extend_from_slice(eol);
        }
        let split = (s & 8 != 0).then(|| d.find(",\"choices\"")).flatten();
        match split {
            Some(at) => {
                bytes.extend_from_slice(b"data: ");
                bytes.extend_from_slice(&d.as_bytes()[..=at]);
                bytes.extend_from_slice(eol);
                bytes.extend_from_slice(b"data:");
                bytes.extend_from_slice(&d.as_bytes()[at + 1..]);
            }
            None => {
                bytes.extend_from_slice(if s & 16 != 0 { b"data:" } else { b"data: " });
                bytes.extend_from_slice(d.as_bytes());
            }
        }
        bytes.extend_from_slice(eol);
        bytes.extend_from_slice(eol);
    }
    Recorded {
        bytes,
        text,
        usage,
        events,
    }
}

/// Decoded text (concatenated) and the last usage seen, over `events`.
fn decode_all(events: &[Ev]) -> (String, Option<Usage>, bool) {
    let mut text = String::new();
    let mut usage = None;
    let mut done = false;
    for e in events {
        let d = decode(e.data.as_bytes(), |t| text.push_str(t));
        usage = d.usage.or(usage);
        done |= d.done;
    }
    (text, usage, done)
}

fn parts_at<'a>(bytes: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    points.windows(2).map(|w| &bytes[w[0]..w[1]]).collect()
}

fn parts_sized<'a>(bytes: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut k = 0;
    while !rest.is_empty() {
        let n = sizes[k % sizes.len()].min(rest.len());
        out.push(&rest[..n]);
        rest = &rest[n..];
        k += 1;
    }
    out
}

/// Chunked framing of `payload` with chunk sizes cycling through `sizes`.
fn chunked(payload: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut wire = Vec::new();
    for p in parts_sized(payload, sizes) {
        encode_chunk(&mut wire, p);
    }
    wire.extend_from_slice(LAST_CHUNK);
    wire
}

/// Dechunks `reads` and scans the payload slices as they come.
fn scan_chunked(reads: &[&[u8]]) -> Vec<Ev> {
    let mut dec = ChunkedDecoder::new();
    let mut scanner = crate::sse::Scanner::new(CAP);
    let mut out = Vec::new();
    for r in reads {
        let used = dec
            .feed(r, |payload| {
                scanner.feed(payload, |e| out.push(Ev::from(e)))
            })
            .unwrap();
        assert_eq!(used, r.len());
    }
    assert!(dec.is_done());
    scanner.finish(|e| out.push(Ev::from(e)));
    out
}

#[test]
fn recorded_stream_decodes_to_the_known_text_and_usage() {
    for style in [&[0u8][..], &[1], &[2], &[0, 1, 2, 4, 8, 16, 13, 30, 29]] {
        let rec = recorded_stream(style);
        let events = scan_parts(&[&rec.bytes], CAP);
        assert_eq!(events.len(), rec.events);
        assert!(events.iter().all(|e| !e.oversize && e.event.is_none()));
        let (text, usage, done) = decode_all(&events);
        assert_eq!(text, rec.text);
        assert_eq!(usage, Some(rec.usage));
        assert!(done);
        // Events tile the stream: each starts where the previous ended
        // (there are no stray blank lines between them here).
        assert_eq!(events[0].start, 0);
        assert_eq!(events.last().map(|e| e.end), Some(rec.bytes.len() as u64));
        assert!(events.windows(2).all(|w| w[0].end == w[1].start));
    }
}

#[test]
fn every_split_point_and_one_byte_reads() {
    let rec = recorded_stream(&[0, 1, 2, 4, 8, 16, 13, 30, 29, 6, 10]);
    let whole = scan_parts(&[&rec.bytes], CAP);
    let bytes: Vec<&[u8]> = rec.bytes.chunks(1).collect();
    assert_eq!(scan_parts(&bytes, CAP), whole);
    for cut in 0..=rec.bytes.len() {
        let (a, b) = rec.bytes.split_at(cut);
        assert_eq!(scan_parts(&[a, b], CAP), whole, "cut at {cut}");
    }
    // One byte per read of the chunked wire, too.
    let wire = chunked(&rec.bytes, &[1, 7, 300, 2]);
    let reads: Vec<&[u8]> = wire.chunks(1).collect();
    assert_eq!(scan_chunked(&reads), whole);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn any_split_gives_same_events_text_and_usage(
        style in prop::collection::vec(any::<u8>(), 1..12),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..60),
        sizes in prop::collection::vec(1usize..40, 1..8),
    ) {
        let rec = recorded_stream(&style);
        let whole = scan_parts(&[&rec.bytes], CAP);
        prop_assert_eq!(whole.len(), rec.events);
        let (text, usage, done) = decode_all(&whole);
        prop_assert_eq!(&text, &rec.text);
        prop_assert_eq!(usage, Some(rec.usage));
        prop_assert!(done);

        let cut = scan_parts(&parts_at(&rec.bytes, &cuts), CAP);
        prop_assert_eq!(&cut, &whole);
        let small = scan_parts(&parts_sized(&rec.bytes, &sizes), CAP);
        prop_assert_eq!(&small, &whole);
        prop_assert_eq!(decode_all(&small), (text, usage, done));
    }

    #[test]
    fn chunked_framing_split_anywhere_gives_same_events(
        style in prop::collection::vec(any::<u8>(), 1..12),
        chunk_sizes in prop::collection::vec(1usize..2000, 1..10),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..60),
    ) {
        let rec = recorded_stream(&style);
        let whole = scan_parts(&[&rec.bytes], CAP);
        let wire = chunked(&rec.bytes, &chunk_sizes);
        let got = scan_chunked(&parts_at(&wire, &cuts));
        prop_assert_eq!(&got, &whole);
        prop_assert_eq!(decode_all(&got).0, rec.text);
    }

    /// Events a sink takes are skipped, the others reported as without
    /// it, however the stream is cut: together they are the reference
    /// events, and between feeds the scanner stands where it would.
    #[test]
    fn a_sink_takes_whole_events_and_the_rest_are_unchanged(
        style in prop::collection::vec(any::<u8>(), 1..12),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        mask in any::<u64>(),
    ) {
        let rec = recorded_stream(&style);
        let whole = scan_parts(&[&rec.bytes], CAP);
        let (mut got, mut taken) = (Vec::new(), Vec::new());
        let mut plain = crate::sse::Scanner::new(CAP);
        let mut s = crate::sse::Scanner::new(CAP);
        for part in parts_at(&rec.bytes, &cuts) {
            plain.feed(part, |_| {});
            s.feed_sink(part, TakeSome { whole: &whole, mask, got: &mut got, taken: &mut taken });
            prop_assert_eq!(s.offset(), plain.offset());
            prop_assert_eq!(s.is_idle(), plain.is_idle());
            prop_assert_eq!(s.boundary(), plain.boundary());
        }
        s.finish(|e| got.push(Ev::from(e)));
        prop_assert!(taken.iter().all(|&(a, b)| whole.iter().any(|e| (e.start, e.end) == (a, b))));
        let mut ranges: Vec<(u64, u64)> = got.iter().map(|e| (e.start, e.end)).chain(taken.iter().copied()).collect();
        ranges.sort_unstable();
        let want: Vec<(u64, u64)> = whole.iter().map(|e| (e.start, e.end)).collect();
        prop_assert_eq!(ranges, want);
        let reported: Vec<&Ev> = whole.iter().filter(|e| !taken.contains(&(e.start, e.end))).collect();
        prop_assert_eq!(got.iter().collect::<Vec<_>>(), reported);
        if cuts.is_empty() && mask == u64::MAX {
            // One feed, every LF-ended event offered is taken.
            let lf = whole.iter().filter(|e| rec.bytes[e.end as usize - 1] == b'\n').count();
            prop_assert_eq!(taken.len(), lf);
        }
    }
}

/// A sink that takes the events of `whole` (the reference scan) whose
/// start bit is set in `mask` and whose bytes end in LF, when they lie
/// wholly in the rest of the feed; the others it records.
struct TakeSome<'a> {
    whole: &'a [Ev],
    mask: u64,
    got: &'a mut Vec<Ev>,
    taken: &'a mut Vec<(u64, u64)>,
}

impl super::Sink for TakeSome<'_> {
    fn take(&mut self, start: u64, rest: &[u8]) -> usize {
        let Some(i) = self.whole.iter().position(|e| e.start == start) else {
            return 0;
        };
        let len = (self.whole[i].end - start) as usize;
        if self.mask >> (i % 64) & 1 == 0 || len > rest.len() || rest[len - 1] != b'\n' {
            return 0;
        }
        self.taken.push((start, start + len as u64));
        len
    }

    fn event(&mut self, ev: super::Event<'_>) {
        self.got.push(Ev::from(ev));
    }
}

#[test]
fn the_boundary_is_the_start_of_the_event_in_progress() {
    let mut s = crate::sse::Scanner::new(CAP);
    s.feed(b"data: a\n\n: note\n\nda", |_| {});
    assert_eq!(s.boundary(), 17);
    s.feed(b"ta: b\n\r", |_| {});
    assert_eq!(s.boundary(), 17, "ended by a CR that an LF may follow");
    s.feed(b"\n", |_| {});
    assert_eq!(s.boundary(), s.offset());
}
