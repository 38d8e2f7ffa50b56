//! A stream's generated text, decoded only if it is ever read.
//!
//! Accounting reads the text of a stream only when the provider's usage
//! does not come (a cut stream, a provider that sends none): then it counts
//! it. Decoding every content delta as it passed was the largest user-space
//! cost on streams (~0.2 µs per event) for text that is almost never read.
//! So each event is classified with one search for a `"usage"` key: an
//! event whose usage is present and not null (the provider's usage chunk,
//! or per-event usage from vLLM's continuous stats) is decoded at once, as
//! is `[DONE]`; every other event only carries text, and its data is held
//! raw (as its difference from a like event: `sse::hold`) and decoded when
//! the text is asked for.
//!
//! Exactness: a `"usage"` whose opening quote is not escaped is JSON
//! structure (inside a string every quote is escaped), so text a model
//! wrote can never make an event look like, or hide, a usage chunk; an
//! escaped one only costs a full decode. A key can also spell `usage`
//! with `\u` escapes (`"\u0075sage"`); data with such an escape of one
//! of its letters is decoded at once too. The decoded text is the same as
//! decoding each event as it comes, in the same order (tested).
//!
//! Both checks look only where an event differs from the held base: the
//! base passed them, and bytes equal to the base's give the base's answer
//! (a proptest compares this with checking the whole event).
//!
//! Most of a stream's events are content deltas like the held ones, and
//! for those the scanner's work (the line's end, its fields, the event)
//! repeats what the hold knows: they are taken from the scan whole
//! ([`Taking`], [`DeferredText::take_like`]) and held the same way, the
//! line's end found from the text's closing quote (a proptest compares
//! this with the scanner's way).
//!
//! Memory: held data is bounded by [`HOLD_MAX`] per stream; past it the
//! held events are decoded and their data dropped, so a long stream costs
//! at most that much plus its text. A content delta holds about its text
//! plus four bytes, so the bound is reached only after tens of thousands
//! of events.

use memchr::memmem;
use std::sync::LazyLock;

use super::decode::{Decoded, decode_event};
#[cfg(doc)]
use super::hold::Likeness;
use super::hold::{Diff, Hold};
use super::scanner::{Event, Sink};
use crate::json_bytes::{LANES, quote_escaped, skip_ws};

/// Held bytes per stream before the held events are decoded anyway.
pub const HOLD_MAX: usize = 256 * 1024;

/// Generated text kept for estimation.
const MAX_TEXT: usize = 16 * 1024 * 1024;

/// Text of a stream, decoded on demand.
#[derive(Default)]
pub struct DeferredText {
    /// Data of text-only events not decoded yet.
    held: Hold,
    text: String,
    /// The `"usage"` keys of the hold's base event ([`BaseKeys`]).
    base_keys: Option<BaseKeys>,
}

/// Where the base event's `"usage"` keys are, and how far the check of
/// each read, so an event that shares most bytes with the base is checked
/// only where it differs ([`usage_present_near`]).
struct BaseKeys {
    /// Which record of the hold the base is.
    base: (usize, usize, usize),
    /// (start of the key, end of the bytes its check read).
    keys: Vec<(usize, usize)>,
}

impl BaseKeys {
    /// The keys of the base `base` (its bytes `bytes`): `kept` if they are
    /// that base's, else found and kept there.
    #[inline(always)]
    fn of<'k>(
        kept: &'k mut Option<BaseKeys>,
        base: (usize, usize, usize),
        bytes: &[u8],
    ) -> Option<&'k mut BaseKeys> {
        if kept.as_ref().is_none_or(|k| k.base != base) {
            *kept = base_keys(bytes).map(|keys| BaseKeys { base, keys });
        }
        kept.as_mut()
    }
}

impl DeferredText {
    /// Looks at one event: what accounting needs now is returned, its text
    /// is kept for later. The answer is exact for `done`, `usage` and
    /// `usage_only`; `finished` and `error` are only read from events
    /// decoded at once (accounting does not use them).
    pub fn event(&mut self, ev: &Event<'_>) -> Decoded {
        let data = ev.data.as_ref();
        let is_error = ev.event.as_deref() == Some(b"error");
        // Decoded now: errors, `[DONE]`, an event larger than the hold,
        // and any event that may carry usage.
        if is_error || decoded_at_once(data) {
            return self.decode_now(ev);
        }
        if !self.has_room(data) {
            self.decode_held();
        } else if self.hold_like(data) {
            return Decoded::default();
        }
        // Held events passed the escape check, so only the bytes where
        // this one differs from the base (an escape is 6 bytes) need it.
        let diff = self.held.diff(data);
        if escaped_usage_letter(data, diff.changed(data.len(), 5)) || self.usage_present(data, diff)
        {
            return self.decode_now(ev);
        }
        self.held.push(data, diff);
        Decoded::default()
    }

    /// Holds a content delta like the ones held before it, if it is one:
    /// it has the prefix and suffix of the base they all had
    /// ([`Hold::like_middle`]), and no `"usage"` key or `\u` escape can
    /// start in or next to its other bytes (no `"u` or `\u` there). Then
    /// both checks give the base's answer, which was no, unless a base
    /// key's check reads the changed bytes ([`keys_kept`], once per base
    /// and lengths). Anything else takes the full way, which has the
    /// same answer and finds the longest prefix and suffix.
    fn hold_like(&mut self, data: &[u8]) -> bool {
        let Some(mid) = self.held.like_middle(data) else {
            return false;
        };
        if u_near(data, &mid) || !self.like_keys_kept() {
            return false;
        }
        self.held.push_like_run(HOLD_MAX, std::iter::once(data)) == 1
    }

