use std::borrow::Cow;

use super::*;

/// An event with owned fields, for comparing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Ev {
    pub start: u64,
    pub end: u64,
    pub event: Option<String>,
    pub data: String,
    pub id: Option<String>,
    pub oversize: bool,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl From<Event<'_>> for Ev {
    fn from(e: Event<'_>) -> Self {
        Ev {
            start: e.start,
            end: e.end,
            event: e.event.as_deref().map(text),
            data: text(&e.data),
            id: e.id.as_deref().map(text),
            oversize: e.oversize,
        }
    }
}

/// Feeds `parts` in order, then `finish`.
pub(super) fn scan_parts(parts: &[&[u8]], cap: usize) -> Vec<Ev> {
    let mut s = Scanner::new(cap);
    let mut out = Vec::new();
    let mut fed = 0u64;
    for p in parts {
        s.feed(p, |e| out.push(Ev::from(e)));
        fed += p.len() as u64;
        assert_eq!(s.offset(), fed);
    }
    s.finish(|e| out.push(Ev::from(e)));
    out
}

fn scan(stream: &[u8]) -> Vec<Ev> {
    scan_parts(&[stream], 1 << 20)
}

/// Every split into two feeds and one byte per feed give `scan(stream)`.
fn assert_split_invariant(stream: &[u8]) -> Vec<Ev> {
    let whole = scan(stream);
    for cut in 0..=stream.len() {
        let (a, b) = stream.split_at(cut);
        assert_eq!(scan_parts(&[a, b], 1 << 20), whole, "cut at {cut}");
    }
    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(scan_parts(&bytes, 1 << 20), whole, "one byte per feed");
    whole
}

fn ev(start: u64, end: u64, data: &str) -> Ev {
    Ev {
        start,
        end,
        event: None,
        data: data.into(),
        id: None,
        oversize: false,
    }
}

fn datas(events: &[Ev]) -> Vec<&str> {
    events.iter().map(|e| e.data.as_str()).collect()
}

#[test]
fn lf_events_with_offsets() {
    let s = b"data: a\n\ndata: bc\n\n";
    assert_eq!(
        assert_split_invariant(s),
        vec![ev(0, 9, "a"), ev(9, s.len() as u64, "bc")]
    );
}

#[test]
fn crlf_and_cr_line_endings() {
    assert_eq!(
        assert_split_invariant(b"data: a\r\n\r\ndata: b\r\r"),
        vec![ev(0, 11, "a"), ev(11, 20, "b")]
    );
}

#[test]
fn mixed_line_endings_in_one_event() {
    // CR, LF and CRLF inside one event; a CR followed by LF is one line
    // ending, a CR followed by CR is two (the second one blank).
    let s = b"data: 1\rdata: 2\ndata: 3\r\ndata: 4\n\r\n";
    assert_eq!(
        assert_split_invariant(s),
        vec![ev(0, s.len() as u64, "1\n2\n3\n4")]
    );
    let s = b"data: x\r\rdata: y\n\r";
    assert_eq!(
        assert_split_invariant(s),
        vec![ev(0, 9, "x"), ev(9, s.len() as u64, "y")]
    );
}

#[test]
fn cr_split_across_feeds_is_one_line_ending() {
    // "\r" | "\n": the LF must not count as a blank line.
    let got = scan_parts(&[b"data: a\r", b"\ndata: b\r\n\r", b"\n"], 1024);
    assert_eq!(
        got,
        vec![ev(0, s_len(b"data: a\r\ndata: b\r\n\r\n"), "a\nb")]
    );
    // Blank line's CR last in a feed: the event waits for the next byte,
    // and its end covers the LF.
    let mut s = Scanner::new(1024);
    let mut out = Vec::new();
    s.feed(b"data: a\r\n\r", |e| out.push(Ev::from(e)));
    assert!(out.is_empty(), "held until the next byte");
    assert!(!s.is_idle());
    s.feed(b"\ndata: b\n\n", |e| out.push(Ev::from(e)));
    assert_eq!(out, vec![ev(0, 11, "a"), ev(11, 20, "b")]);
    // Not an LF: the event ends at the CR.
    let got = scan_parts(&[b"data: a\r\r", b"data: b\r\r"], 1024);
    assert_eq!(got, vec![ev(0, 9, "a"), ev(9, 18, "b")]);
    // The held event is dispatched by finish, too.
    let got = scan_parts(&[b"data: a\r\r"], 1024);
    assert_eq!(got, vec![ev(0, 9, "a")]);
}

