//! `loadgen`: drives one HTTP/1.1 load run and prints its report as JSON.
//!
//! The harness (`benches/run.sh`) calls it once per system, scenario and
//! repetition; it is also usable by hand:
//!
//! ```text
//! loadgen --addr 127.0.0.1:9001 -c 64 -d 5 --body '{"model":"gpt-4o-mini","messages":[]}'
//! loadgen --addr 127.0.0.1:9001 -c 64 -d 5 --rate 20000 --body-file req.json --expect-events 50
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tollgate_benches::loadgen::{self, Options};

#[derive(Parser)]
#[command(
    name = "loadgen",
    about = "HTTP/1.1 keep-alive load generator with SSE checks"
)]
struct Args {
    /// Target address.
    #[arg(long)]
    addr: SocketAddr,
    /// Request path.
    #[arg(long, default_value = "/v1/chat/completions")]
    path: String,
    /// Request body (JSON).
    #[arg(long, conflicts_with = "body_file")]
    body: Option<String>,
    /// File holding the request body.
    #[arg(long)]
    body_file: Option<PathBuf>,
    /// Extra request header, `Name: value` (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Active connections.
    #[arg(short = 'c', long, default_value_t = 64)]
    connections: usize,
    /// Threads.
    #[arg(short = 't', long, default_value_t = 2)]
    threads: usize,
    /// Measured seconds.
    #[arg(short = 'd', long, default_value_t = 5.0)]
    duration: f64,
    /// Warm-up seconds before the measured window.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Open loop at this many requests per second (closed loop if unset).
    #[arg(long)]
    rate: Option<f64>,
    /// Every answer must be an SSE stream of exactly this many events
    /// ending with `data: [DONE]`.
    #[arg(long)]
    expect_events: Option<u32>,
    /// Count answers containing this string; report the first one's time.
    #[arg(long, default_value = "")]
    marker: String,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Idle keep-alive connections to hold during the run.
    #[arg(long, default_value_t = 0)]
    idle: usize,
    /// Seconds over which the idle connections are opened.
    #[arg(long, default_value_t = 2.0)]
    idle_ramp: f64,
    /// Use the epoll driver instead of io_uring.
    #[arg(long)]
    legacy: bool,
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

fn main() -> ExitCode {
    let a = Args::parse();
    let body = match (&a.body, &a.body_file) {
        (Some(b), _) => b.clone().into_bytes(),
        (None, Some(f)) => match std::fs::read(f) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("loadgen: {}: {e}", f.display());
                return ExitCode::from(2);
            }
        },
        (None, None) => {
            br#"{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#
                .to_vec()
        }
    };
    let host = a.addr.to_string();
    // One request for the whole run, shared by every connection.
    let request: &'static [u8] =
        Vec::leak(loadgen::render_request(&a.path, &host, &a.headers, &body));
    let opts = Options {
        addr: a.addr,
        request,
        connections: a.connections,
        threads: a.threads,
        duration: secs(a.duration),
        warmup: secs(a.warmup),
        rate: a.rate,
        expect_events: a.expect_events,
        marker: a.marker.into_bytes(),
        timeout: secs(a.timeout),
        idle: a.idle,
        idle_ramp: secs(a.idle_ramp),
        legacy: a.legacy,
    };
    match loadgen::run(opts) {
        Ok((stats, seconds)) => {
            println!("{}", stats.to_json(seconds));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}
