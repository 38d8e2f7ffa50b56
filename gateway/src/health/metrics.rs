//! The eBPF side of the admin `/metrics`, Prometheus text. The names of
//! the first three families are fixed by the issue that asked for them.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{DELAY_BOUNDS, Health, KINDS, cookies};
use crate::upstream::UpstreamRuntime;

/// Histogram buckets rendered for srtt: `le` = 2^(b+1) µs, 2 µs .. 16.8 s.
const SRTT_BUCKETS: usize = 24;

/// Appends every eBPF metric family.
pub fn render(h: &Health, ups: &[Arc<UpstreamRuntime>], out: &mut String) {
    let name = |i: usize| ups.get(i).map_or("?", |u| u.cfg.name.as_ref());
    out.push_str("# HELP tollgate_ebpf_program_up eBPF program attached (1) or not (0).\n");
    out.push_str("# TYPE tollgate_ebpf_program_up gauge\n");
    for (p, up) in h.programs.get().map(Vec::as_slice).unwrap_or(&[]) {
        let _ = writeln!(
            out,
            "tollgate_ebpf_program_up{{program=\"{p}\"}} {}",
            u8::from(*up)
        );
    }
    out.push_str("# HELP tollgate_upstream_tcp_events_total TCP events the kernel reported on upstream addresses.\n");
    out.push_str("# TYPE tollgate_upstream_tcp_events_total counter\n");
    for (i, u) in h.upstreams.iter().enumerate() {
        for (k, kind) in KINDS.iter().enumerate() {
            let _ = writeln!(
                out,
                "tollgate_upstream_tcp_events_total{{upstream=\"{}\",kind=\"{kind}\"}} {}",
                label(name(i)),
                u.events[k].load(Ordering::Relaxed)
            );
        }
    }
    out.push_str("# HELP tollgate_upstream_tcp_srtt_seconds Smoothed RTT of upstream connections, one sample per RTT measurement (sock_ops).\n");
    out.push_str("# TYPE tollgate_upstream_tcp_srtt_seconds histogram\n");
    for (i, u) in h.upstreams.iter().enumerate() {
        let Some(hist) = u.srtt.load_full() else {
            continue;
        };
        let up = label(name(i));
        let mut cum = 0u64;
        for (b, n) in hist.buckets.iter().enumerate().take(SRTT_BUCKETS) {
            cum += n;
            let le = (1u64 << (b + 1)) as f64 / 1e6;
            let _ = writeln!(
                out,
                "tollgate_upstream_tcp_srtt_seconds_bucket{{upstream=\"{up}\",le=\"{le}\"}} {cum}"
            );
        }
        let total: u64 = hist.buckets.iter().sum();
        let _ = writeln!(
            out,
            "tollgate_upstream_tcp_srtt_seconds_bucket{{upstream=\"{up}\",le=\"+Inf\"}} {total}"
        );
        let _ = writeln!(
            out,
            "tollgate_upstream_tcp_srtt_seconds_sum{{upstream=\"{up}\"}} {}",
            hist.sum_us as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "tollgate_upstream_tcp_srtt_seconds_count{{upstream=\"{up}\"}} {total}"
        );
    }
    out.push_str(
        "# HELP tollgate_upstream_tcp_resets_sent_total RSTs this host sent to an upstream.\n",
    );
    out.push_str("# TYPE tollgate_upstream_tcp_resets_sent_total counter\n");
    for (i, u) in h.upstreams.iter().enumerate() {
        let _ = writeln!(
            out,
            "tollgate_upstream_tcp_resets_sent_total{{upstream=\"{}\"}} {}",
            label(name(i)),
            u.rst_sent.load(Ordering::Relaxed)
        );
    }
    out.push_str(
        "# HELP tollgate_upstream_slow Upstream marked slow by a SYN retransmit (1) or not (0).\n",
    );
    out.push_str("# TYPE tollgate_upstream_slow gauge\n");
    let now = crate::failover::now_ms();
    for i in 0..h.upstreams.len() {
        let _ = writeln!(
            out,
            "tollgate_upstream_slow{{upstream=\"{}\"}} {}",
            label(name(i)),
            u8::from(h.is_slow(i, now))
        );
    }
    let (rst, fin, evicted) = cookies::counts();
    out.push_str("# HELP tollgate_upstream_pool_idle_closed_total Idle pooled connections the upstream reset (rst) or closed (fin), as the kernel saw it.\n");
    out.push_str("# TYPE tollgate_upstream_pool_idle_closed_total counter\n");
    let _ = writeln!(
        out,
        "tollgate_upstream_pool_idle_closed_total{{how=\"rst\"}} {rst}"
    );
    let _ = writeln!(
        out,
        "tollgate_upstream_pool_idle_closed_total{{how=\"fin\"}} {fin}"
    );
    out.push_str("# HELP tollgate_upstream_pool_evictions_total Pooled connections evicted before use because the kernel saw them reset or closed.\n");
    out.push_str("# TYPE tollgate_upstream_pool_evictions_total counter\n");
    let _ = writeln!(out, "tollgate_upstream_pool_evictions_total {evicted}");
    out.push_str(
        "# HELP tollgate_ebpf_events_dropped_total Events lost because the ring buffer was full.\n",
    );
    out.push_str("# TYPE tollgate_ebpf_events_dropped_total counter\n");
    let _ = writeln!(
        out,
        "tollgate_ebpf_events_dropped_total {}",
        h.dropped.load(Ordering::Relaxed)
    );
    out.push_str("# HELP tollgate_ebpf_signal_delay_seconds Kernel event to breaker decision.\n");
    out.push_str("# TYPE tollgate_ebpf_signal_delay_seconds histogram\n");
    let mut cum = 0u64;
    for (b, le) in DELAY_BOUNDS.iter().enumerate() {
        cum += h.delay[b].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "tollgate_ebpf_signal_delay_seconds_bucket{{le=\"{le}\"}} {cum}"
        );
    }
    cum += h.delay[DELAY_BOUNDS.len()].load(Ordering::Relaxed);
    let _ = writeln!(
        out,
        "tollgate_ebpf_signal_delay_seconds_bucket{{le=\"+Inf\"}} {cum}"
    );
    let _ = writeln!(
        out,
        "tollgate_ebpf_signal_delay_seconds_sum {}",
        h.delay_sum_ns.load(Ordering::Relaxed) as f64 / 1e9
    );
    let _ = writeln!(out, "tollgate_ebpf_signal_delay_seconds_count {cum}");
}

fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
