//! Incremental HTTP/1.1 response reader for the load generator.
//!
//! A fast answer that is wrong must not count as fast: the reader follows
//! the framing to its exact end (Content-Length, chunked, or close), counts
//! the SSE events of a stream and notices whether `data: [DONE]` closed it,
//! so a cut stream or a short body is an error, not a throughput gain.
//! It is fed whatever each read returned, split anywhere.

use tollgate::http::chunked::ChunkedDecoder;

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// Why a response could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    /// The head did not parse or was too large.
    Head,
    /// The chunked framing was invalid.
    Chunked,
    /// The peer closed before the framing ended.
    Truncated,
    /// Bytes arrived after the response while none was asked for.
    Extra,
}

/// What a finished response looked like.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// HTTP status.
    pub status: u16,
    /// Whether the connection may be reused.
    pub keep_alive: bool,
    /// Body bytes after de-chunking.
    pub body_len: u64,
    /// SSE events (blocks ended by a blank line) in the body.
    pub events: u32,
    /// The last event was `data: [DONE]`.
    pub done: bool,
    /// The marker string was seen in the body.
    pub marker: bool,
}

#[derive(Debug)]
enum Framing {
    Length(u64),
    Chunked(ChunkedDecoder),
    Close,
}

#[derive(Debug)]
enum State {
    Head(Vec<u8>),
    Body(Framing),
    Finished,
}

/// One response being read.
#[derive(Debug)]
pub struct Reader<'m> {
    state: State,
    out: Outcome,
    sse: Events,
    marker: &'m [u8],
    /// The last `marker.len() - 1` body bytes, for a marker split by reads.
    carry: Vec<u8>,
}

/// Counts SSE events in a byte stream split anywhere.
#[derive(Debug, Default)]
struct Events {
    /// Bytes of the current line other than CR.
    line: usize,
    /// The current event has at least one non-empty line.
    open: bool,
    /// The last 14 payload bytes (enough for `data: [DONE]\n\n`).
    tail: Vec<u8>,
    count: u32,
}

impl Events {
    fn feed(&mut self, data: &[u8]) {
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', data) {
            self.line += data[start..nl].iter().filter(|&&b| b != b'\r').count();
            if self.line == 0 {
                if self.open {
                    self.count += 1;
                    self.open = false;
                }
            } else {
                self.open = true;
            }
            self.line = 0;
            start = nl + 1;
        }
        self.line += data[start..].iter().filter(|&&b| b != b'\r').count();
        self.tail
            .extend_from_slice(&data[data.len().saturating_sub(16)..]);
        let cut = self.tail.len().saturating_sub(16);
        self.tail.drain(..cut);
    }

    fn done(&self) -> bool {
        let t: Vec<u8> = self.tail.iter().copied().filter(|&b| b != b'\r').collect();
        t.ends_with(b"data: [DONE]\n\n") || t.ends_with(b"data:[DONE]\n\n")
    }
}

/// What one `feed` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// The response is not finished.
    More,
    /// The response is finished (and the input held nothing after it).
    Done(Outcome),
}

impl<'m> Reader<'m> {
    /// A reader for one response; `marker` is searched in the body when
    /// not empty.
    pub fn new(marker: &'m [u8]) -> Self {
        Reader {
            state: State::Head(Vec::with_capacity(512)),
            out: Outcome::default(),
            sse: Events::default(),
            marker,
            carry: Vec::new(),
        }
    }

    /// True once the first byte of the response arrived.
    pub fn started(&self) -> bool {
        !matches!(&self.state, State::Head(h) if h.is_empty())
    }

