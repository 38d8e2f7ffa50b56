//! One worker: a thread with its own monoio runtime, listener
//! (SO_REUSEPORT), upstream pools and balancing state. Nothing here is
//! shared with other workers except read-only [`Shared`] data.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::net::{ListenerOpts, TcpListener};

use super::drain::Drain;
use crate::config::{Config, DriverChoice, TaskRun};
use crate::route::Picker;
use crate::upstream::{Pool, UpstreamRuntime};

/// State built once and shared by all workers: read-only but for its
/// counters.
pub struct Shared {
    /// The config.
    pub cfg: Arc<Config>,
    /// Upstreams, indexed like `cfg.upstreams`.
    pub upstreams: Vec<Arc<UpstreamRuntime>>,
    /// Pre-rendered `GET /v1/models` body.
    pub models_json: Vec<u8>,
    /// Process start, for `/status`.
    pub started: Instant,
    /// Where usage records go.
    pub sinks: crate::usage::Sinks,
    /// Token totals (also one of the sinks), rendered at `/metrics`.
    pub token_metrics: Arc<crate::usage::TokenMetrics>,
    /// Publishes breaker trips to other nodes (`[store] kind = "redis"`),
    /// with the flat index of each route's first target.
    pub breaker_sync: Option<(crate::failover::shared::BreakerSync, Vec<usize>)>,
    /// The kernel's view of the upstreams (eBPF).
    pub health: Arc<crate::health::Health>,
    /// Keys, tenants and limit counters.
    pub auth: Arc<crate::auth::Auth>,
    /// Where keys made through the admin API are kept.
    pub key_store: crate::auth::store::KeyStore,
    /// The billing ledger (also one of the sinks), for `/admin/usage`
    /// and `/metrics`.
    pub ledger: Arc<crate::ledger::Ledger>,
    /// Open and parked client connections, rendered at `/metrics`.
    pub conns: super::conn_gauges::ConnGauges,
}

/// Per-worker state, owned by the worker thread.
pub struct Worker {
    /// Worker index.
    pub id: usize,
    /// Shared data.
    pub shared: Arc<Shared>,
    /// Keep-alive pools.
    pub pool: RefCell<Pool>,
    /// Weighted round robin state.
    pub picker: RefCell<Picker>,
    /// Shutdown signal.
    pub drain: Rc<Drain>,
    /// Open client connections.
    pub active: Cell<usize>,
    /// Idle deadlines of parked client connections.
    pub idle: Rc<super::idle_sweep::IdleSweep>,
    /// Buffers reused from request to request.
    pub spares: super::spares::Spares,
    ids: RequestIds,
}

impl Worker {
    /// The config.
    pub fn cfg(&self) -> &Config {
        &self.shared.cfg
    }

    /// A fresh request id.
    pub fn next_request_id(&self) -> [u8; 24] {
        self.ids.next()
    }
}

/// Request ids: 8 hex digits unique to the process and worker, then a
/// 16-digit per-worker counter. Unique without coordination, cheap, and
/// sortable by arrival within a worker.
struct RequestIds {
    prefix: [u8; 8],
    counter: Cell<u64>,
}

impl RequestIds {
    fn new(worker: usize) -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(worker);
        h.write_u32(std::process::id());
        let seed = h.finish() as u32;
        let mut prefix = [0u8; 8];
        hex(&mut prefix, u64::from(seed));
        RequestIds {
            prefix,
            counter: Cell::new(0),
        }
    }

    fn next(&self) -> [u8; 24] {
        let n = self.counter.get().wrapping_add(1);
        self.counter.set(n);
        let mut out = [0u8; 24];
        out[..8].copy_from_slice(&self.prefix);
        hex(&mut out[8..], n);
        out
    }
}

fn hex(out: &mut [u8], mut v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = DIGITS[(v & 15) as usize];
        v >>= 4;
    }
}

/// Which driver a worker ended up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// io_uring.
    IoUring,
    /// epoll.
    Legacy,
}

impl Driver {
    /// Name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Driver::IoUring => "io_uring",
            Driver::Legacy => "legacy (epoll)",
        }
    }
}

/// Runs `f` on a new monoio runtime of the chosen driver; returns which
/// driver ran. Used by gateway workers, the admin thread and the mock.
/// `task_run` picks when io_uring completion work runs; a kernel too old
/// for a mode gets the next weaker one (defer → coop → interrupt).
pub fn run_on_runtime<F, Fut>(
    choice: DriverChoice,
    task_run: TaskRun,
    f: F,
) -> std::io::Result<Driver>
where
    F: FnOnce(Driver) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    const ENTRIES: u32 = 1024;
    let try_uring = matches!(choice, DriverChoice::Auto | DriverChoice::IoUring);
    if try_uring {
        let mut mode = task_run;
        let built = loop {
            let mut urb = io_uring::IoUring::builder();
            match mode {
                TaskRun::Defer => {
                    urb.setup_single_issuer().setup_defer_taskrun();
                }
                TaskRun::Coop => {
                    urb.setup_coop_taskrun().setup_taskrun_flag();
                }
                TaskRun::Interrupt => {}
            }
            let built = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .with_entries(ENTRIES)
                .uring_builder(urb)
                .enable_timer()
                .build();
            let weaker = match mode {
                TaskRun::Defer => TaskRun::Coop,
                TaskRun::Coop => TaskRun::Interrupt,
                TaskRun::Interrupt => break built,
            };
            match built {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::info!(?mode, fallback = ?weaker, "the kernel refused this io_uring task-run mode");
                    mode = weaker;
                }
                other => break other,
            }
        };
        match built {
            Ok(mut rt) => {
                rt.block_on(f(Driver::IoUring));
                return Ok(Driver::IoUring);
            }
            Err(e) if choice == DriverChoice::IoUring => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "io_uring unavailable; falling back to the legacy (epoll) driver");
            }
        }
    }
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()?;
    rt.block_on(f(Driver::Legacy));
    Ok(Driver::Legacy)
}

