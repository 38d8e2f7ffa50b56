//! Endpoints the gateway answers itself: the model list, one model, and
//! health. Everything else is a JSON 404.

use super::client::ClientIn;
use super::proxy::{Done, Handled};
use super::worker::Worker;
use crate::config::Config;
use crate::error::{Error, Kind};
use crate::http::response::{Local, full};
use crate::http::{Method, RequestHead};

/// Answers a non-proxied request into `out`.
pub fn handle(
    w: &Worker,
    cin: &ClientIn,
    head: &RequestHead,
    out: &mut Vec<u8>,
    rid: &[u8],
    keep_alive: bool,
) -> Handled {
    let path = head.path(cin.buf());
    let readable = matches!(head.method, Method::Get | Method::Head);
    let r = Local {
        request_id: rid,
        close: !keep_alive,
        head_only: head.method == Method::Head,
    };
    let json = b"application/json";
    // The model list is an API call like any other: it needs a key, and
    // lists (and shows) only the models that key may use.
    let key = if path.starts_with(b"/v1/") {
        w.shared
            .auth
            .authenticate(cin.buf(), &head.headers)
            .map_err(|e| (e, false))?
    } else {
        None
    };
    let visible = |id: &str| {
        key.as_ref().is_none_or(|k| {
            let route = w.cfg().routes.lookup(id).map(|r| w.cfg().routes.route(r));
            route.is_some_and(|r| k.allows(id, &r.name))
        })
    };
    let restricted = key
        .as_ref()
        .is_some_and(|k| k.models.is_some() || k.tenant.models.is_some());
    match path {
        b"/healthz" | b"/v1/models" if !readable => Err((
            Error::new(Kind::MethodNotAllowed, "use GET for this endpoint"),
            false,
        )),
        b"/healthz" => {
            full(out, 200, &[], json, b"{\"status\":\"ok\"}", r);
            Ok(Done::Local)
        }
        b"/v1/models" if restricted => {
            let mut list: serde_json::Value =
                serde_json::from_slice(&w.shared.models_json).unwrap_or_default();
            if let Some(data) = list.get_mut("data").and_then(|d| d.as_array_mut()) {
                data.retain(|m| m["id"].as_str().is_some_and(visible));
            }
            full(out, 200, &[], json, list.to_string().as_bytes(), r);
            Ok(Done::Local)
        }
        b"/v1/models" => {
            full(out, 200, &[], json, &w.shared.models_json, r);
            Ok(Done::Local)
        }
        _ => {
            if let (Some(id), true) = (path.strip_prefix(b"/v1/models/"), readable) {
                let id = String::from_utf8_lossy(id);
                if let Some(body) = model_object(w.cfg(), &id).filter(|_| visible(&id)) {
                    full(out, 200, &[], json, body.as_bytes(), r);
                    return Ok(Done::Local);
                }
                return Err((
                    Error::msg(
                        Kind::UnknownModel,
                        format!("The model `{id}` does not exist"),
                    ),
                    false,
                ));
            }
            Err((
                Error::msg(
                    Kind::NotFound,
                    format!(
                        "Unknown endpoint {}; this gateway serves POST /v1/chat/completions, /v1/completions, /v1/embeddings and GET /v1/models",
                        String::from_utf8_lossy(path)
                    ),
                ),
                false,
            ))
        }
    }
}

/// The `GET /v1/models` body in OpenAI's list shape: every exact name and
/// alias that is not hidden (globs cannot be listed).
pub fn models_json(cfg: &Config, created: u64) -> Vec<u8> {
    let mut data = Vec::new();
    for route in cfg.routes.routes() {
        if route.hidden || route.is_glob {
            continue;
        }
        let owner = route
            .targets
            .first()
            .and_then(|t| cfg.upstreams.get(t.upstream as usize))
            .map_or("tollgate", |u| u.name.as_ref());
        for name in std::iter::once(&route.name).chain(route.aliases.iter()) {
            data.push(serde_json::json!({
                "id": name.as_ref(),
                "object": "model",
                "created": created,
                "owned_by": owner,
            }));
        }
    }
    serde_json::json!({"object": "list", "data": data})
        .to_string()
        .into_bytes()
}

fn model_object(cfg: &Config, id: &str) -> Option<String> {
    let rid = cfg.routes.lookup(id)?;
    let route = cfg.routes.route(rid);
    if route.hidden {
        return None;
    }
    let owner = route
        .targets
        .first()
        .and_then(|t| cfg.upstreams.get(t.upstream as usize))
        .map_or("tollgate", |u| u.name.as_ref());
    Some(
        serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": owner})
            .to_string(),
    )
}
