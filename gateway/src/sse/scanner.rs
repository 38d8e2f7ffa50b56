//! SSE frame scanner (WHATWG HTML §9.2.6 "Interpreting an event stream").
//!
//! Fed the response *payload* (chunked framing already removed) in pieces
//! split anywhere; reports every complete event with its absolute byte
//! range in the payload stream so a relay can forward, hold or drop whole
//! events.
//!
//! Parsing, per the spec: lines end in LF, CRLF or a lone CR (a CR that
//! ends one feed and an LF that starts the next are one line ending); a
//! line starting with `:` is a comment; otherwise the field name runs to
//! the first `:` (or the whole line) and one space after the colon is
//! dropped; `data` lines are joined with `\n`, `event` and `id` keep the
//! last value (an `id` containing NUL is ignored), `retry` and unknown
//! fields are ignored; a blank line ends the event. A UTF-8 BOM at the
//! very start of the stream is skipped.
//!
//! Where this differs from a browser, on purpose (the relay wants bytes,
//! not `MessageEvent`s):
//! - an event is reported if it had a `data` field *or* an `event` field
//!   (a browser drops events with no data); comment-only blocks and
//!   `id`/`retry`-only blocks are not reported, unless oversize;
//! - `id` is the event's own field, not the sticky "last event ID";
//! - [`Scanner::finish`] reports an unterminated last event (its last
//!   line counts even without a line ending) instead of discarding it.
//!
//! Invariants:
//! - Events are reported in order with `start < end <= offset()`, ranges
//!   never overlap, and bytes between events (blank lines, comment-only
//!   blocks) belong to no event. `start` is the first byte of the event's
//!   first line (a leading comment line included); `end` is just past the
//!   line ending of the blank line that dispatched it.
//! - The result does not depend on how the payload was split into feeds,
//!   for events up to `max_event` bytes. To keep that true, an event whose
//!   blank line ends in a CR that is the last byte of a feed is held until
//!   the next byte is seen (an LF would belong to it) or `finish`.
//! - Zero copy: an event that lies wholly inside one `feed` borrows its
//!   fields from that input; multi-line `data` is joined in a reused
//!   buffer. Only an event split across feeds is copied, into a carry-over
//!   buffer of at most `max_event` bytes. Past the cap the scanner keeps
//!   looking for the event's end without storing, and reports it with
//!   `oversize` set and `data` truncated (a prefix of the real data). So
//!   one scanner holds at most `2 * max_event` bytes (carry + joined data).
//! - Lines are found with `memchr2` over `\n`/`\r` and fields with
//!   `memchr`; there is no per-byte loop over the payload.

use std::borrow::Cow;

use memchr::{memchr, memchr2};

/// UTF-8 byte order mark, skipped at the start of the stream (spec).
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Buffers grown past this are released after their event, so a stream
/// that once carried a large event does not pin `max_event` bytes for the
/// rest of its life.
const KEEP_CAPACITY: usize = 64 * 1024;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event<'a> {
    /// Absolute offset (bytes of payload fed before it) of the event's
    /// first byte (first line, comments included).
    pub start: u64,
    /// Absolute offset just past the blank line that ended it (or past
    /// the last byte at EOF for an unterminated event).
    pub end: u64,
    /// `event:` field, if any (last one wins, per spec).
    pub event: Option<Cow<'a, [u8]>>,
    /// `data:` lines joined with `\n` (one leading space removed per spec).
    pub data: Cow<'a, [u8]>,
    /// `id:` field, if any.
    pub id: Option<Cow<'a, [u8]>>,
    /// True when the event was larger than the carry-over cap: `data` is
    /// then truncated to what fit, the stream itself is unaffected.
    /// "Larger" counts where bytes had to be copied: an event split across
    /// feeds (all its bytes) or multi-line data being joined; an event
    /// wholly inside one feed with one `data` line is never truncated.
    pub oversize: bool,
}

