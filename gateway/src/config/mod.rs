//! Configuration: the TOML schema (`raw`), its compilation into validated
//! runtime types (`compile`), and the error type that names file, key and
//! reason for every problem found (all of them, not just the first).
//!
//! # Failure behavior
//! A config that does not compile is never used: `serve` refuses to start
//! and `check-config` exits non-zero, both printing every error.

pub mod auth;
mod compile;
pub mod duration;
pub mod raw;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use compile::compile;

use crate::route::RouteTable;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, e.g. `models[2].targets[0].upstream`.
    pub key: String,
    /// What is wrong and, where it helps, how to fix it.
    pub reason: String,
}

/// Every problem found in one config file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors {
    /// The file that was read.
    pub file: PathBuf,
    /// The problems, in file order where known.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {}: {}", self.file.display(), e.key, e.reason)?;
        }
        Ok(())
    }
}

/// Reads and compiles a config file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let fail = |key: &str, reason: String| ConfigErrors {
        file: path.to_path_buf(),
        errors: vec![ConfigError {
            key: key.to_string(),
            reason,
        }],
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail("(file)", e.to_string()))?;
    let de = toml::Deserializer::new(&text);
    let raw: raw::RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." {
            "(top level)".to_string()
        } else {
            key
        };
        fail(&key, e.into_inner().to_string().trim().replace('\n', " "))
    })?;
    compile(raw, path).map_err(|errors| ConfigErrors {
        file: path.to_path_buf(),
        errors,
    })
}

/// A validated configuration; immutable once built.
#[derive(Debug)]
pub struct Config {
    /// Where it was read from.
    pub source: PathBuf,
    /// `[server]`.
    pub server: ServerConfig,
    /// `[log]`.
    pub log: LogConfig,
    /// `[[upstreams]]`, indexed by `UpstreamId`.
    pub upstreams: Vec<Arc<UpstreamConfig>>,
    /// The compiled `[[models]]`.
    pub routes: RouteTable,
    /// `[mock]`.
    pub mock: Option<MockConfig>,
    /// `[store]`.
    pub store: StoreConfig,
    /// `[auth]`, `[[keys]]`, `[[tenants]]`.
    pub auth: auth::AuthConfig,
    /// The billing ledger's part of `[store]`.
    pub ledger: LedgerConfig,
    /// `[ebpf]`.
    pub ebpf: EbpfConfig,
}

/// `[ebpf]`, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EbpfConfig {
    /// Whether to load the programs.
    pub mode: EbpfMode,
    /// Where `sock_ops` attaches.
    pub cgroup: tollgate_loader::Placement,
}

impl Default for EbpfConfig {
    fn default() -> Self {
        EbpfConfig {
            mode: EbpfMode::Auto,
            cgroup: tollgate_loader::Placement::Auto,
        }
    }
}

/// `[ebpf] enabled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EbpfMode {
    /// Load what the host allows; the rest is logged, one line each.
    Auto,
    /// Every program must load, or start-up fails with the reasons.
    On,
    /// Not loaded.
    Off,
}

/// `[store]`, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// Per-node state only.
    Memory,
    /// Shared through Redis.
    Redis {
        /// Connection URL.
        url: String,
    },
}

/// Which monoio driver the workers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverChoice {
    /// io_uring when the kernel allows it, else epoll.
    Auto,
    /// io_uring or fail.
    IoUring,
    /// epoll (mio).
    Legacy,
}

impl DriverChoice {
    /// The driver a config or command line names: `auto`, `io_uring` or
    /// `legacy`; else the error both report.
    pub fn parse(name: &str) -> Result<DriverChoice, String> {
        match name {
            "auto" => Ok(DriverChoice::Auto),
            "io_uring" => Ok(DriverChoice::IoUring),
            "legacy" => Ok(DriverChoice::Legacy),
            _ => Err(format!(
                "unknown driver `{name}`; use auto, io_uring or legacy"
            )),
        }
    }
}

