//! Per-request token accounting on the response path.
//!
//! The accountant looks at the payload the relay forwards: for streams it
//! runs the SSE scanner over it, reads the provider's `usage` and `[DONE]`
//! at once and keeps the generated text for later (`sse::deferred`: decoded
//! only if it is ever counted); for other responses it keeps the (bounded)
//! body to read `usage` at the end. When the provider's usage is missing
//! (cut stream, client gone, provider without usage) it counts the text
//! with the model's encoder and marks the numbers estimated.
//!
//! It also owns the one case where the relay does not forward bytes as
//! they are (`Rewrite`): when the gateway turned on
//! `stream_options.include_usage` for a client that did not ask, the
//! usage-only chunk is dropped; when the client asked and the provider sent
//! none, an estimated usage chunk is added before `[DONE]`. In that mode
//! whole events are forwarded as soon as they are complete; bytes of an
//! incomplete event wait for its end (an SSE client cannot act on them
//! before anyway).
//!
//! State lives outside the relay future, so when the client leaves and the
//! relay is dropped, what was produced so far is still billed.

use std::sync::Arc;

use crate::sse::deferred::{DeferredText, Taking};
use crate::sse::{Decoded, Event, Scanner, Usage};
use crate::text::Text;
use crate::tokens::Encoding;
use crate::usage::Source;

/// Carry-over cap for one SSE event split across reads.
const MAX_EVENT: usize = 1024 * 1024;
/// Non-streaming body kept to read `usage`.
const MAX_BODY: usize = 8 * 1024 * 1024;
/// Held bytes of an unfinished event put back in front of the next read's
/// payload: a partial event of a usual size. A larger one (a big tool
/// call in one event) stays aside until it completes, so a 1 MiB event in
/// small reads is not copied back and forth at every read.
const INLINE_PENDING: usize = 16 * 1024;

/// How the stream is changed on its way to the client.
struct Rewrite {
    /// Drop the usage-only chunk (the gateway asked for it, not the client).
    strip_usage: bool,
    /// Add an estimated usage chunk before `[DONE]` if none came.
    add_usage: bool,
    /// Payload not yet forwarded, starting at absolute offset `base`.
    pending: Vec<u8>,
    base: u64,
    /// Absolute offset up to which bytes were forwarded or dropped.
    done_to: u64,
}

/// What the accountant concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Prompt tokens and their source.
    pub prompt: (u64, Source),
    /// Completion tokens and their source.
    pub completion: (u64, Source),
}

/// The accountant of one request.
pub struct Accountant {
    enc: Option<Encoding>,
    stream: bool,
    prompt_estimate: Option<u64>,
    scanner: Option<Scanner>,
    text: DeferredText,
    usage: Option<Usage>,
    saw_done: bool,
    body: Vec<u8>,
    body_over: bool,
    rewrite: Option<Rewrite>,
    /// Completion tokens counted for an added usage chunk (the stream is
    /// over by then, so the tally reuses it instead of counting again).
    added_count: Option<u64>,
    /// Upstream status, once known.
    status: Option<u16>,
    /// For a synthesised usage chunk.
    chunk_object: &'static str,
    request_id: Text,
    served: Arc<str>,
}

impl Accountant {
    /// An accountant for a request.
    pub fn new(
        enc: Option<Encoding>,
        stream: bool,
        prompt_estimate: Option<u64>,
        chat: bool,
        request_id: Text,
        served: Arc<str>,
    ) -> Self {
        Accountant {
            enc,
            stream,
            prompt_estimate,
            scanner: None,
            text: DeferredText::default(),
            usage: None,
            saw_done: false,
            body: Vec::new(),
            body_over: false,
            rewrite: None,
            added_count: None,
            status: None,
            chunk_object: if chat {
                "chat.completion.chunk"
            } else {
                "text_completion"
            },
            request_id,
            served,
        }
    }

    /// A successful streaming response is being accounted.
    pub fn is_stream(&self) -> bool {
        self.scanner.is_some()
    }

    /// No SSE event is half-received: the client's stream is between
    /// events, so another event can follow cleanly.
    pub fn at_event_boundary(&self) -> bool {
        self.scanner.as_ref().is_none_or(Scanner::is_idle)
    }

    /// The prompt estimate made before forwarding.
    pub fn prompt_estimate(&self) -> Option<u64> {
        self.prompt_estimate
    }

