//! Logging: text or JSON lines on stderr through a non-blocking writer, so
//! a slow terminal or pipe never stalls a worker.
//!
//! # Failure behavior
//! The writer thread drops lines when its bounded queue is full (lossy)
//! rather than block the data path; `RUST_LOG` overrides the config level.

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; keep the guard alive until exit so
/// buffered lines are flushed.
pub fn init(level: &str, json: bool) -> WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(true)
        .with_thread_names(true);
    let installed = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.with_ansi(false).try_init()
    };
    if installed.is_err() {
        eprintln!("tollgate: a logger was already installed");
    }
    guard
}
