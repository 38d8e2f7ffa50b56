//! The load generator behind `loadbench`: HTTP/1.1 keep-alive over many
//! connections, closed loop (fixed concurrency) or open loop (fixed rate).
//!
//! Why its own and not only wrk: it has to read SSE streams to their end
//! and check the event count (a cut stream is an error, not a fast
//! answer), measure time to first byte, correct for coordinated omission
//! in open loop (latency counts from the intended start, as wrk2 does),
//! hold thousands of idle keep-alive connections while a trickle runs, and
//! spot which upstream answered (failover). It runs on monoio with
//! io_uring (epoll fallback), one runtime per thread, so on this machine
//! it is cheaper per request than the systems it drives; `benches/README.md`
//! has the check against wrk.

mod conn;
pub mod response;
pub mod stats;

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use stats::Stats;

/// One load run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Target address.
    pub addr: SocketAddr,
    /// The full request bytes (head and body), sent as is each time.
    pub request: &'static [u8],
    /// Active connections.
    pub connections: usize,
    /// OS threads, one monoio runtime each.
    pub threads: usize,
    /// Measured window.
    pub duration: Duration,
    /// Load before the measured window, not recorded.
    pub warmup: Duration,
    /// Open loop: total requests per second; closed loop when `None`.
    pub rate: Option<f64>,
    /// SSE events every answer must carry (and end with `[DONE]`).
    pub expect_events: Option<u32>,
    /// A byte string to look for in answers (which upstream answered).
    pub marker: Vec<u8>,
    /// Longest a request may take.
    pub timeout: Duration,
    /// Idle keep-alive connections held open (one request each at the
    /// start and one at the end) while the active ones run.
    pub idle: usize,
    /// Time to open the idle connections (they are spread over it).
    pub idle_ramp: Duration,
    /// Use the epoll driver instead of io_uring.
    pub legacy: bool,
}

/// Shared, read-only state of one thread's tasks.
struct Ctx {
    opts: Options,
    /// When the measured window starts and ends.
    measure_from: Instant,
    end: Instant,
    /// Open loop: when the load starts and each connection's period.
    load_from: Instant,
    period: Option<Duration>,
}

/// Runs the load and returns the merged counters and the measured seconds.
pub fn run(opts: Options) -> std::io::Result<(Stats, f64)> {
    let threads = opts.threads.max(1);
    let now = Instant::now();
    let idle_settle = if opts.idle > 0 {
        opts.idle_ramp + Duration::from_secs(1)
    } else {
        Duration::ZERO
    };
    let load_from = now + idle_settle;
    let measure_from = load_from + opts.warmup;
    let end = measure_from + opts.duration;
    let period = opts
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(opts.connections.max(1) as f64 / r));
    let mut handles = Vec::new();
    for t in 0..threads {
        let opts = opts.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("loadgen-{t}"))
                .spawn(move || {
                    thread_main(t, threads, opts, load_from, measure_from, end, period)
                })?,
        );
    }
    let mut total = Stats::new()?;
    for h in handles {
        match h.join() {
            Ok(Ok(s)) => total.merge(&s),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(std::io::Error::other("load thread failed")),
        }
    }
    Ok((total, opts.duration.as_secs_f64()))
}

fn thread_main(
    t: usize,
    threads: usize,
    opts: Options,
    load_from: Instant,
    measure_from: Instant,
    end: Instant,
    period: Option<Duration>,
) -> std::io::Result<Stats> {
    let legacy = opts.legacy;
    let ctx = Rc::new(Ctx {
        opts,
        measure_from,
        end,
        load_from,
        period,
    });
    let fresh = Stats::new()?;
    let body = move || async move {
        let stats = Rc::new(std::cell::RefCell::new(fresh));
        let mut tasks = Vec::new();
        let n = ctx.opts.connections;
        for i in (t..n).step_by(threads) {
            // Spread the connections' schedules evenly over one period.
            let offset = period.map_or(Duration::ZERO, |p| p.mul_f64(i as f64 / n as f64));
            tasks.push(monoio::spawn(conn::active(
                ctx.clone(),
                stats.clone(),
                offset,
            )));
        }
        let idle = ctx.opts.idle;
        for i in (t..idle).step_by(threads) {
            let at = ctx.opts.idle_ramp.mul_f64(i as f64 / idle.max(1) as f64);
            tasks.push(monoio::spawn(conn::idle(ctx.clone(), stats.clone(), at)));
        }
        for task in tasks {
            task.await;
        }
        // Every task has ended, so this is the last reference.
        Rc::try_unwrap(stats)
            .map(std::cell::RefCell::into_inner)
            .map_err(|_| std::io::Error::other("load task still running"))
    };
    if !legacy
        && let Ok(mut rt) = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(4096)
            .enable_timer()
            .build()
    {
        return rt.block_on(body());
    }
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()?;
    rt.block_on(body())
}

/// Microseconds since the Unix epoch (to line up with events the driver
/// caused, such as killing an upstream).
fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Renders a POST request with a Content-Length body.
pub fn render_request(path: &str, host: &str, headers: &[String], body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests;
