//! The TOML schema exactly as written by users. Every struct denies unknown
//! fields so a typo is an error, not a silently ignored setting; values are
//! checked and turned into runtime types in `compile`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A whole config file.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Listener, workers, limits and timeouts.
    #[serde(default)]
    pub server: RawServer,
    /// Logging.
    #[serde(default)]
    pub log: RawLog,
    /// Providers the gateway forwards to.
    #[serde(default)]
    pub upstreams: Vec<RawUpstream>,
    /// Models clients may ask for, and where each goes.
    #[serde(default)]
    pub models: Vec<RawModel>,
    /// Optional in-process mock provider (quickstart, tests).
    pub mock: Option<RawMock>,
    /// Shared state between gateway nodes.
    #[serde(default)]
    pub store: RawStore,
    /// eBPF TCP telemetry and upstream health signals.
    #[serde(default)]
    pub ebpf: RawEbpf,
    /// Client authentication and limits sharing.
    #[serde(default)]
    pub auth: RawAuth,
    /// Virtual API keys.
    #[serde(default)]
    pub keys: Vec<RawKey>,
    /// Tenants (customers, teams) keys belong to, with their limits.
    #[serde(default)]
    pub tenants: Vec<RawTenant>,
}

/// `[auth]`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    /// `keys` (every request needs a valid key) or `none`. Default: `keys`
    /// when any `[[keys]]` exist, else `none`.
    pub mode: Option<String>,
    /// Env var holding the admin token (`Authorization: Bearer` on the
    /// admin listener's `/admin/*`). Without it `/admin/*` is refused.
    pub admin_token_env: Option<String>,
    /// Share of a limit one node leases from the store at a time (0..=1).
    /// Default 0.05. Bounds over-admission to one lease per node.
    pub lease_fraction: Option<f64>,
}

/// `[[keys]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    /// Shown in logs, metrics and the admin API instead of the key.
    pub id: String,
    /// Tenant the key bills to.
    pub tenant: String,
    /// Hex SHA-256 of the key.
    pub key_sha256: Option<String>,
    /// Env var holding the key in clear (hashed at load).
    pub key_env: Option<String>,
    /// Allowed models (names, aliases or globs); absent = all.
    pub models: Option<Vec<String>>,
    /// Limits of this key.
    pub limits: Option<RawLimits>,
    /// Limits of this key on one model (by configured name or alias).
    #[serde(default)]
    pub model_limits: BTreeMap<String, RawLimits>,
}

/// `[[tenants]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    /// Tenant id keys refer to.
    pub id: String,
    /// Models every key of the tenant may use (names, aliases or globs);
    /// absent = all. A key's own `models` narrows it further.
    pub models: Option<Vec<String>>,
    /// Limits shared by all keys of the tenant.
    pub limits: Option<RawLimits>,
    /// Limits of the tenant on one model.
    #[serde(default)]
    pub model_limits: BTreeMap<String, RawLimits>,
}

/// `limits = { ... }` (also the JSON of keys made through the admin API).
#[derive(Debug, Deserialize, Serialize, Default, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Requests per minute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    /// Tokens (prompt + completion) per minute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// Concurrent streaming requests (per node).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_streams: Option<u64>,
    /// Tokens per budget period.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_tokens: Option<u64>,
    /// US dollars per budget period (priced by the models' `price`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<f64>,
    /// `day` or `month` (UTC). Default `month`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_period: Option<String>,
}

/// `price = { input = 2.5, output = 10.0 }`: US dollars per million tokens.
#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    /// Prompt tokens.
    pub input: f64,
    /// Completion tokens.
    pub output: f64,
}

/// `[ebpf]`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawEbpf {
    /// `auto` (load what the host allows, log what it does not), `on`
    /// (refuse to start unless every program loads) or `off`. Default `auto`.
    pub enabled: Option<String>,
    /// cgroup v2 directory for the `sock_ops` program: `auto` (the current
    /// cgroup, or a new `tollgate-<pid>` one when the process is in the
    /// root), `off`, or a path. Default `auto`.
    pub cgroup: Option<String>,
}

