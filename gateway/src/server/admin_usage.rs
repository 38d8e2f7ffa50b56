//! `GET /admin/usage?tenant=T&day=YYYY-MM-DD` on the admin listener (behind
//! the admin token, see `admin_keys.rs`): the billing ledger's totals per
//! tenant and model (see `ledger/query.rs` for the answer's shape).
//!
//! # Failure behavior
//! A Redis store that does not answer within the store timeout gives a
//! 503 with an OpenAI-shaped error; the admin thread waits, workers never.

use super::admin_keys::Answer;
use super::worker::Shared;
use crate::error::{Error, Kind};
use crate::ledger::query::{QueryError, usage_json};

/// The answer to `GET /admin/usage`; `query` is the raw query string.
pub fn answer(shared: &Shared, query: &str) -> Answer {
    match usage_json(&shared.ledger, query.trim_start_matches('?')) {
        Ok(body) => (200, body),
        Err(QueryError::BadRequest(m)) => (400, Error::msg(Kind::BadRequest, m).to_json()),
        Err(QueryError::Store(e)) => {
            tracing::warn!(target: "tollgate::ledger", error = %e, "usage query failed");
            let body = serde_json::json!({"error": {
                "message": format!("the usage store did not answer: {e}"),
                "type": "store_error",
                "code": "store_unavailable",
            }});
            (503, body.to_string())
        }
    }
}