    /// Feeds the bytes of one read.
    pub fn feed(&mut self, data: &[u8]) -> Result<Step, Bad> {
        let body = match &mut self.state {
            State::Finished => return Err(Bad::Extra),
            State::Body(_) => data,
            State::Head(h) => {
                let before = h.len();
                h.extend_from_slice(data);
                let mut headers = [httparse::EMPTY_HEADER; 64];
                let mut resp = httparse::Response::new(&mut headers);
                let len = match resp.parse(h) {
                    Ok(httparse::Status::Complete(n)) => n,
                    Ok(httparse::Status::Partial) if h.len() <= MAX_HEAD => return Ok(Step::More),
                    _ => return Err(Bad::Head),
                };
                let status = resp.code.unwrap_or(0);
                let http11 = resp.version == Some(1);
                let mut keep_alive = http11;
                let mut framing = Framing::Close;
                let mut length = None;
                for hd in resp.headers.iter() {
                    let v = hd.value;
                    if hd.name.eq_ignore_ascii_case("content-length") {
                        let n = std::str::from_utf8(v)
                            .ok()
                            .and_then(|s| s.trim().parse::<u64>().ok())
                            .ok_or(Bad::Head)?;
                        length = Some(n);
                    } else if hd.name.eq_ignore_ascii_case("transfer-encoding") {
                        if v.eq_ignore_ascii_case(b"chunked") {
                            framing = Framing::Chunked(ChunkedDecoder::new());
                        }
                    } else if hd.name.eq_ignore_ascii_case("connection") {
                        if v.eq_ignore_ascii_case(b"close") {
                            keep_alive = false;
                        } else if v.eq_ignore_ascii_case(b"keep-alive") {
                            keep_alive = true;
                        }
                    }
                }
                if let (Framing::Close, Some(n)) = (&framing, length) {
                    framing = Framing::Length(n);
                }
                if status == 204 || status == 304 || (100..200).contains(&status) {
                    framing = Framing::Length(0);
                }
                if matches!(framing, Framing::Close) {
                    keep_alive = false;
                }
                self.out.status = status;
                self.out.keep_alive = keep_alive;
                self.state = State::Body(framing);
                // Bytes of this read past the head are body.
                &data[len.saturating_sub(before)..]
            }
        };
        self.body(body)
    }

    fn body(&mut self, data: &[u8]) -> Result<Step, Bad> {
        let State::Body(framing) = &mut self.state else {
            return Err(Bad::Extra);
        };
        let (payload_end, finished) = match framing {
            Framing::Length(left) => {
                let take = (*left).min(data.len() as u64) as usize;
                *left -= take as u64;
                if take < data.len() {
                    return Err(Bad::Extra);
                }
                let fin = *left == 0;
                let (sse, out, carry, marker) =
                    (&mut self.sse, &mut self.out, &mut self.carry, self.marker);
                payload(sse, out, carry, marker, &data[..take]);
                (take, fin)
            }
            Framing::Close => {
                let (sse, out, carry, marker) =
                    (&mut self.sse, &mut self.out, &mut self.carry, self.marker);
                payload(sse, out, carry, marker, data);
                (data.len(), false)
            }
            Framing::Chunked(dec) => {
                let (sse, out, carry, marker) =
                    (&mut self.sse, &mut self.out, &mut self.carry, self.marker);
                let used = dec
                    .feed(data, |d| payload(sse, out, carry, marker, d))
                    .map_err(|_| Bad::Chunked)?;
                (used, dec.is_done())
            }
        };
        if payload_end < data.len() {
            return Err(Bad::Extra);
        }
        if finished {
            return Ok(Step::Done(self.finish()));
        }
        Ok(Step::More)
    }

    /// The peer closed the connection: ends a close-delimited body, or
    /// reports a truncated one.
    pub fn eof(&mut self) -> Result<Outcome, Bad> {
        match &self.state {
            State::Body(Framing::Close) => {
                self.out.keep_alive = false;
                Ok(self.finish())
            }
            _ => Err(Bad::Truncated),
        }
    }

    fn finish(&mut self) -> Outcome {
        self.state = State::Finished;
        self.out.events = self.sse.count;
        self.out.done = self.sse.done();
        std::mem::take(&mut self.out)
    }
}