/// `[store]`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// `memory` (one node, the default) or `redis` (nodes share state).
    pub kind: Option<String>,
    /// `redis://host:port[/db]` for kind = "redis".
    pub url: Option<String>,
    /// `fail_open` (default): a store outage degrades to per-node state;
    /// `fail_closed`: limited keys get only what was already leased.
    pub on_store_error: Option<String>,
    /// Directory of the billing spool (usage the store has not acknowledged
    /// yet). Relative paths are relative to the config file's directory.
    /// Default `tollgate-spool`.
    pub spool_dir: Option<String>,
    /// Usage records per ledger batch (one Lua call). Default 2048.
    pub batch_max: Option<usize>,
    /// Longest time a usage record waits for its batch to fill. Default "100ms".
    pub flush_interval: Option<String>,
    /// Ledger queue capacity in records; when full, workers spill to the
    /// spool. Default 65536.
    pub ledger_queue: Option<usize>,
    /// Timeout of each ledger store call (then the batch is spooled).
    /// Default "1s".
    pub timeout: Option<String>,
    /// Approximate length cap of the `tollgate:ledger` audit stream,
    /// entries (`XADD MAXLEN ~`). Default 1000000.
    pub ledger_stream_max: Option<u64>,
}

/// `[server]`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Client listener address. Default `127.0.0.1:8080`.
    pub listen: Option<String>,
    /// Admin listener (health, status). Default: none.
    pub admin_listen: Option<String>,
    /// Worker threads; 0 = one per core. Default 0.
    pub workers: Option<usize>,
    /// `auto` (io_uring, else legacy epoll), `io_uring` or `legacy`. Default `auto`.
    pub driver: Option<String>,
    /// When io_uring runs completion work: `defer` (at the worker's next
    /// wait), `coop` (at its next kernel entry) or `interrupt` (at once,
    /// by an IPI). Default `defer`.
    pub io_uring_task_run: Option<String>,
    /// Pin worker N to CPU N (mod core count). Default false.
    pub pin_cpus: Option<bool>,
    /// Largest request head in bytes (431 above). Default 16384.
    pub max_header_bytes: Option<usize>,
    /// Largest request body in bytes (413 above). Default 8 MiB.
    pub max_body_bytes: Option<usize>,
    /// Time allowed to receive a request head. Default "10s".
    pub header_timeout: Option<String>,
    /// Time allowed to receive a request body. Default "30s".
    pub body_timeout: Option<String>,
    /// Keep-alive idle time before the server closes. Default "60s".
    pub idle_timeout: Option<String>,
    /// Keep-alive idle time after which a connection is parked: its read
    /// buffer (4 KiB) and timer are freed until the client sends again, and
    /// `idle_timeout` is then enforced by a per-worker sweep, up to
    /// `idle_timeout / 8` (at most 1 s) late. Default "250ms".
    pub idle_buffer_release: Option<String>,
    /// How long in-flight requests may run after SIGTERM. Default "30s".
    pub shutdown_grace: Option<String>,
    /// Add `x-tollgate-upstream` / `x-tollgate-model` to responses. Default true.
    pub expose_route_headers: Option<bool>,
}

/// `[log]`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// `error` .. `trace`, or an env-filter directive. Default `info`.
    pub level: Option<String>,
    /// `text` or `json`. Default `text`.
    pub format: Option<String>,
    /// One access line per request. Default true.
    pub access: Option<bool>,
}

