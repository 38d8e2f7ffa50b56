//! Billing ledger throughput into a local Redis, and the cost of
//! `record()` on the worker side.
//!
//! 1. `store`: pre-built batches applied with the Redis store (one Lua
//!    call per batch, `PIPELINE` batches per round trip): the store's
//!    ceiling without the queue.
//! 2. `ledger`: `THREADS` threads push `RECORDS` usage records through the
//!    real ledger (queue, writer thread, fold, Lua) as fast as they can;
//!    records/s until every record is written.
//! 3. `record()`: ns per `UsageSink::record` on the calling thread (copy
//!    of the record, clock, `try_send`), queue never full (memory store).
//!
//! Starts its own `redis-server` on a free loopback port unless
//! `REDIS_URL` is set. Env: `RECORDS` (default 500000), `THREADS` (2),
//! `BATCH` (2048), `PIPELINE` (4), `TENANTS` (20), `MODELS` (5).
//!
//! `cargo run --release -p tollgate-benches --bin ledger-throughput`

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate::ledger::record::{Batch, Rec, now_ms};
use tollgate::ledger::{Backend, Options, Store, start};
use tollgate::text::Text;
use tollgate::usage::{Source, UsageRecord, UsageSink};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Redis(Option<Child>);

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn redis() -> Result<(Redis, String), String> {
    if let Ok(url) = std::env::var("REDIS_URL") {
        return Ok((Redis(None), url));
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("redis-server: {e}"))?;
    let r = Redis(Some(child));
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t0.elapsed() > Duration::from_secs(10) {
            return Err("redis-server did not start".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok((r, format!("redis://127.0.0.1:{port}")))
}

fn usage(i: usize, tenants: &[Arc<str>], models: &[Arc<str>]) -> UsageRecord {
    UsageRecord {
        request_id: Text::new(&format!("bench{i:019}")),
        key_id: Some(tenants[i % tenants.len()].clone()),
        tenant: Some(tenants[i % tenants.len()].clone()),
        requested_model: Text::new(&models[i % models.len()]),
        served_model: models[i % models.len()].clone(),
        upstream: Arc::from("mock"),
        prompt_tokens: 20 + (i % 50) as u64,
        prompt_source: Source::Provider,
        completion_tokens: 100 + (i % 300) as u64,
        completion_source: Source::Provider,
        status: 200,
        ttfb: Some(Duration::from_millis(3)),
        total: Duration::from_millis(40),
        stream: i.is_multiple_of(2),
        cost_micros: 1234,
        upstream_tcp: None,
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ledger-throughput: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let records = env("RECORDS", 500_000);
    let threads = env("THREADS", 2).max(1);
    let batch = env("BATCH", 2048).max(1);
    let pipeline = env("PIPELINE", 4).max(1);
    let tenants: Vec<Arc<str>> = (0..env("TENANTS", 20).max(1))
        .map(|i| Arc::from(format!("tenant-{i}")))
        .collect();
    let models: Vec<Arc<str>> = (0..env("MODELS", 5).max(1))
        .map(|i| Arc::from(format!("model-{i}")))
        .collect();
    let (_redis, url) = redis()?;
    println!(
        "records={records} threads={threads} batch={batch} pipeline={pipeline} tenants={} models={} redis={url}",
        tenants.len(),
        models.len()
    );

    // 1. The store alone.
    let at = now_ms();
    let recs: Vec<Rec> = (0..records)
        .map(|i| Rec::from_usage(&usage(i, &tenants, &models), at))
        .collect();
    let batches: Vec<Batch> = recs
        .chunks(batch)
        .enumerate()
        .map(|(i, c)| Batch {
            stream: Arc::from("bench-store"),
            seq: i as u64 + 1,
            recs: c.to_vec(),
        })
        .collect();
    let mut store =
        tollgate::ledger::redis::RedisStore::new(&url, Duration::from_secs(10), 1_000_000)
            .map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    for group in batches.chunks(pipeline) {
        let refs: Vec<&Batch> = group.iter().collect();
        let ok = store.apply(&refs).map_err(|e| e.to_string())?;
        if ok.iter().any(|a| !a) {
            return Err("a fresh batch was reported as a duplicate".into());
        }
    }
    let dt = t0.elapsed();
    println!(
        "store:    {records} records in {:.3} s = {:.0} records/s",
        dt.as_secs_f64(),
        records as f64 / dt.as_secs_f64()
    );
    // Replaying all of it again must count nothing.
    let t0 = Instant::now();
    for group in batches.chunks(pipeline) {
        let refs: Vec<&Batch> = group.iter().collect();
        if store
            .apply(&refs)
            .map_err(|e| e.to_string())?
            .iter()
            .any(|&a| a)
        {
            return Err("a replayed batch was applied twice".into());
        }
    }
    println!(
        "replay:   {records} duplicate records skipped in {:.3} s",
        t0.elapsed().as_secs_f64()
    );
    drop(batches);

    // 2. The whole ledger.
    let dir = std::env::temp_dir().join(format!("tollgate-ledger-bench-{}", std::process::id()));
    let opts = Options {
        backend: Backend::Redis(url.clone()),
        settings: tollgate::config::LedgerConfig {
            spool_dir: dir.clone(),
            batch_max: batch,
            flush_interval: Duration::from_millis(100),
            queue: 1 << 20,
            timeout: Duration::from_secs(10),
            stream_max: 1_000_000,
        },
    };
    let (ledger, thread) = start(opts).map_err(|e| e.to_string())?;
    let per = records / threads;
    let total = per * threads;
    let t0 = Instant::now();
    let hs: Vec<_> = (0..threads)
        .map(|t| {
            let l = ledger.clone();
            let (tn, md) = (tenants.clone(), models.clone());
            std::thread::spawn(move || {
                for i in 0..per {
                    l.record(&usage(t * per + i, &tn, &md));
                }
            })
        })
        .collect();
    for h in hs {
        let _ = h.join();
    }
    let pushed = t0.elapsed();
    while ledger.stats().written + ledger.stats().replayed < total as u64 {
        if t0.elapsed() > Duration::from_secs(300) {
            return Err(format!("not written after 300 s: {:?}", ledger.stats()));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let dt = t0.elapsed();
    let s = ledger.stats();
    println!(
        "ledger:   {total} records written in {:.3} s = {:.0} records/s (pushing took {:.3} s; spooled {}, overflowed {}, store errors {})",
        dt.as_secs_f64(),
        total as f64 / dt.as_secs_f64(),
        pushed.as_secs_f64(),
        s.spooled,
        s.overflowed,
        s.store_errors
    );
    thread.finish();
    let _ = std::fs::remove_dir_all(&dir);

    // 3. record() on the worker side (memory store; the queue never fills).
    let opts = Options {
        backend: Backend::Memory,
        settings: tollgate::config::LedgerConfig {
            spool_dir: dir.clone(),
            batch_max: batch,
            flush_interval: Duration::from_millis(10),
            queue: 1 << 20,
            timeout: Duration::from_secs(1),
            stream_max: 1,
        },
    };
    let (ledger, thread) = start(opts).map_err(|e| e.to_string())?;
    let n = 200_000.min(records);
    let recs: Vec<UsageRecord> = (0..n).map(|i| usage(i, &tenants, &models)).collect();
    let mut best = f64::MAX;
    for _ in 0..5 {
        while ledger.stats().queue_depth > 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let t0 = Instant::now();
        for r in &recs {
            ledger.record(r);
        }
        best = best.min(t0.elapsed().as_nanos() as f64 / n as f64);
    }
    println!("record(): {best:.0} ns per call (best of 5 x {n}, one thread)");
    if ledger.stats().overflowed > 0 {
        println!(
            "  (note: {} records overflowed to disk)",
            ledger.stats().overflowed
        );
    }
    thread.finish();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