    /// Holds the events `rest` starts with while each is a content delta
    /// like the held ones, without the scanner: exactly one `data: ` line,
    /// its data like the held events' ([`Likeness::line`], which needs no
    /// search of the shared prefix for the line's end), then a blank line,
    /// both lines ended in LF or both in CRLF (what servers send); and
    /// [`event`](Self::event) would hold it the same way (not `[DONE]`,
    /// room in the hold, [`hold_like`](Self::hold_like)).
    /// Returns the length of the events taken, 0 when the first is not one
    /// (nothing is held: the scanner parses it and `event` sees it).
    ///
    /// A read of a stream holds tens of such events back to back: they are
    /// found in runs of up to [`RUN`] with the hold only looked at (the
    /// like lengths, base and verdict read once), then held.
    pub fn take_like(&mut self, rest: &[u8]) -> usize {
        let mut taken = 0;
        loop {
            if !self.like_keys_kept() {
                return taken;
            }
            let mut run = [Found::default(); RUN];
            let mut k = 0;
            if let Some(like) = self.held.likeness() {
                let mut pos = taken;
                while k < RUN {
                    let Some(line) = rest[pos..].strip_prefix(DATA) else {
                        break;
                    };
                    let Some((n, mid)) = like.line(line) else {
                        break;
                    };
                    let tail = match line.get(n..) {
                        Some([b'\n', b'\n', ..]) => 2,
                        Some([b'\r', b'\n', b'\r', b'\n', ..]) => 4,
                        _ => break,
                    };
                    let data = &line[..n];
                    // Past the bound the hold decodes: `n` fits a `u32`.
                    if decoded_at_once(data) || u_near(data, &mid) {
                        break;
                    }
                    run[k] = Found { n: n as u32, tail };
                    k += 1;
                    pos += DATA.len() + n + tail;
                }
            }
            let mut pos = taken;
            let held = self.held.push_like_run(
                HOLD_MAX,
                run[..k].iter().map(|f| {
                    let at = pos + DATA.len();
                    pos = at + f.n as usize + f.tail;
                    &rest[at..at + f.n as usize]
                }),
            );
            for f in &run[..held] {
                taken += DATA.len() + f.n as usize + f.tail;
            }
            if held < RUN {
                return taken;
            }
        }
    }

    /// The hold can take `data` without going past [`HOLD_MAX`].
    fn has_room(&self, data: &[u8]) -> bool {
        self.held.fits(data, HOLD_MAX)
    }

    /// [`keys_kept`] for the hold's base and like lengths: asked for every
    /// like event, answered once per base and lengths (the hold keeps the
    /// answer with them, [`Hold::like_verdict`]).
    fn like_keys_kept(&mut self) -> bool {
        if let Some(kept) = self.held.like_verdict() {
            return kept;
        }
        let (Some((base, p, s)), Some(bytes)) = (self.held.like(), self.held.base_bytes()) else {
            return false;
        };
        let kept = BaseKeys::of(&mut self.base_keys, base, bytes)
            .is_some_and(|k| keys_kept(bytes, p, s, &k.keys));
        self.held.set_like_verdict(kept);
        kept
    }

    /// [`usage_present`], looking only where `data` differs from the base
    /// when it has one: the base passed the full check (it is held), and
    /// bytes equal to the base's give the base's answer.
    fn usage_present(&mut self, data: &[u8], diff: Diff) -> bool {
        let (Some((base, p, s)), Some(bytes)) = (diff.against(), self.held.base_bytes()) else {
            return usage_present(data);
        };
        match BaseKeys::of(&mut self.base_keys, base, bytes) {
            Some(k) => usage_present_near(data, p, s, bytes.len(), &k.keys),
            None => usage_present(data),
        }
    }

    /// Decodes an event at once; its text goes after the held events'.
    fn decode_now(&mut self, ev: &Event<'_>) -> Decoded {
        let mut now = String::new();
        let d = decode_event(ev, |t| now.push_str(t));
        if !now.is_empty() {
            self.decode_held();
            push_text(&mut self.text, &now);
        }
        d
    }

    /// All text so far (decodes what is held).
    pub fn text(&mut self) -> &str {
        self.decode_held();
        &self.text
    }

    fn decode_held(&mut self) {
        // The records (and the base with them) go: positions are reused.
        self.base_keys = None;
        let text = &mut self.text;
        self.held.drain(|data| {
            if !data.is_empty() {
                super::decode(data, |t| push_text(text, t));
            }
        });
    }
}

/// An event whose data is decoded as it comes whatever it holds:
/// `[DONE]`, and one larger than the hold.
fn decoded_at_once(data: &[u8]) -> bool {
    Hold::bound(data) >= HOLD_MAX || data.trim_ascii() == b"[DONE]"
}

/// A `"usage"` key or a `\u` escape may start in or next to the bytes
/// `mid` of `data` (a `"u` or `\u` there): the like checks do not hold.
#[inline(always)]
fn u_near(data: &[u8], mid: &std::ops::Range<usize>) -> bool {
    next_u(data, mid.start.saturating_sub(KEY - 1), mid.end) < mid.end
}

/// Most like events [`DeferredText::take_like`] finds before holding
/// them.
const RUN: usize = 32;

/// A like event found in a run: `data: `, `n` bytes of data, then `tail`
/// bytes of line endings (LF LF or CRLF CRLF).
#[derive(Clone, Copy, Default)]
struct Found {
    n: u32,
    tail: usize,
}

/// How a data line starts when the field's value follows one space.
const DATA: &[u8] = b"data: ";

/// A scan's sink ([`Sink`]) that lets `text` take the content deltas it
/// holds unparsed ([`DeferredText::take_like`]) and hands every other
/// event, with the text, to `each`.
pub struct Taking<'t, F> {
    pub text: &'t mut DeferredText,
    pub each: F,
}

