//! Turns the raw schema into runtime types, collecting every error with
//! its key path instead of stopping at the first.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::raw::{RawBreaker, RawConfig, RawUpstream};
use super::{
    Config, ConfigError, DriverChoice, EbpfConfig, EbpfMode, LedgerConfig, Limits, LogConfig,
    MockConfig, Provider, Secret, ServerConfig, StoreConfig, TaskRun, UpstreamConfig, duration,
};
use crate::failover::{Breaker, BreakerConfig, Cond};
use crate::route::{Fallback, ModelSpec, RouteTable, Target};

struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.0.push(ConfigError {
            key: key.into(),
            reason: reason.into(),
        });
    }

    fn duration(&mut self, key: &str, v: &Option<String>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => match duration::parse(s) {
                Ok(d) if !d.is_zero() => d,
                Ok(_) => {
                    self.push(key, "must be greater than zero");
                    default
                }
                Err(e) => {
                    self.push(key, e);
                    default
                }
            },
        }
    }

    fn addr(&mut self, key: &str, v: &str) -> Option<SocketAddr> {
        match v.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.push(
                    key,
                    format!("`{v}` is not an IP:port address (e.g. \"127.0.0.1:8080\")"),
                );
                None
            }
        }
    }
}

/// Compiles a parsed file; `path` only resolves relative file names.
pub fn compile(raw: RawConfig, path: &Path) -> Result<Config, Vec<ConfigError>> {
    let mut errs = Errors(Vec::new());
    let base_dir = path.parent().unwrap_or(Path::new("."));

    let s = &raw.server;
    let listen = errs
        .addr(
            "server.listen",
            s.listen.as_deref().unwrap_or("127.0.0.1:8080"),
        )
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080)));
    let admin_listen = s
        .admin_listen
        .as_deref()
        .and_then(|a| errs.addr("server.admin_listen", a));
    let workers = match s.workers.unwrap_or(0) {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n if n > 1024 => {
            errs.push("server.workers", "at most 1024 workers");
            1
        }
        n => n,
    };
    let driver = DriverChoice::parse(s.driver.as_deref().unwrap_or("auto")).unwrap_or_else(|e| {
        errs.push("server.driver", e);
        DriverChoice::Auto
    });
    let task_run = TaskRun::parse(s.io_uring_task_run.as_deref().unwrap_or("defer"))
        .unwrap_or_else(|e| {
            errs.push("server.io_uring_task_run", e);
            TaskRun::Defer
        });
    let d = Limits::default();
    let limits = Limits {
        max_header_bytes: positive(
            &mut errs,
            "server.max_header_bytes",
            s.max_header_bytes,
            d.max_header_bytes,
        ),
        max_body_bytes: positive(
            &mut errs,
            "server.max_body_bytes",
            s.max_body_bytes,
            d.max_body_bytes,
        ),
        header_timeout: errs.duration("server.header_timeout", &s.header_timeout, d.header_timeout),
        body_timeout: errs.duration("server.body_timeout", &s.body_timeout, d.body_timeout),
        idle_timeout: errs.duration("server.idle_timeout", &s.idle_timeout, d.idle_timeout),
        idle_buffer_release: errs.duration(
            "server.idle_buffer_release",
            &s.idle_buffer_release,
            d.idle_buffer_release,
        ),
    };
    let server = ServerConfig {
        listen,
        admin_listen,
        workers,
        driver,
        task_run,
        pin_cpus: s.pin_cpus.unwrap_or(false),
        limits,
        shutdown_grace: errs.duration(
            "server.shutdown_grace",
            &s.shutdown_grace,
            Duration::from_secs(30),
        ),
        expose_route_headers: s.expose_route_headers.unwrap_or(true),
    };

    let log = LogConfig {
        level: raw.log.level.clone().unwrap_or_else(|| "info".into()),
        json: match raw.log.format.as_deref().unwrap_or("text") {
            "text" => false,
            "json" => true,
            other => {
                errs.push(
                    "log.format",
                    format!("unknown format `{other}`; use text or json"),
                );
                false
            }
        },
        access: raw.log.access.unwrap_or(true),
    };

    let mut by_name: HashMap<&str, u32> = HashMap::new();
    let mut upstreams = Vec::with_capacity(raw.upstreams.len());
    for (i, u) in raw.upstreams.iter().enumerate() {
        let key = format!("upstreams[{i}]");
        if by_name.insert(u.name.as_str(), i as u32).is_some() {
            errs.push(
                format!("{key}.name"),
                format!("duplicate upstream `{}`", u.name),
            );
        }
        if let Some(up) = upstream(&mut errs, &key, u, base_dir) {
            upstreams.push(Arc::new(up));
        }
    }

    let mut specs = Vec::with_capacity(raw.models.len());
    for (i, m) in raw.models.iter().enumerate() {
        let key = format!("models[{i}]");
        if m.name.trim().is_empty() {
            errs.push(format!("{key}.name"), "must not be empty");
        }
        if m.targets.is_empty() {
            errs.push(format!("{key}.targets"), "needs at least one target");
        }
        let breaker_cfg = breaker_config(&mut errs, &format!("{key}.breaker"), m.breaker.as_ref());
        let mut fallbacks = Vec::with_capacity(m.fallbacks.len());
        for (j, f) in m.fallbacks.iter().enumerate() {
            let when = match f.when.as_deref().map(Cond::parse) {
                None => None,
                Some(Ok(c)) => Some(c),
                Some(Err(e)) => {
                    errs.push(format!("{key}.fallbacks[{j}].when"), e);
                    None
                }
            };
            fallbacks.push(Fallback {
                model: f.model.clone(),
                route: 0,
                when,
            });
        }
        let max_attempts = match m.max_attempts {
            Some(0) => {
                errs.push(format!("{key}.max_attempts"), "must be at least 1");
                1
            }
            Some(n) => n.min(10),
            None => 3,
        };
        let mut targets = Vec::with_capacity(m.targets.len());
        for (j, t) in m.targets.iter().enumerate() {
            let tkey = format!("{key}.targets[{j}]");
            let Some(&up) = by_name.get(t.upstream.as_str()) else {
                let known: Vec<&str> = raw.upstreams.iter().map(|u| u.name.as_str()).collect();
                errs.push(
                    format!("{tkey}.upstream"),
                    format!(
                        "unknown upstream `{}`; defined upstreams: [{}]",
                        t.upstream,
                        known.join(", ")
                    ),
                );
                continue;
            };
            let weight = t.weight.unwrap_or(1);
            if weight == 0 || weight > 1_000_000 {
                errs.push(format!("{tkey}.weight"), "must be between 1 and 1000000");
            }
            if t.model.as_deref().is_some_and(|m| m.trim().is_empty()) {
                errs.push(format!("{tkey}.model"), "must not be empty");
            }
            targets.push(Target {
                upstream: up,
                model: t.model.as_deref().map(Arc::from),
                weight: weight.clamp(1, 1_000_000),
                breaker: Arc::new(Breaker::new(breaker_cfg)),
                failures: Arc::default(),
            });
        }
        specs.push(ModelSpec {
            name: m.name.clone(),
            aliases: m.aliases.clone(),
            targets,
            hidden: m.hidden.unwrap_or(false),
            fallbacks,
            max_attempts,
            deadline: m
                .deadline
                .as_ref()
                .map(|_| errs.duration(&format!("{key}.deadline"), &m.deadline, Duration::ZERO)),
            tokenizer: m.tokenizer,
            price: m.price.and_then(|p| {
                let ok = p.input.is_finite()
                    && p.output.is_finite()
                    && p.input >= 0.0
                    && p.output >= 0.0;
                if !ok {
                    errs.push(
                        format!("models[{i}].price"),
                        "input and output must be finite, non-negative dollars per million tokens",
                    );
                }
                ok.then_some(crate::route::Price {
                    input: p.input,
                    output: p.output,
                })
            }),
        });
    }
    let routes = match RouteTable::build(specs) {
        Ok(t) => t,
        Err(list) => {
            for (key, reason) in list {
                errs.push(key, reason);
            }
            RouteTable::default()
        }
    };

    let mock = raw.mock.as_ref().and_then(|m| {
        Some(MockConfig {
            listen: errs.addr("mock.listen", &m.listen)?,
            seed: m.seed.unwrap_or(0),
        })
    });
    if mock.as_ref().is_some_and(|m| m.listen == server.listen) {
        errs.push("mock.listen", "must differ from server.listen");
    }

    let store = match (
        raw.store.kind.as_deref().unwrap_or("memory"),
        &raw.store.url,
    ) {
        ("memory", _) => StoreConfig::Memory,
        ("redis", Some(url)) if url.starts_with("redis://") => {
            StoreConfig::Redis { url: url.clone() }
        }
        ("redis", Some(url)) => {
            errs.push("store.url", format!("`{url}` is not a redis:// URL"));
            StoreConfig::Memory
        }
        ("redis", None) => {
            errs.push(
                "store.url",
                "kind = \"redis\" needs url = \"redis://host:port\"",
            );
            StoreConfig::Memory
        }
        (other, _) => {
            errs.push(
                "store.kind",
                format!("unknown store `{other}`; use memory or redis"),
            );
            StoreConfig::Memory
        }
    };
    match raw.store.on_store_error.as_deref() {
        None | Some("fail_open" | "fail_closed") => {}
        Some(other) => errs.push(
            "store.on_store_error",
            format!("unknown policy `{other}`; use fail_open or fail_closed"),
        ),
    }
    let (auth, problems) = super::auth::compile(
        &raw.auth,
        &raw.keys,
        &raw.tenants,
        raw.store.on_store_error.as_deref(),
        &routes,
        &|var| std::env::var(var).ok(),
    );
    for (key, reason) in problems {
        errs.push(key, reason);
    }
    let ledger = ledger_config(&mut errs, &raw.store, base_dir);
    let ebpf = ebpf_config(&mut errs, &raw.ebpf);
    if errs.0.is_empty() {
        Ok(Config {
            ebpf,
            ledger,
            store,
            auth,
            source: path.to_path_buf(),
            server,
            log,
            upstreams,
            routes,
            mock,
        })
    } else {
        Err(errs.0)
    }
}

