//! The `tollgate-ebpf` thread: owns the loaded programs, blocks on the
//! ring buffer (never a worker), turns events into breaker failures,
//! pool evictions and slow marks, and refreshes the upstream filter and
//! the srtt snapshot.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tollgate_loader::{Event, Kind, Options, Telemetry};

use super::resets::{Resets, Verdict};
use super::{Health, cookies};
use crate::config::{Config, EbpfMode};
use crate::failover::shared::BreakerSync;
use crate::failover::{Effect, Permit, Transition, now_ms};
use crate::upstream::UpstreamRuntime;

/// Longest wait in the ring buffer before housekeeping runs.
const POLL: Duration = Duration::from_millis(200);
/// How often resolved addresses are pushed to the kernel filter.
const FILTER_REFRESH: Duration = Duration::from_secs(2);
/// How often srtt histograms and drop counts are read from the maps.
const MAPS_REFRESH: Duration = Duration::from_secs(1);

/// The running thread; [`Running::stop`] detaches the programs and
/// removes the cgroup the loader created.
pub struct Running {
    health: Arc<Health>,
    handle: std::thread::JoinHandle<()>,
}

impl Running {
    /// Stops the thread and waits for it (at most one poll interval).
    pub fn stop(self) {
        self.health.stop.store(true, Ordering::Release);
        let _ = self.handle.join();
    }
}

/// What the thread needs from the gateway.
struct Ctx {
    cfg: Arc<Config>,
    upstreams: Vec<Arc<UpstreamRuntime>>,
    sync: Option<(BreakerSync, Vec<usize>)>,
    health: Arc<Health>,
    /// (route, target) pairs per upstream id.
    targets: Vec<Vec<(usize, usize)>>,
    resets: Resets,
}

/// Loads the programs per `[ebpf]` and starts the thread. `Ok(None)` when
/// off or nothing could load (already logged); `Err` only for `on`.
pub fn start(
    cfg: Arc<Config>,
    upstreams: Vec<Arc<UpstreamRuntime>>,
    sync: Option<(BreakerSync, Vec<usize>)>,
    health: Arc<Health>,
) -> Result<Option<Running>, String> {
    let mode = cfg.ebpf.mode;
    if mode == EbpfMode::Off {
        let _ = health.programs.set(
            tollgate_loader::PROGRAMS
                .iter()
                .map(|(n, _)| (*n, false))
                .collect(),
        );
        tracing::info!(target: "tollgate::ebpf", "eBPF off ([ebpf] enabled = \"off\")");
        return Ok(None);
    }
    let opts = Options {
        cgroup: cfg.ebpf.cgroup.clone(),
    };
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let h2 = health.clone();
    let handle = std::thread::Builder::new()
        .name("tollgate-ebpf".into())
        .spawn(move || {
            let t0 = Instant::now();
            let mut tel = Telemetry::start(&opts);
            let statuses = tel.programs().to_vec();
            let ms = t0.elapsed().as_millis() as u64;
            let go = tel.any_up() && !(mode == EbpfMode::On && statuses.iter().any(|p| !p.up()));
            let ctx = Ctx::new(cfg, upstreams, sync, h2);
            // The filter is in place before the workers start: sock_ops
            // decides at connect time which sockets it follows.
            let mut filter = Vec::new();
            if go {
                filter = ctx.filter();
                if let Err(e) = tel.set_upstreams(&filter) {
                    tracing::warn!(target: "tollgate::ebpf", error = %e, "setting the upstream filter failed");
                    filter.clear();
                }
            }
            let _ = tx.send((
                statuses,
                tel.cgroup_dir().map(|p| p.display().to_string()),
                ms,
                tel.port_stats(),
            ));
            if go {
                run(tel, ctx, filter);
            }
        })
        .map_err(|e| format!("starting the eBPF thread: {e}"))?;
    let Ok((statuses, cgroup, ms, ports)) = rx.recv() else {
        return Err("the eBPF thread exited during start-up".into());
    };
    let _ = health
        .programs
        .set(statuses.iter().map(|p| (p.name, p.up())).collect());
    let down: Vec<String> = statuses
        .iter()
        .filter_map(|p| p.error.as_ref().map(|e| format!("{}: {e}", p.name)))
        .collect();
    if mode == EbpfMode::On && !down.is_empty() {
        let _ = handle.join();
        return Err(format!(
            "[ebpf] enabled = \"on\" but {} of {} programs did not load: {}",
            down.len(),
            statuses.len(),
            down.join("; ")
        ));
    }
    for p in &statuses {
        if let Some(e) = &p.error {
            tracing::warn!(target: "tollgate::ebpf", program = p.name, reason = %e,
                "eBPF program unavailable; running without its signals");
        }
    }
    let up = statuses.iter().filter(|p| p.up()).count();
    if up == 0 {
        let _ = handle.join();
        return Ok(None);
    }
    // Idle-connection eviction keys by cookie: RSTs come from
    // tcp_receive_reset, upstream FINs from sock_ops.
    if statuses
        .iter()
        .any(|p| (p.name == "tcp_receive_reset" || p.name == "sock_ops") && p.up())
    {
        cookies::enable();
    }
    if let Some(p) = ports {
        let _ = health.ports.set(p);
        cookies::enable_ports();
    }
    tracing::info!(target: "tollgate::ebpf", programs = up, of = statuses.len(),
        cgroup = cgroup.as_deref().unwrap_or("-"), load_ms = ms, "eBPF upstream health signals on");
    Ok(Some(Running { health, handle }))
}

