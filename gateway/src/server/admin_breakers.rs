//! Breakers on the admin listener: list them, force one open or closed,
//! and their state and failure counts in `/metrics`.
//!
//! ```text
//! GET  /breakers                                   all targets and states
//! POST /breakers/{model}/{upstream}/open[?for=60s] force open (default: its break)
//! POST /breakers/{model}/{upstream}/close          close and clear counters
//! ```

use std::fmt::Write as _;
use std::time::Duration;

use super::worker::Shared;
use crate::error::{Error, Kind};
use crate::failover::{State, now_ms};
use crate::route::{Route, Target};

fn targets(shared: &Shared) -> impl Iterator<Item = (&Route, &Target, &str)> {
    shared.cfg.routes.routes().iter().flat_map(move |r| {
        r.targets.iter().map(move |t| {
            let up = shared
                .upstreams
                .get(t.upstream as usize)
                .map_or("?", |u| u.cfg.name.as_ref());
            (r, t, up)
        })
    })
}

/// `GET /breakers`.
pub fn list(shared: &Shared) -> String {
    let now = now_ms();
    let items: Vec<serde_json::Value> = targets(shared)
        .map(|(r, t, up)| {
            serde_json::json!({
                "model": r.name.as_ref(),
                "upstream": up,
                "target_model": t.model.as_deref(),
                "state": t.breaker.state(now).name(),
                "blocked_ms": t.breaker.blocked_for(now),
            })
        })
        .collect();
    serde_json::json!({ "breakers": items }).to_string()
}

/// `POST /breakers/{model}/{upstream}/{open|close}`; `query` is the raw
/// query string (`for=30s`). Returns the breaker's new listing.
pub fn act(shared: &Shared, path: &str, query: &str) -> Result<String, Error> {
    let mut parts = path.split('/');
    let (Some(model), Some(upstream), Some(action), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Error::new(
            Kind::NotFound,
            "use POST /breakers/{model}/{upstream}/open or /close",
        ));
    };
    let now = now_ms();
    let mut hit = 0;
    for (r, t, up) in targets(shared) {
        if &*r.name != model || up != upstream {
            continue;
        }
        hit += 1;
        match action {
            "open" => {
                let d = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("for="))
                    .map(crate::config::duration::parse)
                    .transpose()
                    .map_err(|e| Error::msg(Kind::BadRequest, format!("for: {e}")))?
                    .unwrap_or(Duration::from_secs(60));
                t.breaker.force_open(d, now);
                tracing::warn!(target: "tollgate::breaker", model, upstream, ms = d.as_millis() as u64, "circuit breaker forced open (admin)");
            }
            "close" => {
                t.breaker.reset();
                tracing::warn!(target: "tollgate::breaker", model, upstream, "circuit breaker forced closed (admin)");
            }
            _ => {
                return Err(Error::msg(
                    Kind::NotFound,
                    format!("unknown action `{action}`; use open or close"),
                ));
            }
        }
    }
    if hit == 0 {
        return Err(Error::msg(
            Kind::NotFound,
            format!("no target of model `{model}` on upstream `{upstream}`"),
        ));
    }
    Ok(list(shared))
}

/// Breaker states and failed attempts, Prometheus text.
pub fn render(shared: &Shared, out: &mut String) {
    let now = now_ms();
    out.push_str("# HELP tollgate_breaker_state Circuit breaker state per target: 0 closed, 1 open, 2 half-open.\n");
    out.push_str("# TYPE tollgate_breaker_state gauge\n");
    for (r, t, up) in targets(shared) {
        let v = match t.breaker.state(now) {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        };
        let _ = writeln!(
            out,
            "tollgate_breaker_state{{model=\"{}\",upstream=\"{}\"}} {v}",
            label(&r.name),
            label(up)
        );
    }
    out.push_str("# HELP tollgate_upstream_failures_total Failed upstream attempts by class.\n");
    out.push_str("# TYPE tollgate_upstream_failures_total counter\n");
    for (r, t, up) in targets(shared) {
        for (class, n) in t.failures.snapshot() {
            let _ = writeln!(
                out,
                "tollgate_upstream_failures_total{{model=\"{}\",upstream=\"{}\",class=\"{}\"}} {n}",
                label(&r.name),
                label(up),
                class.name()
            );
        }
    }
}

fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
