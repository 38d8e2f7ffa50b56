//! The gateway process: worker threads (one per core, each its own
//! runtime and listener), the embedded mock, the admin listener, signals
//! and graceful shutdown.
//!
//! # Failure behavior
//! Start-up is all or nothing: if any worker cannot bind or build its
//! runtime, the others are stopped and `serve` fails with the reason.
//! After start-up, a panicking connection task is contained by the runtime
//! (panics are compiled out of the data path by lint, so this is a last
//! line of defence).

/// Public for the criterion benches (`benches/micro/sse.rs`).
pub mod account;
mod admin;
mod admin_breakers;
mod admin_keys;
mod admin_usage;
mod client;
mod conn;
mod conn_gauges;
mod drain;
mod idle_sweep;
mod local;
mod proxy;
mod relay;
mod slots;
mod spares;
mod timer;
mod worker;

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow};

pub use worker::{Driver, bind, run_on_runtime};

use crate::config::Config;
use worker::Shared;

/// Runs the gateway until SIGTERM or SIGINT, then drains.
pub fn serve(cfg: Config) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    if let Some(m) = &cfg.mock {
        crate::mock::spawn(crate::mock::MockOptions {
            listen: m.listen,
            workers: 1,
            seed: m.seed,
            default_max_tokens: 64,
            api_key: None,
            faults: crate::mock::Faults::default(),
            pin_base: None,
            task_run: cfg.server.task_run,
            driver: crate::config::DriverChoice::Auto,
        })
        .with_context(|| format!("starting the embedded mock on {}", m.listen))?;
        tracing::info!(listen = %m.listen, "embedded mock provider listening");
    }
    // Build the BPE tables before the first request needs them.
    let warm = Instant::now();
    crate::tokens::warm_up(&cfg.routes.encodings());
    tracing::debug!(
        ms = warm.elapsed().as_millis() as u64,
        "token encoders ready"
    );
    let upstreams = crate::upstream::build(&cfg.upstreams).map_err(|e| anyhow!(e))?;
    crate::upstream::spawn_resolver(&upstreams);
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let token_metrics = Arc::new(crate::usage::TokenMetrics::default());
    let (ledger, ledger_thread) = start_ledger(&cfg)?;
    let sinks = crate::usage::Sinks::new(vec![
        Arc::new(crate::usage::LogSink),
        token_metrics.clone(),
        ledger.clone(),
    ]);
    let breaker_sync = match &cfg.store {
        crate::config::StoreConfig::Memory => None,
        crate::config::StoreConfig::Redis { url } => {
            let mut offsets = Vec::with_capacity(cfg.routes.len());
            let mut all = Vec::new();
            for r in cfg.routes.routes() {
                offsets.push(all.len());
                for (i, t) in r.targets.iter().enumerate() {
                    let up = cfg
                        .upstreams
                        .get(t.upstream as usize)
                        .map_or("?", |u| u.name.as_ref());
                    all.push(crate::failover::shared::Shared {
                        key: format!("tollgate:breaker:{}:{}:{i}", r.name, up),
                        breaker: t.breaker.clone(),
                    });
                }
            }
            let sync = crate::failover::shared::start(url, all).map_err(|e| anyhow!(e))?;
            tracing::info!(%url, "circuit breakers shared through redis");
            Some((sync, offsets))
        }
    };
    let (auth, key_store) = start_auth(&cfg)?;
    let health = Arc::new(crate::health::Health::new(upstreams.len()));
    // Before any worker opens an upstream socket: sockets stay in the
    // cgroup they were created in, and sock_ops sees only that cgroup.
    let mut ebpf = crate::health::start(
        cfg.clone(),
        upstreams.clone(),
        breaker_sync.clone(),
        health.clone(),
    )
    .map_err(|e| anyhow!(e))?;
    let shared = Arc::new(Shared {
        health,
        auth,
        key_store,
        ledger,
        breaker_sync,
        token_metrics,
        sinks,
        models_json: local::models_json(&cfg, created),
        cfg: cfg.clone(),
        upstreams,
        started: Instant::now(),
        conns: Default::default(),
    });
    // The admin listener is up before any worker accepts, so a node that
    // answers on its client port also answers on its admin port. `/status`
    // shows the workers' driver once they report it.
    let worker_driver = Arc::new(std::sync::OnceLock::new());
    if let Some(addr) = cfg.server.admin_listen {
        admin::spawn(addr, shared.clone(), worker_driver.clone())
            .context("starting the admin listener")?;
    }
    let workers = cfg.server.workers;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<Driver, String>>();
    let mut stops = Vec::with_capacity(workers);
    let mut handles = Vec::with_capacity(workers);
    for id in 0..workers {
        let (stop_tx, stop_rx) = futures_channel::oneshot::channel::<()>();
        stops.push(stop_tx);
        let shared = shared.clone();
        let ready = ready_tx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("tollgate-w{id}"))
            .spawn(move || {
                let s = &shared.cfg.server;
                if let Some(Err(e)) = s.pin_cpus.then(|| crate::sys::pin_to_cpu(id % cores)) {
                    tracing::warn!(worker = id, error = %e, "could not pin worker to a CPU");
                }
                let ready2 = ready.clone();
                let listen = s.listen;
                let ran = run_on_runtime(s.driver, s.task_run, |driver| async move {
                    match bind(listen) {
                        Ok(l) => {
                            let _ = ready2.send(Ok(driver));
                            worker::run(id, shared, l, stop_rx, driver).await;
                        }
                        Err(e) => {
                            let _ = ready2.send(Err(format!("binding {listen}: {e}")));
                        }
                    }
                });
                if let Err(e) = ran {
                    let _ = ready.send(Err(format!("starting the runtime: {e}")));
                }
            })
            .context("spawning a worker thread")?;
        handles.push(handle);
    }
    drop(ready_tx);
    let mut drivers = Vec::with_capacity(workers);
    let mut failure = None;
    for _ in 0..workers {
        match ready_rx.recv() {
            Ok(Ok(d)) => drivers.push(d),
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some("a worker exited during start-up".into()),
        }
    }
    if let Some(e) = failure {
        for s in stops {
            let _ = s.send(());
        }
        if let Some(e) = ebpf.take() {
            e.stop();
        }
        return Err(anyhow!(e));
    }
    let driver = drivers.first().copied().unwrap_or(Driver::Legacy);
    let _ = worker_driver.set(driver);
    tracing::info!(
        listen = %cfg.server.listen,
        workers,
        driver = driver.name(),
        models = cfg.routes.len(),
        upstreams = cfg.upstreams.len(),
        "tollgate ready"
    );
    wait_for_signal()?;
    tracing::info!(grace = ?cfg.server.shutdown_grace, "shutting down: draining connections");
    for s in stops {
        let _ = s.send(());
    }
    for h in handles {
        let _ = h.join();
    }
    // Workers are gone: no record can arrive any more.
    ledger_thread.finish();
    if let Some(e) = ebpf {
        e.stop();
    }
    tracing::info!("stopped");
    Ok(())
}

