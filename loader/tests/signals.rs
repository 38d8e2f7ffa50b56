//! The programs on a real kernel: each health signal is provoked on
//! 127.0.0.1 and must reach userspace within 100 ms of the kernel event.
//! One test function, because the process moves into its own cgroup for
//! `sock_ops` and the loader is one per process.
//!
//! As root (CI) every program must be up. Without privileges the same
//! test checks the other half of the contract: start-up does not fail and
//! every program says why it is down.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use tollgate_loader::{Event, Kind, Options, Placement, Telemetry, monotonic_ns, socket_cookie};

const LIMIT_NS: u64 = 100_000_000;

/// Everything polled so far, with each event's delay (userspace receipt
/// minus kernel timestamp): events of one kernel action come in an order
/// (RST received, then the socket error), and a wait for one must not
/// lose the other.
struct Seen(Vec<(Event, u64)>);

impl Seen {
    /// The first event matching `pred`, polling up to `within` for it.
    fn wait_for(
        &mut self,
        t: &mut Telemetry,
        within: Duration,
        pred: impl Fn(&Event) -> bool,
    ) -> (Event, u64) {
        let t0 = Instant::now();
        loop {
            if let Some(i) = self.0.iter().position(|(e, _)| pred(e)) {
                return self.0.remove(i);
            }
            assert!(t0.elapsed() < within, "no matching event within {within:?}");
            t.poll(Duration::from_millis(20), |e| {
                self.0.push((*e, monotonic_ns().saturating_sub(e.ts_ns)));
            })
            .unwrap();
        }
    }
}

fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn set_int(fd: i32, level: i32, opt: i32, v: i32) {
    // SAFETY: setsockopt with a live i32 of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&raw const v).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
}

