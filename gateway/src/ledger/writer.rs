//! The ledger thread: turns queued records into batches and gets every
//! batch into the store, through the spool when it has to.
//!
//! One step: collect a batch (up to `batch_max` records, or whatever came
//! within `flush_interval` of the first), then send, in one pipeline, the
//! writer's pending spooled batches (oldest first), the new batch (only
//! when nothing of ours is pending ahead of it, so our stream stays in
//! `seq` order) and pending lines of other spool files. On success every
//! sent batch is acknowledged; on failure the new batch is appended to the
//! spool and the store is retried after [`RETRY`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use super::record::{Batch, Rec};
use super::spool::{Pending, Spool};
use super::{Metrics, Options, Store};

/// Wait before retrying a store that failed.
pub const RETRY: Duration = Duration::from_secs(1);
/// Spooled batches of the writer's file sent per pipeline.
const MAX_LINES: usize = 32;
/// Lines of other files sent per pipeline (worker spill lines hold one
/// record each).
const MAX_OTHER_LINES: usize = 4096;
/// About this many spooled records per pipeline, per source.
const MAX_RECS: usize = 64 * 1024;
/// Longest wait for a record without looking at the shutdown flag.
const SLICE: Duration = Duration::from_millis(50);
/// Longest replay of the spool at shutdown.
const SHUTDOWN_REPLAY: Duration = Duration::from_secs(5);

pub struct Writer {
    store: Box<dyn Store>,
    spool: Spool,
    stream: Arc<str>,
    next_seq: u64,
    metrics: Arc<Metrics>,
    /// Redis: replay files of earlier processes too.
    durable: bool,
    up: bool,
    retry_at: Instant,
    seen_overflow: u64,
    batch_max: usize,
    flush_interval: Duration,
    /// Held while the thread runs (see `spool::lock`).
    _lock: Option<std::fs::File>,
    /// Set at shutdown.
    closing: Arc<AtomicBool>,
}

impl Writer {
    pub fn new(
        opts: &Options,
        store: Box<dyn Store>,
        instance: Arc<str>,
        metrics: Arc<Metrics>,
        lock: Option<std::fs::File>,
    ) -> Self {
        Writer {
            store,
            stream: Arc::from(Spool::main_stream(&instance)),
            spool: Spool::new(opts.settings.spool_dir.clone(), instance),
            next_seq: 0,
            metrics,
            durable: matches!(opts.backend, super::Backend::Redis(_)),
            up: true,
            retry_at: Instant::now(),
            seen_overflow: 0,
            batch_max: opts.settings.batch_max.max(1),
            flush_interval: opts.settings.flush_interval,
            _lock: lock,
            closing: Arc::default(),
        }
    }