    /// Called with the upstream status before any payload. `strip_usage`
    /// and `add_usage` come from the request plan; they only apply to a
    /// successful stream. Returns whether the stream will be rewritten.
    pub fn start(&mut self, status: u16, strip_usage: bool, add_usage: bool) -> bool {
        self.status = Some(status);
        let ok = (200..300).contains(&status);
        if self.stream && ok {
            self.scanner = Some(Scanner::new(MAX_EVENT));
            if strip_usage || add_usage {
                self.rewrite = Some(Rewrite {
                    strip_usage,
                    add_usage,
                    pending: Vec::new(),
                    base: 0,
                    done_to: 0,
                });
            }
        }
        self.rewrite.is_some()
    }

    /// Looks at the next payload bytes. With `fwd` (payload mode: the
    /// gateway writes what the client gets) the bytes to send are appended
    /// to it, rewritten in rewrite mode; without, they are only looked at
    /// (the relay forwards the upstream's bytes as they are).
    pub fn payload(&mut self, p: &[u8], fwd: Option<&mut Vec<u8>>) {
        match fwd {
            Some(out) => {
                let at = self.open_payload(out);
                out.extend_from_slice(p);
                self.close_payload(out, at);
            }
            None => self.look(p),
        }
    }

    /// Payload mode, in two steps around one upstream read: the relay
    /// appends the read's payload (chunk framing removed) to `out` after
    /// this call, then calls [`close_payload`](Self::close_payload) with
    /// the returned start. In rewrite mode the held bytes of an unfinished
    /// event are put in `out` first (up to [`INLINE_PENDING`]), so the
    /// events are one contiguous run there: scanned in one pass, dropped
    /// or added to in place, copied once.
    pub fn open_payload(&mut self, out: &mut Vec<u8>) -> usize {
        let at = out.len();
        if let Some(rw) = self
            .rewrite
            .as_mut()
            .filter(|rw| rw.pending.len() <= INLINE_PENDING)
        {
            out.extend_from_slice(&rw.pending);
            rw.pending.clear();
        }
        at
    }