fn ebpf_config(errs: &mut Errors, raw: &super::raw::RawEbpf) -> EbpfConfig {
    let mode = match raw.enabled.as_deref().unwrap_or("auto") {
        "auto" => EbpfMode::Auto,
        "on" => EbpfMode::On,
        "off" => EbpfMode::Off,
        other => {
            errs.push(
                "ebpf.enabled",
                format!("unknown value `{other}`; use auto, on or off"),
            );
            EbpfMode::Auto
        }
    };
    let cgroup = match raw.cgroup.as_deref().unwrap_or("auto") {
        "auto" => tollgate_loader::Placement::Auto,
        "off" => tollgate_loader::Placement::Off,
        p if p.starts_with('/') => tollgate_loader::Placement::Path(p.into()),
        other => {
            errs.push(
                "ebpf.cgroup",
                format!("`{other}` is not auto, off or an absolute cgroup v2 directory"),
            );
            tollgate_loader::Placement::Auto
        }
    };
    EbpfConfig { mode, cgroup }
}

fn ledger_config(errs: &mut Errors, st: &super::raw::RawStore, base_dir: &Path) -> LedgerConfig {
    let spool_dir = base_dir.join(st.spool_dir.as_deref().unwrap_or("tollgate-spool"));
    if st.spool_dir.as_deref().is_some_and(|d| d.trim().is_empty()) {
        errs.push("store.spool_dir", "must not be empty");
    }
    if spool_dir.exists() && !spool_dir.is_dir() {
        errs.push(
            "store.spool_dir",
            format!("`{}` exists and is not a directory", spool_dir.display()),
        );
    }
    let batch_max = positive(errs, "store.batch_max", st.batch_max, 2048);
    if batch_max > 65_536 {
        errs.push("store.batch_max", "at most 65536 records per batch");
    }
    let stream_max = match st.ledger_stream_max {
        Some(0) => {
            errs.push("store.ledger_stream_max", "must be greater than zero");
            1
        }
        Some(n) => n,
        None => 1_000_000,
    };
    LedgerConfig {
        spool_dir,
        batch_max: batch_max.min(65_536),
        flush_interval: errs.duration(
            "store.flush_interval",
            &st.flush_interval,
            Duration::from_millis(100),
        ),
        queue: positive(errs, "store.ledger_queue", st.ledger_queue, 65_536),
        timeout: errs.duration("store.timeout", &st.timeout, Duration::from_secs(1)),
        stream_max,
    }
}

