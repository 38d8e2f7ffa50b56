//! SSE frame scanner. (Contract; implementation in progress.)
//!
//! Fed the response *payload* (chunked framing already removed) in pieces
//! split anywhere; reports every complete event with its absolute byte
//! range in the payload stream so a relay can forward, hold or drop whole
//! events.

use std::borrow::Cow;

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
    pub oversize: bool,
}

/// The scanner state for one response.
#[derive(Debug)]
pub struct Scanner {
    _private: (),
}

impl Scanner {
    /// A scanner keeping at most `max_event` bytes of one split event.
    pub fn new(max_event: usize) -> Self {
        let _ = max_event;
        Scanner { _private: () }
    }

    /// Feeds the next payload bytes; `on_event` sees each event completed
    /// by them, in order. Events with no `data` field are still reported
    /// (with empty data) only if they have an `event:` field; pure comment
    /// blocks are not events.
    pub fn feed(&mut self, input: &[u8], on_event: impl FnMut(Event<'_>)) {
        let _ = (input, on_event);
    }

    /// End of stream: dispatches an unterminated last event, if any.
    pub fn finish(&mut self, on_event: impl FnMut(Event<'_>)) {
        let _ = on_event;
    }

    /// Total payload bytes fed so far.
    pub fn offset(&self) -> u64 {
        0
    }
}