    /// Payload mode, second step: `out[at..]` holds what
    /// [`open_payload`](Self::open_payload) put there followed by the
    /// read's payload. Looks at the payload and, in rewrite mode, leaves in
    /// `out` only what the client gets now: whole events, the usage chunk
    /// the gateway asked for dropped, an estimated one added before
    /// `[DONE]`; an unfinished event's bytes are held back for the next
    /// read.
    pub fn close_payload(&mut self, out: &mut Vec<u8>, at: usize) {
        let (Some(scanner), Some(rw)) = (self.scanner.as_mut(), self.rewrite.as_mut()) else {
            self.look(&out[at..]);
            return;
        };
        let text = &mut self.text;
        let usage = &mut self.usage;
        let saw_done = &mut self.saw_done;
        let added_count = &mut self.added_count;
        let enc = self.enc;
        let prompt = self.prompt_estimate.unwrap_or(0);
        let (rid, served, object) = (&*self.request_id, &*self.served, self.chunk_object);
        let Rewrite {
            strip_usage,
            add_usage,
            pending,
            base,
            done_to,
        } = rw;
        // Held bytes left aside by `open_payload` (a large event) are
        // still in `pending`; otherwise they are in `out`.
        let in_out = pending.is_empty();
        // With the held bytes in `out`, `out[at..]` starts at absolute
        // payload offset `base` (the first byte not sent yet) and the
        // read's own bytes where the scanner is; without, at the read.
        let new_from = if in_out {
            (at + scanner.offset().saturating_sub(*base) as usize).min(out.len())
        } else {
            at
        };
        // Dropped spans and added events, in stream order (usually none:
        // the usage chunk comes once, at the end).
        let mut edits: Vec<(u64, u64, Vec<u8>)> = Vec::new();
        let each = |text: &mut DeferredText, ev: Event<'_>| {
            let d = text.event(&ev);
            if *strip_usage && d.usage_only {
                edits.push((ev.start, ev.end, Vec::new()));
            } else if *add_usage && d.done && usage.is_none() {
                let ids = (rid, served, object);
                let added = estimate_event(text, enc, added_count, ids, prompt);
                edits.push((ev.start, ev.start, added));
            }
            note(&d, usage, saw_done);
        };
        scanner.feed_sink(&out[new_from..], Taking { text, each });
        // Everything before the event in progress goes out now: whole
        // events, and bytes that belong to no event (`: keep-alive`
        // comments, stray blank lines) instead of waiting for the next.
        *done_to = scanner.boundary();
        if !in_out {
            if *done_to == *base && pending.len() + (out.len() - at) <= MAX_EVENT {
                // The large event goes on: its new bytes join it aside.
                pending.extend_from_slice(&out[at..]);
                out.truncate(at);
                return;
            }
            // It ended (or outgrew the bound): once in front of the read.
            drop(out.splice(at..at, pending.drain(..)));
        }
        // Every offset below is at or after `base` and within what was
        // fed; clamped anyway, so a broken invariant cannot panic.
        let (from, len) = (*base, out.len());
        let idx = |abs: u64| (at + abs.saturating_sub(from) as usize).min(len);
        let sent_to = idx(*done_to);
        // An event larger than any real one (or a body that is not SSE):
        // stop holding bytes back and pass the rest through as it is (a
        // usage chunk may then reach a client that did not ask for it).
        let give_up = out.len() - sent_to > MAX_EVENT;
        if !give_up {
            pending.extend_from_slice(&out[sent_to..]);
            out.truncate(sent_to);
            *base = *done_to;
        }
        // From the back, so the offsets of earlier edits stay valid.
        for (start, end, add) in edits.into_iter().rev() {
            let end = idx(end).min(out.len());
            drop(out.splice(idx(start).min(end)..end, add));
        }
        if give_up {
            self.rewrite = None;
        }
    }

    /// A non-streamed answer's whole body, when the relay has all of it
    /// in one read (what a JSON answer usually is): its usage is read
    /// where it lies, and the payload that follows is not copied to be
    /// read at the end. A body without usage is still copied (the tally
    /// counts its text then).
    pub fn whole_body(&mut self, body: &[u8]) {
        if self.stream || self.usage.is_some() || !self.body.is_empty() {
            return;
        }
        self.usage = crate::usage::body::body_usage(body);
    }

    /// Looks at payload bytes that go to the client unchanged.
    fn look(&mut self, p: &[u8]) {
        let Some(scanner) = self.scanner.as_mut() else {
            // A body whose usage was read whole is not kept.
            if !self.stream && !self.body_over && self.usage.is_none() {
                if self.body.len() + p.len() > MAX_BODY {
                    self.body_over = true;
                    self.body = Vec::new();
                } else {
                    self.body.extend_from_slice(p);
                }
            }
            return;
        };
        let text = &mut self.text;
        let usage = &mut self.usage;
        let saw_done = &mut self.saw_done;
        let each = |text: &mut DeferredText, ev: Event<'_>| {
            let d = text.event(&ev);
            note(&d, usage, saw_done);
        };
        scanner.feed_sink(p, Taking { text, each });
    }

    /// End of the upstream body: dispatches a last unterminated event and,
    /// in rewrite mode, appends whatever is still pending to `fwd`.
    pub fn end(&mut self, fwd: Option<&mut Vec<u8>>) {
        let Some(scanner) = self.scanner.as_mut() else {
            return;
        };
        let text = &mut self.text;
        let usage = &mut self.usage;
        let saw_done = &mut self.saw_done;
        let rewrite = self.rewrite.as_ref();
        // The event `finish` dispatches (one not ended by a blank line) is
        // rewritten like any other: (drop it, add usage before it, start).
        let mut last = None;
        scanner.finish(|ev| {
            let d = text.event(&ev);
            if let Some(rw) = rewrite {
                let drop_it = rw.strip_usage && d.usage_only;
                let add_before = rw.add_usage && d.done && usage.is_none();
                last = Some((drop_it, add_before, ev.start));
            }
            note(&d, usage, saw_done);
        });
        let (Some(rw), Some(f)) = (self.rewrite.as_mut(), fwd) else {
            return;
        };
        let at = |abs: u64| (abs.saturating_sub(rw.base) as usize).min(rw.pending.len());
        match last {
            Some((true, _, start)) => f.extend_from_slice(&rw.pending[..at(start)]),
            Some((false, true, start)) => {
                f.extend_from_slice(&rw.pending[..at(start)]);
                let ids = (&*self.request_id, &*self.served, self.chunk_object);
                let prompt = self.prompt_estimate.unwrap_or(0);
                f.extend_from_slice(&estimate_event(
                    text,
                    self.enc,
                    &mut self.added_count,
                    ids,
                    prompt,
                ));
                f.extend_from_slice(&rw.pending[at(start)..]);
            }
            _ => f.extend_from_slice(&rw.pending),
        }
        rw.pending.clear();
    }

    /// The numbers for the usage record.
    pub fn tally(&mut self) -> Tally {
        let ok = self.status.is_some_and(|s| (200..300).contains(&s));
        if !ok {
            // The provider answered with an error (or never answered): it
            // bills nothing.
            return Tally {
                prompt: (0, Source::Provider),
                completion: (0, Source::Provider),
            };
        }
        let usage = if self.stream {
            self.usage
        } else {
            self.usage
                .or_else(|| crate::usage::body::body_usage(&self.body))
        };
        if let Some(u) = usage {
            return Tally {
                prompt: (u.prompt, Source::Provider),
                completion: (u.completion, Source::Provider),
            };
        }
        let completion = match (self.added_count, self.enc) {
            (Some(c), _) => c,
            (None, Some(e)) if self.stream => e.count(self.text.text()) as u64,
            (None, Some(e)) => body_text(&self.body).map_or(0, |t| e.count(&t) as u64),
            (None, None) => 0,
        };
        Tally {
            prompt: (self.prompt_estimate.unwrap_or(0), Source::Estimated),
            completion: (completion, Source::Estimated),
        }
    }
}