fn breaker_config(errs: &mut Errors, key: &str, b: Option<&RawBreaker>) -> BreakerConfig {
    let d = BreakerConfig::default();
    let Some(b) = b else { return d };
    let rate = b.failure_rate.filter(|r| {
        let ok = *r > 0.0 && *r <= 1.0;
        if !ok {
            errs.push(format!("{key}.failure_rate"), "must be in (0, 1]");
        }
        ok
    });
    let window = b.window.unwrap_or(d.window);
    if !(1..=64).contains(&window) {
        errs.push(format!("{key}.window"), "must be between 1 and 64 calls");
    }
    let growth = b.growth.unwrap_or(d.growth);
    if !(1.0..=10.0).contains(&growth) {
        errs.push(format!("{key}.growth"), "must be between 1 and 10");
    }
    BreakerConfig {
        max_failures: b.max_failures.unwrap_or(d.max_failures),
        failure_rate: rate,
        window: window.clamp(1, 64),
        min_calls: b.min_calls.unwrap_or(d.min_calls),
        break_duration: errs.duration(
            &format!("{key}.break_duration"),
            &b.break_duration,
            d.break_duration,
        ),
        growth: growth.clamp(1.0, 10.0),
        max_break: errs.duration(&format!("{key}.max_break"), &b.max_break, d.max_break),
        probes: b.probes.unwrap_or(d.probes).max(1),
        cooldown: errs.duration(&format!("{key}.cooldown"), &b.cooldown, d.cooldown),
    }
}

