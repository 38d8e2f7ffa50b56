//! Response heads written by the gateway itself: local answers
//! (`/v1/models`, `/healthz`) and OpenAI-shaped errors.

use crate::error::Error;

/// Interim response sent before reading a body announced with
/// `Expect: 100-continue`.
pub const CONTINUE_100: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Reason phrase for a status (empty for unknown ones, which is allowed).
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        417 => "Expectation Failed",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        529 => "Site Overloaded",
        _ => "",
    }
}

/// Appends the status line: `HTTP/1.1 200 OK\r\n`.
pub fn status_line(out: &mut Vec<u8>, status: u16) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends `name: value\r\n`.
pub fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends a decimal number without allocating.
pub fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(Digits::new(n).as_bytes());
}

/// A u64 in decimal, formatted on the stack (a header value that needs
/// no allocation).
pub struct Digits {
    buf: [u8; 20],
    start: usize,
}

impl Digits {
    /// Formats `n`, two digits per division (a status, a length and a
    /// count go through here on every response).
    pub fn new(mut n: u64) -> Digits {
        const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
            2021222324252627282930313233343536373839\
            4041424344454647484950515253545556575859\
            6061626364656667686970717273747576777879\
            8081828384858687888990919293949596979899";
        let mut buf = [0u8; 20];
        let mut start = buf.len();
        while n >= 100 {
            let pair = (n % 100) as usize * 2;
            n /= 100;
            start -= 2;
            buf[start..start + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
        }
        if n >= 10 {
            let pair = n as usize * 2;
            start -= 2;
            buf[start..start + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
        } else {
            start -= 1;
            buf[start] = b'0' + n as u8;
        }
        Digits { buf, start }
    }

    /// The digits.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// Per-response fields of a response the gateway produces itself.
#[derive(Debug, Clone, Copy)]
pub struct Local<'a> {
    /// Echoed request id.
    pub request_id: &'a [u8],
    /// Add `connection: close`.
    pub close: bool,
    /// HEAD request: head only.
    pub head_only: bool,
}

/// A complete response with a body the gateway produced.
pub fn full(
    out: &mut Vec<u8>,
    status: u16,
    extra: &[(&[u8], &[u8])],
    content_type: &[u8],
    body: &[u8],
    r: Local<'_>,
) {
    status_line(out, status);
    for (n, v) in extra {
        header(out, n, v);
    }
    header(out, b"content-type", content_type);
    out.extend_from_slice(b"content-length: ");
    push_u64(out, body.len() as u64);
    out.extend_from_slice(b"\r\n");
    header(out, b"x-request-id", r.request_id);
    if r.close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !r.head_only {
        out.extend_from_slice(body);
    }
}

/// An OpenAI-shaped JSON error response.
pub fn error(out: &mut Vec<u8>, err: &Error, request_id: &[u8], close: bool) {
    let body = err.to_json();
    let mut extra: Vec<(&[u8], &[u8])> = err
        .headers
        .iter()
        .map(|(n, v)| (*n, v.as_slice()))
        .collect();
    if err.status() == 405 {
        extra.push((b"allow", b"POST"));
    }
    let r = Local {
        request_id,
        close,
        head_only: false,
    };
    full(
        out,
        err.status(),
        &extra,
        b"application/json",
        body.as_bytes(),
        r,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Kind;

    #[test]
    fn error_response_parses() {
        let mut out = Vec::new();
        error(
            &mut out,
            &Error::new(Kind::BodyTooLarge, "too big"),
            b"rid",
            true,
        );
        let mut h = [httparse::EMPTY_HEADER; 8];
        let mut r = httparse::Response::new(&mut h);
        let n = match r.parse(&out).unwrap() {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => panic!("partial"),
        };
        assert_eq!(r.code, Some(413));
        let len: usize = r
            .headers
            .iter()
            .find(|h| h.name == "content-length")
            .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
            .unwrap();
        assert_eq!(out.len() - n, len);
        let mut n = Vec::new();
        push_u64(&mut n, 0);
        push_u64(&mut n, 18446744073709551615);
        assert_eq!(n, b"018446744073709551615");
    }

    #[test]
    fn digits_match_std_formatting() {
        let mut edges = vec![u64::MAX, u64::MAX - 1];
        let mut p = 1u64;
        while let Some(q) = p.checked_mul(10) {
            edges.extend([p - 1, p, p + 1, q - 1]);
            p = q;
        }
        for n in (0..100_000).chain(edges) {
            assert_eq!(Digits::new(n).as_bytes(), n.to_string().as_bytes(), "{n}");
        }
    }
}
