//! Loads tollgate's eBPF programs (`ebpf/tollgate.bpf.c`, compiled by
//! `build.rs` and embedded in the binary) and reads what they report:
//! health events through a ring buffer, per-connection stats and srtt
//! histograms through maps.
//!
//! The gateway keeps one [`Telemetry`] on a dedicated thread that blocks
//! in [`Telemetry::poll`]: the ring-buffer fd is pollable, so no worker
//! ever waits on it.
//!
//! # Failure behavior
//! Fail-open, one program at a time: [`Telemetry::start`] never fails. A
//! program that cannot load or attach (no clang at build time, not root,
//! a missing capability, no tracefs, no cgroup v2) is reported in
//! [`Telemetry::programs`] with the reason, and the others run. No
//! program relies on kernel BTF (no CO-RE, no `tp_btf`), so a kernel
//! without BTF cannot make them read garbage.

pub mod cgroup;
mod event;
mod ports;
mod sys;

use std::collections::HashSet;
use std::fs::File;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use aya::maps::{Array, HashMap as BpfHashMap, MapData, RingBuf};
use aya::programs::{CgroupAttachMode, SockOps, TracePoint};
use aya::{Ebpf, EbpfLoader};

pub use cgroup::Placement;
pub use event::{Event, Kind, addr_key};
pub use ports::PortStats;
pub use sys::{monotonic_ns, socket_cookie};

#[cfg(tollgate_ebpf)]
static OBJECT: Option<&[u8]> = Some(aya::include_bytes_aligned!(concat!(
    env!("OUT_DIR"),
    "/tollgate.bpf.o"
)));
#[cfg(not(tollgate_ebpf))]
static OBJECT: Option<&[u8]> = None;

/// Whether the programs were compiled into this binary.
pub fn built_in() -> bool {
    OBJECT.is_some()
}

/// Buckets of the srtt histogram: bucket `b` counts samples with
/// `2^b <= srtt_us < 2^(b+1)` (bucket 0 also holds 0).
pub const BUCKETS: usize = 32;
/// Upstream ids the histogram has rows for.
pub const MAX_UPSTREAMS: u32 = 256;

/// The programs, by name (the C function), with their hook.
pub const PROGRAMS: [(&str, Hook); 7] = [
    (
        "sk_error_report",
        Hook::Tracepoint("sock", "inet_sk_error_report"),
    ),
    (
        "tcp_receive_reset",
        Hook::Tracepoint("tcp", "tcp_receive_reset"),
    ),
    ("tcp_send_reset", Hook::Tracepoint("tcp", "tcp_send_reset")),
    (
        "tcp_retransmit_skb",
        Hook::Tracepoint("tcp", "tcp_retransmit_skb"),
    ),
    (
        "inet_sock_set_state",
        Hook::Tracepoint("sock", "inet_sock_set_state"),
    ),
    (
        "tcp_destroy_sock",
        Hook::Tracepoint("tcp", "tcp_destroy_sock"),
    ),
    ("sock_ops", Hook::SockOps),
];

/// Where a program attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// A classic tracepoint (category, name); needs tracefs and CAP_PERFMON.
    Tracepoint(&'static str, &'static str),
    /// `sock_ops` on a cgroup v2 directory; needs CAP_NET_ADMIN.
    SockOps,
}

/// One program's state after [`Telemetry::start`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramStatus {
    /// Program name (the `program` label of the gateway's metrics).
    pub name: &'static str,
    /// Where it attaches.
    pub hook: Hook,
    /// Why it is not running; `None` when it is attached.
    pub error: Option<String>,
}

impl ProgramStatus {
    /// Attached and running.
    pub fn up(&self) -> bool {
        self.error.is_none()
    }
}

/// Start-up options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where `sock_ops` attaches.
    pub cgroup: Placement,
}

/// Final stats of one connection tracked by `sock_ops`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnStats {
    /// Upstream id.
    pub upstream: u32,
    /// Smoothed RTT, microseconds.
    pub srtt_us: u32,
    /// Retransmitted segments so far.
    pub retrans: u32,
    /// RTT samples taken.
    pub rtt_samples: u32,
}

/// One upstream's srtt histogram (see [`BUCKETS`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    /// Samples per log2 bucket of microseconds.
    pub buckets: [u64; BUCKETS],
    /// Sum of all samples, microseconds.
    pub sum_us: u64,
}