/// What a scan hands its events to. Any `FnMut(Event)` closure is one.
pub trait Sink {
    /// Offered the rest of the feed at each event boundary inside it (the
    /// first byte of whatever comes next): the length of the events it
    /// starts that the sink took whole, else 0. Taken events are not
    /// parsed or reported; they must be the bytes of whole events, the
    /// last ending in a blank line ending in LF (so the scanner's state
    /// after them is the state at any boundary). A sink that knows what
    /// the next events look like skips the line search this way.
    #[inline]
    fn take(&mut self, start: u64, rest: &[u8]) -> usize {
        let _ = (start, rest);
        0
    }

    /// Each event the scan completes and did not have taken, in order.
    fn event(&mut self, ev: Event<'_>);
}

impl<F: FnMut(Event<'_>)> Sink for F {
    #[inline]
    fn event(&mut self, ev: Event<'_>) {
        self(ev)
    }
}

/// Where the scanner is between two feeds.
///
/// Transitions: `Idle` → `Carry` when a feed ends inside an event;
/// `Carry` → `Idle` when a later feed completes it; `Idle`/`Carry` →
/// `Ended` when the blank line ending an event ends in the feed's last
/// byte, a CR; `Ended` → `Idle` on the next non-empty feed or `finish`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At an event boundary: nothing of the next event has been seen.
    Idle,
    /// An event began in an earlier feed; its bytes (up to the cap) are in
    /// `carry`.
    Carry {
        /// Absolute offset of the event's first byte.
        start: u64,
        /// Bytes of the event seen so far, stored or not.
        len: u64,
        /// The event's bytes so far end with a line ending.
        at_line_start: bool,
        /// Some of the event's bytes did not fit in `carry`.
        truncated: bool,
    },
    /// A complete event in `carry` whose blank line ended in a CR at the
    /// end of the last feed: an LF first in the next feed is part of it.
    Ended {
        /// Absolute offset of the event's first byte.
        start: u64,
        /// Bytes of the event, blank line included.
        len: u64,
        /// Some of the event's bytes did not fit in `carry`.
        truncated: bool,
    },
}

/// The scanner state for one response.
#[derive(Debug)]
pub struct Scanner {
    /// Cap on the carry-over and on joined multi-line data, in bytes.
    max_event: usize,
    /// Payload bytes fed so far.
    offset: u64,
    /// The last byte fed was a CR that ended a line.
    pending_cr: bool,
    state: State,
    /// Bytes of the event split across feeds (`Carry`, `Ended`).
    carry: Vec<u8>,
    /// Multi-line `data` joined with `\n`.
    joined: Vec<u8>,
}

/// The fields of the event being parsed, borrowed from the bytes that
/// hold it.
#[derive(Default)]
struct Fields<'a> {
    event: Option<&'a [u8]>,
    id: Option<&'a [u8]>,
    data: Data<'a>,
    /// Joined data was cut at the cap.
    truncated: bool,
}

#[derive(Default, Clone, Copy)]
enum Data<'a> {
    /// No `data` field yet.
    #[default]
    None,
    /// Exactly one `data` field: its value, borrowed.
    One(&'a [u8]),
    /// Several: joined in `Scanner::joined`.
    Joined,
}

impl<'a> Fields<'a> {
    /// Processes one complete, non-empty line without its line ending.
    /// Almost every line of an LLM stream is an event's one `data` line:
    /// that case is inlined into the scan, the rest is a call.
    #[inline]
    fn line(&mut self, line: &'a [u8], joined: &mut Vec<u8>, cap: usize) {
        if let (Some(v), Data::None) = (line.strip_prefix(b"data:"), self.data) {
            self.data = Data::One(v.strip_prefix(b" ").unwrap_or(v));
            return;
        }
        self.other_line(line, joined, cap);
    }

