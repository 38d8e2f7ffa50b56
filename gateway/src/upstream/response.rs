//! Upstream response heads: parsing, framing (RFC 9112 §6.3) and the head
//! the client receives.

use std::ops::Range;

use crate::error::{Error, Kind};
use crate::http::headers::{drop_downstream, forward_lines, has_token, names, trim};
use crate::http::response::{header, push_u64};

/// How the upstream delimits its response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (204, 304, 1xx, or a response to HEAD).
    Empty,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the upstream closes.
    Close,
}

/// A parsed upstream head; ranges index the buffer it came from.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    /// Status code.
    pub status: u16,
    /// Reason phrase range.
    pub reason: Range<usize>,
    /// Head length including the blank line.
    pub len: usize,
    /// Body framing.
    pub framing: Framing,
    /// The upstream keeps the connection open afterwards.
    pub keep_alive: bool,
    /// Header (name, value) ranges.
    pub headers: Vec<(Range<usize>, Range<usize>)>,
    /// Value of `Connection`, if any.
    pub connection: Option<Range<usize>>,
}

/// Parses a response head; `Ok(None)` means more bytes are needed.
pub fn parse(buf: &[u8]) -> Result<Option<ResponseHead>, Error> {
    // Left uninitialised: httparse writes only the slots it fills.
    let mut raw = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; 128];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut raw)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => {
            return Err(Error::msg(
                Kind::UpstreamProtocol,
                format!("upstream sent an invalid response head: {e}"),
            ));
        }
    };
    let base = buf.as_ptr() as usize;
    let off = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        start..start + s.len()
    };
    let status = resp.code.unwrap_or(0);
    if status == 101 {
        // Nothing the gateway sends asks for an upgrade; a 101 would turn
        // the connection into another protocol.
        return Err(Error::new(
            Kind::UpstreamProtocol,
            "upstream switched protocols (101) unasked",
        ));
    }
    let reason = resp.reason.map(|r| off(r.as_bytes())).unwrap_or(0..0);
    let minor = resp.version.unwrap_or(1);
    let mut headers = Vec::with_capacity(resp.headers.len());
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut connection = None;
    let mut close = minor == 0;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        let value = trim(h.value);
        headers.push((off(name), off(value)));
        if names::CONTENT_LENGTH.is(name) {
            let n = std::str::from_utf8(value)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| {
                    Error::new(
                        Kind::UpstreamProtocol,
                        "upstream sent an invalid Content-Length",
                    )
                })?;
            if length.is_some_and(|l| l != n) {
                return Err(Error::new(
                    Kind::UpstreamProtocol,
                    "upstream sent conflicting Content-Length",
                ));
            }
            length = Some(n);
        } else if names::TRANSFER_ENCODING.is(name) {
            // Only a lone `chunked` is relayed: another coding (gzip,
            // chunked) would reach the client as undeclared compressed
            // bytes, and the gateway asks for identity anyway.
            if !value.eq_ignore_ascii_case(b"chunked") {
                return Err(Error::new(
                    Kind::UpstreamProtocol,
                    "upstream used a transfer coding other than chunked",
                ));
            }
            chunked = true;
        } else if names::CONNECTION.is(name) {
            connection = Some(off(value));
            if has_token(value, b"close") {
                close = true;
            } else if minor == 0 && has_token(value, b"keep-alive") {
                close = false;
            }
        }
    }
    let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if close && length.is_none() {
        Framing::Close
    } else {
        match length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    };
    Ok(Some(ResponseHead {
        status,
        reason,
        len,
        framing,
        keep_alive: !close && framing != Framing::Close,
        headers,
        connection,
    }))
}

/// How the client receives the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFraming {
    /// Bytes as the upstream framed them (length or chunked).
    Passthrough,
    /// Chunked upstream body decoded for an HTTP/1.0 client; the
    /// connection closes at the end.
    Dechunk,
    /// Close-delimited; the connection closes at the end.
    Close,
    /// The gateway frames the (rewritten) payload in its own chunks.
    Rechunk,
}