    pub fn run(mut self, rx: Receiver<Rec>, closing: Arc<AtomicBool>) {
        self.closing = closing.clone();
        if self.durable {
            if let Err(e) = self.spool.scan(true) {
                tracing::warn!(target: "tollgate::ledger", error = %e, "could not read the spool directory");
            }
        } else if std::fs::read_dir(self.spool.dir()).is_ok_and(|mut d| {
            d.any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "spool")))
        }) {
            tracing::warn!(target: "tollgate::ledger", dir = %self.spool.dir().display(), "spool files of an earlier process are kept for a start with [store] kind = \"redis\"");
        }
        let mut recs = Vec::with_capacity(self.batch_max);
        let mut progressed = false;
        loop {
            let stop = closing.load(Ordering::Acquire);
            // A backlog that is moving is drained at full speed; otherwise
            // wait for records (and retry the store) every flush_interval.
            let wait = if stop || (progressed && self.spool.pending_bytes() > 0) {
                Duration::ZERO
            } else {
                self.flush_interval
            };
            let gone = self.collect(&rx, &mut recs, wait);
            let batch = self.batch(&mut recs);
            progressed = self.step(batch);
            if stop || gone {
                break;
            }
        }
        // Shutdown: whatever is still queued, then the spool while the
        // store answers.
        loop {
            self.collect(&rx, &mut recs, Duration::ZERO);
            if recs.is_empty() {
                break;
            }
            let batch = self.batch(&mut recs);
            self.step(batch);
        }
        let t0 = Instant::now();
        while self.up && self.spool.pending_bytes() > 0 && t0.elapsed() < SHUTDOWN_REPLAY {
            if !self.step(None) {
                break;
            }
        }
        self.spool.finish();
        tracing::info!(target: "tollgate::ledger", pending_spool_bytes = self.spool.pending_bytes(), "ledger drained");
    }

    fn batch(&mut self, recs: &mut Vec<Rec>) -> Option<Batch> {
        if recs.is_empty() {
            return None;
        }
        self.metrics
            .dequeued
            .fetch_add(recs.len() as u64, Ordering::Relaxed);
        self.next_seq += 1;
        Some(Batch {
            stream: self.stream.clone(),
            seq: self.next_seq,
            recs: std::mem::replace(recs, Vec::with_capacity(self.batch_max)),
        })
    }

    /// Fills `recs` up to `batch_max`, waiting at most `wait` in all.
    /// True when every sender is gone.
    fn collect(&self, rx: &Receiver<Rec>, recs: &mut Vec<Rec>, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        while recs.len() < self.batch_max {
            match rx.try_recv() {
                Ok(r) => {
                    recs.push(r);
                    continue;
                }
                Err(TryRecvError::Disconnected) => return true,
                Err(TryRecvError::Empty) => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.closing.load(Ordering::Acquire) {
                break;
            }
            // Short slices: a shutdown is noticed within SLICE even with a
            // long flush_interval.
            match rx.recv_timeout(left.min(SLICE)) {
                Ok(r) => recs.push(r),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return true,
            }
        }
        false
    }

    fn spool_main(&mut self, b: &Batch) {
        let n = b.recs.len() as u64;
        match self.spool.append_main(b) {
            Ok(()) => {
                self.metrics.spooled.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                self.metrics.lost.fetch_add(n, Ordering::Relaxed);
                tracing::error!(target: "tollgate::ledger", error = %e, records = n, "store unreachable and the spool is not writable: usage records lost");
            }
        }
    }

    /// One pipeline; false when nothing could be sent.
    fn step(&mut self, new: Option<Batch>) -> bool {
        let overflowed = self.metrics.overflowed.load(Ordering::Relaxed);
        if overflowed != self.seen_overflow {
            self.seen_overflow = overflowed;
            if let Err(e) = self.spool.scan(false) {
                tracing::warn!(target: "tollgate::ledger", error = %e, "could not read the spool directory");
            }
        }
        let sent = self.send(new);
        self.spool.compact();
        self.metrics
            .spool_bytes
            .store(self.spool.pending_bytes(), Ordering::Relaxed);
        self.metrics
            .spool_skipped
            .store(self.spool.skipped, Ordering::Relaxed);
        sent
    }

    fn send(&mut self, new: Option<Batch>) -> bool {
        if !self.up && Instant::now() < self.retry_at {
            if let Some(b) = &new {
                self.spool_main(b);
            }
            return false;
        }
        let (mine, all_mine) = match self.spool.read_main(MAX_LINES, MAX_RECS) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(target: "tollgate::ledger", error = %e, "could not read the spool");
                (Vec::new(), false)
            }
        };
        let new = match new {
            Some(b) if !all_mine => {
                // Ours are pending ahead of it: keep the stream in order.
                self.spool_main(&b);
                None
            }
            n => n,
        };
        let others = self
            .spool
            .read_others(MAX_OTHER_LINES, MAX_RECS)
            .unwrap_or_else(|e| {
                tracing::warn!(target: "tollgate::ledger", error = %e, "could not read the spool");
                Vec::new()
            });
        let batches: Vec<&Batch> = mine
            .iter()
            .map(|p| &p.batch)
            .chain(new.iter())
            .chain(others.iter().map(|p| &p.batch))
            .collect();
        if batches.is_empty() {
            return false;
        }
        match self.store.apply(&batches) {
            Ok(applied) => {
                if !self.up {
                    tracing::info!(target: "tollgate::ledger", "store reachable again: replaying the spool");
                }
                self.up = true;
                let (a_mine, rest) = applied.split_at(mine.len().min(applied.len()));
                let (a_new, a_others) = rest.split_at(usize::from(new.is_some()).min(rest.len()));
                self.acked(&mine, a_mine);
                self.acked(&others, a_others);
                if let (Some(b), Some(&ok)) = (&new, a_new.first()) {
                    let n = b.recs.len() as u64;
                    let c = if ok {
                        &self.metrics.written
                    } else {
                        &self.metrics.duplicates
                    };
                    c.fetch_add(n, Ordering::Relaxed);
                }
                true
            }
            Err(e) => {
                self.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                if self.up {
                    tracing::warn!(target: "tollgate::ledger", error = %e, "store unreachable or slow: usage goes to the spool until it answers");
                }
                self.up = false;
                self.retry_at = Instant::now() + RETRY;
                if let Some(b) = &new {
                    self.spool_main(b);
                }
                false
            }
        }
    }

    fn acked(&mut self, items: &[Pending], applied: &[bool]) {
        for (p, &ok) in items.iter().zip(applied) {
            self.spool.ack(p);
            let n = p.batch.recs.len() as u64;
            let c = if ok {
                &self.metrics.replayed
            } else {
                &self.metrics.duplicates
            };
            c.fetch_add(n, Ordering::Relaxed);
        }
    }
}