/// Errors of map updates after start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The programs are not loaded.
    #[error("eBPF is not running")]
    NotRunning,
    /// A map operation failed.
    #[error("map {map}: {reason}")]
    Map {
        /// Map name.
        map: &'static str,
        /// The kernel's answer.
        reason: String,
    },
    /// Polling the ring buffer failed.
    #[error("polling the ring buffer: {0}")]
    Poll(#[from] std::io::Error),
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> Error {
    move |e| Error::Map {
        map,
        reason: e.to_string(),
    }
}

/// The loaded programs and their maps.
pub struct Telemetry {
    // Field order is drop order: maps and programs (and with them the
    // sock_ops link) go before the cgroup directory is removed.
    ring: Option<RingBuf<MapData>>,
    upstreams: Option<BpfHashMap<MapData, [u8; 20], u32>>,
    conns: Option<BpfHashMap<MapData, u64, [u8; 24]>>,
    hist: Option<Array<MapData, u64>>,
    sums: Option<Array<MapData, u64>>,
    dropped: Option<Array<MapData, u64>>,
    ports: Option<std::sync::Arc<PortStats>>,
    ebpf: Option<Ebpf>,
    cgroup: Option<cgroup::Cgroup>,
    programs: Vec<ProgramStatus>,
    filter: HashSet<[u8; 20]>,
}

impl Telemetry {
    /// Loads and attaches what this host allows; never fails.
    pub fn start(opts: &Options) -> Telemetry {
        let mut t = Telemetry {
            ring: None,
            upstreams: None,
            conns: None,
            hist: None,
            sums: None,
            dropped: None,
            ports: None,
            ebpf: None,
            cgroup: None,
            programs: PROGRAMS
                .iter()
                .map(|&(name, hook)| ProgramStatus {
                    name,
                    hook,
                    error: None,
                })
                .collect(),
            filter: HashSet::new(),
        };
        let Some(obj) = OBJECT else {
            t.fail_all("built without eBPF (no clang when it was compiled)");
            return t;
        };
        let mut ebpf = match EbpfLoader::new().btf(None).load(obj) {
            Ok(e) => e,
            Err(e) => {
                t.fail_all(&format!("loading the object: {e}"));
                return t;
            }
        };
        let tracefs = ensure_tracefs();
        for (i, &(name, hook)) in PROGRAMS.iter().enumerate() {
            let r = match hook {
                Hook::Tracepoint(cat, tp) => tracefs
                    .clone()
                    .and_then(|()| attach_tracepoint(&mut ebpf, name, cat, tp)),
                Hook::SockOps => match cgroup::Cgroup::place(&opts.cgroup) {
                    Ok(Some(cg)) => {
                        let r = attach_sock_ops(&mut ebpf, &cg.dir);
                        t.cgroup = Some(cg);
                        r
                    }
                    Ok(None) => Err("off ([ebpf] cgroup = \"off\")".into()),
                    Err(e) => Err(format!("cgroup v2 placement: {e}")),
                },
            };
            t.programs[i].error = r.err();
        }
        t.ring = ebpf
            .take_map("EVENTS")
            .and_then(|m| RingBuf::try_from(m).ok());
        t.upstreams = ebpf
            .take_map("UPSTREAMS")
            .and_then(|m| BpfHashMap::try_from(m).ok());
        t.conns = ebpf
            .take_map("CONNS")
            .and_then(|m| BpfHashMap::try_from(m).ok());
        t.hist = ebpf
            .take_map("SRTT_HIST")
            .and_then(|m| Array::try_from(m).ok());
        t.sums = ebpf
            .take_map("SRTT_SUM_US")
            .and_then(|m| Array::try_from(m).ok());
        t.dropped = ebpf
            .take_map("DROPPED")
            .and_then(|m| Array::try_from(m).ok());
        if t.is_up("sock_ops")
            && let Some(aya::maps::Map::Array(m)) = ebpf.map("PORT_STATS")
        {
            use std::os::fd::AsFd;
            t.ports = PortStats::map(m.fd().as_fd()).ok().map(std::sync::Arc::new);
        }
        if t.ring.is_none() || t.upstreams.is_none() {
            t.fail_all("the object's maps are missing (build mismatch)");
        }
        t.ebpf = Some(ebpf);
        t
    }

    fn fail_all(&mut self, why: &str) {
        for p in &mut self.programs {
            p.error = Some(why.to_string());
        }
    }

    /// Every program, up or not.
    pub fn programs(&self) -> &[ProgramStatus] {
        &self.programs
    }

    /// Whether a program is attached.
    pub fn is_up(&self, name: &str) -> bool {
        self.programs.iter().any(|p| p.name == name && p.up())
    }

    /// Whether any program is attached.
    pub fn any_up(&self) -> bool {
        self.programs.iter().any(ProgramStatus::up)
    }

    /// The cgroup `sock_ops` is attached to.
    pub fn cgroup_dir(&self) -> Option<&Path> {
        self.cgroup.as_ref().map(|c| c.dir.as_path())
    }

    /// Replaces the upstream filter: events are reported only for these
    /// destinations, tagged with the given id. Unchanged entries are not
    /// touched.
    pub fn set_upstreams(&mut self, entries: &[(SocketAddr, u32)]) -> Result<(), Error> {
        let map = self.upstreams.as_mut().ok_or(Error::NotRunning)?;
        let want: HashSet<[u8; 20]> = entries.iter().map(|(a, _)| addr_key(*a)).collect();
        for k in self.filter.difference(&want) {
            map.remove(k).map_err(map_err("UPSTREAMS"))?;
        }
        for (a, id) in entries {
            map.insert(addr_key(*a), id, 0)
                .map_err(map_err("UPSTREAMS"))?;
        }
        self.filter = want;
        Ok(())
    }

    /// Waits up to `timeout` for events and hands each to `f`; returns how
    /// many were read. Without a ring buffer it sleeps `timeout`.
    pub fn poll(&mut self, timeout: Duration, mut f: impl FnMut(&Event)) -> Result<usize, Error> {
        let Some(ring) = self.ring.as_mut() else {
            std::thread::sleep(timeout);
            return Ok(0);
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(ring);
        let mut n = drain(ring, &mut f);
        if n == 0 && sys::wait_readable(fd, timeout)? {
            n = drain(ring, &mut f);
        }
        Ok(n)
    }

    /// Live stats of a connection by socket cookie (only the gateway's
    /// connections to upstreams, while they are open).
    pub fn conn_stats(&self, cookie: u64) -> Option<ConnStats> {
        let v = self.conns.as_ref()?.get(&cookie, 0).ok()?;
        let u = |o: usize| u32::from_ne_bytes([v[o], v[o + 1], v[o + 2], v[o + 3]]);
        Some(ConnStats {
            upstream: u(8),
            srtt_us: u(12),
            retrans: u(16),
            rtt_samples: u(20),
        })
    }

    /// The srtt histogram of one upstream id.
    pub fn srtt_histogram(&self, upstream: u32) -> Option<Histogram> {
        if upstream >= MAX_UPSTREAMS {
            return None;
        }
        let hist = self.hist.as_ref()?;
        let mut h = Histogram {
            buckets: [0; BUCKETS],
            sum_us: self.sums.as_ref()?.get(&upstream, 0).ok()?,
        };
        for (b, slot) in h.buckets.iter_mut().enumerate() {
            *slot = hist.get(&(upstream * BUCKETS as u32 + b as u32), 0).ok()?;
        }
        Some(h)
    }

    /// Per-port stats mapped from the kernel (when `sock_ops` is up).
    pub fn port_stats(&self) -> Option<std::sync::Arc<PortStats>> {
        self.ports.clone()
    }

    /// Events the ring buffer had no room for.
    pub fn dropped(&self) -> u64 {
        self.dropped
            .as_ref()
            .and_then(|d| d.get(&0, 0).ok())
            .unwrap_or(0)
    }
}

fn drain(ring: &mut RingBuf<MapData>, f: &mut impl FnMut(&Event)) -> usize {
    let mut n = 0;
    while let Some(item) = ring.next() {
        if let Some(e) = Event::parse(&item) {
            f(&e);
            n += 1;
        }
    }
    n
}

/// tracefs must be mounted, and readable, for classic tracepoints (aya
/// reads event ids from it); mount it when it is not.
fn ensure_tracefs() -> Result<(), String> {
    const PATHS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
    let populated = |p: &str| {
        std::fs::read_dir(p)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    };
    if PATHS.iter().any(|p| populated(p)) {
        return Ok(());
    }
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if let Some(p) = PATHS.iter().find(|p| {
        info.lines()
            .any(|l| l.split_whitespace().nth(4) == Some(**p))
    }) {
        return Err(format!(
            "tracefs at {p} is not readable by this user: grant CAP_DAC_READ_SEARCH or mount it with mode=0755"
        ));
    }
    sys::mount_tracefs().map_err(|e| {
        format!("tracefs is not mounted and mounting it on /sys/kernel/tracing failed: {e}")
    })
}

fn attach_tracepoint(ebpf: &mut Ebpf, name: &str, cat: &str, tp: &str) -> Result<(), String> {
    let prog: &mut TracePoint = ebpf
        .program_mut(name)
        .ok_or("not in the object")?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    prog.load().map_err(|e| format!("load: {e}"))?;
    prog.attach(cat, tp)
        .map_err(|e| format!("attach to {cat}/{tp}: {e}"))?;
    Ok(())
}

fn attach_sock_ops(ebpf: &mut Ebpf, dir: &Path) -> Result<(), String> {
    let prog: &mut SockOps = ebpf
        .program_mut("sock_ops")
        .ok_or("not in the object")?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    prog.load().map_err(|e| format!("load: {e}"))?;
    let cg = File::open(dir).map_err(|e| format!("open {}: {e}", dir.display()))?;
    // Single: a link attach still coexists with other links on the
    // cgroup; AllowMultiple is refused by bpf_link_create (EINVAL).
    prog.attach(cg, CgroupAttachMode::Single)
        .map_err(|e| format!("attach to {}: {e}", dir.display()))?;
    Ok(())
}