fn payload(sse: &mut Events, out: &mut Outcome, carry: &mut Vec<u8>, marker: &[u8], d: &[u8]) {
    out.body_len += d.len() as u64;
    sse.feed(d);
    if marker.is_empty() || out.marker {
        return;
    }
    if memchr::memmem::find(d, marker).is_some() {
        out.marker = true;
        return;
    }
    carry.extend_from_slice(&d[..d.len().min(marker.len())]);
    if memchr::memmem::find(carry, marker).is_some() {
        out.marker = true;
    }
    let keep = marker.len().saturating_sub(1);
    let tail = &d[d.len().saturating_sub(keep)..];
    carry.clear();
    carry.extend_from_slice(tail);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sse_response(events: &[&str]) -> Vec<u8> {
        let mut out = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        for e in events {
            let p = format!("data: {e}\n\n");
            out.extend_from_slice(format!("{:x}\r\n{p}\r\n", p.len()).as_bytes());
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }

    /// Feeds `bytes` split at every pair of cut points; all splits must
    /// give the same outcome.
    fn read_all_splits(bytes: &[u8], marker: &[u8]) -> Outcome {
        let whole = {
            let mut r = Reader::new(marker);
            match r.feed(bytes) {
                Ok(Step::Done(o)) => o,
                other => panic!("whole: {other:?}"),
            }
        };
        for a in 0..bytes.len() {
            for b in (a..bytes.len()).step_by(7) {
                let mut r = Reader::new(marker);
                let mut got = None;
                for part in [&bytes[..a], &bytes[a..b], &bytes[b..]] {
                    if part.is_empty() {
                        continue;
                    }
                    assert!(got.is_none(), "bytes after the end at split {a}/{b}");
                    if let Step::Done(o) = r.feed(part).unwrap() {
                        got = Some(o);
                    }
                }
                assert_eq!(got.as_ref(), Some(&whole), "split {a}/{b}");
            }
        }
        whole
    }

    #[test]
    fn counts_sse_events_and_done_across_any_split() {
        let bytes = sse_response(&["{\"a\":1}", "{\"b\":2}", "[DONE]"]);
        let o = read_all_splits(&bytes, b"\"b\"");
        assert_eq!(o.status, 200);
        assert_eq!(o.events, 3);
        assert!(o.done);
        assert!(o.marker);
        assert!(o.keep_alive);
    }

    #[test]
    fn stream_without_done_is_seen() {
        let o = read_all_splits(&sse_response(&["{}", "{}"]), b"");
        assert_eq!(o.events, 2);
        assert!(!o.done);
        assert!(!o.marker);
    }

    #[test]
    fn crlf_events_count() {
        let body = b"data: x\r\n\r\ndata: [DONE]\r\n\r\n";
        let mut out =
            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
        out.extend_from_slice(body);
        let o = read_all_splits(&out, b"");
        assert_eq!((o.events, o.done, o.body_len), (2, true, body.len() as u64));
    }

    #[test]
    fn content_length_body_and_connection_close() {
        let bytes = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
        let o = read_all_splits(bytes, b"ell");
        assert_eq!(
            (o.status, o.keep_alive, o.body_len, o.marker),
            (503, false, 5, true)
        );
    }

    #[test]
    fn short_chunked_body_is_truncated_at_eof() {
        let bytes = sse_response(&["{}", "[DONE]"]);
        let mut r = Reader::new(b"");
        assert_eq!(r.feed(&bytes[..bytes.len() - 3]), Ok(Step::More));
        assert_eq!(r.eof(), Err(Bad::Truncated));
    }

    #[test]
    fn close_delimited_body_ends_at_eof() {
        let mut r = Reader::new(b"");
        assert!(!r.started());
        assert_eq!(r.feed(b"HTTP/1.1 200 OK\r\n\r\nabc"), Ok(Step::More));
        assert!(r.started());
        let o = r.eof().unwrap();
        assert_eq!((o.body_len, o.keep_alive), (3, false));
    }

    #[test]
    fn bytes_after_the_response_are_an_error() {
        let mut r = Reader::new(b"");
        assert_eq!(
            r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxy"),
            Err(Bad::Extra)
        );
        let mut r = Reader::new(b"");
        assert_eq!(r.feed(b"nonsense\r\n\r\n"), Err(Bad::Head));
    }
}
