//! Header field rules shared by the server and the upstream client.
//!
//! A proxy forwards end-to-end fields and consumes hop-by-hop ones
//! (RFC 9110 §7.6.1): `Connection` and every field it names, plus the
//! fixed list below. Client credentials are consumed too: the upstream
//! gets the gateway's key, never the caller's.

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

/// Fields that describe one hop and are never forwarded.
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

/// True for a hop-by-hop field name.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Request fields the gateway replaces or must not pass upstream:
/// framing it recomputes, the host it sets, client credentials, and
/// `accept-encoding` (the gateway reads response bodies, so it asks for
/// identity and the client gets uncompressed bytes).
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
    is_hop_by_hop(name)
        || NOT_FORWARDED_UP
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name))
        || (!connection_value.is_empty() && has_token(connection_value, name))
}

/// Response fields the gateway sets itself and never copies from upstream.
const NOT_FORWARDED_DOWN: &[&[u8]] = &[b"content-length", b"x-request-id"];

/// True when an upstream response field must not be copied to the client.
/// `Transfer-Encoding` is handled by the relay, which keeps the upstream
/// framing when the client can take it.
pub fn drop_downstream(name: &[u8], connection_value: &[u8]) -> bool {
    is_hop_by_hop(name)
        || NOT_FORWARDED_DOWN
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name))
        || (!connection_value.is_empty() && has_token(connection_value, name))
}

#[cfg(test)]
mod tests {
    use super::*;

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
