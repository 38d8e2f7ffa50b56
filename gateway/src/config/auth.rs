//! `[auth]`, `[[keys]]` and `[[tenants]]`, compiled: key material hashed,
//! limits checked, per-model limits resolved to configured model names.

use super::raw::{RawAuth, RawKey, RawLimits, RawTenant};
use crate::auth::keys::{Digest, from_hex, hash};
use crate::limits::{LimitSpec, Period};
use crate::route::RouteTable;

/// `[auth]` with keys and tenants, compiled.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// Every proxied request needs a valid key.
    pub required: bool,
    /// SHA-256 of the admin token, if one is set.
    pub admin_token: Option<Digest>,
    /// Share of a limit leased per node at a time.
    pub lease_fraction: f64,
    /// Keys from the config file.
    pub keys: Vec<KeyConfig>,
    /// Tenants with limits.
    pub tenants: Vec<TenantConfig>,
    /// Store down: admit only leased units (`fail_closed`).
    pub fail_closed: bool,
}

/// One `[[keys]]` entry.
#[derive(Debug, Clone)]
pub struct KeyConfig {
    /// Key id.
    pub id: String,
    /// Tenant id.
    pub tenant: String,
    /// SHA-256 of the key.
    pub digest: Digest,
    /// Allowed model patterns; `None` = all.
    pub models: Option<Vec<String>>,
    /// Limits of the key.
    pub limits: LimitSpec,
    /// Per-model limits, by route name.
    pub model_limits: Vec<(String, LimitSpec)>,
}

/// One `[[tenants]]` entry.
#[derive(Debug, Clone)]
pub struct TenantConfig {
    /// Tenant id.
    pub id: String,
    /// Allowed model patterns; `None` = all.
    pub models: Option<Vec<String>>,
    /// Limits of the tenant.
    pub limits: LimitSpec,
    /// Per-model limits, by route name.
    pub model_limits: Vec<(String, LimitSpec)>,
}

/// Checks a `limits` table; errors are `(field, reason)`.
pub fn limit_spec(raw: &RawLimits) -> Result<LimitSpec, (&'static str, String)> {
    for (field, v) in [
        ("rpm", raw.rpm),
        ("tpm", raw.tpm),
        ("max_streams", raw.max_streams),
        ("budget_tokens", raw.budget_tokens),
    ] {
        if v == Some(0) {
            return Err((field, "must be at least 1 (remove it for no limit)".into()));
        }
    }
    let budget_micros = match raw.budget_usd {
        None => None,
        Some(usd) if usd.is_finite() && usd > 0.0 => Some((usd * 1e6).round() as u64),
        Some(_) => return Err(("budget_usd", "must be a positive number of dollars".into())),
    };
    let budget_period = match raw.budget_period.as_deref() {
        None => None,
        Some("day") => Some(Period::Day),
        Some("month") => Some(Period::Month),
        Some(other) => {
            return Err((
                "budget_period",
                format!("`{other}` is not a period; use day or month"),
            ));
        }
    };
    Ok(LimitSpec {
        rpm: raw.rpm,
        tpm: raw.tpm,
        max_streams: raw.max_streams,
        budget_tokens: raw.budget_tokens,
        budget_micros,
        budget_period,
    })
}

/// What `compile` reports: (key, reason) pairs.
pub type Problems = Vec<(String, String)>;

fn limits_at(p: &mut Problems, key: &str, raw: Option<&RawLimits>) -> LimitSpec {
    match raw.map(limit_spec) {
        None => LimitSpec::default(),
        Some(Ok(s)) => s,
        Some(Err((field, reason))) => {
            p.push((format!("{key}.{field}"), reason));
            LimitSpec::default()
        }
    }
}

fn model_limits_at(
    p: &mut Problems,
    key: &str,
    raw: &std::collections::BTreeMap<String, RawLimits>,
    routes: &RouteTable,
) -> Vec<(String, LimitSpec)> {
    let mut out = Vec::new();
    for (model, l) in raw {
        let k = format!("{key}.model_limits.{model}");
        let Some(id) = routes.lookup(model) else {
            p.push((k, format!("`{model}` is not a configured model or alias")));
            continue;
        };
        out.push((routes.route(id).name.to_string(), limits_at(p, &k, Some(l))));
    }
    out
}