fn start_ledger(
    cfg: &Config,
) -> anyhow::Result<(Arc<crate::ledger::Ledger>, crate::ledger::LedgerThread)> {
    let l = &cfg.ledger;
    let backend = match &cfg.store {
        crate::config::StoreConfig::Memory => crate::ledger::Backend::Memory,
        crate::config::StoreConfig::Redis { url } => crate::ledger::Backend::Redis(url.clone()),
    };
    crate::ledger::start(crate::ledger::Options {
        backend,
        settings: l.clone(),
    })
    .context("starting the billing ledger")
}

fn wait_for_signal() -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .context("installing signal handlers")?;
    let _ = signals.forever().next();
    Ok(())
}

/// Keys, limits and, with a Redis store, the threads that share them.
fn start_auth(
    cfg: &Config,
) -> anyhow::Result<(Arc<crate::auth::Auth>, crate::auth::store::KeyStore)> {
    use crate::auth::Auth;
    use crate::auth::store::KeyStore;
    use crate::limits::{Allow, Limiter, lease::LeaseThread};
    let a = &cfg.auth;
    if !a.required {
        tracing::warn!(
            target: "tollgate::auth",
            "auth is off: requests are served without an API key (no [[keys]] and no [auth] mode = \"keys\")"
        );
    }
    match &cfg.store {
        crate::config::StoreConfig::Memory => {
            let auth = Arc::new(Auth::new(a, Arc::new(Limiter::default())));
            Ok((auth, KeyStore::memory()))
        }
        crate::config::StoreConfig::Redis { url } => {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let limiter = Arc::new(Limiter::shared(tx));
            let auth = Arc::new(Auth::new(a, limiter.clone()));
            let client =
                redis::Client::open(url.as_str()).map_err(|e| anyhow!("store.url: {e}"))?;
            let a2 = auth.clone();
            let lease = LeaseThread {
                client,
                limiter,
                counters: Arc::new(move || a2.all_counters()),
                down: if a.fail_closed {
                    Allow::Closed
                } else {
                    Allow::Local
                },
                wake: rx,
            };
            std::thread::Builder::new()
                .name("tollgate-limits".into())
                .spawn(move || lease.run())?;
            let store = KeyStore::redis(url, auth.clone()).map_err(|e| anyhow!(e))?;
            tracing::info!(target: "tollgate::auth", %url, "keys and limits shared through redis");
            Ok((auth, store))
        }
    }
}