impl Ctx {
    fn new(
        cfg: Arc<Config>,
        upstreams: Vec<Arc<UpstreamRuntime>>,
        sync: Option<(BreakerSync, Vec<usize>)>,
        health: Arc<Health>,
    ) -> Self {
        let mut targets = vec![Vec::new(); upstreams.len()];
        for (r, route) in cfg.routes.routes().iter().enumerate() {
            for (i, t) in route.targets.iter().enumerate() {
                if let Some(v) = targets.get_mut(t.upstream as usize) {
                    v.push((r, i));
                }
            }
        }
        Ctx {
            cfg,
            upstreams,
            sync,
            health,
            targets,
            resets: Resets::default(),
        }
    }

    /// (address, upstream id) of every resolved upstream address.
    fn filter(&self) -> Vec<(SocketAddr, u32)> {
        self.upstreams
            .iter()
            .enumerate()
            .flat_map(|(i, u)| {
                u.addrs()
                    .iter()
                    .map(move |a| (*a, i as u32))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn on_event(&mut self, e: &Event) {
        let up = e.upstream as usize;
        let Some(uh) = self.health.upstreams.get(up) else {
            return;
        };
        let count = |k: usize| {
            uh.events[k].fetch_add(1, Ordering::Relaxed);
        };
        match e.kind {
            Kind::Refused => {
                count(0);
                self.fail_upstream(up, e);
            }
            Kind::Reset => {
                count(1);
                match self.resets.reset((e.upstream, e.sport)) {
                    Verdict::Failure => self.fail_upstream(up, e),
                    // An idle pooled connection (evicted), or this host
                    // hung up first: not the upstream's failure.
                    Verdict::Idle | Verdict::HungUp => {}
                }
            }
            Kind::TimedOut => {
                count(2);
                self.fail_upstream(up, e);
            }
            Kind::SynRetransmit => {
                count(3);
                if !self.health.is_slow(up, now_ms()) {
                    tracing::warn!(target: "tollgate::ebpf", upstream = &*self.upstreams[up].cfg.name,
                        addr = %SocketAddr::new(e.daddr, e.dport),
                        "SYN retransmitted: upstream marked slow");
                }
                self.health.mark_slow(up, now_ms());
            }
            Kind::Retransmit => count(4),
            Kind::RstReceived => {
                // Comes before the socket error of the same RST.
                if cookies::mark_dead(e.cookie, cookies::Death::Rst) {
                    self.resets.idle_rst((e.upstream, e.sport));
                }
            }
            Kind::RstSent => {
                uh.rst_sent.fetch_add(1, Ordering::Relaxed);
            }
            Kind::PeerClosed => {
                cookies::mark_dead(e.cookie, cookies::Death::Fin);
            }
            Kind::State => {
                let new = u16::try_from(e.value).unwrap_or(u16::MAX);
                self.resets.state((e.upstream, e.sport), e.old_state, new);
            }
            Kind::Closed | Kind::OtherError => {}
        }
    }

    /// One failure for the breaker of every target on upstream `up`.
    fn fail_upstream(&self, up: usize, e: &Event) {
        let now = now_ms();
        let routes = &self.cfg.routes;
        for &(r, i) in &self.targets[up] {
            let route = &routes.routes()[r];
            let t = &route.targets[i];
            let Some(Transition::Opened(d)) =
                t.breaker.record(Permit::Go, Effect::Failure, None, now)
            else {
                continue;
            };
            tracing::warn!(
                target: "tollgate::breaker",
                model = &*route.name,
                upstream = &*self.upstreams[up].cfg.name,
                target_model = t.model.as_deref().unwrap_or("-"),
                break_ms = d.as_millis() as u64,
                source = "ebpf",
                signal = ?e.kind,
                "circuit breaker opened"
            );
            if let Some((sync, offsets)) = &self.sync {
                sync.publish(offsets[r] + i, d);
            }
        }
        self.health
            .record_delay(tollgate_loader::monotonic_ns().saturating_sub(e.ts_ns));
    }
}

fn run(mut tel: Telemetry, mut ctx: Ctx, mut filter: Vec<(SocketAddr, u32)>) {
    let mut last_filter = Instant::now();
    let mut last_maps = Instant::now();
    let mut filter_failed = false;
    while !ctx.health.stop.load(Ordering::Acquire) {
        if last_filter.elapsed() >= FILTER_REFRESH {
            last_filter = Instant::now();
            let want = ctx.filter();
            if want != filter {
                match tel.set_upstreams(&want) {
                    Ok(()) => {
                        filter = want;
                        filter_failed = false;
                    }
                    Err(e) if !filter_failed => {
                        filter_failed = true;
                        tracing::warn!(target: "tollgate::ebpf", error = %e, "updating the upstream filter failed");
                    }
                    Err(_) => {}
                }
            }
        }
        if let Err(e) = tel.poll(POLL, |ev| ctx.on_event(ev)) {
            tracing::warn!(target: "tollgate::ebpf", error = %e, "eBPF event loop stopped");
            return;
        }
        if last_maps.elapsed() >= MAPS_REFRESH {
            last_maps = Instant::now();
            for (i, u) in ctx.health.upstreams.iter().enumerate() {
                if let Some(h) = tel.srtt_histogram(i as u32)
                    && h.buckets.iter().any(|&n| n > 0)
                {
                    u.srtt.store(Some(Arc::new(h)));
                }
            }
            ctx.health.dropped.store(tel.dropped(), Ordering::Relaxed);
        }
    }
}
