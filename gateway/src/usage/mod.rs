//! Usage records: what each request cost, in tokens, and where that number
//! came from. Produced at the end of every proxied request (completed,
//! failed or abandoned) and handed to the configured sinks.
//!
//! # Failure behavior
//! Sinks never block the data path: the log sink writes through the
//! non-blocking logger (lossy under pressure), the metrics sink is a few
//! relaxed atomic adds, the billing ledger (`crate::ledger`) a `try_send`
//! into a bounded queue that spills to disk when full.

pub mod body;
pub mod metrics;

use std::sync::Arc;
use std::time::Duration;

use crate::text::Text;

pub use metrics::TokenMetrics;

/// Where a token count came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// The provider's own `usage`.
    Provider,
    /// Counted by the gateway (no usage arrived).
    Estimated,
}

impl Source {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Provider => "provider",
            Source::Estimated => "estimated",
        }
    }
}

/// One request's usage.
#[derive(Debug, Clone)]
pub struct UsageRecord {
    /// Request id.
    pub request_id: Text,
    /// Key id, when auth knows it.
    pub key_id: Option<Arc<str>>,
    /// Tenant, when auth knows it.
    pub tenant: Option<Arc<str>>,
    /// Model the client asked for.
    pub requested_model: Text,
    /// Model sent upstream.
    pub served_model: Arc<str>,
    /// Upstream name.
    pub upstream: Arc<str>,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Where `prompt_tokens` came from.
    pub prompt_source: Source,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Where `completion_tokens` came from.
    pub completion_source: Source,
    /// Status sent to the client (499: the client left first).
    pub status: u16,
    /// Time to the upstream response head.
    pub ttfb: Option<Duration>,
    /// Time from request head to the end of the response.
    pub total: Duration,
    /// Streaming request.
    pub stream: bool,
    /// Price of the usage in micro-dollars (0 when the model has no price).
    pub cost_micros: u64,
    /// Upstream connection as the kernel saw it (eBPF `sock_ops`): srtt in
    /// microseconds and segments retransmitted while the request ran.
    pub upstream_tcp: Option<(u32, u32)>,
}

/// Consumer of usage records. Implementations must not block.
pub trait UsageSink: Send + Sync {
    /// Takes one record.
    fn record(&self, rec: &UsageRecord);
}

/// Writes each record as one structured log line (`tollgate::usage`).
pub struct LogSink;

impl UsageSink for LogSink {
    fn record(&self, r: &UsageRecord) {
        tracing::info!(
            target: "tollgate::usage",
            request_id = r.request_id.as_str(),
            key_id = r.key_id.as_deref().unwrap_or("-"),
            tenant = r.tenant.as_deref().unwrap_or("-"),
            requested_model = r.requested_model.as_str(),
            served_model = r.served_model.as_ref(),
            upstream = r.upstream.as_ref(),
            prompt_tokens = r.prompt_tokens,
            prompt_source = r.prompt_source.as_str(),
            completion_tokens = r.completion_tokens,
            completion_source = r.completion_source.as_str(),
            status = r.status,
            ttfb_ms = r.ttfb.map_or(0.0, |d| d.as_secs_f64() * 1000.0),
            total_ms = r.total.as_secs_f64() * 1000.0,
            stream = r.stream,
            cost_micros = r.cost_micros,
            srtt_us = r.upstream_tcp.map(|t| t.0),
            retrans = r.upstream_tcp.map(|t| t.1),
        );
    }
}

/// The sinks of a process.
#[derive(Clone)]
pub struct Sinks {
    sinks: Arc<[Arc<dyn UsageSink>]>,
}

impl Sinks {
    /// A set of sinks.
    pub fn new(sinks: Vec<Arc<dyn UsageSink>>) -> Self {
        Sinks {
            sinks: sinks.into(),
        }
    }

    /// Hands a record to every sink.
    pub fn record(&self, rec: &UsageRecord) {
        for s in self.sinks.iter() {
            s.record(rec);
        }
    }
}
