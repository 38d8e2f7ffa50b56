//! The billing ledger: every usage record reaches the store once, and no
//! worker ever waits for that to happen.
//!
//! ```text
//! worker ── record(): try_send ──▶ bounded queue ──▶ tollgate-ledger thread
//!    │ (queue full: one line to the worker's            │ batches (batch_max or
//!    ▼  own spool file, see spool.rs)                   │ flush_interval), folds
//! spool/{instance}-o{n}.spool ──────── replay ─────────▶│ counters, one Lua call
//!                                                       ▼ per batch, pipelined
//!                           store down/slow ◀── Redis (redis.rs) | memory (memory.rs)
//!                           └▶ spool/{instance}-m.spool (fsync per batch), replayed
//!                              in order when the store answers again, and on start-up
//! ```
//!
//! Exactly once: each batch is named `(stream, seq)` (see `record.rs`);
//! the store applies a batch only when `seq` is above the stream's
//! high-water mark, atomically with the counters. The writer sends its own
//! batches strictly in `seq` order: while its spool file has pending
//! batches, new ones are appended behind them instead of being sent. So a
//! batch whose reply was lost, replayed from the spool, or replayed again
//! after a crash between the store's ack and the spool's truncation, is
//! counted once (within the mark's 30-day TTL).
//!
//! # Configuration (`[store]`)
//! `kind`/`url` pick the store; `spool_dir` (default `tollgate-spool`,
//! relative to the config file), `batch_max` (2048 records),
//! `flush_interval` ("100ms"), `ledger_queue` (65536 records), `timeout`
//! ("1s", each store call), `ledger_stream_max` (1000000 audit entries).
//!
//! # Failure behavior
//! Fail-open: the ledger never fails or delays a request. Store down or
//! slower than the store timeout: batches go to the spool and the writer
//! retries every second. Queue full: workers spill to their own file.
//! Records are lost only when the store is unreachable *and* the spool
//! cannot be written (disk full or failing); each such record is counted
//! in `tollgate_ledger_lost_total` and logged.
//!
//! What a crash loses: the queue lives in memory, so a process killed
//! without SIGTERM (SIGKILL, OOM, power) loses the records still queued or
//! in the batch being formed (at most `ledger_queue` records plus one
//! `flush_interval` of traffic). Spooled batches are fsync'd and survive;
//! worker spill lines are written without fsync, so they survive a process
//! crash but not a power loss before their replay (normally within one
//! `flush_interval`).

pub mod aggregate;
pub mod memory;
pub mod query;
pub mod record;
pub mod redis;
pub mod spool;
#[cfg(test)]
pub(crate) mod testredis;
mod writer;

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::usage::{UsageRecord, UsageSink};
use memory::MemoryTotals;
use record::{Batch, Rec};
use spool::SpillCtx;

/// A store failure (the writer logs it and spools).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Connecting, sending or the reply failed, or Redis answered an error.
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// The reply did not match the request.
    #[error("redis protocol: {0}")]
    Protocol(String),
    /// No connection could be kept.
    #[error("connection closed")]
    Closed,
    /// The spool directory cannot be used.
    #[error("spool: {0}")]
    Spool(String),
}

/// Where batches are applied.
pub trait Store: Send {
    /// Applies batches in order; per batch, true when applied now, false
    /// when its `(stream, seq)` was applied before (skipped).
    fn apply(&mut self, batches: &[&Batch]) -> Result<Vec<bool>, StoreError>;
}

/// Which store the ledger writes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// Totals in this process.
    Memory,
    /// Redis at this URL.
    Redis(String),
}

/// Ledger settings (from `[store]`).
#[derive(Debug, Clone)]
pub struct Options {
    /// Store.
    pub backend: Backend,
    /// Spool, batching, queue and timeout settings (`[store]`).
    pub settings: crate::config::LedgerConfig,
}

/// Counters exported at `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    queued: AtomicU64,
    dequeued: AtomicU64,
    written: AtomicU64,
    replayed: AtomicU64,
    duplicates: AtomicU64,
    spooled: AtomicU64,
    overflowed: AtomicU64,
    lost: AtomicU64,
    store_errors: AtomicU64,
    spool_bytes: AtomicU64,
    spool_skipped: AtomicU64,
}

/// The process's ledger; a [`UsageSink`].
pub struct Ledger {
    tx: SyncSender<Rec>,
    metrics: Arc<Metrics>,
    spill: SpillCtx,
    backend: Backend,
    timeout: Duration,
    totals: Arc<MemoryTotals>,
}

/// The writer thread, to stop at shutdown.
pub struct LedgerThread {
    handle: JoinHandle<()>,
    closing: Arc<AtomicBool>,
}

impl LedgerThread {
    /// Drains the queue to the store (or the spool) and waits for the
    /// thread; bounded by the store timeout plus a few seconds of replay.
    pub fn finish(self) {
        self.closing.store(true, Ordering::Release);
        if self.handle.join().is_err() {
            tracing::error!(target: "tollgate::ledger", "ledger thread panicked");
        }
    }
}

/// A random process instance id (16 hex digits).
fn instance_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u64(record::now_ms());
    format!("{:016x}", h.finish())
}

