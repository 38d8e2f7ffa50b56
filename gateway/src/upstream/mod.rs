//! Upstream side of the proxy: resolved addresses, TLS settings, the
//! per-worker connection pool, request building and response heads.
//!
//! `UpstreamRuntime` is built once from the config and shared read-only by
//! all workers; connections and pools are per worker and never cross
//! threads.
//!
//! # Failure behavior
//! DNS is resolved before the workers start and refreshed by one
//! background thread, so no worker ever blocks in `getaddrinfo`. A host
//! that does not resolve is logged and its requests fail with 502 until a
//! refresh succeeds (fail-open at start-up: one broken upstream must not
//! take down the others). The last good addresses are kept when a refresh
//! fails.

pub mod conn;
pub mod pool;
pub mod request;
pub mod response;
pub mod tls;

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::UpstreamConfig;
pub use conn::UpConn;
pub use pool::{Pool, Take};

/// How often host names are resolved again.
const DNS_REFRESH: Duration = Duration::from_secs(30);

/// Shared, read-only state of one upstream.
pub struct UpstreamRuntime {
    /// The config entry.
    pub cfg: Arc<UpstreamConfig>,
    addrs: ArcSwap<Vec<SocketAddr>>,
    /// Present for `https://` upstreams.
    pub tls: Option<tls::TlsSettings>,
    /// Header lines sent on every request: `host` and the upstream key.
    pub fixed_headers: Vec<u8>,
}

impl UpstreamRuntime {
    /// The current addresses (may be empty while the host does not resolve).
    pub fn addrs(&self) -> Arc<Vec<SocketAddr>> {
        self.addrs.load_full()
    }

    fn is_ip(&self) -> bool {
        self.cfg.host.parse::<IpAddr>().is_ok()
    }

    fn resolve(&self) -> std::io::Result<()> {
        let found: Vec<SocketAddr> = (self.cfg.host.as_str(), self.cfg.port)
            .to_socket_addrs()?
            .collect();
        if found.is_empty() {
            return Err(std::io::Error::other("no addresses"));
        }
        if **self.addrs.load() != found {
            self.addrs.store(Arc::new(found));
        }
        Ok(())
    }
}

/// Builds the runtime state of every upstream; errors name the upstream.
pub fn build(cfgs: &[Arc<UpstreamConfig>]) -> Result<Vec<Arc<UpstreamRuntime>>, String> {
    let mut out = Vec::with_capacity(cfgs.len());
    for cfg in cfgs {
        let tls = if cfg.tls {
            Some(tls::settings(cfg).map_err(|e| format!("upstream `{}`: {e}", cfg.name))?)
        } else {
            None
        };
        let mut fixed = Vec::new();
        crate::http::response::header(&mut fixed, b"host", cfg.host_header.as_bytes());
        if let Some(key) = &cfg.api_key {
            fixed.extend_from_slice(b"authorization: Bearer ");
            fixed.extend_from_slice(key.expose().as_bytes());
            fixed.extend_from_slice(b"\r\n");
        }
        let up = UpstreamRuntime {
            cfg: cfg.clone(),
            addrs: ArcSwap::from_pointee(Vec::new()),
            tls,
            fixed_headers: fixed,
        };
        if let Err(e) = up.resolve() {
            tracing::warn!(upstream = %cfg.name, host = %cfg.host, error = %e,
                "upstream host does not resolve; its requests fail until it does");
        }
        out.push(Arc::new(up));
    }
    Ok(out)
}

/// Starts the thread that re-resolves host names (none if all are IPs).
pub fn spawn_resolver(ups: &[Arc<UpstreamRuntime>]) {
    let named: Vec<Arc<UpstreamRuntime>> = ups.iter().filter(|u| !u.is_ip()).cloned().collect();
    if named.is_empty() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("tollgate-dns".into())
        .spawn(move || {
            loop {
                std::thread::sleep(DNS_REFRESH);
                for u in &named {
                    if let Err(e) = u.resolve() {
                        tracing::warn!(upstream = %u.cfg.name, error = %e, "DNS refresh failed; keeping last addresses");
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start the DNS refresh thread");
    }
}