/// A blocking connect with `TCP_SYNCNT = 1`: one SYN retransmit, then
/// ETIMEDOUT after about 3 s.
fn connect_syncnt1(to: SocketAddr) -> std::io::Result<()> {
    let SocketAddr::V4(v4) = to else {
        unreachable!()
    };
    // SAFETY: plain socket(2); the fd is owned right below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    assert!(fd >= 0);
    // SAFETY: `fd` is a fresh socket nobody else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    set_int(fd, libc::IPPROTO_TCP, libc::TCP_SYNCNT, 1);
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(v4.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: a live sockaddr_in of the size passed.
    let r = unsafe {
        libc::connect(
            owned.as_raw_fd(),
            (&raw const sa).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[test]
fn health_signals_reach_userspace_within_100ms() {
    let mut t = Telemetry::start(&Options {
        cgroup: Placement::Auto,
    });
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(!t.any_up(), "{:?}", t.programs());
        for p in t.programs() {
            assert!(p.error.as_deref().is_some_and(|e| !e.is_empty()), "{p:?}");
        }
        return;
    }
    for p in t.programs() {
        assert!(p.up(), "{} is down: {:?}", p.name, p.error);
    }
    let cg = t.cgroup_dir().unwrap().to_path_buf();
    assert!(cg.join("cgroup.procs").exists());

    // --- refused: nothing listens on the port.
    let refused = closed_port();
    // --- reset: a server that aborts with SO_LINGER 0.
    let rst_server = TcpListener::bind("127.0.0.1:0").unwrap();
    // --- SYN timeout: a listener whose accept queue is full.
    let full = TcpListener::bind("127.0.0.1:0").unwrap();
    // SAFETY: listen(2) again on our own listening socket shrinks its backlog.
    assert_eq!(unsafe { libc::listen(full.as_raw_fd(), 0) }, 0);
    // --- RTT: an echo server.
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let ids = [
        (refused, 1),
        (rst_server.local_addr().unwrap(), 2),
        (full.local_addr().unwrap(), 3),
        (echo.local_addr().unwrap(), 4),
    ];
    t.set_upstreams(&ids).unwrap();
    let mut seen = Seen(Vec::new());

    // Traffic to an address outside the filter is never reported.
    let other = closed_port();
    assert!(TcpStream::connect(other).is_err());

    let err = TcpStream::connect(refused).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    let (e, delay) = seen.wait_for(&mut t, Duration::from_secs(1), |e| e.kind == Kind::Refused);
    assert_eq!((e.upstream, e.dport, e.value), (1, refused.port(), 111));
    assert!(delay < LIMIT_NS, "refused after {delay} ns");

    let mut client = TcpStream::connect(rst_server.local_addr().unwrap()).unwrap();
    let cookie = socket_cookie(client.as_raw_fd()).unwrap();
    let (srv, _) = rst_server.accept().unwrap();
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a live linger struct of the size passed.
    let r = unsafe {
        libc::setsockopt(
            srv.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0);
    drop(srv);
    let (e, delay) = seen.wait_for(&mut t, Duration::from_secs(1), |e| e.kind == Kind::Reset);
    assert_eq!((e.upstream, e.value), (2, 104));
    assert!(delay < LIMIT_NS, "reset after {delay} ns");
    // The RST itself, keyed by the client socket's cookie: what lets the
    // gateway evict exactly that pooled connection.
    let (e, _) = seen.wait_for(&mut t, Duration::from_secs(1), |e| {
        e.kind == Kind::RstReceived && e.cookie == cookie
    });
    assert_eq!(e.upstream, 2);
    let mut b = [0u8; 1];
    assert!(client.read(&mut b).is_err());

    // RTT telemetry on a live connection (sock_ops, our cgroup).
    let mut c = TcpStream::connect(echo.local_addr().unwrap()).unwrap();
    let (mut s, _) = echo.accept().unwrap();
    let ck = socket_cookie(c.as_raw_fd()).unwrap();
    for _ in 0..20 {
        c.write_all(&[7u8; 4096]).unwrap();
        let mut got = vec![0u8; 4096];
        s.read_exact(&mut got).unwrap();
        s.write_all(&got).unwrap();
        c.read_exact(&mut got).unwrap();
    }
    let stats = t.conn_stats(ck).expect("sock_ops tracks the connection");
    // The same numbers, read from memory shared with the kernel.
    let port = c.local_addr().unwrap().port();
    let ports = t.port_stats().expect("PORT_STATS is mapped");
    let (srtt, retrans) = ports.get(port).expect("a sample for the port");
    assert!(srtt > 0, "{srtt}");
    assert_eq!(retrans, stats.retrans);
    assert_eq!(stats.upstream, 4);
    assert!(stats.rtt_samples > 0 && stats.srtt_us > 0, "{stats:?}");
    let h = t.srtt_histogram(4).unwrap();
    assert!(h.buckets.iter().sum::<u64>() >= u64::from(stats.rtt_samples));
    assert!(h.sum_us > 0);
    drop(c);
    drop(s);
    let (e, _) = seen.wait_for(&mut t, Duration::from_secs(1), |e| {
        e.kind == Kind::Closed && e.cookie == ck
    });
    assert!(e.srtt_us > 0 && e.aux > 0, "{e:?}");

    // SYN timeout: fill the accept queue, then connect with one SYN retry.
    let _filler = TcpStream::connect(full.local_addr().unwrap()).unwrap();
    let to = full.local_addr().unwrap();
    let started = Instant::now();
    let h = std::thread::spawn(move || connect_syncnt1(to));
    let (e, delay) = seen.wait_for(&mut t, Duration::from_secs(3), |e| {
        e.kind == Kind::SynRetransmit
    });
    assert_eq!(e.upstream, 3);
    assert!(delay < LIMIT_NS, "syn retransmit after {delay} ns");
    assert!(started.elapsed() >= Duration::from_millis(500));
    let (e, delay) = seen.wait_for(&mut t, Duration::from_secs(6), |e| e.kind == Kind::TimedOut);
    assert_eq!((e.upstream, e.value), (3, 110));
    assert!(delay < LIMIT_NS, "timeout after {delay} ns");
    let r = h.join().unwrap();
    assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::ETIMEDOUT));

    // Nothing was lost, and nothing outside the filter came through.
    assert_eq!(t.dropped(), 0);
    t.poll(Duration::from_millis(50), |e| seen.0.push((*e, 0)))
        .unwrap();
    assert!(seen.0.iter().all(|(e, _)| e.dport != other.port()));
    assert!(seen.0.iter().all(|(e, _)| (1..=4).contains(&e.upstream)));

    // Dropping the loader detaches everything and removes its cgroup.
    drop(t);
    assert!(!cg.exists(), "{} left behind", cg.display());
}
