//! `GET /admin/usage`: one day's totals per tenant and model, from the
//! store the ledger writes to (Redis: every node's usage; memory: this
//! node's).
//!
//! Query: `tenant=T` (default: all), `day=YYYY-MM-DD` (default: today,
//! UTC). Answer:
//!
//! ```json
//! {"day":"2025-11-25","store":"redis","tenants":[{"tenant":"acme",
//!   "totals":{"requests":3,"prompt_tokens":30,"completion_tokens":12,"cost_micros":0},
//!   "models":{"gpt-4o":{"requests":3,...}}}]}
//! ```
//!
//! # Failure behavior
//! Redis unreachable: an error (503-class) after the store timeout; this
//! runs on the admin thread, never on a worker.

use std::collections::BTreeMap;

use super::aggregate::Totals;
use super::record::{day_string, now_ms, parse_day};
use super::{Backend, Ledger, StoreError};

/// Why a usage query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// A query parameter is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The store did not answer.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// Decodes `%XX` and `+` in a query value.
fn decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(v.get(i + 1..i + 3).unwrap_or(""), 16) {
                    Ok(x) => {
                        out.push(x);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Answers a usage query; `query` is the raw query string without `?`.
pub fn usage_json(ledger: &Ledger, query: &str) -> Result<String, QueryError> {
    let mut tenant = None;
    let mut day = None;
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "tenant" => tenant = Some(decode(v)),
            "day" => {
                let v = decode(v);
                day = Some(parse_day(&v).ok_or_else(|| {
                    QueryError::BadRequest(format!("day: `{v}` is not a date (YYYY-MM-DD)"))
                })?);
            }
            other => {
                return Err(QueryError::BadRequest(format!(
                    "unknown parameter `{other}`; use tenant and day"
                )));
            }
        }
    }
    let day = day.unwrap_or((now_ms() / 86_400_000) as u32);
    let (store, mut data) = match ledger.backend() {
        Backend::Memory => ("memory", ledger.memory_totals().day(day, tenant.as_deref())),
        Backend::Redis(url) => (
            "redis",
            super::redis::read_day(url, ledger.timeout(), day, tenant.as_deref())?,
        ),
    };
    let tenants: Vec<serde_json::Value> = std::mem::take(&mut data)
        .into_iter()
        .map(|(t, mut models)| {
            let totals = models.remove("*").unwrap_or_else(|| {
                let mut sum = Totals::default();
                models.values().for_each(|m| sum.add(m));
                sum
            });
            let models: BTreeMap<String, Totals> = models;
            serde_json::json!({ "tenant": t, "totals": totals, "models": models })
        })
        .collect();
    Ok(
        serde_json::json!({ "day": day_string(day), "store": store, "tenants": tenants })
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_query_values() {
        assert_eq!(decode("a%20b+c"), "a b c");
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz"), "%zz");
        assert_eq!(decode("x%2"), "x%2");
    }
}