fn note(d: &Decoded, usage: &mut Option<Usage>, saw_done: &mut bool) {
    if let Some(u) = d.usage {
        *usage = Some(u);
    }
    if d.done {
        *saw_done = true;
    }
}

/// Counts the text so far as the completion (kept in `added`, so the tally
/// does not count again) and renders the usage chunk added for a client
/// that asked for usage the provider did not send. `ids`: request id,
/// served model, chunk object.
fn estimate_event(
    text: &mut DeferredText,
    enc: Option<Encoding>,
    added: &mut Option<u64>,
    (rid, served, object): (&str, &str, &str),
    prompt: u64,
) -> Vec<u8> {
    let completion = enc.map_or(0, |e| e.count(text.text()) as u64);
    *added = Some(completion);
    usage_event(rid, served, object, prompt, completion)
}

/// An SSE event with the gateway's usage estimate, shaped like the
/// provider's usage-only chunk.
fn usage_event(rid: &str, served: &str, object: &str, prompt: u64, completion: u64) -> Vec<u8> {
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let v = serde_json::json!({
        "id": rid,
        "object": object,
        "created": created,
        "model": served,
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
        "x_tollgate_usage_source": "estimated",
    });
    format!("data: {v}\n\n").into_bytes()
}

/// The generated text of a non-streaming response (message content,
/// refusal, tool-call arguments, legacy `text`), for estimation.
fn body_text(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let mut out = String::new();
    for c in v.get("choices")?.as_array()? {
        if let Some(t) = c.get("text").and_then(|t| t.as_str()) {
            out.push_str(t);
        }
        let Some(m) = c.get("message") else { continue };
        for k in ["content", "refusal"] {
            if let Some(t) = m.get(k).and_then(|t| t.as_str()) {
                out.push_str(t);
            }
        }
        if let Some(calls) = m.get("tool_calls").and_then(|t| t.as_array()) {
            for call in calls {
                if let Some(a) = call.pointer("/function/arguments").and_then(|a| a.as_str()) {
                    out.push_str(a);
                }
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chat accountant after a 200 head: streamed, or not.
    fn started(stream: bool, strip: bool, add: bool) -> Accountant {
        let mut a = Accountant::new(
            Some(Encoding::Cl100k),
            stream,
            Some(7),
            true,
            Text::new("rid"),
            Arc::from("m"),
        );
        assert_eq!(a.start(200, strip, add), stream && (strip || add));
        a
    }

    fn rewriting(strip: bool, add: bool) -> Accountant {
        started(true, strip, add)
    }

    fn answering() -> Accountant {
        started(false, false, false)
    }

    #[test]
    fn a_whole_body_is_read_where_it_lies_and_not_kept() {
        let body = br#"{"id":"x","choices":[{"message":{"content":"hello there"}}],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}"#;
        let mut a = answering();
        a.whole_body(body);
        a.payload(body, None);
        assert!(a.body.is_empty());
        assert_eq!(a.tally().completion, (3, Source::Provider));
        assert_eq!(a.tally().prompt, (7, Source::Provider));
        // The same body in two reads, not seen whole: kept, same answer.
        let mut a = answering();
        a.payload(&body[..40], None);
        a.payload(&body[40..], None);
        assert_eq!(a.body.len(), body.len());
        assert_eq!(a.tally().completion, (3, Source::Provider));
        // No usage in it: kept, and its text counted.
        let bare = br#"{"id":"x","choices":[{"message":{"content":"hello there"}}]}"#;
        let mut a = answering();
        a.whole_body(bare);
        a.payload(bare, None);
        assert_eq!(a.body.len(), bare.len());
        assert_eq!(a.tally().completion, (2, Source::Estimated));
    }

    const CHUNK: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" hi\"}}]}\n\n";
    const USAGE: &str =
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":1}}\n\n";

    #[test]
    fn heartbeats_pass_at_once_and_the_usage_chunk_is_dropped() {
        let mut a = rewriting(true, false);
        let mut out = Vec::new();
        a.payload(b": keep-alive\n\n", Some(&mut out));
        assert_eq!(out, b": keep-alive\n\n");
        out.clear();
        // An event split in two reads goes out whole once complete.
        let (x, y) = CHUNK.split_at(20);
        a.payload(x.as_bytes(), Some(&mut out));
        assert!(out.is_empty());
        a.payload(y.as_bytes(), Some(&mut out));
        assert_eq!(out, CHUNK.as_bytes());
        out.clear();
        a.payload(
            format!("{USAGE}data: [DONE]\n\n").as_bytes(),
            Some(&mut out),
        );
        assert_eq!(out, b"data: [DONE]\n\n");
        let t = a.tally();
        assert_eq!(t.completion, (1, Source::Provider));
    }

    #[test]
    fn missing_usage_is_added_before_done_when_asked() {
        let mut a = rewriting(false, true);
        let mut out = Vec::new();
        a.payload(
            format!("{CHUNK}data: [DONE]\n\n").as_bytes(),
            Some(&mut out),
        );
        let text = String::from_utf8(out).unwrap();
        let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.len(), 3, "{text}");
        let usage: serde_json::Value =
            serde_json::from_str(events[1].strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(usage["usage"]["completion_tokens"], 1);
        assert_eq!(usage["usage"]["prompt_tokens"], 7);
        assert_eq!(events[2], "data: [DONE]");
        assert_eq!(a.tally().completion, (1, Source::Estimated));
    }

    #[test]
    fn an_oversized_event_stops_the_hold_back() {
        let mut a = rewriting(true, false);
        let mut out = Vec::new();
        let big = vec![b'x'; MAX_EVENT + 10];
        a.payload(b"data: ", Some(&mut out));
        a.payload(&big, Some(&mut out));
        assert_eq!(out.len(), 6 + big.len(), "everything held was released");
        out.clear();
        a.payload(b"more", Some(&mut out));
        assert_eq!(out, b"more", "and later bytes pass straight through");
    }

    #[test]
    fn an_event_cut_off_by_the_end_of_the_body_is_rewritten_too() {
        // The usage chunk is the last event and no blank line ends it.
        let mut a = rewriting(true, false);
        let mut out = Vec::new();
        a.payload(CHUNK.as_bytes(), Some(&mut out));
        a.payload(USAGE.trim_end().as_bytes(), Some(&mut out));
        a.end(Some(&mut out));
        assert_eq!(out, CHUNK.as_bytes());
        assert_eq!(a.tally().completion, (1, Source::Provider));
        // `[DONE]` without its blank line still gets the estimate before it.
        let mut a = rewriting(false, true);
        let mut out = Vec::new();
        a.payload(format!("{CHUNK}data: [DONE]").as_bytes(), Some(&mut out));
        a.end(Some(&mut out));
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with(CHUNK), "{text}");
        assert!(text.contains("\"completion_tokens\":1"), "{text}");
        assert!(text.ends_with("}\n\ndata: [DONE]"), "{text}");
        assert_eq!(a.tally().completion, (1, Source::Estimated));
    }

    /// Feeds `bytes` in reads that end at `cuts` (any values: taken
    /// modulo the length, sorted), then ends the body; returns what the
    /// client got.
    fn feed_at(a: &mut Accountant, bytes: &[u8], cuts: Vec<usize>) -> Vec<u8> {
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let mut out = Vec::new();
        let mut from = 0;
        for c in cuts.into_iter().chain([bytes.len()]) {
            a.payload(&bytes[from..c.max(from)], Some(&mut out));
            from = c.max(from);
        }
        a.end(Some(&mut out));
        out
    }

    #[test]
    fn a_large_event_over_many_reads_goes_out_whole_once_complete() {
        // A 200 KB event (a big tool call sent at once) in 1 KB reads:
        // held aside, not copied back and forth at every read.
        let big = format!(
            "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{}\"}}}}]}}\n\n",
            "x".repeat(200_000)
        );
        let stream = format!("{CHUNK}{big}{CHUNK}{USAGE}data: [DONE]\n\n");
        let mut a = rewriting(true, false);
        let mut out = Vec::new();
        let mut sent = Vec::new();
        for (i, read) in stream.as_bytes().chunks(1000).enumerate() {
            out.clear();
            a.payload(read, Some(&mut out));
            // Nothing of the large event goes out before its end.
            let upto = stream.len().min((i + 1) * 1000);
            if upto < CHUNK.len() + big.len() {
                assert!(sent.len() + out.len() <= CHUNK.len(), "read {i}");
            }
            sent.extend_from_slice(&out);
        }
        out.clear();
        a.end(Some(&mut out));
        sent.extend_from_slice(&out);
        let want = format!("{CHUNK}{big}{CHUNK}data: [DONE]\n\n");
        assert!(
            sent == want.as_bytes(),
            "{} bytes, want {}",
            sent.len(),
            want.len()
        );
        assert_eq!(a.tally().completion, (1, Source::Provider));
    }

    proptest::proptest! {
        /// Wherever the reads split the stream, the client gets the same
        /// bytes: every event but the usage chunk, whole and in order,
        /// and the accountant the provider's usage.
        #[test]
        fn rewriting_does_not_depend_on_read_boundaries(
            cuts in proptest::collection::vec(0usize..400, 0..12),
            events in 1usize..6,
        ) {
            let mut stream = String::from(": keep-alive\n\n");
            for _ in 0..events {
                stream += CHUNK;
            }
            let kept = stream.clone() + "data: [DONE]\n\n";
            stream += USAGE;
            stream += "data: [DONE]\n\n";
            let mut a = rewriting(true, false);
            let out = feed_at(&mut a, stream.as_bytes(), cuts);
            proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), kept);
            proptest::prop_assert_eq!(a.tally().completion, (1, Source::Provider));
        }

        /// The same for an added usage chunk: a client that asked for
        /// usage the provider did not send gets the estimate right before
        /// `[DONE]`, whatever the reads, the events around it untouched.
        #[test]
        fn an_added_usage_chunk_does_not_depend_on_read_boundaries(
            cuts in proptest::collection::vec(0usize..400, 0..12),
            events in 1usize..6,
        ) {
            let mut stream = String::from(": keep-alive\n\n");
            for _ in 0..events {
                stream += CHUNK;
            }
            let before = stream.clone();
            stream += "data: [DONE]\n\n";
            let mut a = rewriting(false, true);
            let out = String::from_utf8(feed_at(&mut a, stream.as_bytes(), cuts)).unwrap();
            let added = out
                .strip_prefix(before.as_str())
                .and_then(|rest| rest.strip_suffix("data: [DONE]\n\n"));
            proptest::prop_assert!(added.is_some(), "{}", out);
            let added = added.unwrap_or_default();
            let v: serde_json::Value = serde_json::from_str(
                added.trim_end().strip_prefix("data: ").unwrap_or_default(),
            )
            .unwrap_or_default();
            proptest::prop_assert_eq!(&v["usage"]["completion_tokens"], events as u64);
            proptest::prop_assert_eq!(&v["usage"]["prompt_tokens"], 7);
            proptest::prop_assert_eq!(a.tally().completion, (events as u64, Source::Estimated));
        }
    }
}
