//! `GET /admin/usage?tenant=T&day=YYYY-MM-DD` on the admin listener: the
//! billing ledger's totals per tenant and model (see `ledger/query.rs` for
//! the answer's shape).
//!
//! # Failure behavior
//! A Redis store that does not answer within the store timeout gives a
//! 503 with an OpenAI-shaped error; the admin thread waits, workers never.

use super::worker::Shared;
use crate::error::{Error, Kind};
use crate::http::response::{Local, error, full};
use crate::ledger::query::{QueryError, usage_json};

/// Writes the response to `GET /admin/usage`; `query` includes the `?`.
pub fn serve(shared: &Shared, query: &[u8], out: &mut Vec<u8>, r: Local<'_>) {
    let q = String::from_utf8_lossy(query);
    match usage_json(&shared.ledger, q.trim_start_matches('?')) {
        Ok(body) => full(out, 200, &[], b"application/json", body.as_bytes(), r),
        Err(QueryError::BadRequest(m)) => {
            error(out, &Error::msg(Kind::BadRequest, m), r.request_id, r.close);
        }
        Err(QueryError::Store(e)) => {
            tracing::warn!(target: "tollgate::ledger", error = %e, "usage query failed");
            let body = serde_json::json!({"error": {
                "message": format!("the usage store did not answer: {e}"),
                "type": "store_error",
                "code": "store_unavailable",
            }});
            full(
                out,
                503,
                &[],
                b"application/json",
                body.to_string().as_bytes(),
                r,
            );
        }
    }
}
