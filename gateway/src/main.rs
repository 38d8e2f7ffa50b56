//! The `tollgate` command: `serve`, `check-config`, `mock`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use tollgate::config;
use tollgate::mock::{Faults, MockOptions};

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "High-throughput LLM API gateway: one OpenAI-compatible endpoint, routed by model",
    after_help = "Examples:\n  \
        tollgate serve --config examples/quickstart.toml\n  \
        tollgate check-config examples/production.toml\n  \
        tollgate mock --listen 127.0.0.1:9001 --chunk-delay-ms 20\n  \
        tollgate mock --listen 127.0.0.1:9002 --status 503"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway.
    Serve {
        /// Config file (TOML).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Validate a config file; exits non-zero listing every error.
    CheckConfig {
        /// Config file (TOML).
        file: PathBuf,
    },
    /// Run the built-in OpenAI-compatible mock provider.
    Mock(MockArgs),
}

#[derive(Args)]
struct MockArgs {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Seed of the generated text.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Completion tokens when a request sets no max_tokens.
    #[arg(long, default_value_t = 64)]
    max_tokens: u64,
    /// Require `Authorization: Bearer KEY` (401 otherwise).
    #[arg(long)]
    api_key: Option<String>,
    /// Pin worker N to CPU BASE+N.
    #[arg(long)]
    pin_cpu: Option<usize>,
    /// Answer every request with this status (e.g. 429, 500, 503, 529).
    #[arg(long)]
    status: Option<u16>,
    /// Delay before the response head, in ms.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Delay between stream events, in ms.
    #[arg(long, default_value_t = 0)]
    chunk_delay_ms: u64,
    /// Write at most this many bytes per write (1 = byte by byte).
    #[arg(long)]
    split: Option<usize>,
    /// Reset the connection after this many response bytes.
    #[arg(long)]
    reset_after: Option<usize>,
    /// Never answer.
    #[arg(long)]
    stall: bool,
    /// Leave usage out of answers.
    #[arg(long)]
    omit_usage: bool,
    /// End SSE lines with CRLF.
    #[arg(long)]
    crlf: bool,
    /// io_uring task-run mode: defer, coop or interrupt (see the gateway's
    /// `[server] io_uring_task_run`).
    #[arg(long, default_value = "defer", value_parser = config::TaskRun::parse)]
    io_uring_task_run: config::TaskRun,
    /// Event loop: auto, io_uring or legacy (epoll). A mock killed with
    /// SIGKILL closes its sockets at once on epoll; on io_uring the kernel
    /// closes the ones with a receive in flight only when it tears the
    /// ring down, some milliseconds later (what the harness's failover
    /// scenario must not time).
    #[arg(long, default_value = "auto", value_parser = config::DriverChoice::parse)]
    driver: config::DriverChoice,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::CheckConfig { file } => match config::load(&file) {
            Ok(cfg) => {
                println!(
                    "{}: ok ({} models, {} upstreams)",
                    file.display(),
                    cfg.routes.len(),
                    cfg.upstreams.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Cmd::Serve { config } => {
            let cfg = match config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            let _guard = tollgate::telemetry::init(&cfg.log.level, cfg.log.json);
            match tollgate::server::serve(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("tollgate: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Mock(a) => {
            let _guard = tollgate::telemetry::init("info", false);
            match run_mock(a) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tollgate mock: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn run_mock(a: MockArgs) -> anyhow::Result<()> {
    let listen = a.listen;
    let opts = MockOptions {
        listen,
        workers: a.workers,
        seed: a.seed,
        default_max_tokens: a.max_tokens,
        api_key: a.api_key,
        pin_base: a.pin_cpu,
        task_run: a.io_uring_task_run,
        driver: a.driver,
        faults: Faults {
            status: a.status,
            delay: Duration::from_millis(a.delay_ms),
            chunk_delay: Duration::from_millis(a.chunk_delay_ms),
            split: a.split,
            reset_after: a.reset_after,
            stall: a.stall,
            omit_usage: a.omit_usage,
            echo: false,
            crlf: a.crlf,
        },
    };
    tollgate::mock::spawn(opts).with_context(|| format!("listening on {listen}"))?;
    tracing::info!(%listen, "mock provider ready");
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])?;
    let _ = signals.forever().next();
    Ok(())
}

#[global_allocator]
static GLOBAL: tollgate::alloc::Allocator = tollgate::alloc::Allocator;