/// Starts the writer thread.
pub fn start(opts: Options) -> Result<(Arc<Ledger>, LedgerThread), StoreError> {
    static LEDGERS: AtomicU64 = AtomicU64::new(0);
    let instance: Arc<str> = Arc::from(instance_id());
    let (tx, rx) = sync_channel(opts.settings.queue.max(1));
    let metrics = Arc::new(Metrics::default());
    let totals = Arc::new(MemoryTotals::default());
    let store: Box<dyn Store> = match &opts.backend {
        Backend::Memory => Box::new(memory::MemoryStore::new(totals.clone())),
        Backend::Redis(url) => Box::new(redis::RedisStore::new(
            url,
            opts.settings.timeout,
            opts.settings.stream_max,
        )?),
    };
    // A spool replays and deletes files of processes that are gone: two
    // live processes must never share one.
    let lock = match &opts.backend {
        Backend::Memory => None,
        Backend::Redis(_) => {
            Some(spool::lock(&opts.settings.spool_dir).map_err(StoreError::Spool)?)
        }
    };
    let closing = Arc::new(AtomicBool::new(false));
    let w = writer::Writer::new(&opts, store, instance.clone(), metrics.clone(), lock);
    let c = closing.clone();
    let handle = std::thread::Builder::new()
        .name("tollgate-ledger".into())
        .spawn(move || w.run(rx, c))
        .map_err(|e| StoreError::Protocol(format!("spawning the ledger thread: {e}")))?;
    let ledger = Ledger {
        tx,
        metrics,
        spill: SpillCtx {
            dir: opts.settings.spool_dir.clone(),
            instance,
            ledger_id: LEDGERS.fetch_add(1, Ordering::Relaxed),
            next_file: AtomicU64::new(0),
        },
        backend: opts.backend.clone(),
        timeout: opts.settings.timeout,
        totals,
    };
    Ok((Arc::new(ledger), LedgerThread { handle, closing }))
}

impl Ledger {
    /// Takes one record (never blocks on the store).
    pub fn push(&self, rec: Rec) {
        match self.tx.try_send(rec) {
            Ok(()) => {
                self.metrics.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(rec) | TrySendError::Disconnected(rec)) => {
                match spool::spill(&self.spill, rec) {
                    Ok(()) => {
                        self.metrics.overflowed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        let n = self.metrics.lost.fetch_add(1, Ordering::Relaxed) + 1;
                        if n.is_power_of_two() {
                            tracing::error!(target: "tollgate::ledger", error = %e, lost = n, "ledger queue full and the spool is not writable: usage record lost");
                        }
                    }
                }
            }
        }
    }

    /// The store this ledger writes to.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// In-memory totals (the memory store's data).
    pub fn memory_totals(&self) -> &MemoryTotals {
        &self.totals
    }

    /// Timeout of store calls.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A snapshot of the ledger counters.
    pub fn stats(&self) -> Stats {
        let m = &self.metrics;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let queued = get(&m.queued);
        Stats {
            queued,
            queue_depth: queued.saturating_sub(get(&m.dequeued)),
            written: get(&m.written),
            spooled: get(&m.spooled),
            overflowed: get(&m.overflowed),
            replayed: get(&m.replayed),
            duplicates: get(&m.duplicates),
            lost: get(&m.lost),
            store_errors: get(&m.store_errors),
            spool_bytes: get(&m.spool_bytes),
            spool_skipped_lines: get(&m.spool_skipped),
        }
    }

    /// Prometheus text of the ledger counters.
    pub fn render(&self, out: &mut String) {
        let s = self.stats();
        for (name, kind, help, v) in [
            (
                "queued_total",
                "counter",
                "Usage records accepted into the ledger queue.",
                s.queued,
            ),
            (
                "queue_depth",
                "gauge",
                "Usage records waiting in the ledger queue.",
                s.queue_depth,
            ),
            (
                "written_total",
                "counter",
                "Usage records written to the store straight from the queue.",
                s.written,
            ),
            (
                "spooled_total",
                "counter",
                "Usage records written to the spool because the store was down or behind.",
                s.spooled,
            ),
            (
                "overflowed_total",
                "counter",
                "Usage records spilled to the spool by workers because the queue was full.",
                s.overflowed,
            ),
            (
                "replayed_total",
                "counter",
                "Usage records written to the store from the spool.",
                s.replayed,
            ),
            (
                "duplicates_total",
                "counter",
                "Usage records the store had already applied (skipped on replay).",
                s.duplicates,
            ),
            (
                "lost_total",
                "counter",
                "Usage records lost (queue full or store down, and the spool not writable).",
                s.lost,
            ),
            (
                "store_errors_total",
                "counter",
                "Failed store calls.",
                s.store_errors,
            ),
            (
                "spool_bytes",
                "gauge",
                "Spooled bytes not yet acknowledged by the store.",
                s.spool_bytes,
            ),
            (
                "spool_skipped_lines_total",
                "counter",
                "Corrupt or torn spool lines skipped.",
                s.spool_skipped_lines,
            ),
        ] {
            let _ = writeln!(out, "# HELP tollgate_ledger_{name} {help}");
            let _ = writeln!(out, "# TYPE tollgate_ledger_{name} {kind}");
            let _ = writeln!(out, "tollgate_ledger_{name} {v}");
        }
    }
}

/// Ledger counters at one moment (see `render` for their meaning).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Accepted into the queue.
    pub queued: u64,
    /// Waiting in the queue.
    pub queue_depth: u64,
    /// Written from the queue.
    pub written: u64,
    /// Written to the writer's spool file.
    pub spooled: u64,
    /// Spilled by workers (queue full).
    pub overflowed: u64,
    /// Written from the spool.
    pub replayed: u64,
    /// Skipped as already applied.
    pub duplicates: u64,
    /// Lost.
    pub lost: u64,
    /// Failed store calls.
    pub store_errors: u64,
    /// Spool bytes pending.
    pub spool_bytes: u64,
    /// Spool lines skipped.
    pub spool_skipped_lines: u64,
}

impl UsageSink for Ledger {
    fn record(&self, r: &UsageRecord) {
        self.push(Rec::from_usage(r, record::now_ms()));
    }
}

#[cfg(test)]
mod tests;