    /// [`line`](Self::line) for every other line.
    fn other_line(&mut self, line: &'a [u8], joined: &mut Vec<u8>, cap: usize) {
        if let Some(v) = line.strip_prefix(b"data:") {
            self.data(v.strip_prefix(b" ").unwrap_or(v), joined, cap);
            return;
        }
        let (name, value) = match memchr(b':', line) {
            Some(0) => return, // comment
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &line[line.len()..]),
        };
        match name {
            b"data" => self.data(value, joined, cap),
            b"event" => self.event = Some(value),
            b"id" if memchr(0, value).is_none() => self.id = Some(value),
            // `retry` only matters to a reconnecting browser; unknown
            // fields are ignored per spec.
            _ => {}
        }
    }

    /// A `data` field's value.
    fn data(&mut self, value: &'a [u8], joined: &mut Vec<u8>, cap: usize) {
        match self.data {
            Data::None => self.data = Data::One(value),
            Data::One(first) => {
                joined.clear();
                let mut cut = push_capped(joined, first, cap);
                cut |= push_capped(joined, b"\n", cap);
                cut |= push_capped(joined, value, cap);
                self.truncated |= cut;
                self.data = Data::Joined;
            }
            Data::Joined => {
                let cut = push_capped(joined, b"\n", cap) | push_capped(joined, value, cap);
                self.truncated |= cut;
            }
        }
    }

    /// Whether the block is reported (see the module doc).
    fn is_event(&self) -> bool {
        !matches!(self.data, Data::None) || self.event.is_some()
    }

    fn into_event<'b>(self, joined: &'b [u8], start: u64, end: u64, oversize: bool) -> Event<'b>
    where
        'a: 'b,
    {
        let data: &'b [u8] = match self.data {
            Data::None => &[],
            Data::One(d) => d,
            Data::Joined => joined,
        };
        Event {
            start,
            end,
            event: self.event.map(Cow::Borrowed),
            data: Cow::Borrowed(data),
            id: self.id.map(Cow::Borrowed),
            oversize: oversize || self.truncated,
        }
    }
}

/// Appends as much of `bytes` as fits under `cap`; true if some did not.
/// Grows `buf` at most to `cap`, never past it.
fn push_capped(buf: &mut Vec<u8>, bytes: &[u8], cap: usize) -> bool {
    let room = cap.saturating_sub(buf.len());
    let take = bytes.len().min(room);
    let want = buf.len() + take;
    if want > buf.capacity() {
        let grown = want.max(buf.capacity().saturating_mul(2)).min(cap);
        buf.reserve_exact(grown - buf.len());
    }
    buf.extend_from_slice(&bytes[..take]);
    take < bytes.len()
}

/// Offset in `rest` of its first line ending (CR or LF). The blank line
/// that ends every event is found without a search call.
#[inline]
fn next_eol(rest: &[u8]) -> Option<usize> {
    match rest.first() {
        Some(b'\n' | b'\r') => Some(0),
        _ => memchr2(b'\n', b'\r', rest),
    }
}

/// Where the line ending at `input[eol]` (a CR or LF) ends, and whether
/// it is a CR that is the last byte (an LF may follow in the next feed).
#[inline]
fn after_eol(input: &[u8], eol: usize) -> (usize, bool) {
    if input[eol] == b'\r' {
        match input.get(eol + 1) {
            Some(b'\n') => (eol + 2, false),
            Some(_) => (eol + 1, false),
            None => (eol + 1, true),
        }
    } else {
        (eol + 1, false)
    }
}

/// Parses a whole event held in one slice (the carry-over); the last line
/// may lack its line ending. `at_zero`: the event starts the stream.
fn parse_raw<'a>(raw: &'a [u8], at_zero: bool, joined: &mut Vec<u8>, cap: usize) -> Fields<'a> {
    let mut fields = Fields::default();
    let mut pos = 0;
    while pos < raw.len() {
        let (mut line, next) = match next_eol(&raw[pos..]) {
            Some(i) => (&raw[pos..pos + i], after_eol(raw, pos + i).0),
            None => (&raw[pos..], raw.len()),
        };
        if at_zero && pos == 0 {
            line = line.strip_prefix(BOM).unwrap_or(line);
        }
        if !line.is_empty() {
            fields.line(line, joined, cap);
        }
        pos = next;
    }
    fields
}