/// Binds a listener with SO_REUSEPORT so each worker accepts on its own
/// socket and the kernel spreads connections.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let opts = ListenerOpts::new()
        .reuse_port(true)
        .reuse_addr(true)
        .backlog(4096);
    TcpListener::bind_with_config(addr, &opts)
}

/// The body of one worker thread: accept until drained, then wait for
/// open connections up to the grace period.
pub async fn run(
    id: usize,
    shared: Arc<Shared>,
    listener: TcpListener,
    shutdown: futures_channel::oneshot::Receiver<()>,
    driver: Driver,
) {
    let worker = Rc::new(Worker {
        id,
        shared: shared.clone(),
        pool: RefCell::new(Pool::default()),
        picker: RefCell::new(Picker::default()),
        drain: Rc::new(Drain::default()),
        active: Cell::new(0),
        idle: Rc::default(),
        spares: Default::default(),
        ids: RequestIds::new(id),
    });
    tracing::info!(worker = id, driver = driver.name(), listen = %shared.cfg.server.listen, "worker started");
    monoio::spawn(sweep_pools(worker.clone()));
    let idle_period = super::idle_sweep::IdleSweep::period(shared.cfg.server.limits.idle_timeout);
    monoio::spawn(worker.idle.clone().run(idle_period));
    let accept = accept_loop(worker.clone(), listener);
    monoio::select! {
        _ = accept => {},
        _ = shutdown => {},
    }
    // The listener was dropped with the accept loop: no new connections.
    worker.drain.raise();
    let deadline = Instant::now() + shared.cfg.server.shutdown_grace;
    while worker.active.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
    if worker.active.get() > 0 {
        tracing::warn!(
            worker = id,
            open = worker.active.get(),
            "grace period over; closing remaining connections"
        );
    }
}

/// An accepted client connection, counted while it lives: in the
/// worker's `active` (shutdown waits for it to reach 0) and in the
/// process-wide `tollgate_client_connections` gauge.
struct Accepted(Rc<Worker>);

impl Accepted {
    fn new(w: Rc<Worker>) -> Self {
        w.active.set(w.active.get() + 1);
        w.shared.conns.opened();
        Accepted(w)
    }
}

impl Drop for Accepted {
    fn drop(&mut self) {
        self.0.active.set(self.0.active.get() - 1);
        self.0.shared.conns.closed();
    }
}

async fn accept_loop(worker: Rc<Worker>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                let _ = stream.set_nodelay(true);
                // Counted from here, before the task first runs: a
                // shutdown right now still waits for it.
                let open = Accepted::new(worker.clone());
                monoio::spawn(async move {
                    super::conn::serve(&open.0, stream).await;
                    drop(open);
                });
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(worker = worker.id, error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn sweep_pools(worker: Rc<Worker>) {
    loop {
        monoio::time::sleep(Duration::from_secs(5)).await;
        let ups = &worker.shared.upstreams;
        worker
            .pool
            .borrow_mut()
            .sweep(|i| ups.get(i).map_or(Duration::ZERO, |u| u.cfg.idle_timeout));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use monoio::io::{AsyncReadRentExt, AsyncWriteRentExt};

    /// Every task-run mode moves bytes over real TCP and wakes on a
    /// waker fired from another thread (how shutdown reaches a worker).
    #[test]
    fn every_task_run_mode_serves_io_and_foreign_wakeups() {
        for mode in [TaskRun::Defer, TaskRun::Coop, TaskRun::Interrupt] {
            let (tx, rx) = futures_channel::oneshot::channel::<u32>();
            let sender = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                let _ = tx.send(7);
            });
            let mut echoed = Vec::new();
            let mut woke = None;
            let ran = run_on_runtime(DriverChoice::Auto, mode, |_| async {
                let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
                let addr = listener.local_addr().unwrap();
                let server = monoio::spawn(async move {
                    let (mut s, _) = listener.accept().await.unwrap();
                    let (r, buf) = s.read_exact(vec![0u8; 5]).await;
                    r.unwrap();
                    let (r, _) = s.write_all(buf).await;
                    r.unwrap();
                });
                let mut c = monoio::net::TcpStream::connect(addr).await.unwrap();
                let (r, _) = c.write_all(b"hello".to_vec()).await;
                r.unwrap();
                let (r, buf) = c.read_exact(vec![0u8; 5]).await;
                r.unwrap();
                echoed = buf;
                server.await;
                woke = rx.await.ok();
            })
            .unwrap();
            sender.join().unwrap();
            assert_eq!(echoed, b"hello", "{mode:?} on {ran:?}");
            assert_eq!(woke, Some(7), "{mode:?} on {ran:?}");
        }
    }
}