fn s_len(s: &[u8]) -> u64 {
    s.len() as u64
}

#[test]
fn comments_are_not_events_but_belong_to_the_next_one() {
    let s = b": keep-alive\n\n: hello\ndata: x\n\n:\n\n";
    let got = assert_split_invariant(s);
    // The comment-only block (0..14) is no event; the comment line that
    // starts the next block is part of it.
    assert_eq!(got, vec![ev(14, 31, "x")]);
}

#[test]
fn data_without_space_and_space_rules() {
    let s = b"data:a\n\ndata:  two\n\ndata\n\ndata:\n\n";
    let got = assert_split_invariant(s);
    // One leading space removed, not two; `data` alone is an empty value.
    assert_eq!(datas(&got), vec!["a", " two", "", ""]);
}

#[test]
fn multi_line_data_joined_with_lf() {
    let s = b"data: {\"a\":\ndata:  1}\ndata:\ndata: end\n\n";
    let got = assert_split_invariant(s);
    assert_eq!(datas(&got), vec!["{\"a\":\n 1}\n\nend"]);
}

#[test]
fn event_and_id_fields_last_wins() {
    let s = b"event: first\nid: 1\nevent: second\nid: 2\nretry: 1000\nfoo: bar\ndata: d\n\n";
    let got = assert_split_invariant(s);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].event.as_deref(), Some("second"));
    assert_eq!(got[0].id.as_deref(), Some("2"));
    assert_eq!(got[0].data, "d");
}

#[test]
fn id_with_nul_is_ignored() {
    let got = scan(b"id: 7\nid: a\0b\ndata: d\n\n");
    assert_eq!(got[0].id.as_deref(), Some("7"));
}

#[test]
fn event_without_data_is_reported_other_fieldless_blocks_are_not() {
    let s = b"event: ping\n\nid: 3\n\nretry: 10\n\n\n\n\r\ndata: x\n\n";
    let got = assert_split_invariant(s);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].event.as_deref(), Some("ping"));
    assert_eq!(got[0].data, "");
    assert_eq!((got[0].start, got[0].end), (0, 13));
    assert_eq!(got[1].data, "x");
    // Stray blank lines before it are not part of it.
    assert_eq!(got[1].start, s.len() as u64 - 9);
}

#[test]
fn field_names_are_case_sensitive_and_exact() {
    let got = scan(b"Data: no\ndata : no\n data: no\ndata: yes\n\n");
    assert_eq!(datas(&got), vec!["yes"]);
}

#[test]
fn unterminated_last_event_dispatched_by_finish() {
    let s = b"data: a\n\ndata: b\ndata: c";
    let got = assert_split_invariant(s);
    assert_eq!(got, vec![ev(0, 9, "a"), ev(9, s.len() as u64, "b\nc")]);
    // Ending with a line ending but no blank line.
    let got = assert_split_invariant(b"data: a\r\n");
    assert_eq!(got, vec![ev(0, 9, "a")]);
    // Nothing pending: finish reports nothing.
    assert!(assert_split_invariant(b"data: a\n\n\n").len() == 1);
}

#[test]
fn leading_bom_is_skipped_only_at_stream_start() {
    let s = b"\xEF\xBB\xBFdata: a\n\n\xEF\xBB\xBFdata: b\n\n";
    let got = assert_split_invariant(s);
    assert_eq!(datas(&got), vec!["a"]);
    assert_eq!(got[0].start, 0);
}

