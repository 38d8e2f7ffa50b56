//! The built-in mock provider: an OpenAI-compatible server for the
//! quickstart, the tests and the benchmarks.
//!
//! It runs on the same thread-per-core monoio design as the gateway so it
//! is never the bottleneck of a benchmark; its answers are deterministic
//! (text from the prompt and a seed) with exact `usage` numbers, and every
//! failure mode a provider shows can be switched on per instance or per
//! request (see `faults`).

pub mod faults;
pub mod openai;
mod server;
pub mod text;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

pub use faults::Faults;

use crate::config::DriverChoice;

/// How to run a mock instance.
#[derive(Debug, Clone)]
pub struct MockOptions {
    /// Listen address.
    pub listen: SocketAddr,
    /// Worker threads.
    pub workers: usize,
    /// Text seed.
    pub seed: u64,
    /// Completion length when the request sets no `max_tokens`.
    pub default_max_tokens: u64,
    /// Required `Authorization: Bearer` key, if any.
    pub api_key: Option<String>,
    /// Instance-wide fault settings.
    pub faults: Faults,
    /// Pin worker N to CPU `pin_base + N`.
    pub pin_base: Option<usize>,
    /// io_uring task-run mode of the mock's workers (as the gateway's
    /// `[server] io_uring_task_run`).
    pub task_run: crate::config::TaskRun,
    /// Event loop of the mock's workers.
    pub driver: DriverChoice,
}

/// Counters served at `GET /mock/stats`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Connections open now.
    pub open: AtomicI64,
    /// Requests answered.
    pub requests: AtomicU64,
}

impl Stats {
    fn json(&self) -> String {
        format!(
            "{{\"accepted\":{},\"open\":{},\"requests\":{}}}",
            self.accepted.load(Ordering::Relaxed),
            self.open.load(Ordering::Relaxed),
            self.requests.load(Ordering::Relaxed)
        )
    }
}

/// Starts the mock's worker threads; returns once all listen.
pub fn spawn(opts: MockOptions) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    let opts = Arc::new(opts);
    // Build both encoders off the request path: the first answers would
    // otherwise pay for loading the BPE tables.
    let _ = std::thread::Builder::new()
        .name("tollgate-mock-warm".into())
        .spawn(|| {
            crate::tokens::Encoding::Cl100k.count("warm");
            crate::tokens::Encoding::O200k.count("warm");
        });
    let stats = Arc::new(Stats::default());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
    let mut handles = Vec::new();
    for i in 0..opts.workers.max(1) {
        let opts = opts.clone();
        let stats = stats.clone();
        let ready = ready_tx.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("tollgate-mock-{i}"))
                .spawn(move || {
                    if let Some(base) = opts.pin_base {
                        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                        if let Err(e) = crate::sys::pin_to_cpu((base + i) % cores) {
                            tracing::warn!(error = %e, "mock: could not pin worker");
                        }
                    }
                    let ready2 = ready.clone();
                    let ran =
                        crate::server::run_on_runtime(opts.driver, opts.task_run, |_| async move {
                            match crate::server::bind(opts.listen) {
                                Ok(l) => {
                                    let _ = ready2.send(Ok(()));
                                    server::accept_loop(l, opts, stats).await;
                                }
                                Err(e) => {
                                    let _ = ready2.send(Err(e));
                                }
                            }
                        });
                    if let Err(e) = ran {
                        let _ = ready.send(Err(e));
                    }
                })?,
        );
    }
    drop(ready_tx);
    for _ in 0..handles.len() {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(std::io::Error::other("mock worker exited during start-up")),
        }
    }
    Ok(handles)
}
