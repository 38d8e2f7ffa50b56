//! `GET /admin/usage?tenant=T&day=YYYY-MM-DD` on the admin listener
//! (behind the admin token, like the rest of `/admin/`): the billing
//! ledger's totals per tenant and model (see `ledger/query.rs` for the
//! answer's shape).
//!
//! # Failure behavior
//! A Redis store that does not answer within the store timeout gives a
//! 503 `store_unavailable`; the admin thread waits, workers never.

use super::worker::Shared;
use crate::ledger::query::{QueryError, usage_json};

/// Answers `GET /admin/usage` (`query` includes the `?`); `None` for
/// other calls.
pub fn handle(shared: &Shared, method: &[u8], path: &str, query: &[u8]) -> Option<(u16, String)> {
    if method != b"GET" || path != "/admin/usage" {
        return None;
    }
    let q = String::from_utf8_lossy(query);
    let err = |status: u16, kind: &str, code: &str, message: String| {
        let body = serde_json::json!({"error": {"message": message, "type": kind, "code": code}});
        (status, body.to_string())
    };
    Some(
        match usage_json(&shared.ledger, q.trim_start_matches('?')) {
            Ok(body) => (200, body),
            Err(QueryError::BadRequest(m)) => err(400, "invalid_request_error", "bad_request", m),
            Err(QueryError::Store(e)) => {
                tracing::warn!(target: "tollgate::ledger", error = %e, "usage query failed");
                err(
                    503,
                    "store_error",
                    "store_unavailable",
                    format!("the usage store did not answer: {e}"),
                )
            }
        },
    )
}
