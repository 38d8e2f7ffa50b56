//! Header field rules shared by the server and the upstream client.
//!
//! A proxy forwards end-to-end fields and consumes hop-by-hop ones
//! (RFC 9110 §7.6.1): `Connection` and every field it names, plus the
//! fixed list below. Client credentials are consumed too: the upstream
//! gets the gateway's key, never the caller's.

use std::ops::Range;

/// Trims optional whitespace (SP / HTAB) around a field value.
pub fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |e| e + 1);
    &v[start..end]
}

/// True when the comma-separated `value` lists `token` (case-insensitive).
pub fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| trim(t).eq_ignore_ascii_case(token))
}

/// Fields that describe one hop and are never forwarded ([`Names`] holds
/// the same lists, by length).
#[cfg(test)]
const HOP_BY_HOP: &[&[u8]] = &[
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
];

/// What the fixed lists say of one field name. Every forwarded field's
/// name is checked against all of them (17 names up, 11 down), so the
/// name's length picks the few it can be first: a comparison or two
/// instead of one per listed name. `fixed_lists_and_names_agree` checks
/// this against the lists.
#[derive(Debug, Default, PartialEq, Eq)]
struct Names {
    hop_by_hop: bool,
    not_up: bool,
    not_down: bool,
}

/// The names of the fixed lists, and the framing fields' names.
pub mod names {
    use crate::http::name::Name;