fn positive(errs: &mut Errors, key: &str, v: Option<usize>, default: usize) -> usize {
    match v {
        Some(0) => {
            errs.push(key, "must be greater than zero");
            default
        }
        Some(n) => n,
        None => default,
    }
}

fn upstream(
    errs: &mut Errors,
    key: &str,
    u: &RawUpstream,
    base_dir: &Path,
) -> Option<UpstreamConfig> {
    let provider = match u.provider.as_deref().unwrap_or("openai-compatible") {
        "openai" => Provider::OpenAi,
        "openai-compatible" => Provider::OpenAiCompatible,
        other => {
            errs.push(
                format!("{key}.provider"),
                format!("unknown provider `{other}`; use openai or openai-compatible"),
            );
            Provider::OpenAiCompatible
        }
    };
    let api_key = match &u.api_key_env {
        None => None,
        Some(var) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Some(Secret::new(v)),
            _ => {
                errs.push(
                    format!("{key}.api_key_env"),
                    format!("environment variable `{var}` is not set or empty"),
                );
                None
            }
        },
    };
    let ca_file = u.ca_file.as_ref().map(|f| base_dir.join(f));
    if let Some(f) = ca_file.as_ref().filter(|f| !f.is_file()) {
        errs.push(
            format!("{key}.ca_file"),
            format!("`{}` is not a readable file", f.display()),
        );
    }
    let connect_timeout = errs.duration(
        &format!("{key}.connect_timeout"),
        &u.connect_timeout,
        Duration::from_secs(5),
    );
    let response_timeout = errs.duration(
        &format!("{key}.response_timeout"),
        &u.response_timeout,
        Duration::from_secs(300),
    );
    let read_timeout = errs.duration(
        &format!("{key}.read_timeout"),
        &u.read_timeout,
        Duration::from_secs(300),
    );
    let idle_timeout = errs.duration(
        &format!("{key}.idle_timeout"),
        &u.idle_timeout,
        Duration::from_secs(60),
    );
    let url = match parse_url(&u.base_url) {
        Ok(url) => url,
        Err(reason) => {
            errs.push(format!("{key}.base_url"), reason);
            return None;
        }
    };
    Some(UpstreamConfig {
        name: Arc::from(u.name.as_str()),
        provider,
        tls: url.tls,
        host_header: url.host_header,
        host: url.host,
        port: url.port,
        base_path: url.path,
        api_key,
        ca_file,
        connect_timeout,
        response_timeout,
        read_timeout,
        max_idle: u.max_idle.unwrap_or(256),
        idle_timeout,
        stream_usage: u.stream_usage.unwrap_or(true),
    })
}