impl<F: FnMut(&mut DeferredText, Event<'_>)> Sink for Taking<'_, F> {
    #[inline]
    fn take(&mut self, _start: u64, rest: &[u8]) -> usize {
        self.text.take_like(rest)
    }

    #[inline]
    fn event(&mut self, ev: Event<'_>) {
        (self.each)(self.text, ev)
    }
}

/// Appends generated text, up to the estimation cap.
fn push_text(text: &mut String, t: &str) {
    if text.len() + t.len() <= MAX_TEXT {
        text.push_str(t);
    }
}

static FINDER: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"usage\""));

/// Length of `"usage"`.
const KEY: usize = 7;

/// The data has a `"usage"` key (unescaped opening quote) whose value is
/// not `null`; or one that cannot be told apart from it cheaply.
fn usage_present(data: &[u8]) -> bool {
    keys_in(data, 0, data.len()).any(|at| usage_at(data, at).0)
}

/// Every `"usage"` that lies in `data[from..to]`, overlapping ones too
/// (`"usage"usage"` is two: invalid JSON, but every check must see the
/// same occurrences wherever it starts looking).
fn keys_in(data: &[u8], from: usize, to: usize) -> impl Iterator<Item = usize> + '_ {
    let mut pos = from;
    std::iter::from_fn(move || {
        let at = find_key(data, pos, to)?;
        pos = at + 1;
        Some(at)
    })
}

/// First `"usage"` that lies in `data[from..to]`. The range where an
/// event differs from the base is a few bytes: there a walk over the
/// places a `"u` starts ([`next_u`]) beats the substring searcher's
/// set-up (~150 instructions a call).
fn find_key(data: &[u8], from: usize, to: usize) -> Option<usize> {
    let hay = data.get(from..to)?;
    if hay.len() >= SHORT {
        return FINDER.find(hay).map(|rel| from + rel);
    }
    // A key lies in the range when it starts before `stop`.
    let stop = (to + 1).checked_sub(KEY)?;
    u_starts(data, from, stop).find(|&i| data[i..i + KEY] == *b"\"usage\"")
}

/// Every [`next_u`] place in `from..end`, in order.
fn u_starts(data: &[u8], from: usize, end: usize) -> impl Iterator<Item = usize> + '_ {
    let mut i = from;
    std::iter::from_fn(move || {
        let k = next_u(data, i, end);
        i = k + 1;
        (k < end).then_some(k)
    })
}

/// The first `k` in `i..end` where `data[k]` is `"` or `\` and
/// `data[k + 1]` is `u`: where a `"usage"` key or a `\u` escape can
/// start (`end` when there is none). Both checks here look only at such
/// places; in the bytes an event changes they are rare, where quotes are
/// not (a content delta's span holds the quotes around its text). Reads
/// up to 16 bytes past `end` where `data` has them.
fn next_u(data: &[u8], mut i: usize, end: usize) -> usize {
    while i < end {
        let Some(window) = data.get(i..i + LANES + 1) else {
            break;
        };
        let hits = u_lanes(window);
        if hits != 0 {
            return (i + hits.trailing_zeros() as usize).min(end);
        }
        i += LANES;
    }
    while i < end {
        if u_at(data, i) {
            return i;
        }
        i += 1;
    }
    end
}

/// `data[k]` is `"` or `\`, and `data[k + 1]` is `u`.
fn u_at(data: &[u8], k: usize) -> bool {
    matches!(data[k], b'"' | b'\\') && data.get(k + 1) == Some(&b'u')
}