/// Extra fields the gateway adds to a proxied response.
pub struct Added<'a> {
    /// Request id.
    pub request_id: &'a [u8],
    /// (name, value) headers of the gateway's own (attempts, route).
    pub route: &'a [(&'a [u8], &'a [u8])],
    /// More (name, value) headers (the limits' `x-ratelimit-*`).
    pub extra: &'a [(&'static [u8], Vec<u8>)],
    /// The client connection ends after this response.
    pub close: bool,
    /// The body will be rewritten: drop the upstream length/framing.
    pub rechunk: bool,
}

/// Writes the client's response head; returns how the body is framed.
pub fn client_head(
    out: &mut Vec<u8>,
    buf: &[u8],
    head: &ResponseHead,
    client_minor: u8,
    added: &Added<'_>,
) -> ClientFraming {
    let framing = match (head.framing, client_minor, added.rechunk) {
        (Framing::Empty, _, _) => ClientFraming::Passthrough,
        (_, 0, true) | (Framing::Chunked, 0, false) => ClientFraming::Dechunk,
        (_, _, true) => ClientFraming::Rechunk,
        (Framing::Close, _, false) => ClientFraming::Close,
        _ => ClientFraming::Passthrough,
    };
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, u64::from(head.status));
    out.push(b' ');
    let reason = &buf[head.reason.clone()];
    if reason.is_empty() {
        out.extend_from_slice(crate::http::response::reason(head.status).as_bytes());
    } else {
        out.extend_from_slice(reason);
    }
    out.extend_from_slice(b"\r\n");
    let connection = head.connection.clone().map_or(&[][..], |r| &buf[r]);
    forward_lines(out, buf, &head.headers, head.len, |name| {
        drop_downstream(name, connection)
    });
    match (head.framing, framing) {
        (_, ClientFraming::Rechunk) => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        (Framing::Length(n), ClientFraming::Passthrough) => {
            out.extend_from_slice(b"content-length: ");
            push_u64(out, n);
            out.extend_from_slice(b"\r\n");
        }
        (Framing::Empty, _) if head.status >= 200 && head.status != 204 && head.status != 304 => {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        (Framing::Chunked, ClientFraming::Passthrough) => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        _ => {}
    }
    header(out, b"x-request-id", added.request_id);
    for (n, v) in added.route {
        header(out, n, v);
    }
    for (n, v) in added.extra {
        header(out, n, v);
    }
    if added.close || matches!(framing, ClientFraming::Dechunk | ClientFraming::Close) {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    framing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing() {
        let p = |s: &str| parse(s.as_bytes()).unwrap().unwrap();
        assert_eq!(
            p("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n").framing,
            Framing::Length(5)
        );
        assert_eq!(
            p("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").framing,
            Framing::Chunked
        );
        let c = p("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
        assert_eq!((c.framing, c.keep_alive), (Framing::Close, false));
        assert_eq!(p("HTTP/1.1 204 No Content\r\n\r\n").framing, Framing::Empty);
        assert_eq!(p("HTTP/1.1 200 OK\r\n\r\n").framing, Framing::Close);
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").is_err());
        assert!(parse(b"HTTP/1.1 101 Switching Protocols\r\n\r\n").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\n").unwrap().is_none());
    }

    /// The client's head for `raw`, and its header lines.
    fn forwarded(raw: &str) -> (String, Vec<(String, String)>) {
        let h = parse(raw.as_bytes()).unwrap().unwrap();
        let mut out = Vec::new();
        let added = Added {
            request_id: b"rid",
            route: &[],
            extra: &[],
            close: false,
            rechunk: false,
        };
        client_head(&mut out, raw.as_bytes(), &h, 1, &added);
        let s = String::from_utf8(out).unwrap();
        let back = parse(s.as_bytes()).unwrap().unwrap();
        let lines = back
            .headers
            .iter()
            .map(|(n, v)| (s[n.clone()].to_string(), s[v.clone()].to_string()))
            .collect();
        (s, lines)
    }

    #[test]
    fn kept_lines_are_forwarded_as_sent_and_bare_lf_lines_rewritten() {
        // Runs of kept lines, broken by dropped ones; odd but valid
        // spacing kept as sent; every line of the result ends in CRLF.
        let raw = "HTTP/1.1 200 OK\r\nContent-Type:application/json\r\nX-A:  1 \r\nConnection: x-b\r\nX-B: 2\r\nContent-Length: 2\r\nOpenAI-Version: 2020-10-01\r\nX-C: 3\r\n\r\nok";
        let (s, lines) = forwarded(raw);
        assert!(s.starts_with("HTTP/1.1 200 OK\r\nContent-Type:application/json\r\nX-A:  1 \r\nOpenAI-Version: 2020-10-01\r\nX-C: 3\r\ncontent-length: 2\r\n"), "{s}");
        let names: Vec<&str> = lines.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "Content-Type",
                "X-A",
                "OpenAI-Version",
                "X-C",
                "content-length",
                "x-request-id"
            ]
        );
        assert_eq!(lines[1].1, "1");
        // Bare LF line ends (httparse takes them): rewritten with CRLF,
        // the CRLF lines around them still as sent. (A space before the
        // LF makes a line as long as a CRLF one.)
        let raw = "HTTP/1.1 200 OK\r\nX-A: 1\r\nX-B: 2\nX-C:3\r\nX-D: 4 \nContent-Length: 0\n\n";
        let (s, lines) = forwarded(raw);
        assert!(
            s.starts_with(
                "HTTP/1.1 200 OK\r\nX-A: 1\r\nX-B: 2\r\nX-C:3\r\nX-D: 4\r\ncontent-length: 0\r\n"
            ),
            "{s}"
        );
        assert_eq!(lines.len(), 6);
        assert!(!s.replace("\r\n", "").contains('\n'), "{s:?}");
        // Empty values, as sent and rewritten.
        let raw = "HTTP/1.1 200 OK\r\nX-E:\r\nX-F: \nContent-Length: 0\r\n\r\n";
        let (s, lines) = forwarded(raw);
        assert!(
            s.starts_with("HTTP/1.1 200 OK\r\nX-E:\r\nX-F: \r\n"),
            "{s:?}"
        );
        assert_eq!(lines[0], ("X-E".to_string(), String::new()));
        // A last kept line before a bare-LF blank line is rewritten too.
        let raw = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Last: z\r\n\n";
        let (s, _) = forwarded(raw);
        assert!(s.contains("X-Last: z\r\n"), "{s:?}");
        assert!(!s.replace("\r\n", "").contains('\n'), "{s:?}");
    }

    #[test]
    fn client_head_filters_hop_by_hop() {
        let raw = "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\nx-request-id: up\r\n\r\n";
        let h = parse(raw.as_bytes()).unwrap().unwrap();
        let mut out = Vec::new();
        let added = Added {
            request_id: b"rid",
            route: &[(b"x-tollgate-upstream", b"mock")],
            extra: &[],
            close: false,
            rechunk: false,
        };
        let f = client_head(&mut out, raw.as_bytes(), &h, 1, &added);
        let s = String::from_utf8(out).unwrap();
        assert_eq!(f, ClientFraming::Passthrough);
        assert!(
            s.contains("content-type: text/event-stream\r\n")
                || s.contains("Content-Type: text/event-stream\r\n")
        );
        assert!(s.contains("transfer-encoding: chunked\r\n"));
        assert!(s.contains("x-request-id: rid\r\n"));
        assert!(!s.contains("x-request-id: up"));
        assert!(!s.to_ascii_lowercase().contains("x-hop"));
        assert!(!s.to_ascii_lowercase().contains("keep-alive"));
        let mut out = Vec::new();
        assert_eq!(
            client_head(&mut out, raw.as_bytes(), &h, 0, &added),
            ClientFraming::Dechunk
        );
        assert!(
            String::from_utf8(out)
                .unwrap()
                .contains("connection: close")
        );
    }
}