struct Url {
    tls: bool,
    host: String,
    port: u16,
    host_header: String,
    path: String,
}

/// Parses `http(s)://host[:port][/path]`; no userinfo, query or fragment.
fn parse_url(s: &str) -> Result<Url, String> {
    let bad = |why: &str| format!("`{s}` is not a valid base URL: {why}");
    let (tls, rest) = if let Some(r) = s.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = s.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(bad("must start with http:// or https://"));
    };
    if rest.contains(['?', '#', '@']) {
        return Err(bad("query, fragment and user info are not allowed"));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (host, port) = if let Some(r) = authority.strip_prefix('[') {
        let end = r.find(']').ok_or_else(|| bad("unclosed IPv6 bracket"))?;
        let host = &r[..end];
        let after = &r[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(bad("junk after IPv6 address")),
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'))
    {
        return Err(bad("missing or invalid host"));
    }
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| bad("invalid port"))?,
        None if tls => 443,
        None => 80,
    };
    let default_port = if tls { 443 } else { 80 };
    let host_header = if port == default_port {
        authority.split(':').next().unwrap_or(authority).to_string()
    } else {
        authority.to_string()
    };
    let host_header = if host.contains(':') {
        // IPv6: keep brackets as written.
        authority.to_string()
    } else {
        host_header
    };
    Ok(Url {
        tls,
        host: host.to_string(),
        port,
        host_header,
        path: path.trim_end_matches('/').to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drivers_by_name() {
        for (n, d) in [
            ("auto", DriverChoice::Auto),
            ("io_uring", DriverChoice::IoUring),
            ("legacy", DriverChoice::Legacy),
        ] {
            assert_eq!(DriverChoice::parse(n), Ok(d));
        }
        for bad in ["epoll", "IO_URING"] {
            assert_eq!(
                DriverChoice::parse(bad),
                Err(format!(
                    "unknown driver `{bad}`; use auto, io_uring or legacy"
                ))
            );
        }
    }

    #[test]
    fn urls() {
        let u = parse_url("https://api.openai.com/v1/").unwrap();
        assert!(u.tls);
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("api.openai.com", 443, "/v1")
        );
        assert_eq!(u.host_header, "api.openai.com");
        let u = parse_url("http://127.0.0.1:9001/v1").unwrap();
        assert_eq!((u.port, u.host_header.as_str()), (9001, "127.0.0.1:9001"));
        let u = parse_url("http://[::1]:9001").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 9001, "")
        );
        assert!(parse_url("ftp://x").is_err());
        assert!(parse_url("http://").is_err());
        assert!(parse_url("http://h:99999").is_err());
        assert!(parse_url("http://h/v1?x=1").is_err());
    }
}
