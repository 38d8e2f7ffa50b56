//! The HTTP/1.1 work of the featureless probe proxies (`floor` on monoio,
//! `uring-probe` on raw io_uring), shared so the two differ only in how
//! they do I/O: a comparison between them measures the I/O path and
//! nothing else.
//!
//! Per request a probe rebuilds the head for the upstream (its own Host,
//! no hop-by-hop headers, an explicit Content-Length), appends the body,
//! and relays the upstream's bytes to the client verbatim until the
//! response's framing says it ended.

use std::io;

use tollgate::http::chunked::ChunkedDecoder;

/// Most headers a probe accepts in a request or response head.
pub const MAX_HEADERS: usize = 32;

/// An `InvalidData` error: the peer sent something a probe does not relay.
pub fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

fn content_length(v: &[u8]) -> io::Result<usize> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .ok_or(invalid("bad content-length"))
}

/// A complete request head found at the start of a client buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHead {
    /// Bytes of the client's head.
    pub head_len: usize,
    /// Bytes of its body (Content-Length).
    pub body_len: usize,
}

/// Parses the request head at the start of `buf`; when it is complete,
/// writes the upstream's head into `out` (cleared first) and returns the
/// lengths. `None` while the head is incomplete. Chunked request bodies
/// are refused (no client of the benches sends one).
pub fn rewrite_request(
    buf: &[u8],
    host_line: &[u8],
    out: &mut Vec<u8>,
) -> io::Result<Option<RequestHead>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(head_len) = r.parse(buf).map_err(|_| invalid("bad head"))?
    else {
        return Ok(None);
    };
    out.clear();
    out.extend_from_slice(r.method.unwrap_or("POST").as_bytes());
    out.push(b' ');
    out.extend_from_slice(r.path.unwrap_or("/").as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    out.extend_from_slice(host_line);
    let mut body_len = 0usize;
    for h in r.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            body_len = content_length(h.value)?;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Err(invalid("chunked request bodies are not supported"));
        } else if !(name.eq_ignore_ascii_case(b"host")
            || name.eq_ignore_ascii_case(b"connection")
            || name.eq_ignore_ascii_case(b"keep-alive"))
        {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(format!("Content-Length: {body_len}\r\n\r\n").as_bytes());
    Ok(Some(RequestHead { head_len, body_len }))
}

/// Where an upstream response body ends.
#[derive(Debug)]
pub enum Framing {
    /// This many body bytes are still to come.
    Length(usize),
    /// Chunked transfer coding.
    Chunked(ChunkedDecoder),
    /// Until the connection closes: the client connection closes too.
    Close,
}

impl Framing {
    /// Accounts for body bytes; true once the body is complete.
    pub fn feed(&mut self, bytes: &[u8]) -> io::Result<bool> {
        match self {
            Framing::Length(left) => {
                *left = left.saturating_sub(bytes.len());
                Ok(*left == 0)
            }
            Framing::Chunked(d) => {
                d.feed(bytes, |_| {})
                    .map_err(|_| invalid("bad chunked body"))?;
                Ok(d.is_done())
            }
            Framing::Close => Ok(false),
        }
    }
}

/// A parsed response head: its length, how its body ends, and whether the
/// upstream connection may be reused after it.
#[derive(Debug)]
pub struct ResponseHead {
    /// Bytes of the head.
    pub head_len: usize,
    /// How the body ends.
    pub framing: Framing,
    /// Neither `Connection: close` nor a close-delimited body.
    pub reusable: bool,
}

/// Parses the response head at the start of `buf`; `None` while it is
/// incomplete.
pub fn parse_response(buf: &[u8]) -> io::Result<Option<ResponseHead>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head_len) = r.parse(buf).map_err(|_| invalid("bad response"))?
    else {
        return Ok(None);
    };
    let mut framing = Framing::Close;
    let mut close = false;
    for h in r.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            framing = Framing::Length(content_length(h.value)?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding")
            && h.value.eq_ignore_ascii_case(b"chunked")
        {
            framing = Framing::Chunked(ChunkedDecoder::new());
        } else if h.name.eq_ignore_ascii_case("connection")
            && h.value.eq_ignore_ascii_case(b"close")
        {
            close = true;
        }
    }
    let reusable = !close && !matches!(framing, Framing::Close);
    Ok(Some(ResponseHead {
        head_len,
        framing,
        reusable,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upstream_head_has_its_own_host_and_no_hop_by_hop_headers() -> io::Result<()> {
        let req = b"POST /v1/chat HTTP/1.1\r\nHost: gw\r\nConnection: keep-alive\r\nX-A: 1\r\nContent-Length: 2\r\n\r\n{}";
        let mut out = Vec::new();
        let head = rewrite_request(req, b"Host: up\r\n", &mut out)?;
        assert_eq!(
            head,
            Some(RequestHead {
                head_len: req.len() - 2,
                body_len: 2
            })
        );
        assert_eq!(
            out,
            b"POST /v1/chat HTTP/1.1\r\nHost: up\r\nX-A: 1\r\nContent-Length: 2\r\n\r\n"
        );
        assert_eq!(
            rewrite_request(&req[..20], b"Host: up\r\n", &mut out)?,
            None
        );
        Ok(())
    }

    #[test]
    fn response_framing_ends_where_the_body_ends() -> io::Result<()> {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")?;
        let Some(mut h) = r else {
            return Err(invalid("head not found"));
        };
        assert_eq!(h.head_len, 38);
        assert!(h.reusable);
        assert!(!h.framing.feed(b"ab")?);
        assert!(h.framing.feed(b"cde")?);
        let r = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")?;
        let Some(mut h) = r else {
            return Err(invalid("head not found"));
        };
        assert!(!h.framing.feed(b"3\r\nabc\r\n")?);
        assert!(h.framing.feed(b"0\r\n\r\n")?);
        let r =
            parse_response(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n")?;
        assert!(r.is_some_and(|h| !h.reusable));
        Ok(())
    }
}
