//! `/admin/*` on the admin listener: key management and the live state of
//! limits. Every call needs the admin token (`[auth] admin_token_env`)
//! as `Authorization: Bearer`; without a configured token these calls are
//! refused, so a node never exposes key management by accident.
//!
//! ```text
//! GET    /admin/keys                  keys (config and run-time), never secrets
//! POST   /admin/keys                  {"tenant", "id"?, "models"?, "limits"?} -> 201 with the key, shown once
//! POST   /admin/keys/{id}/rotate      new secret; the old one stops working at once
//! DELETE /admin/keys/{id}             revoke (also POST /admin/keys/{id}/revoke)
//! GET    /admin/limits                every limited scope: used, limit, reset
//! GET    /admin/usage?tenant=&day=    billed totals per tenant and model (`admin_usage.rs`)
//! ```

use serde_json::{Value, json};

use super::worker::Shared;
use crate::auth::keys::{from_headers, hash};
use crate::auth::store::{NewKey, StoredKey};
use crate::auth::{KeyEntry, Origin};
use crate::http::RequestHead;
use crate::limits::period::wall_ms;

/// An admin answer: status and JSON body.
pub type Answer = (u16, String);

fn err(status: u16, message: impl Into<String>) -> Answer {
    let code = match status {
        400 => "invalid_request",
        401 => "invalid_admin_token",
        403 => "admin_disabled",
        404 => "not_found",
        409 => "conflict",
        _ => "store_error",
    };
    (
        status,
        json!({"error": {"message": message.into(), "type": "admin_error", "code": code}})
            .to_string(),
    )
}

/// Checks the admin token of a request.
pub fn authorized(shared: &Shared, buf: &[u8], head: &RequestHead) -> Result<(), Answer> {
    let Some(want) = shared.cfg.auth.admin_token else {
        return Err(err(
            403,
            "admin API disabled: set [auth] admin_token_env to an environment variable holding a token",
        ));
    };
    match from_headers(buf, &head.headers) {
        Some(t) if hash(t) == want => Ok(()),
        _ => Err(err(401, "missing or wrong admin token")),
    }
}

/// Handles `/admin/keys*`, `/admin/limits` and `/admin/usage`; `None` for
/// other paths.
pub fn handle(
    shared: &Shared,
    method: &[u8],
    path: &str,
    query: &str,
    body: &[u8],
) -> Option<Answer> {
    let auth = &shared.auth;
    let store = &shared.key_store;
    let rest = path.strip_prefix("/admin/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    Some(match (method, parts.as_slice()) {
        (b"GET", ["keys"]) => {
            let t = auth.table.load();
            let mut keys: Vec<Value> = t.by_id.values().map(|k| key_json(k)).collect();
            keys.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
            (200, json!({ "keys": keys }).to_string())
        }
        (b"POST", ["keys"]) => match serde_json::from_slice::<NewKey>(body) {
            Err(e) => err(400, format!("body: {e}")),
            Ok(req) => match store.create(auth, req) {
                Ok((key, rec)) => (201, created_json(&key, &rec)),
                Err((s, m)) => err(s, m),
            },
        },
        (b"POST", ["keys", id, "rotate"]) => match store.rotate(auth, id) {
            Ok((key, rec)) => (200, created_json(&key, &rec)),
            Err((s, m)) => err(s, m),
        },
        (b"DELETE", ["keys", id]) | (b"POST", ["keys", id, "revoke"]) => {
            match store.revoke(auth, id) {
                Ok(()) => (200, json!({"id": id, "revoked": true}).to_string()),
                Err((s, m)) => err(s, m),
            }
        }
        (b"GET", ["limits"]) => (200, limits_json(shared)),
        (b"GET", ["usage"]) => super::admin_usage::answer(shared, query),
        _ => return None,
    })
}

fn key_json(k: &KeyEntry) -> Value {
    json!({
        "id": &*k.id,
        "tenant": &*k.tenant.id,
        "origin": match k.origin { Origin::Config => "config", Origin::Store => "store" },
        "fingerprint": k.fingerprint,
        "models": k.models.as_ref().map(|m| m.iter().map(|g| g.pattern().to_string()).collect::<Vec<_>>()),
        "limits": spec_json(&k.spec),
        "created_ms": k.created_ms,
    })
}

fn created_json(key: &str, rec: &StoredKey) -> String {
    json!({
        "id": rec.id,
        "key": key,
        "tenant": rec.tenant,
        "models": rec.models,
        "limits": rec.limits,
        "created_ms": rec.created_ms,
    })
    .to_string()
}

fn spec_json(s: &crate::limits::LimitSpec) -> Value {
    json!({
        "rpm": s.rpm,
        "tpm": s.tpm,
        "max_streams": s.max_streams,
        "budget_tokens": s.budget_tokens,
        "budget_micros": s.budget_micros,
        "budget_period": s.budget_period.map(|p| p.name()),
    })
}

fn limits_json(shared: &Shared) -> String {
    let now = wall_ms();
    let allow = shared.auth.limiter.allow();
    let mut scopes: Vec<Value> = shared
        .auth
        .all_counters()
        .iter()
        .map(|c| {
            let mut o = serde_json::Map::new();
            o.insert("scope".into(), json!(&*c.scope));
            for (kind, w) in &c.windows {
                let p = w.peek(now, allow);
                o.insert(
                    kind.name().into(),
                    json!({
                        "limit": w.limit,
                        "used_here": w.used(now),
                        "remaining": p.remaining,
                        "reset_ms": p.reset_ms,
                        "period": w.period.name(),
                    }),
                );
            }
            if let Some(g) = &c.streams {
                o.insert(
                    "streams".into(),
                    json!({"max": g.max, "current": g.current()}),
                );
            }
            Value::Object(o)
        })
        .collect();
    scopes.sort_by(|a, b| a["scope"].as_str().cmp(&b["scope"].as_str()));
    let mode = match allow {
        crate::limits::Allow::Local => "local",
        crate::limits::Allow::Shared => "shared",
        crate::limits::Allow::Closed => "closed",
    };
    json!({ "mode": mode, "scopes": scopes }).to_string()
}