/// `[[upstreams]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// Name targets refer to.
    pub name: String,
    /// `openai` or `openai-compatible`. Default `openai-compatible`.
    pub provider: Option<String>,
    /// `http://` or `https://` URL including the API prefix, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// Env var holding the upstream API key (sent as `Authorization: Bearer`).
    pub api_key_env: Option<String>,
    /// PEM file with extra CA certificates trusted for this upstream.
    pub ca_file: Option<String>,
    /// TCP (+TLS) connect timeout. Default "5s".
    pub connect_timeout: Option<String>,
    /// Time from request sent to response head. Default "300s".
    pub response_timeout: Option<String>,
    /// Longest gap between two body reads. Default "300s".
    pub read_timeout: Option<String>,
    /// Idle pooled connections kept per worker. Default 256: with fewer,
    /// every request beyond that many in flight opens and closes an
    /// upstream connection (measured in the load harness: p99 133 ms
    /// against 13.5 ms at 256 concurrent requests).
    pub max_idle: Option<usize>,
    /// Pooled connection lifetime when idle. Default "60s". A pooled
    /// connection that dies less than a second after its last answer is
    /// taken as a server gone (failover), so for a server whose keep-alive
    /// timeout is under a second this must be below it.
    pub idle_timeout: Option<String>,
    /// Ask for `stream_options.include_usage` on streams (the provider must
    /// accept the field; OpenAI and vLLM do). Default true.
    pub stream_usage: Option<bool>,
}

/// `[[models]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    /// Exact model name, or a glob with `*` / `?`.
    pub name: String,
    /// Other names that route here.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Where requests go, chosen by weight.
    pub targets: Vec<RawTarget>,
    /// Hide this model from `GET /v1/models`. Default false.
    pub hidden: Option<bool>,
    /// Circuit breaker of each target of this model.
    pub breaker: Option<RawBreaker>,
    /// Models to fall back to, in order, each with a condition on the
    /// failed attempt (`when`, default: any failure that may fail over).
    #[serde(default)]
    pub fallbacks: Vec<RawFallback>,
    /// Attempts across targets and fallbacks, first included. Default 3.
    pub max_attempts: Option<u32>,
    /// Time all attempts together may take to get a response head, e.g.
    /// "60s". Default: none (each attempt has its upstream's timeouts).
    pub deadline: Option<String>,
    /// `o200k_base`, `cl100k_base` or `none`; default by model family
    /// (o200k_base for gpt-4o/4.1/o-series, cl100k_base otherwise).
    pub tokenizer: Option<crate::tokens::Tokenizer>,
    /// Price for budgets and billing, US dollars per million tokens.
    pub price: Option<RawPrice>,
}

/// `breaker = { ... }`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    /// Consecutive failures that open it (0 = off). Default 5.
    pub max_failures: Option<u32>,
    /// Failure rate 0..1 over `window` calls that opens it. Default off.
    pub failure_rate: Option<f64>,
    /// Calls in the rate window (1..=64). Default 20.
    pub window: Option<u32>,
    /// Calls needed before the rate counts. Default 10.
    pub min_calls: Option<u32>,
    /// First break. Default "30s".
    pub break_duration: Option<String>,
    /// Break multiplier per consecutive trip. Default 1 (constant).
    pub growth: Option<f64>,
    /// Longest break. Default "300s".
    pub max_break: Option<String>,
    /// Calls let through when half-open. Default 1.
    pub probes: Option<u32>,
    /// Cooldown after a 429 without Retry-After. Default "1s".
    pub cooldown: Option<String>,
}

/// One entry of `fallbacks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFallback {
    /// A configured model name or alias.
    pub model: String,
    /// Condition, e.g. `status >= 500 or latency > 30s`.
    pub when: Option<String>,
}

/// One entry of `targets`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    /// Name of an `[[upstreams]]` entry.
    pub upstream: String,
    /// Model name sent upstream; absent = the model's `name` (for an exact
    /// name or alias) or the name the client sent (for a glob).
    pub model: Option<String>,
    /// Relative share of traffic. Default 1.
    pub weight: Option<u32>,
}

/// `[mock]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMock {
    /// Address the embedded mock listens on.
    pub listen: String,
    /// Seed of the generated text. Default 0.
    pub seed: Option<u64>,
}
