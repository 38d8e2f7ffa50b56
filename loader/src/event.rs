//! The ring-buffer record of `ebpf/common.h` (`struct tg_event`), parsed
//! from bytes with explicit offsets: no `unsafe` casts, and a record of
//! the wrong size is refused instead of misread.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Size of `struct tg_event`.
pub const EVENT_SIZE: usize = 72;

const AF_INET6: u16 = 10;

/// What the kernel saw (the `TG_*` constants of `common.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A connect was refused (`ECONNREFUSED` on the socket).
    Refused,
    /// The connection was reset by the peer (`ECONNRESET`).
    Reset,
    /// The connection timed out in the kernel (`ETIMEDOUT`).
    TimedOut,
    /// A SYN was retransmitted: the upstream did not answer the first one.
    SynRetransmit,
    /// A data segment was retransmitted.
    Retransmit,
    /// An RST arrived on the socket (any state); `cookie` is set.
    RstReceived,
    /// This host sent an RST to the upstream; `value` is the reason.
    RstSent,
    /// A state change, `old_state` -> `value` (kernel `TCP_*` numbers).
    State,
    /// A tracked connection was destroyed; `srtt_us`, `retrans` and
    /// `aux` (lifetime in ns) hold its final stats.
    Closed,
    /// Another socket error; `value` is the errno.
    OtherError,
    /// The upstream closed its side of a tracked connection (FIN);
    /// `cookie` is set. From `sock_ops`, so only the gateway's sockets.
    PeerClosed,
}

impl Kind {
    fn from_raw(v: u32) -> Option<Kind> {
        Some(match v {
            1 => Kind::Refused,
            2 => Kind::Reset,
            3 => Kind::TimedOut,
            4 => Kind::SynRetransmit,
            5 => Kind::Retransmit,
            6 => Kind::RstReceived,
            7 => Kind::RstSent,
            8 => Kind::State,
            9 => Kind::Closed,
            10 => Kind::OtherError,
            11 => Kind::PeerClosed,
            _ => return None,
        })
    }
}

/// One event from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// `CLOCK_MONOTONIC` nanoseconds when the kernel saw it.
    pub ts_ns: u64,
    /// Socket cookie (`SO_COOKIE`), 0 where the hook does not have it.
    pub cookie: u64,
    /// Connection lifetime in ns for [`Kind::Closed`].
    pub aux: u64,
    /// What happened.
    pub kind: Kind,
    /// The id userspace gave this destination in the filter map.
    pub upstream: u32,
    /// errno, reset reason or new state, by kind.
    pub value: i32,
    /// Smoothed RTT in microseconds ([`Kind::Closed`]).
    pub srtt_us: u32,
    /// Retransmitted segments ([`Kind::Closed`]).
    pub retrans: u32,
    /// Local port (0 before the kernel picked one).
    pub sport: u16,
    /// Upstream port.
    pub dport: u16,
    /// Upstream address.
    pub daddr: IpAddr,
    /// Previous state ([`Kind::State`]).
    pub old_state: u16,
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_ne_bytes([b[o], b[o + 1]])
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_ne_bytes(a)
}

impl Event {
    /// Parses one record; `None` for a wrong size or an unknown kind.
    pub fn parse(b: &[u8]) -> Option<Event> {
        if b.len() < EVENT_SIZE {
            return None;
        }
        let family = u16_at(b, 48);
        let mut a = [0u8; 16];
        a.copy_from_slice(&b[52..68]);
        let daddr = if family == AF_INET6 {
            IpAddr::V6(Ipv6Addr::from(a))
        } else {
            IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
        };
        Some(Event {
            ts_ns: u64_at(b, 0),
            cookie: u64_at(b, 8),
            aux: u64_at(b, 16),
            kind: Kind::from_raw(u32_at(b, 24))?,
            upstream: u32_at(b, 28),
            value: u32_at(b, 32) as i32,
            srtt_us: u32_at(b, 36),
            retrans: u32_at(b, 40),
            sport: u16_at(b, 44),
            dport: u16_at(b, 46),
            daddr,
            old_state: u16_at(b, 50),
        })
    }
}

/// The filter-map key of `common.h` (`struct tg_addr_key`, 20 bytes).
pub fn addr_key(addr: std::net::SocketAddr) -> [u8; 20] {
    let mut k = [0u8; 20];
    let family: u16 = match addr.ip() {
        IpAddr::V4(v4) => {
            k[..4].copy_from_slice(&v4.octets());
            2
        }
        IpAddr::V6(v6) => {
            k[..16].copy_from_slice(&v6.octets());
            AF_INET6
        }
    };
    k[16..18].copy_from_slice(&addr.port().to_ne_bytes());
    k[18..20].copy_from_slice(&family.to_ne_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_record_and_refuses_short_or_unknown_ones() {
        let mut b = [0u8; EVENT_SIZE];
        b[0..8].copy_from_slice(&42u64.to_ne_bytes());
        b[8..16].copy_from_slice(&7u64.to_ne_bytes());
        b[24..28].copy_from_slice(&1u32.to_ne_bytes());
        b[28..32].copy_from_slice(&3u32.to_ne_bytes());
        b[32..36].copy_from_slice(&111i32.to_ne_bytes());
        b[44..46].copy_from_slice(&5555u16.to_ne_bytes());
        b[46..48].copy_from_slice(&8080u16.to_ne_bytes());
        b[48..50].copy_from_slice(&2u16.to_ne_bytes());
        b[52..56].copy_from_slice(&[127, 0, 0, 1]);
        let e = Event::parse(&b).unwrap();
        assert_eq!(e.kind, Kind::Refused);
        assert_eq!((e.ts_ns, e.cookie, e.upstream, e.value), (42, 7, 3, 111));
        assert_eq!((e.sport, e.dport), (5555, 8080));
        assert_eq!(e.daddr, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert!(Event::parse(&b[..EVENT_SIZE - 1]).is_none());
        b[24..28].copy_from_slice(&99u32.to_ne_bytes());
        assert!(Event::parse(&b).is_none());
    }

    #[test]
    fn filter_keys_match_the_c_layout() {
        let k = addr_key("127.0.0.1:8080".parse().unwrap());
        assert_eq!(&k[..4], &[127, 0, 0, 1]);
        assert_eq!(&k[4..16], &[0; 12]);
        assert_eq!(u16::from_ne_bytes([k[16], k[17]]), 8080);
        assert_eq!(u16::from_ne_bytes([k[18], k[19]]), 2);
        let k6 = addr_key("[::1]:1".parse().unwrap());
        assert_eq!(k6[15], 1);
        assert_eq!(u16::from_ne_bytes([k6[18], k6[19]]), 10);
    }
}