    macro_rules! names {
        ($($id:ident = $s:literal),* $(,)?) => {
            $(#[doc = concat!("`", stringify!($s), "`")] pub const $id: Name = Name::new($s);)*
        };
    }
    names! {
        TE = b"te",
        HOST = b"host",
        EXPECT = b"expect",
        TRAILER = b"trailer",
        UPGRADE = b"upgrade",
        API_KEY = b"api-key",
        X_API_KEY = b"x-api-key",
        CONNECTION = b"connection",
        KEEP_ALIVE = b"keep-alive",
        X_REQUEST_ID = b"x-request-id",
        AUTHORIZATION = b"authorization",
        CONTENT_LENGTH = b"content-length",
        ACCEPT_ENCODING = b"accept-encoding",
        PROXY_CONNECTION = b"proxy-connection",
        TRANSFER_ENCODING = b"transfer-encoding",
        PROXY_AUTHENTICATE = b"proxy-authenticate",
        PROXY_AUTHORIZATION = b"proxy-authorization",
    }
}

impl Names {
    fn of(name: &[u8]) -> Names {
        use names::*;
        let (hop_by_hop, not_up, not_down) = match name.len() {
            2 => (TE.is(name), false, false),
            4 => (false, HOST.is(name), false),
            6 => (false, EXPECT.is(name), false),
            7 => (
                TRAILER.is(name) || UPGRADE.is(name),
                API_KEY.is(name),
                false,
            ),
            9 => (false, X_API_KEY.is(name), false),
            10 => (CONNECTION.is(name) || KEEP_ALIVE.is(name), false, false),
            12 => {
                let id = X_REQUEST_ID.is(name);
                (false, id, id)
            }
            13 => (false, AUTHORIZATION.is(name), false),
            14 => {
                let cl = CONTENT_LENGTH.is(name);
                (false, cl, cl)
            }
            15 => (false, ACCEPT_ENCODING.is(name), false),
            16 => (PROXY_CONNECTION.is(name), false, false),
            17 => (TRANSFER_ENCODING.is(name), false, false),
            18 => (PROXY_AUTHENTICATE.is(name), false, false),
            19 => (PROXY_AUTHORIZATION.is(name), false, false),
            _ => (false, false, false),
        };
        Names {
            hop_by_hop,
            not_up,
            not_down,
        }
    }
}

/// Request fields the gateway replaces or must not pass upstream:
/// framing it recomputes, the host it sets, client credentials, and
/// `accept-encoding` (the gateway reads response bodies, so it asks for
/// identity and the client gets uncompressed bytes).
#[cfg(test)]
const NOT_FORWARDED_UP: &[&[u8]] = &[
    b"host",
    b"content-length",
    b"expect",
    b"authorization",
    b"x-api-key",
    b"api-key",
    b"accept-encoding",
    b"x-request-id",
];

/// True when a client request field must not be copied upstream.
pub fn drop_upstream(name: &[u8], connection_value: &[u8]) -> bool {
    let n = Names::of(name);
    n.hop_by_hop || n.not_up || (!connection_value.is_empty() && has_token(connection_value, name))
}

/// Response fields the gateway sets itself and never copies from upstream.
#[cfg(test)]
const NOT_FORWARDED_DOWN: &[&[u8]] = &[b"content-length", b"x-request-id"];

/// True when an upstream response field must not be copied to the client.
/// `Transfer-Encoding` is handled by the relay, which keeps the upstream
/// framing when the client can take it.
pub fn drop_downstream(name: &[u8], connection_value: &[u8]) -> bool {
    let n = Names::of(name);
    n.hop_by_hop
        || n.not_down
        || (!connection_value.is_empty() && has_token(connection_value, name))
}

/// Appends the header lines of a parsed head that `drop` does not
/// refuse, as the peer sent them: consecutive kept lines are copied in
/// one piece (a line starts at its name and ends where the next one
/// starts, or at the blank line that ends the head, `head_len` bytes
/// in). The parser checked every line; one not ended by CRLF (httparse
/// also takes a bare LF) is written out again as `name: value` CRLF. A
/// head is mostly kept lines, so this is a copy or two rather than four
/// appends per field.
pub fn forward_lines(
    out: &mut Vec<u8>,
    buf: &[u8],
    headers: &[(Range<usize>, Range<usize>)],
    head_len: usize,
    mut drop: impl FnMut(&[u8]) -> bool,
) {
    let mut run: Option<(usize, usize)> = None;
    let flush = |out: &mut Vec<u8>, run: &mut Option<(usize, usize)>| {
        if let Some((from, to)) = run.take() {
            out.extend_from_slice(&buf[from..to]);
        }
    };
    for (i, (n, v)) in headers.iter().enumerate() {
        let name = &buf[n.clone()];
        if drop(name) {
            flush(out, &mut run);
            continue;
        }
        let end = headers
            .get(i + 1)
            .map_or(head_len.saturating_sub(2), |(next, _)| next.start);
        if end >= v.end + 2 && buf.get(end - 2..end) == Some(b"\r\n") {
            match &mut run {
                Some((_, to)) => *to = end,
                None => run = Some((n.start, end)),
            }
        } else {
            flush(out, &mut run);
            super::response::header(out, name, &buf[v.clone()]);
        }
    }
    flush(out, &mut run);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_lists_and_names_agree() {
        let listed =
            |list: &[&[u8]], name: &[u8]| list.iter().any(|h| h.eq_ignore_ascii_case(name));
        let mut names: Vec<Vec<u8>> = Vec::new();
        for n in HOP_BY_HOP
            .iter()
            .chain(NOT_FORWARDED_UP)
            .chain(NOT_FORWARDED_DOWN)
        {
            names.push(n.to_vec());
            names.push(n.to_ascii_uppercase());
            // Same length, one byte off; one byte longer and shorter.
            let mut off = n.to_vec();
            off[n.len() / 2] ^= 1;
            names.push(off);
            names.push([*n, b"x"].concat());
            names.push(n[1..].to_vec());
        }
        names.extend([&b""[..], b"content-type", b"openai-organization"].map(<[u8]>::to_vec));
        for n in &names {
            let want = Names {
                hop_by_hop: listed(HOP_BY_HOP, n),
                not_up: listed(NOT_FORWARDED_UP, n),
                not_down: listed(NOT_FORWARDED_DOWN, n),
            };
            assert_eq!(Names::of(n), want, "{}", String::from_utf8_lossy(n));
        }
    }

    #[test]
    fn rules() {
        assert_eq!(trim(b" \ta b\t "), b"a b");
        assert_eq!(trim(b"   "), b"");
        assert!(has_token(b"keep-alive, Close", b"close"));
        assert!(!has_token(b"closed", b"close"));
        assert!(drop_upstream(b"Authorization", b""));
        assert!(drop_upstream(b"X-Secret", b"close, x-secret"));
        assert!(drop_upstream(b"TE", b""));
        assert!(!drop_upstream(b"OpenAI-Organization", b"close"));
        assert!(drop_downstream(b"transfer-encoding", b""));
        assert!(!drop_downstream(b"content-type", b""));
    }
}