impl Scanner {
    /// A scanner keeping at most `max_event` bytes of one split event
    /// (and at most `max_event` bytes of joined multi-line data). Nothing
    /// is allocated until an event needs copying.
    pub fn new(max_event: usize) -> Self {
        Scanner {
            max_event,
            offset: 0,
            pending_cr: false,
            state: State::Idle,
            carry: Vec::new(),
            joined: Vec::new(),
        }
    }

    /// Feeds the next payload bytes; `on_event` sees each event completed
    /// by them, in order. Events with no `data` field are still reported
    /// (with empty data) only if they have an `event:` field; pure comment
    /// blocks are not events.
    pub fn feed(&mut self, input: &[u8], on_event: impl FnMut(Event<'_>)) {
        self.feed_sink(input, on_event);
    }

    /// [`feed`](Self::feed) into a [`Sink`]: events that start and end in
    /// this feed may be taken by it instead of parsed ([`Sink::take`]).
    pub fn feed_sink(&mut self, input: &[u8], mut on_event: impl Sink) {
        if input.is_empty() {
            return;
        }
        let base = self.offset;
        self.offset += input.len() as u64;
        let mut pos = 0;
        if std::mem::take(&mut self.pending_cr) && input[0] == b'\n' {
            // The LF of a CRLF split across feeds: part of the line ending
            // already counted, so it is neither a new line nor blank.
            pos = 1;
            match &mut self.state {
                State::Idle => {}
                State::Carry { len, .. } | State::Ended { len, .. } => *len += 1,
            }
        }
        if let State::Ended {
            start,
            len,
            truncated,
        } = self.state
        {
            self.dispatch_carry(start, len, truncated, &mut on_event);
        }
        if let State::Carry { .. } = self.state {
            match self.extend_carry(input, pos, &mut on_event) {
                Some(next) => pos = next,
                None => return,
            }
        }
        self.scan(input, base, pos, &mut on_event);
    }

    /// End of stream: dispatches an unterminated last event, if any.
    pub fn finish(&mut self, mut on_event: impl FnMut(Event<'_>)) {
        self.pending_cr = false;
        match self.state {
            State::Idle => {}
            State::Carry {
                start,
                len,
                truncated,
                ..
            }
            | State::Ended {
                start,
                len,
                truncated,
            } => self.dispatch_carry(start, len, truncated, &mut on_event),
        }
    }

    /// Total payload bytes fed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Offset of the first byte of the event in progress (`offset()` when
    /// none): every byte before it was reported, taken, or belongs to no
    /// event.
    pub fn boundary(&self) -> u64 {
        match self.state {
            State::Idle => self.offset,
            State::Carry { start, .. } | State::Ended { start, .. } => start,
        }
    }

    /// True when no event is in progress: everything fed so far has been
    /// reported or belongs to no event.
    pub fn is_idle(&self) -> bool {
        self.state == State::Idle
    }

    /// Scans `input[pos..]` from an event boundary: events wholly inside
    /// it are reported borrowed; a trailing partial event goes to `carry`.
    fn scan(&mut self, input: &[u8], base: u64, mut pos: usize, on_event: &mut impl Sink) {
        let cap = self.max_event;
        let mut fields = Fields::default();
        let mut ev_start: Option<usize> = None;
        loop {
            if ev_start.is_none() && pos < input.len() {
                let n = on_event.take(base + pos as u64, &input[pos..]);
                if n > 0 {
                    debug_assert!(input[pos..].get(..n).is_some_and(|e| e.ends_with(b"\n")));
                    pos = (pos + n).min(input.len());
                    self.pending_cr = false;
                    continue;
                }
            }
            let Some(i) = next_eol(&input[pos..]) else {
                // Input ends inside a line or right after a line ending.
                let at_line_start = pos == input.len();
                if let Some(s) = ev_start.or((!at_line_start).then_some(pos)) {
                    self.start_carry(&input[s..], base + s as u64, at_line_start);
                }
                return;
            };
            let eol = pos + i;
            let (next, cr_last) = after_eol(input, eol);
            self.pending_cr = cr_last;
            if i > 0 {
                let mut line = &input[pos..eol];
                if base + pos as u64 == 0 {
                    line = line.strip_prefix(BOM).unwrap_or(line);
                }
                if ev_start.is_none() {
                    ev_start = Some(pos);
                }
                if !line.is_empty() {
                    fields.line(line, &mut self.joined, cap);
                }
            } else if let Some(s) = ev_start.take() {
                let start = base + s as u64;
                if cr_last {
                    self.carry.clear();
                    let truncated = push_capped(&mut self.carry, &input[s..eol], cap);
                    self.state = State::Ended {
                        start,
                        len: (next - s) as u64,
                        truncated,
                    };
                    return;
                }
                let done = std::mem::take(&mut fields);
                if done.is_event() {
                    on_event.event(done.into_event(&self.joined, start, base + next as u64, false));
                }
                self.release_joined();
            }
            pos = next;
        }
    }

    /// Starts a carry-over with the first bytes of an event.
    fn start_carry(&mut self, bytes: &[u8], start: u64, at_line_start: bool) {
        self.carry.clear();
        let truncated = push_capped(&mut self.carry, bytes, self.max_event);
        self.state = State::Carry {
            start,
            len: bytes.len() as u64,
            at_line_start,
            truncated,
        };
    }

    /// Continues the carried event with `input[pos..]`. Returns where the
    /// input continues after the event, or `None` if it was all consumed.
    fn extend_carry(
        &mut self,
        input: &[u8],
        from: usize,
        on_event: &mut impl Sink,
    ) -> Option<usize> {
        let State::Carry {
            start,
            mut len,
            mut at_line_start,
            mut truncated,
        } = self.state
        else {
            return Some(from);
        };
        let cap = self.max_event;
        let mut pos = from;
        loop {
            let Some(i) = next_eol(&input[pos..]) else {
                truncated |= push_capped(&mut self.carry, &input[from..], cap);
                len += (input.len() - from) as u64;
                if pos < input.len() {
                    at_line_start = false;
                }
                self.state = State::Carry {
                    start,
                    len,
                    at_line_start,
                    truncated,
                };
                return None;
            };
            let eol = pos + i;
            let (next, cr_last) = after_eol(input, eol);
            self.pending_cr = cr_last;
            if i == 0 && at_line_start {
                // Blank line: the event is complete.
                truncated |= push_capped(&mut self.carry, &input[from..eol], cap);
                len += (next - from) as u64;
                if cr_last {
                    self.state = State::Ended {
                        start,
                        len,
                        truncated,
                    };
                    return None;
                }
                self.dispatch_carry(start, len, truncated, on_event);
                return Some(next);
            }
            at_line_start = true;
            pos = next;
        }
    }

    /// Parses and reports the event in `carry`; back to `Idle`.
    fn dispatch_carry(&mut self, start: u64, len: u64, truncated: bool, on_event: &mut impl Sink) {
        let fields = parse_raw(&self.carry, start == 0, &mut self.joined, self.max_event);
        // A truncated event is reported even if no field fit: whether it
        // had one is unknown, and the relay needs its range either way.
        if fields.is_event() || truncated {
            on_event.event(fields.into_event(&self.joined, start, start + len, truncated));
        }
        self.state = State::Idle;
        self.carry.clear();
        if self.carry.capacity() > KEEP_CAPACITY {
            self.carry = Vec::new();
        }
        self.release_joined();
    }

    fn release_joined(&mut self) {
        if self.joined.capacity() > KEEP_CAPACITY {
            self.joined = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;
