//! Builds the bytes of an upstream request: one buffer holding the head and
//! the body, sent with a single write (one SQE) per request.

use super::UpstreamRuntime;
use crate::http::RequestHead;
use crate::http::headers::{drop_upstream, forward_lines, names};
use crate::http::response::push_u64;

/// Everything from the client request that goes upstream.
pub struct Forward<'a> {
    /// The client connection buffer the head was parsed from.
    pub buf: &'a [u8],
    /// The client head.
    pub head: &'a RequestHead,
    /// Endpoint path below the API prefix, e.g. `/chat/completions`.
    pub endpoint: &'a [u8],
    /// The body to send, as slices to concatenate (see `route::rewrite`).
    pub body: &'a [&'a [u8]],
    /// Request id, echoed upstream for correlation.
    pub request_id: &'a [u8],
}

/// Appends the full upstream request to `out`.
pub fn build(out: &mut Vec<u8>, up: &UpstreamRuntime, f: &Forward<'_>) {
    let body_len: usize = f.body.iter().map(|p| p.len()).sum();
    out.reserve(512 + body_len);
    out.extend_from_slice(b"POST ");
    out.extend_from_slice(up.cfg.base_path.as_bytes());
    out.extend_from_slice(f.endpoint);
    out.extend_from_slice(f.head.query(f.buf));
    out.extend_from_slice(b" HTTP/1.1\r\n");
    out.extend_from_slice(&up.fixed_headers);
    let connection = f
        .head
        .headers
        .iter()
        .find(|(n, _)| names::CONNECTION.is(&f.buf[n.clone()]))
        .map_or(&[][..], |(_, v)| &f.buf[v.clone()]);
    forward_lines(out, f.buf, &f.head.headers, f.head.len, |name| {
        drop_upstream(name, connection)
    });
    out.extend_from_slice(b"x-request-id: ");
    out.extend_from_slice(f.request_id);
    out.extend_from_slice(b"\r\ncontent-length: ");
    push_u64(out, body_len as u64);
    out.extend_from_slice(b"\r\n\r\n");
    for p in f.body {
        out.extend_from_slice(p);
    }
}