#[test]
fn event_inside_one_feed_is_borrowed() {
    let input = b"event: e\ndata: {\"x\":1}\nid: 9\n\ndata: a\ndata: b\n\n";
    let range = input.as_ptr_range();
    let mut s = Scanner::new(16);
    let mut n = 0;
    s.feed(input, |e| {
        n += 1;
        if n == 1 {
            // Single-line data, event and id point into the input itself,
            // even though the event is larger than the cap.
            let Cow::Borrowed(d) = e.data else {
                panic!("data copied")
            };
            assert!(range.contains(&d.as_ptr()));
            assert_eq!(d, b"{\"x\":1}");
            assert!(matches!(e.event, Some(Cow::Borrowed(b"e"))));
            assert!(matches!(e.id, Some(Cow::Borrowed(b"9"))));
            assert!(!e.oversize);
        } else {
            // Multi-line data is joined (in the scanner's buffer).
            assert_eq!(&*e.data, b"a\nb");
        }
    });
    assert_eq!(n, 2);
}

#[test]
fn split_event_is_carried_and_complete() {
    let got = scan_parts(
        &[b"data: {\"content\":\"hel", b"lo\"}\n", b"\ndata: x\n\n"],
        64,
    );
    assert_eq!(got[0].data, "{\"content\":\"hello\"}");
    assert!(!got[0].oversize);
    assert_eq!((got[0].start, got[0].end), (0, 27));
    assert_eq!(got[1], ev(27, 36, "x"));
}

#[test]
fn oversize_event_then_normal_event() {
    // A 5000-byte data line split across feeds with a 100-byte cap: it is
    // reported truncated and marked, and the next event is intact.
    let big = "x".repeat(5000);
    let stream = format!("data: {big}\n\ndata: after\n\n");
    let bytes = stream.as_bytes();
    let parts: Vec<&[u8]> = bytes.chunks(700).collect();
    let got = scan_parts(&parts, 100);
    assert_eq!(got.len(), 2);
    assert!(got[0].oversize);
    assert!(big.starts_with(&got[0].data), "a prefix of the real data");
    assert_eq!(got[0].data.len(), 100 - "data: ".len());
    assert_eq!((got[0].start, got[0].end), (0, 5008));
    assert_eq!(got[1], ev(5008, bytes.len() as u64, "after"));
    // Also when the cut lands inside the blank line, and one byte a feed.
    let parts: Vec<&[u8]> = bytes.chunks(1).collect();
    let one = scan_parts(&parts, 100);
    assert_eq!(one, got);
    let mut s = Scanner::new(100);
    s.feed(&bytes[..300], |_| panic!("nothing complete yet"));
    assert!(s.carry.len() <= 100 && s.carry.capacity() <= 100);
}

#[test]
fn oversize_multi_line_join_inside_one_feed() {
    let stream = b"data: 0123456789\ndata: 0123456789\n\ndata: ok\n\n";
    let got = scan_parts(&[stream], 12);
    assert!(got[0].oversize);
    assert_eq!(got[0].data, "0123456789\n0");
    assert_eq!(got[1], ev(35, 45, "ok"));
}

#[test]
fn oversize_events_are_reported_even_when_no_field_fit() {
    // Whether the event had a data field is unknowable, so it is reported.
    for cap in [0, 3] {
        let got = scan_parts(&[b"data: a", b"b\n\ndata: c\n\n"], cap);
        assert_eq!(got.len(), 2);
        assert!(got[0].oversize);
        assert_eq!(got[0].data, "");
        assert_eq!((got[0].start, got[0].end), (0, 10));
        assert_eq!(got[1], ev(10, 19, "c"));
    }
}

#[test]
fn empty_feeds_change_nothing() {
    let got = scan_parts(&[b"", b"data: a\r", b"", b"\n\r", b"", b"\n"], 1024);
    assert_eq!(got, vec![ev(0, 11, "a")]);
}

#[test]
fn every_split_of_a_mixed_stream() {
    let s: &[u8] = b"\xEF\xBB\xBF: hi\r\nevent: a\rdata:1\r\n\r\nid: 2\ndata: x\ndata:  y\r\r\
        \n\n: c\n\nevent: only\n\ndata: [DONE]\n\ndata: tail\r";
    let whole = assert_split_invariant(s);
    assert_eq!(datas(&whole), vec!["1", "x\n y", "", "[DONE]", "tail"]);
    // Every pair of cut points, too.
    for a in 0..=s.len() {
        for b in a..=s.len() {
            let got = scan_parts(&[&s[..a], &s[a..b], &s[b..]], 1 << 20);
            assert_eq!(got, whole, "cuts at {a}, {b}");
        }
    }
}