/// Bit `k` set when [`u_at`]`(window, k)`, for `k` below [`LANES`]
/// (`window` has at least `LANES + 1` bytes). SSE2, which every x86-64
/// CPU has.
#[cfg(target_arch = "x86_64")]
#[inline]
fn u_lanes(window: &[u8]) -> u32 {
    use std::arch::x86_64::{
        _mm_and_si128, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };
    assert!(window.len() > LANES);
    // SAFETY: the assert keeps both 16-byte loads (at 0 and at 1) inside
    // `window`; `_mm_loadu_si128` has no alignment requirement, and the
    // rest are register-only SSE2 instructions of the x86-64 baseline.
    unsafe {
        let at = _mm_loadu_si128(window.as_ptr().cast());
        let next = _mm_loadu_si128(window.as_ptr().add(1).cast());
        let quote = _mm_cmpeq_epi8(at, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(at, _mm_set1_epi8(b'\\' as i8));
        let u = _mm_cmpeq_epi8(next, _mm_set1_epi8(b'u' as i8));
        _mm_movemask_epi8(_mm_and_si128(_mm_or_si128(quote, backslash), u)) as u32
    }
}

/// [`u_lanes`] a byte at a time: other targets, and the tests' reference.
#[cfg(any(test, not(target_arch = "x86_64")))]
fn u_lanes_bytes(window: &[u8]) -> u32 {
    (0..LANES)
        .filter(|&k| u_at(window, k))
        .fold(0, |m, k| m | 1 << k)
}

#[cfg(not(target_arch = "x86_64"))]
use u_lanes_bytes as u_lanes;

/// Below this many bytes a search is a plain loop.
const SHORT: usize = 64;

/// Whether the `"usage"` at `at` counts as present (see
/// [`usage_present`]), and the end of the positions after `at` that told,
/// past the end of `data` when its end told (a byte that is not there
/// decides as much as one that is).
fn usage_at(data: &[u8], at: usize) -> (bool, usize) {
    if quote_escaped(data, at) {
        // Not structure, unless a key ends in `\"usage`: decode.
        return (true, at + KEY);
    }
    let i = skip_ws(data, at + KEY);
    if data.get(i) != Some(&b':') {
        return (false, i + 1);
    }
    let j = skip_ws(data, i + 1);
    (!data[j..].starts_with(b"null"), j + 4)
}

/// The `"usage"` keys of a held base event (none counts as present);
/// `None` if one does, which a held base never has.
fn base_keys(base: &[u8]) -> Option<Vec<(usize, usize)>> {
    keys_in(base, 0, base.len())
        .map(|at| match usage_at(base, at) {
            (false, end) => Some((at, end)),
            (true, _) => None,
        })
        .collect()
}

/// [`usage_present`] of `data`, which equals its base (of `m` bytes, whose
/// keys are `keys` and none present) in its first `p` and last `s` bytes.
/// A key found in the base's bytes, with everything its check read, gives
/// the base's answer, so only these are checked:
/// - keys in `data` that touch the bytes between (or their edges);
/// - base keys in the prefix whose check read past it;
/// - base keys in the suffix whose opening quote may be escaped by a
///   backslash outside it.
fn usage_present_near(data: &[u8], p: usize, s: usize, m: usize, keys: &[(usize, usize)]) -> bool {
    let n = data.len();
    if p + s > n.min(m) {
        return usage_present(data);
    }
    let lo = p.saturating_sub(KEY - 1);
    let hi = (n - s + KEY - 1).min(n);
    if keys_in(data, lo, hi).any(|at| usage_at(data, at).0) {
        return true;
    }
    keys.iter().any(|&(at, end)| {
        if at < lo {
            end > p && usage_at(data, at).0
        } else if at >= m - s {
            let at = at - (m - s) + (n - s);
            let quote_kept = at > n - s && data[at - 1] != b'\\';
            !quote_kept && usage_at(data, at).0
        } else {
            false
        }
    })
}

/// Whether every `"usage"` key of a base (`keys`, none present) gives the
/// base's answer in an event that equals the base in its first `p` and
/// last `s` bytes and has no `"u` or `\u` from `p - 6` to its last
/// `s` bytes ([`DeferredText::hold_like`]): the cases of
/// [`usage_present_near`] that look at the event's own bytes. A key well
/// inside the prefix must not have read past it; a key in the suffix must
/// keep the byte before its opening quote, and that byte must not be a
/// backslash (one in the changed bytes could pair it up or not); a key
/// between is replaced by the changed bytes, or starts in the 6 bytes
/// before them, where the event has its `"u` too and takes the full way.
fn keys_kept(base: &[u8], p: usize, s: usize, keys: &[(usize, usize)]) -> bool {
    let m = base.len();
    keys.iter().all(|&(at, end)| {
        if at + (KEY - 1) < p {
            end <= p
        } else if at + s < m {
            true
        } else {
            at + s > m && base[at - 1] != b'\\'
        }
    })
}

/// The data has a `\u00XX` escape of a letter of `usage`: the only way a
/// key can spell it without the bytes `"usage"` (serde unescapes keys).
/// Decoded at once. Providers that escape text escape non-ASCII
/// characters, not these letters, so content deltas stay deferred.
/// Only escapes starting in `within` are looked at.
fn escaped_usage_letter(data: &[u8], within: std::ops::Range<usize>) -> bool {
    let from = within.start;
    let Some(span) = data.get(within) else {
        return true;
    };
    let letter = |rel: usize| {
        let at = from + rel;
        data.get(at + 1..at + 6).is_some_and(|h| {
            h[..3] == *b"u00"
                && matches!(
                    [h[3], h[4].to_ascii_lowercase()],
                    [b'7', b'5' | b'3'] | [b'6', b'1' | b'7' | b'5']
                )
        })
    };
    // The span is usually the few bytes where an event differs from the
    // base: a loop there, the vectorised search for long ones.
    if span.len() < SHORT {
        u_starts(data, from, from + span.len()).any(|i| data[i] == b'\\' && letter(i - from))
    } else {
        memchr::memchr_iter(b'\\', span).any(letter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::Scanner;
    use proptest::prelude::*;

    /// Everything accounting reads, decoding each event as it comes
    /// (the reference) and deferred.
    fn both(stream: &[u8]) -> ((String, Vec<Decoded>), (String, Vec<Decoded>)) {
        let mut eager = (String::new(), Vec::new());
        let mut s = Scanner::new(1 << 20);
        s.feed(stream, |ev| {
            let d = decode_event(&ev, |t| push_text(&mut eager.0, t));
            eager.1.push(d);
        });
        let mut lazy = DeferredText::default();
        let mut ds = Vec::new();
        let mut s = Scanner::new(1 << 20);
        s.feed(stream, |ev| ds.push(lazy.event(&ev)));
        (eager, (lazy.text().to_string(), ds))
    }

    /// Records what the accountant would read of each event, taking the
    /// ones the text takes ([`DeferredText::take_like`]): a taken event
    /// reads as a held one.
    struct Taken<'a> {
        text: &'a mut DeferredText,
        ds: &'a mut Vec<Decoded>,
        taken: &'a mut usize,
    }

    impl Sink for Taken<'_> {
        fn take(&mut self, _: u64, rest: &[u8]) -> usize {
            let n = self.text.take_like(rest);
            // A take may hold several events: the scanner says how many.
            let mut events = 0;
            Scanner::new(1 << 20).feed(&rest[..n], |_| events += 1);
            for _ in 0..events {
                self.ds.push(Decoded::default());
            }
            *self.taken += events;
            n
        }

        fn event(&mut self, ev: Event<'_>) {
            self.ds.push(self.text.event(&ev));
        }
    }

    /// [`both`]'s deferred side with the text taking what it can, the
    /// stream fed in pieces cut at `cuts`: (text, what was read of each
    /// event, events taken, records held before the text was asked for).
    fn taking(stream: &[u8], cuts: &[usize]) -> (String, Vec<Decoded>, usize, Vec<Vec<u8>>) {
        let mut points: Vec<usize> = cuts.iter().map(|&c| c.min(stream.len())).collect();
        points.extend([0, stream.len()]);
        points.sort_unstable();
        let (mut text, mut ds, mut taken) = (DeferredText::default(), Vec::new(), 0);
        let mut s = Scanner::new(1 << 20);
        for w in points.windows(2) {
            let sink = Taken {
                text: &mut text,
                ds: &mut ds,
                taken: &mut taken,
            };
            s.feed_sink(&stream[w[0]..w[1]], sink);
        }
        s.finish(|ev| ds.push(text.event(&ev)));
        let (all, held) = text_and_records(text);
        (all, ds, taken, held)
    }

    /// The whole text, and the records the hold had.
    fn text_and_records(mut d: DeferredText) -> (String, Vec<Vec<u8>>) {
        // Text decoded at once came before what is held.
        let mut all = std::mem::take(&mut d.text);
        let mut held = Vec::new();
        d.held.drain(|e| {
            if !e.is_empty() {
                super::super::decode(e, |t| push_text(&mut all, t));
            }
            held.push(e.to_vec());
        });
        (all, held)
    }

    /// The deferred side without taking: (text, reads, records held).
    fn scanned(stream: &[u8]) -> (String, Vec<Decoded>, Vec<Vec<u8>>) {
        let mut text = DeferredText::default();
        let mut ds = Vec::new();
        let mut s = Scanner::new(1 << 20);
        s.feed(stream, |ev| ds.push(text.event(&ev)));
        s.finish(|ev| ds.push(text.event(&ev)));
        let (all, held) = text_and_records(text);
        (all, ds, held)
    }

    /// An event with this data.
    fn event(data: &[u8]) -> Event<'_> {
        Event {
            start: 0,
            end: 0,
            event: None,
            data: data.into(),
            id: None,
            oversize: false,
        }
    }

    /// What the accountant uses of a `Decoded`.
    fn used(d: &[Decoded]) -> Vec<(bool, Option<crate::sse::Usage>, bool)> {
        d.iter().map(|d| (d.done, d.usage, d.usage_only)).collect()
    }

    fn chunk(content: &str) -> String {
        let c = serde_json::to_string(content).unwrap();
        format!(
            "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{c}}},\"finish_reason\":null}}],\"usage\":null}}\n\n"
        )
    }

    #[test]
    fn u_finder_is_exact() {
        // `"u` and `\u` at every position of texts around the lane
        // width, next to decoys (`"x`, `u` alone, `\"`), for every range,
        // against a byte-at-a-time reference.
        let reference =
            |b: &[u8], i: usize, end: usize| (i..end).find(|&k| u_at(b, k)).unwrap_or(end);
        for len in [0, 1, 2, 15, 16, 17, 18, 33, 40] {
            for pat in [&b"\"u"[..], b"\\u", b"\"x", b"xu", b"\\\"", b"u\""] {
                for pos in 0..len.max(1) {
                    let mut b = vec![b'a'; len];
                    for (k, &c) in pat.iter().enumerate() {
                        if let Some(slot) = b.get_mut(pos + k) {
                            *slot = c;
                        }
                    }
                    for end in 0..=len {
                        for i in 0..=end {
                            assert_eq!(
                                next_u(&b, i, end),
                                reference(&b, i, end),
                                "{pat:?} at {pos} of {len}, {i}..{end}"
                            );
                            assert!(
                                u_starts(&b, i, end).eq((i..end).filter(|&k| u_at(&b, k))),
                                "{pat:?} at {pos} of {len}, {i}..{end}"
                            );
                        }
                    }
                    if let Some(w) = b.get(..LANES + 1) {
                        assert_eq!(u_lanes(w), u_lanes_bytes(w), "{pat:?} at {pos}");
                    }
                }
            }
        }
    }

    #[test]
    fn usage_chunks_are_read_at_once_and_text_later() {
        let mut s = chunk("Hello") + &chunk(" \"usage\": {\"prompt_tokens\":1} world");
        // Data over two lines (joined with `\n`).
        s += "data: {\"choices\":[{\"delta\":\ndata: {\"content\":\"!\"}}]}\n\n";
        s += "data: {\"choices\":[],\"usage\" : {\"prompt_tokens\":5,\"completion_tokens\":2}}\n\n";
        s += "data: [DONE]\n\n";
        let (eager, lazy) = both(s.as_bytes());
        assert_eq!(eager.0, "Hello \"usage\": {\"prompt_tokens\":1} world!");
        assert_eq!(lazy.0, eager.0);
        assert_eq!(used(&lazy.1), used(&eager.1));
        assert_eq!(
            lazy.1[3].usage,
            Some(crate::sse::Usage {
                prompt: 5,
                completion: 2
            })
        );
        assert!(lazy.1[3].usage_only && lazy.1[4].done);
    }

    #[test]
    fn a_usage_key_spelled_with_escapes_is_read_at_once() {
        let s = "data: {\"choices\":[],\"\\u0075sag\\u0065\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\n";
        let (eager, lazy) = both(s.as_bytes());
        assert_eq!(
            eager.1[0].usage,
            Some(crate::sse::Usage {
                prompt: 5,
                completion: 2
            })
        );
        assert_eq!(used(&lazy.1), used(&eager.1));
        // Escaped non-ASCII text stays deferred.
        let mut d = DeferredText::default();
        let mut sc = Scanner::new(1 << 20);
        sc.feed(
            chunk("caf\u{e9} \u{65e5}")
                .replace('é', "\\u00e9")
                .replace('日', "\\u65e5")
                .as_bytes(),
            |ev| {
                d.event(&ev);
            },
        );
        assert!(!d.held.is_empty());
        assert_eq!(d.text(), "café 日");
    }

    #[test]
    fn an_escaped_usage_key_in_an_event_like_the_held_ones_is_read_at_once() {
        // The escape check looks only where an event differs from the held
        // base: put the escape right there, at each letter.
        let usage = "{\"prompt_tokens\":5,\"completion_tokens\":2}";
        for (i, letter) in "usage".char_indices() {
            let key = format!(
                "{}\\u{:04x}{}",
                &"usage"[..i],
                letter as u32,
                &"usage"[i + 1..]
            );
            let mut s = chunk("Hello") + &chunk(" world");
            s += &chunk(" world").replace("\"usage\":null", &format!("\"{key}\":{usage}"));
            s += "data: [DONE]\n\n";
            let (eager, lazy) = both(s.as_bytes());
            assert!(eager.1[2].usage.is_some(), "{key}");
            assert_eq!(used(&lazy.1), used(&eager.1), "{key}");
            assert_eq!(lazy.0, eager.0);
        }
    }

    #[test]
    fn a_long_stream_is_held_to_its_end_not_decoded_on_the_way() {
        // 20,000 content deltas the size of OpenAI's: all held (nothing
        // decoded before the text is asked for), in a fraction of the
        // bound. Before events were held as differences, the bound was
        // reached at ~1,000 and every later event was decoded as it came.
        let mut d = DeferredText::default();
        let mut s = Scanner::new(1 << 20);
        let mut all = String::new();
        for i in 0..20_000 {
            let t = format!(" w{}", i % 97);
            all += &t;
            s.feed(chunk(&t).as_bytes(), |ev| {
                d.event(&ev);
            });
        }
        assert!(d.text.is_empty(), "decoded before it was asked for");
        assert!(d.held.len() < HOLD_MAX / 2, "{} bytes held", d.held.len());
        assert_eq!(d.text(), all);
    }

    #[test]
    fn held_data_is_bounded() {
        // Texts that share nothing: each is held whole.
        let text = |i: usize| -> String {
            (0..1000)
                .map(|k| char::from(b'a' + ((k * 7 + i * 13) % 26) as u8))
                .collect()
        };
        let mut d = DeferredText::default();
        let mut s = Scanner::new(1 << 20);
        let mut all = String::new();
        for i in 0..1000 {
            all += &text(i);
            s.feed(chunk(&text(i)).as_bytes(), |ev| {
                d.event(&ev);
            });
            assert!(d.held.len() <= HOLD_MAX);
        }
        assert_eq!(d.text(), all);
    }

    /// Bytes from pieces that make, break and hide `"usage"` keys.
    fn pieces() -> impl Strategy<Value = Vec<u8>> {
        let piece = proptest::sample::select(vec![
            "\"usage\"",
            "\\u0075",
            "\\u00",
            "u",
            "\"usa",
            "ge\"",
            "usage\"",
            ":",
            " ",
            "\n",
            "null",
            "nul",
            "{}",
            "1",
            "\\",
            "\"",
            "x",
            ",",
            "{",
            "}",
        ]);
        proptest::collection::vec(piece, 0..24).prop_map(|v| v.concat().into_bytes())
    }

    /// Mostly a token's plain text, else [`pieces`].
    fn text_or_pieces() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            3 => "[a-z ]{0,12}".prop_map(String::into_bytes),
            1 => pieces(),
        ]
    }

    /// Base keys and their reach, with the near check against the full one.
    fn near_and_full(base: &[u8], p: usize, middle: &[u8], s: usize) -> (bool, bool) {
        let keys = base_keys(base).unwrap();
        let mut data = base[..p].to_vec();
        data.extend_from_slice(middle);
        data.extend_from_slice(&base[base.len() - s..]);
        (
            usage_present_near(&data, p, s, base.len(), &keys),
            usage_present(&data),
        )
    }

    #[test]
    fn the_near_check_sees_what_the_base_keys_did_not_read() {
        // The base's key ended the data: the byte after it, absent in the
        // base, decides in the event.
        assert_eq!(near_and_full(b"\"usage\"", 7, b":1", 0), (true, true));
        // A key that starts in the changed bytes and ends in the suffix.
        let base = b"{\"usage\":null}";
        assert_eq!(
            near_and_full(base, 1, b"\\\"", base.len() - 2),
            (true, true)
        );
        // A suffix key whose quote a changed backslash escapes.
        assert_eq!(near_and_full(base, 0, b"{\\", base.len() - 1), (true, true));
        // A prefix key whose value the change replaced.
        assert_eq!(near_and_full(base, 9, b"{}}", 0), (true, true));
        // And a change far from the key keeps the base's answer.
        assert_eq!(
            near_and_full(base, 1, b"\"a\":1,", base.len() - 1),
            (false, false)
        );
    }

    /// Whether each event was held (not decoded at once).
    fn held_or_not(events: &[&[u8]]) -> Vec<bool> {
        let mut d = DeferredText::default();
        events
            .iter()
            .map(|e| {
                let before = d.held.len();
                d.event(&event(e));
                d.held.len() > before
            })
            .collect()
    }

    #[test]
    fn a_like_event_that_changes_what_a_base_key_reads_is_checked_whole() {
        // (base, an event like it held twice, then one whose changed bytes
        // make the base's key present: decoded at once).
        let cases: [(&[u8], &[u8], &[u8]); 3] = [
            // The like events end in the base's key: a backslash before
            // it in the changed bytes escapes its quote.
            (
                br#"{"c":"ab","usage":null}"#,
                br#"{"c":"ab";"usage":null}"#,
                br#"{"c":"ab"\"usage":null}"#,
            ),
            // The byte before the base key's quote is kept, but is a
            // backslash the changed bytes can pair up or not.
            (
                br#"{"c":"ab",\\"usage":null}"#,
                br#"{"c":"ab";\\"usage":null}"#,
                br#"{"c":"ab"\\\"usage":null}"#,
            ),
            // A key in the like prefix whose value the changed bytes
            // replace.
            (
                br#"{"usage":null,"c":"a"}"#,
                br#"{"usage": null,"c":"a"}"#,
                br#"{"usage":1null,"c":"a"}"#,
            ),
        ];
        for (base, like, present) in cases {
            assert_eq!(
                held_or_not(&[base, like, like, present]),
                [true, true, true, false],
                "{}",
                String::from_utf8_lossy(present)
            );
        }
    }

    proptest! {
        // Many random bases have a present key and are not held: rejected.
        #![proptest_config(ProptestConfig {
            max_global_rejects: 1 << 20,
            ..ProptestConfig::default()
        })]

        /// The check near the bytes that differ from the base gives the
        /// full check's answer, wherever the event was cut from the base.
        #[test]
        fn the_check_near_the_changes_is_the_full_check(
            base in pieces(),
            middle in pieces(),
            p in 0usize..200,
            s in 0usize..200,
        ) {
            prop_assume!(!usage_present(&base));
            let keys = base_keys(&base).unwrap();
            let p = p.min(base.len());
            let s = s.min(base.len() - p);
            let mut data = base[..p].to_vec();
            data.extend_from_slice(&middle);
            data.extend_from_slice(&base[base.len() - s..]);
            prop_assert_eq!(
                usage_present_near(&data, p, s, base.len(), &keys),
                usage_present(&data)
            );
        }

        /// An event is held (not decoded now) only if it has no present
        /// `"usage"` and no escaped letter of one, whether it took the way
        /// of the events like the held ones or the full one: events cut
        /// from a base at the same places as the ones before them, with
        /// bytes between that make, break and hide keys and escapes.
        #[test]
        fn only_events_without_usage_are_held(
            base in pieces(),
            shape in (0usize..120, prop_oneof![0usize..24, 0usize..120]),
            events in proptest::collection::vec(
                (proptest::option::of((0usize..120, 0usize..120)), pieces()), 1..16),
        ) {
            let wrap = |b: &[u8]| {
                [&b"{\"choices\":[{\"delta\":{\"content\":\""[..], b, b"\"}}],\"usage\":null}"].concat()
            };
            let base = wrap(&base);
            prop_assume!(!usage_present(&base) && !escaped_usage_letter(&base, 0..base.len()));
            let mut d = DeferredText::default();
            let mut all = vec![base.clone()];
            d.event(&event(&base));
            for (cut, middle) in events {
                let (p, s) = cut.unwrap_or(shape);
                let p = p.min(base.len());
                let s = s.min(base.len() - p);
                let data = [&base[..p], &middle, &base[base.len() - s..]].concat();
                let before = d.held.len();
                d.event(&event(&data));
                if d.held.len() > before {
                    prop_assert!(!usage_present(&data), "{}", String::from_utf8_lossy(&data));
                    prop_assert!(!escaped_usage_letter(&data, 0..data.len()));
                    all.push(data);
                } else if d.held.len() < before {
                    // Decoded at once with text: what was held went first.
                    all.clear();
                }
            }
            let mut held = Vec::new();
            d.held.drain(|e| held.push(e.to_vec()));
            prop_assert_eq!(held, all);
        }

        /// Deferred decoding reads the same text and the same done/usage
        /// as decoding every event, whatever the events hold.
        #[test]
        fn same_as_decoding_each_event(
            contents in proptest::collection::vec(any::<String>(), 0..8),
            usage_at in proptest::option::of(0usize..8),
            spaced in any::<bool>(),
            tool_call in any::<bool>(),
            cuts in proptest::collection::vec(0usize..2000, 0..4),
        ) {
            let mut s = String::new();
            for (i, c) in contents.iter().enumerate() {
                if usage_at == Some(i) {
                    let sep = if spaced { " : " } else { ":" };
                    s += &format!("data: {{\"choices\":[],\"usage\"{sep}{{\"prompt_tokens\":{i},\"completion_tokens\":3}}}}\n\n");
                }
                s += &chunk(c);
                if tool_call {
                    let a = serde_json::to_string(c).unwrap();
                    s += &format!("data: {{\"choices\":[{{\"delta\":{{\"tool_calls\":[{{\"function\":{{\"arguments\":{a}}}}}]}}}}]}}\n\n");
                }
            }
            s += "data: [DONE]\n\n";
            let (eager, lazy) = both(s.as_bytes());
            prop_assert_eq!(&lazy.0, &eager.0);
            prop_assert_eq!(used(&lazy.1), used(&eager.1));
            let took = taking(s.as_bytes(), &cuts);
            prop_assert_eq!(&took.0, &eager.0);
            prop_assert_eq!(used(&took.1), used(&eager.1));
        }

        /// Events the text takes from the scan are held exactly as the
        /// scanner's way holds them, with the same answers: content
        /// deltas cut from a base (one of several `data:` lines when it
        /// has an LF) at the same places, with bytes between that break
        /// lines (`\n`, `\r`), escape, quote and make or hide `"usage"`
        /// keys; lines ended in LF, CRLF, CR or mixed; fed in pieces.
        #[test]
        fn taking_events_is_the_scanners_way(
            base in text_or_pieces(),
            shape in (0usize..120, prop_oneof![0usize..24, 0usize..120]),
            events in proptest::collection::vec(
                (proptest::option::weighted(0.2, (0usize..120, 0usize..120)), text_or_pieces(), 0u8..8),
                1..16),
            cuts in proptest::collection::vec(0usize..4000, 0..4),
        ) {
            let wrap = |b: &[u8]| {
                [&b"{\"choices\":[{\"delta\":{\"content\":\""[..], b, b"\"}}],\"usage\":null}"].concat()
            };
            let base = wrap(&base);
            // The base as `data:` lines joined with LF (its LFs are data),
            // the events each on one line (an LF there ends the line).
            let lines = String::from_utf8_lossy(&base).replace('\n', "\ndata: ");
            let mut stream = ["data: ", &lines, "\n\n"].concat().into_bytes();
            for (cut, middle, end) in events {
                let (p, s) = cut.unwrap_or(shape);
                let p = p.min(base.len());
                let s = s.min(base.len() - p);
                let data = [&base[..p], &middle, &base[base.len() - s..]].concat();
                let data = if end >= 6 {
                    // Some events as `data:` lines too, so what is held
                    // can share the base's LFs.
                    String::from_utf8_lossy(&data).replace('\n', "\ndata: ").into_bytes()
                } else {
                    data
                };
                let end: &[u8] = match end {
                    0 => b"\r\n\r\n",
                    1 => b"\r\r",
                    2 => b"\n\r\n",
                    _ => b"\n\n",
                };
                stream.extend([b"data: ", &data[..], end].concat());
            }
            let (text, ds, held) = scanned(&stream);
            let took = taking(&stream, &cuts);
            prop_assert_eq!(&took.0, &text);
            prop_assert_eq!(used(&took.1), used(&ds));
            prop_assert_eq!(&took.3, &held);
        }
    }

    #[test]
    fn the_delta_after_the_first_is_taken_whatever_letters_they_share() {
        // The base is the role event, its text empty; the first delta's
        // text ends in the letter "assistant" does. The like suffix starts
        // at the closing quote, so the next delta, ending in another
        // letter, is taken all the same.
        let event = |delta: &str| {
            format!(
                "data: {{\"choices\":[{{\"delta\":{delta},\"finish_reason\":null,\"index\":0}}],\"id\":\"chatcmpl-x\",\"object\":\"chat.completion.chunk\"}}\n\n"
            )
        };
        let mut s = event(r#"{"content":"","refusal":null,"role":"assistant"}"#);
        for w in [" not", " which", " have", " been"] {
            s += &event(&format!(r#"{{"content":"{w}"}}"#));
        }
        let (text, ds, held) = scanned(s.as_bytes());
        let took = taking(s.as_bytes(), &[]);
        assert_eq!((&took.0, used(&took.1), &took.3), (&text, used(&ds), &held));
        assert_eq!(text, " not which have been");
        assert_eq!(took.2, 3);
    }

    #[test]
    fn content_deltas_are_taken_without_the_scanner() {
        // OpenAI's key order (text first, a long suffix), the text last,
        // and lines ended in CRLF: all but the first few deltas are taken,
        // in one feed or many.
        let openai = |c: &str| {
            let c = serde_json::to_string(c).unwrap();
            format!(
                "data: {{\"choices\":[{{\"delta\":{{\"content\":{c}}},\"finish_reason\":null,\"index\":0,\"logprobs\":null}}],\"created\":1700000000,\"id\":\"chatcmpl-x\",\"model\":\"gpt-4o-mini\",\"object\":\"chat.completion.chunk\",\"system_fingerprint\":\"fp\"}}\n\n"
            )
        };
        let words = [
            " The", " cat", " sat", " on", " the", " mat", " and", " sang", " \"hi\"", "\n", " end",
        ];
        let crlf = |c: &str| openai(c).replace('\n', "\r\n");
        let makers: [&dyn Fn(&str) -> String; 3] = [&openai, &chunk, &crlf];
        for make in makers {
            let mut s: String = words.iter().map(|w| make(w)).collect();
            s += "data: [DONE]\n\n";
            let (text, ds, held) = scanned(s.as_bytes());
            assert_eq!(text, words.concat());
            // An event cut across feeds is carried and parsed: one per cut.
            for cuts in [
                vec![],
                (0..s.len()).step_by(700).skip(1).collect::<Vec<_>>(),
            ] {
                let took = taking(s.as_bytes(), &cuts);
                assert_eq!(took.0, text);
                assert_eq!(used(&took.1), used(&ds));
                assert_eq!(took.3, held);
                // All but three deltas (the base, the first difference, the
                // one without the leading space the others share), one
                // fewer per cut; never `[DONE]`.
                let want = words.len() - 3 - cuts.len();
                assert!(took.2 >= want, "{} taken, cuts {cuts:?}", took.2);
            }
        }
    }

    #[test]
    fn runs_of_deltas_are_taken_until_the_hold_is_full() {
        // Thousands of like deltas in one read, their text long enough to
        // fill the hold: taken many runs in a row, then, once the hold
        // is full, the scanner's way (decode what is held), then taken
        // again; the same text, answers and records as the scanner's way.
        // Every 20th text is the base's, the first delta's too: neither
        // may stop the deltas after them being taken.
        let event = |i: usize| {
            // Letters (no `u`) that differ from event to event at both
            // ends.
            let t: String = (0..120)
                .map(|k| char::from(b'a' + ((i * 7 + k * 13) % 20) as u8))
                .collect();
            format!(
                "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{t}\"}},\"finish_reason\":null,\"index\":0,\"logprobs\":null}}],\"created\":1700000000,\"id\":\"chatcmpl-x\",\"model\":\"gpt-4o-mini\",\"object\":\"chat.completion.chunk\"}}\n\n"
            )
        };
        let n = 2 * HOLD_MAX / 120;
        // The first delta repeats the base's text too.
        let s: String = std::iter::once(0).chain(0..n).map(event).collect();
        let n = n + 1;
        let (text, ds, held) = scanned(s.as_bytes());
        assert_eq!(text.len(), n * 120);
        let took = taking(s.as_bytes(), &[]);
        assert_eq!((&took.0, used(&took.1), &took.3), (&text, used(&ds), &held));
        // All but the base, the first difference, and those two again
        // each time the hold filled up and started over.
        assert!(took.2 >= n - 8, "{} of {n} taken", took.2);
    }
}
