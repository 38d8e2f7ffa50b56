//! What one load-generator thread saw, merged into one report at the end.
//!
//! Latencies go into HDR histograms (3 significant digits, 1 µs to 60 s):
//! recording is a few nanoseconds and the tails stay exact enough for
//! p99.9, so the generator's own bookkeeping never shapes the result.

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Highest latency recorded, in µs (longer ones are clamped).
const MAX_US: u64 = 60_000_000;

/// Error counts by kind.
#[derive(Debug, Default, Clone, Copy)]
pub struct Errors {
    /// Connect refused or failed.
    pub connect: u64,
    /// Write or read failed, or the peer closed mid-response.
    pub io: u64,
    /// The response framing was invalid.
    pub protocol: u64,
    /// No full response within the request timeout.
    pub timeout: u64,
    /// A status other than 200.
    pub status: u64,
    /// A stream with the wrong number of events or without `[DONE]`.
    pub incomplete: u64,
}

impl Errors {
    /// All errors.
    pub fn total(&self) -> u64 {
        self.connect + self.io + self.protocol + self.timeout + self.status + self.incomplete
    }

    fn add(&mut self, o: &Errors) {
        self.connect += o.connect;
        self.io += o.io;
        self.protocol += o.protocol;
        self.timeout += o.timeout;
        self.status += o.status;
        self.incomplete += o.incomplete;
    }
}

/// One thread's counters.
#[derive(Debug)]
pub struct Stats {
    /// Request latency in µs (open loop: from the intended start).
    pub latency: Histogram<u64>,
    /// Time to the first response byte in µs (same origin as latency).
    pub ttfb: Histogram<u64>,
    /// Successful responses in the measured window.
    pub ok: u64,
    /// Errors in the measured window.
    pub errors: Errors,
    /// Connections opened again after the server closed one.
    pub reconnects: u64,
    /// Body bytes received in the measured window.
    pub body_bytes: u64,
    /// SSE events received in the measured window.
    pub events: u64,
    /// Unix time (µs) of the first response that carried the marker.
    pub first_marker_unix_us: Option<u64>,
    /// Unix times (µs) of the first and last error (whole run).
    pub error_span_unix_us: Option<(u64, u64)>,
    /// Responses with the marker.
    pub marked: u64,
    /// Idle connections: (opened and answered, answered again at the end).
    pub idle: (u64, u64),
}

impl Stats {
    /// Empty counters.
    pub fn new() -> std::io::Result<Self> {
        Ok(Stats {
            latency: hist()?,
            ttfb: hist()?,
            ok: 0,
            errors: Errors::default(),
            reconnects: 0,
            body_bytes: 0,
            events: 0,
            first_marker_unix_us: None,
            error_span_unix_us: None,
            marked: 0,
            idle: (0, 0),
        })
    }

    /// Records a latency pair (µs).
    pub fn record(&mut self, latency_us: u64, ttfb_us: u64) {
        self.latency.saturating_record(latency_us.clamp(1, MAX_US));
        self.ttfb.saturating_record(ttfb_us.clamp(1, MAX_US));
    }

    /// Notes the time of an error.
    pub fn error_at(&mut self, unix_us: u64) {
        self.error_span_unix_us = Some(match self.error_span_unix_us {
            None => (unix_us, unix_us),
            Some((a, b)) => (a.min(unix_us), b.max(unix_us)),
        });
    }

    /// Adds another thread's counters.
    pub fn merge(&mut self, o: &Stats) {
        let _ = self.latency.add(&o.latency);
        let _ = self.ttfb.add(&o.ttfb);
        self.ok += o.ok;
        self.errors.add(&o.errors);
        self.reconnects += o.reconnects;
        self.body_bytes += o.body_bytes;
        self.events += o.events;
        self.marked += o.marked;
        self.first_marker_unix_us = match (self.first_marker_unix_us, o.first_marker_unix_us) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some((a, b)) = o.error_span_unix_us {
            self.error_at(a);
            self.error_at(b);
        }
        self.idle = (self.idle.0 + o.idle.0, self.idle.1 + o.idle.1);
    }

    /// The report as JSON; `seconds` is the measured window.
    pub fn to_json(&self, seconds: f64) -> Value {
        let e = &self.errors;
        json!({
            "seconds": seconds,
            "ok": self.ok,
            "errors": e.total(),
            "error_kinds": {
                "connect": e.connect, "io": e.io, "protocol": e.protocol,
                "timeout": e.timeout, "status": e.status, "incomplete": e.incomplete,
            },
            "rps": self.ok as f64 / seconds.max(1e-9),
            "reconnects": self.reconnects,
            "body_bytes": self.body_bytes,
            "events": self.events,
            "latency_us": summary(&self.latency),
            "ttfb_us": summary(&self.ttfb),
            "latency_cdf": cdf(&self.latency),
            "marked": self.marked,
            "first_marker_unix_us": self.first_marker_unix_us,
            "first_error_unix_us": self.error_span_unix_us.map(|s| s.0),
            "last_error_unix_us": self.error_span_unix_us.map(|s| s.1),
            "idle_opened": self.idle.0,
            "idle_alive_at_end": self.idle.1,
        })
    }
}

fn hist() -> std::io::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_US, 3).map_err(|e| std::io::Error::other(e.to_string()))
}

fn summary(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return Value::Null;
    }
    json!({
        "min": h.min(), "mean": h.mean(), "p50": h.value_at_quantile(0.5),
        "p90": h.value_at_quantile(0.9), "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999), "max": h.max(),
    })
}

/// (quantile, µs) points, denser towards the tail, for a CDF plot.
fn cdf(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return Value::Array(Vec::new());
    }
    let mut q = Vec::new();
    let mut x = 0.0f64;
    while x < 0.9999 {
        q.push(x);
        // Steps shrink as the remaining tail shrinks: 5% of what is left.
        x += ((1.0 - x) * 0.05).max(0.00001);
    }
    q.push(0.9999);
    q.push(1.0);
    Value::Array(
        q.into_iter()
            .map(|q| json!([q, h.value_at_quantile(q)]))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_counts_and_keeps_extremes() {
        let mut a = Stats::new().unwrap();
        a.record(100, 10);
        a.ok = 1;
        a.error_at(50);
        a.first_marker_unix_us = Some(70);
        let mut b = Stats::new().unwrap();
        b.record(300, 30);
        b.ok = 2;
        b.errors.status = 1;
        b.error_at(90);
        b.first_marker_unix_us = Some(60);
        a.merge(&b);
        assert_eq!(a.ok, 3);
        assert_eq!(a.errors.total(), 1);
        assert_eq!(a.latency.len(), 2);
        assert_eq!(a.error_span_unix_us, Some((50, 90)));
        assert_eq!(a.first_marker_unix_us, Some(60));
        let j = a.to_json(1.0);
        assert_eq!(j["rps"].as_f64(), Some(3.0));
        assert!(j["latency_us"]["p99"].as_u64().is_some_and(|v| v >= 299));
        let cdf = j["latency_cdf"].as_array().map_or(0, Vec::len);
        assert!(cdf > 50, "cdf has {cdf} points");
    }
}
