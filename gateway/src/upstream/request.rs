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

/// Bytes [`build`] writes at most: the client's head bounds the query
/// and the lines forwarded from it (a bare-LF line gains `\r` and a
/// space when rewritten), and [`FIXED_TEXT`] covers the request line's
/// and the framing's own text. A buffer taken with this capacity is
/// never grown: growing copies (`realloc`) the whole block, which cost a
/// 32 KiB prompt ~40,000 instructions.
pub fn room(up: &UpstreamRuntime, f: &Forward<'_>) -> usize {
    let body_len: usize = f.body.iter().map(|p| p.len()).sum();
    f.head.len
        + 2 * f.head.headers.len()
        + up.cfg.base_path.len()
        + f.endpoint.len()
        + up.fixed_headers.len()
        + f.request_id.len()
        + FIXED_TEXT
        + body_len
}

/// `POST `, ` HTTP/1.1\r\n`, `x-request-id: `, `\r\ncontent-length: `, at
/// most 20 digits and the blank line: 72 bytes.
const FIXED_TEXT: usize = 72;

/// Appends the full upstream request to `out`.
pub fn build(out: &mut Vec<u8>, up: &UpstreamRuntime, f: &Forward<'_>) {
    let body_len: usize = f.body.iter().map(|p| p.len()).sum();
    out.reserve(room(up, f));
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn upstream() -> Arc<UpstreamRuntime> {
        let raw: crate::config::raw::RawConfig = toml::from_str(
            "[[upstreams]]\nname = \"a\"\nbase_url = \"http://provider.example:8080/openai/v1\"\n\
             [[models]]\nname = \"m\"\ntargets = [{ upstream = \"a\" }]\n",
        )
        .unwrap();
        let cfg = crate::config::compile(raw, std::path::Path::new("t.toml")).unwrap();
        super::super::build(&cfg.upstreams).unwrap().remove(0)
    }

    /// `room` bounds what `build` writes for heads of every shape, so the
    /// buffer taken with it never grows: bare-LF lines (rewritten with
    /// CRLF and a space), a query, a 20-digit request id, long bodies in
    /// several parts.
    #[test]
    fn room_bounds_the_built_request() {
        let up = upstream();
        // Forty bare-LF lines gain 80 bytes: more than the fixed text's
        // slack, so a bound that forgot them fails here.
        let bare: Vec<u8> = (0..40)
            .flat_map(|i| format!("x-{i}:v\n").into_bytes())
            .collect();
        let bare = [
            b"POST /v1/chat/completions HTTP/1.1\n".as_slice(),
            &bare,
            b"\n",
        ]
        .concat();
        let heads: [&[u8]; 5] = [
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-length: 2\r\n\r\n",
            b"POST /v1/chat/completions?x=1 HTTP/1.1\nhost:gw\nx-a:b\nx-c:d\ncontent-length:2\n\n",
            b"POST /v1/chat/completions HTTP/1.1\nconnection: x-drop\nx-drop: 1\na:\nb:\nc:\n\n",
            b"POST /v1/embeddings HTTP/1.1\r\n\r\n",
            &bare,
        ];
        let big = vec![b'x'; 40_000];
        let bodies: [&[&[u8]]; 3] = [&[], &[b"{}"], &[b"{\"model\":\"m\",", &big, b"}"]];
        for h in heads {
            let head = crate::http::request::parse(h).unwrap().unwrap();
            for body in bodies {
                let f = Forward {
                    buf: h,
                    head: &head,
                    endpoint: b"/chat/completions",
                    body,
                    request_id: b"01234567890123456789",
                };
                let mut out = Vec::new();
                build(&mut out, &up, &f);
                assert!(
                    out.len() <= room(&up, &f),
                    "{} > {}",
                    out.len(),
                    room(&up, &f)
                );
                // Taken with that capacity, the buffer is not grown.
                let mut taken = Vec::with_capacity(room(&up, &f));
                let cap = taken.capacity();
                build(&mut taken, &up, &f);
                assert_eq!(taken.capacity(), cap);
                assert_eq!(taken, out);
            }
        }
    }
}