/// Key and tenant ids: 1-64 characters of letters, digits, `-`, `_`, `.`.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Compiles the auth sections; `env` reads environment variables.
pub fn compile(
    auth: &RawAuth,
    keys: &[RawKey],
    tenants: &[RawTenant],
    on_store_error: Option<&str>,
    routes: &RouteTable,
    env: &dyn Fn(&str) -> Option<String>,
) -> (AuthConfig, Problems) {
    let mut p = Problems::new();
    let required = match auth.mode.as_deref() {
        None => !keys.is_empty(),
        Some("keys") => true,
        Some("none") => {
            if !keys.is_empty() {
                p.push((
                    "auth.mode".into(),
                    "is \"none\" but [[keys]] are defined; remove them or use mode = \"keys\""
                        .into(),
                ));
            }
            false
        }
        Some(other) => {
            p.push((
                "auth.mode".into(),
                format!("unknown mode `{other}`; use keys or none"),
            ));
            false
        }
    };
    let admin_token = auth
        .admin_token_env
        .as_deref()
        .and_then(|var| match env(var) {
            Some(v) if v.len() >= 16 => Some(hash(v.as_bytes())),
            Some(_) => {
                p.push((
                    "auth.admin_token_env".into(),
                    format!("the token in ${var} is shorter than 16 characters"),
                ));
                None
            }
            None => {
                p.push((
                    "auth.admin_token_env".into(),
                    format!("environment variable {var} is not set"),
                ));
                None
            }
        });
    let lease_fraction = match auth.lease_fraction {
        None => 0.05,
        Some(f) if f > 0.0 && f <= 1.0 => f,
        Some(_) => {
            p.push((
                "auth.lease_fraction".into(),
                "must be greater than 0 and at most 1".into(),
            ));
            0.05
        }
    };
    let mut seen_tenants = std::collections::HashSet::new();
    let mut out_tenants = Vec::new();
    for (i, t) in tenants.iter().enumerate() {
        let key = format!("tenants[{i}]");
        if !valid_id(&t.id) {
            p.push((
                format!("{key}.id"),
                "must be 1-64 characters of letters, digits, - _ .".into(),
            ));
        }
        if !seen_tenants.insert(t.id.clone()) {
            p.push((format!("{key}.id"), format!("duplicate tenant `{}`", t.id)));
        }
        if let Some(models) = &t.models
            && models.iter().any(|m| m.trim().is_empty())
        {
            p.push((
                format!("{key}.models"),
                "must not contain empty names".into(),
            ));
        }
        out_tenants.push(TenantConfig {
            id: t.id.clone(),
            models: t.models.clone(),
            limits: limits_at(&mut p, &format!("{key}.limits"), t.limits.as_ref()),
            model_limits: model_limits_at(&mut p, &key, &t.model_limits, routes),
        });
    }
    let mut ids = std::collections::HashSet::new();
    let mut digests = std::collections::HashSet::new();
    let mut out_keys = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let key = format!("keys[{i}]");
        if !valid_id(&k.id) {
            p.push((
                format!("{key}.id"),
                "must be 1-64 characters of letters, digits, - _ .".into(),
            ));
        }
        if !ids.insert(k.id.clone()) {
            p.push((format!("{key}.id"), format!("duplicate key id `{}`", k.id)));
        }
        if !valid_id(&k.tenant) {
            p.push((
                format!("{key}.tenant"),
                "must be 1-64 characters of letters, digits, - _ .".into(),
            ));
        }
        let digest = match (&k.key_sha256, &k.key_env) {
            (Some(h), None) => from_hex(h).or_else(|| {
                p.push((
                    format!("{key}.key_sha256"),
                    "must be 64 hex digits (sha256sum of the key)".into(),
                ));
                None
            }),
            (None, Some(var)) => match env(var) {
                Some(v) if !v.trim().is_empty() => Some(hash(v.trim().as_bytes())),
                _ => {
                    p.push((
                        format!("{key}.key_env"),
                        format!("environment variable {var} is not set"),
                    ));
                    None
                }
            },
            _ => {
                p.push((
                    key.clone(),
                    "needs exactly one of key_sha256 or key_env".into(),
                ));
                None
            }
        };
        let Some(digest) = digest else { continue };
        if !digests.insert(digest) {
            p.push((key.clone(), "the same key is configured twice".into()));
        }
        if let Some(models) = &k.models
            && models.iter().any(|m| m.trim().is_empty())
        {
            p.push((
                format!("{key}.models"),
                "must not contain empty names".into(),
            ));
        }
        out_keys.push(KeyConfig {
            id: k.id.clone(),
            tenant: k.tenant.clone(),
            digest,
            models: k.models.clone(),
            limits: limits_at(&mut p, &format!("{key}.limits"), k.limits.as_ref()),
            model_limits: model_limits_at(&mut p, &key, &k.model_limits, routes),
        });
    }
    let fail_closed = on_store_error == Some("fail_closed");
    (
        AuthConfig {
            required,
            admin_token,
            lease_fraction,
            keys: out_keys,
            tenants: out_tenants,
            fail_closed,
        },
        p,
    )
}