/// When the kernel runs io_uring completion work (receives that found no
/// data at submit time, then data arrived) for a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskRun {
    /// `IORING_SETUP_DEFER_TASKRUN`: only when the worker waits for
    /// completions, so a busy worker is never interrupted and finds them
    /// batched (kernel 6.1+).
    Defer,
    /// `IORING_SETUP_COOP_TASKRUN`: at the worker's next kernel entry,
    /// without an inter-processor interrupt (kernel 5.19+).
    Coop,
    /// The kernel's default: an IPI interrupts the worker to run it at
    /// once. Costs a fifth of the worker's CPU under load on a VM.
    Interrupt,
}

impl TaskRun {
    /// The mode a config or command line names: `defer`, `coop` or
    /// `interrupt`; else the error both report.
    pub fn parse(name: &str) -> Result<TaskRun, String> {
        match name {
            "defer" => Ok(TaskRun::Defer),
            "coop" => Ok(TaskRun::Coop),
            "interrupt" => Ok(TaskRun::Interrupt),
            _ => Err(format!(
                "unknown mode `{name}`; use defer, coop or interrupt"
            )),
        }
    }
}

/// `[server]`, compiled.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Client listener.
    pub listen: SocketAddr,
    /// Admin listener.
    pub admin_listen: Option<SocketAddr>,
    /// Worker threads (already resolved from 0 = per core).
    pub workers: usize,
    /// Runtime driver.
    pub driver: DriverChoice,
    /// io_uring completion work mode.
    pub task_run: TaskRun,
    /// Pin each worker to a CPU.
    pub pin_cpus: bool,
    /// Request limits and timeouts.
    pub limits: Limits,
    /// Grace period for in-flight work at shutdown.
    pub shutdown_grace: Duration,
    /// Add route headers to responses.
    pub expose_route_headers: bool,
}

/// Limits applied to every client connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request head.
    pub max_header_bytes: usize,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Time to receive a head once its first byte arrived.
    pub header_timeout: Duration,
    /// Time to receive a body.
    pub body_timeout: Duration,
    /// Keep-alive idle time.
    pub idle_timeout: Duration,
    /// Keep-alive idle time after which the connection's read buffer is
    /// freed (see `server::client`).
    pub idle_buffer_release: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 16 * 1024,
            max_body_bytes: 8 * 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            idle_buffer_release: Duration::from_millis(250),
        }
    }
}

/// `[log]`, compiled.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// tracing env-filter directive.
    pub level: String,
    /// JSON lines instead of text.
    pub json: bool,
    /// Access line per request.
    pub access: bool,
}

/// What kind of API an upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// OpenAI itself.
    OpenAi,
    /// Any server with OpenAI's API (vLLM, the mock, ...).
    OpenAiCompatible,
}

/// A secret value that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: String) -> Self {
        Secret(s)
    }
    /// The secret, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// `[[upstreams]]` entry, compiled.
#[derive(Debug)]
pub struct UpstreamConfig {
    /// Config name.
    pub name: Arc<str>,
    /// API family.
    pub provider: Provider,
    /// `https` when true.
    pub tls: bool,
    /// Host name or IP literal (no brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// `Host` header value.
    pub host_header: String,
    /// Path prefix, no trailing slash (e.g. `/v1`).
    pub base_path: String,
    /// Key sent as `Authorization: Bearer`.
    pub api_key: Option<Secret>,
    /// Extra CA certificates (PEM).
    pub ca_file: Option<PathBuf>,
    /// TCP+TLS connect timeout.
    pub connect_timeout: Duration,
    /// Request sent to response head.
    pub response_timeout: Duration,
    /// Gap between body reads.
    pub read_timeout: Duration,
    /// Idle connections kept per worker.
    pub max_idle: usize,
    /// Idle connection lifetime.
    pub idle_timeout: Duration,
    /// Ask the provider for usage on streams.
    pub stream_usage: bool,
}

/// `[mock]`, compiled.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Text seed.
    pub seed: u64,
}

/// The billing ledger's settings (`[store]`), compiled.
#[derive(Debug, Clone)]
pub struct LedgerConfig {
    /// Spool directory (a relative `spool_dir` is joined to the config
    /// file's directory, like `ca_file`).
    pub spool_dir: PathBuf,
    /// Records per batch.
    pub batch_max: usize,
    /// Longest wait for a batch to fill.
    pub flush_interval: Duration,
    /// Queue capacity, records.
    pub queue: usize,
    /// Store call timeout.
    pub timeout: Duration,
    /// Audit stream cap, entries.
    pub stream_max: u64,
}
