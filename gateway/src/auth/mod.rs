//! Who is calling: virtual API keys mapped to tenants, the models each key
//! may use, and the limit counters of key, tenant and per-model scopes.
//!
//! The data path reads one immutable [`Table`] through an `ArcSwap` (one
//! atomic load), hashes the presented key with SHA-256 and looks it up:
//! no lock, no store round trip. Keys from the config file and keys made at
//! run time through the admin API (kept in the store, see `store.rs`) live
//! in the same table; a new table is built off the data path when keys
//! change, and it keeps the live counters of every key and tenant that is
//! still there, so limits do not reset on a key change.
//!
//! # Failure behavior
//! When the store is unreachable the last table stays in force: known keys
//! keep working (fail open for availability) and a revocation made
//! meanwhile takes effect when the store is back.

pub mod keys;
pub mod store;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::auth::{AuthConfig, KeyConfig};
use crate::error::{Error, Kind};
use crate::limits::{Counters, LimitSpec, Limiter};
use crate::route::glob::Glob;
use keys::Digest;
pub use store::StoredKey;

/// A tenant and its counters.
#[derive(Debug)]
pub struct Tenant {
    /// Tenant id.
    pub id: Arc<str>,
    /// Allowed model patterns for all its keys; `None` = all.
    pub models: Option<Vec<Glob>>,
    /// Its counters, when it has limits.
    pub counters: Option<Arc<Counters>>,
    /// Per-model counters, by route name.
    pub model_counters: Vec<(Arc<str>, Arc<Counters>)>,
}

/// Where a key was defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The config file (not changeable through the admin API).
    Config,
    /// The store (made through the admin API).
    Store,
}

/// A key as the data path sees it.
#[derive(Debug)]
pub struct KeyEntry {
    /// Key id (logs, metrics, admin API).
    pub id: Arc<str>,
    /// Its tenant.
    pub tenant: Arc<Tenant>,
    /// Allowed model patterns; `None` = all.
    pub models: Option<Vec<Glob>>,
    /// Its limits, as configured.
    pub spec: LimitSpec,
    /// Its counters, when it has limits.
    pub counters: Option<Arc<Counters>>,
    /// Per-model counters, by route name.
    pub model_counters: Vec<(Arc<str>, Arc<Counters>)>,
    /// Where it was defined.
    pub origin: Origin,
    /// Creation time (Unix ms; 0 for config keys).
    pub created_ms: u64,
    /// Hex of the digest's first 4 bytes, to tell keys apart in listings.
    pub fingerprint: String,
}

impl KeyEntry {
    /// May this key call `requested` (served by the route `route_name`)?
    pub fn allows(&self, requested: &str, route_name: &str) -> bool {
        let ok = |list: &Option<Vec<Glob>>| {
            list.as_ref().is_none_or(|pats| {
                pats.iter()
                    .any(|g| g.matches(requested) || g.matches(route_name))
            })
        };
        ok(&self.models) && ok(&self.tenant.models)
    }

    /// The counters a request on `route_name` spends from: key, key×model,
    /// tenant, tenant×model (those that exist).
    pub fn scopes(&self, route_name: &str) -> Vec<&Arc<Counters>> {
        let mut out = Vec::with_capacity(4);
        let per_model = |list: &'_ [(Arc<str>, Arc<Counters>)]| -> Option<usize> {
            list.iter().position(|(m, _)| &**m == route_name)
        };
        out.extend(self.counters.as_ref());
        if let Some(i) = per_model(&self.model_counters) {
            out.push(&self.model_counters[i].1);
        }
        out.extend(self.tenant.counters.as_ref());
        if let Some(i) = per_model(&self.tenant.model_counters) {
            out.push(&self.tenant.model_counters[i].1);
        }
        out
    }
}

/// The key table of one moment.
#[derive(Debug, Default)]
pub struct Table {
    /// Store revision it was built from.
    pub rev: u64,
    by_digest: HashMap<Digest, Arc<KeyEntry>>,
    /// Keys by id.
    pub by_id: HashMap<Arc<str>, Arc<KeyEntry>>,
    /// Tenants by id (configured and implied by keys).
    pub tenants: HashMap<Arc<str>, Arc<Tenant>>,
}

/// Authentication and the limit counters of a process.
pub struct Auth {
    /// Proxied requests need a key.
    pub required: bool,
    /// Admission state shared by all workers.
    pub limiter: Arc<Limiter>,
    /// The current table.
    pub table: ArcSwap<Table>,
    /// Refusal counters for `/metrics`.
    pub metrics: crate::limits::metrics::AuthMetrics,
    cfg: AuthConfig,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("required", &self.required)
            .finish()
    }
}

impl Auth {
    /// Auth from config, with the config's keys only.
    pub fn new(cfg: &AuthConfig, limiter: Arc<Limiter>) -> Self {
        let auth = Auth {
            required: cfg.required,
            limiter,
            table: ArcSwap::from_pointee(Table::default()),
            metrics: Default::default(),
            cfg: cfg.clone(),
        };
        auth.rebuild(&[], 0);
        auth
    }

    /// Checks the request's key. `Ok(None)` when auth is off.
    pub fn authenticate(
        &self,
        buf: &[u8],
        headers: &[(std::ops::Range<usize>, std::ops::Range<usize>)],
    ) -> Result<Option<Arc<KeyEntry>>, Error> {
        if !self.required {
            return Ok(None);
        }
        let Some(key) = keys::from_headers(buf, headers) else {
            self.metrics.invalid_key();
            return Err(Error::new(
                Kind::Unauthorized,
                "You didn't provide an API key. Send it as `Authorization: Bearer <key>` (or `x-api-key`).",
            ));
        };
        let digest = keys::hash(key);
        match self.table.load().by_digest.get(&digest) {
            Some(e) => Ok(Some(e.clone())),
            None => {
                self.metrics.invalid_key();
                Err(Error::new(
                    Kind::Unauthorized,
                    "Incorrect API key provided (unknown or revoked).",
                ))
            }
        }
    }

    /// Every live counter (for the lease thread and the admin API).
    pub fn all_counters(&self) -> Vec<Arc<Counters>> {
        let t = self.table.load();
        let mut out: Vec<Arc<Counters>> = Vec::new();
        for tn in t.tenants.values() {
            out.extend(tn.counters.iter().cloned());
            out.extend(tn.model_counters.iter().map(|(_, c)| c.clone()));
        }
        for k in t.by_id.values() {
            out.extend(k.counters.iter().cloned());
            out.extend(k.model_counters.iter().map(|(_, c)| c.clone()));
        }
        out
    }

    /// Key ids defined in the config file.
    pub fn config_ids(&self) -> impl Iterator<Item = &str> {
        self.cfg.keys.iter().map(|k| k.id.as_str())
    }

    /// Builds and installs the table for config keys plus `stored` keys at
    /// store revision `rev`, keeping the counters of unchanged scopes.
    pub fn rebuild(&self, stored: &[StoredKey], rev: u64) {
        let old = self.table.load_full();
        let lf = self.cfg.lease_fraction;
        // Counters are kept across rebuilds while their limits are unchanged.
        let counters = |scope: String, spec: &LimitSpec, prev: Option<&Arc<Counters>>| {
            if spec.is_empty() {
                return None;
            }
            match prev {
                Some(c) if c.spec == *spec => Some(c.clone()),
                _ => Some(Arc::new(Counters::new(scope, spec, lf))),
            }
        };
        let model_counters = |prefix: &str,
                              specs: &[(String, LimitSpec)],
                              prev: &[(Arc<str>, Arc<Counters>)]|
         -> Vec<(Arc<str>, Arc<Counters>)> {
            specs
                .iter()
                .filter(|(_, s)| !s.is_empty())
                .map(|(m, s)| {
                    let scope = format!("{prefix}/{m}");
                    let keep = prev
                        .iter()
                        .find(|(_, c)| *c.scope == *scope)
                        .filter(|(_, c)| c.spec == *s)
                        .map(|(n, c)| (n.clone(), c.clone()));
                    keep.unwrap_or_else(|| {
                        (Arc::from(m.as_str()), Arc::new(Counters::new(scope, s, lf)))
                    })
                })
                .collect()
        };
        let mut tenants: HashMap<Arc<str>, Arc<Tenant>> = HashMap::new();
        for t in &self.cfg.tenants {
            let prev = old.tenants.get(t.id.as_str());
            let id: Arc<str> = Arc::from(t.id.as_str());
            tenants.insert(
                id.clone(),
                Arc::new(Tenant {
                    id,
                    models: t
                        .models
                        .as_ref()
                        .map(|m| m.iter().map(|p| Glob::new(p)).collect()),
                    counters: counters(
                        format!("tenant:{}", t.id),
                        &t.limits,
                        prev.and_then(|p| p.counters.as_ref()),
                    ),
                    model_counters: model_counters(
                        &format!("tenant:{}", t.id),
                        &t.model_limits,
                        prev.map_or(&[][..], |p| &p.model_counters),
                    ),
                }),
            );
        }
        let mut table = Table {
            rev,
            ..Table::default()
        };
        let config_keys = self.cfg.keys.iter().map(|k| (k, Origin::Config, 0u64));
        let stored_keys: Vec<(KeyConfig, u64)> = stored
            .iter()
            .filter(|s| !self.cfg.keys.iter().any(|k| k.id == s.id))
            .filter_map(|s| Some((s.to_config()?, s.created_ms)))
            .collect();
        let all = config_keys.chain(stored_keys.iter().map(|(k, c)| (k, Origin::Store, *c)));
        for (k, origin, created_ms) in all {
            let tenant = tenants
                .entry(Arc::from(k.tenant.as_str()))
                .or_insert_with(|| {
                    // A tenant only named by keys: no limits of its own.
                    Arc::new(Tenant {
                        id: Arc::from(k.tenant.as_str()),
                        models: None,
                        counters: None,
                        model_counters: Vec::new(),
                    })
                })
                .clone();
            let prev = old.by_id.get(k.id.as_str());
            let id: Arc<str> = Arc::from(k.id.as_str());
            let entry = Arc::new(KeyEntry {
                id: id.clone(),
                tenant,
                models: k
                    .models
                    .as_ref()
                    .map(|m| m.iter().map(|p| Glob::new(p)).collect()),
                spec: k.limits.clone(),
                counters: counters(
                    format!("key:{}", k.id),
                    &k.limits,
                    prev.and_then(|p| p.counters.as_ref()),
                ),
                model_counters: model_counters(
                    &format!("key:{}", k.id),
                    &k.model_limits,
                    prev.map_or(&[][..], |p| &p.model_counters),
                ),
                origin,
                created_ms,
                fingerprint: keys::to_hex(&k.digest[..4]),
            });
            table.by_digest.insert(k.digest, entry.clone());
            table.by_id.insert(id, entry);
        }
        table.tenants = tenants;
        self.table.store(Arc::new(table));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::auth::TenantConfig;

    fn cfg() -> AuthConfig {
        AuthConfig {
            required: true,
            admin_token: None,
            lease_fraction: 0.1,
            keys: vec![KeyConfig {
                id: "k1".into(),
                tenant: "acme".into(),
                digest: keys::hash(b"tg-secret"),
                models: Some(vec!["gpt-4o*".into()]),
                limits: LimitSpec {
                    rpm: Some(10),
                    ..LimitSpec::default()
                },
                model_limits: vec![(
                    "gpt-4o".into(),
                    LimitSpec {
                        rpm: Some(2),
                        ..LimitSpec::default()
                    },
                )],
            }],
            tenants: vec![TenantConfig {
                id: "acme".into(),
                models: Some(vec!["gpt-4o".into(), "o1".into()]),
                limits: LimitSpec {
                    tpm: Some(100),
                    ..LimitSpec::default()
                },
                model_limits: Vec::new(),
            }],
            fail_closed: false,
        }
    }

    type Spans = Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>;

    fn head(h: &str) -> (Vec<u8>, Spans) {
        let buf = h.as_bytes().to_vec();
        let colon = h.find(':').unwrap();
        (buf, vec![(0..colon, colon + 2..h.len())])
    }

    #[test]
    fn keys_authenticate_and_scope() {
        let a = Auth::new(&cfg(), Arc::default());
        let (buf, hs) = head("authorization: Bearer tg-secret");
        let k = a.authenticate(&buf, &hs).unwrap().unwrap();
        assert_eq!(&*k.id, "k1");
        assert_eq!(&*k.tenant.id, "acme");
        assert!(k.allows("gpt-4o", "gpt-4o"));
        assert!(!k.allows("claude", "claude"));
        // Allowed by the key (gpt-4o*) but not by its tenant.
        assert!(!k.allows("gpt-4o-mini", "gpt-4o-mini"));
        // Allowed by the tenant but not by the key.
        assert!(!k.allows("o1", "o1"));
        let scopes: Vec<&str> = k.scopes("gpt-4o").iter().map(|c| &*c.scope).collect();
        assert_eq!(scopes, ["key:k1", "key:k1/gpt-4o", "tenant:acme"]);
        let (buf, hs) = head("authorization: Bearer tg-wrong");
        assert_eq!(a.authenticate(&buf, &hs).unwrap_err().status(), 401);
        assert_eq!(a.authenticate(b"", &[]).unwrap_err().status(), 401);
    }

    #[test]
    fn rebuild_keeps_counters_and_drops_revoked_keys() {
        let a = Auth::new(&cfg(), Arc::default());
        let before = a.table.load().by_id["k1"].counters.clone().unwrap();
        let stored = StoredKey {
            id: "k2".into(),
            tenant: "acme".into(),
            key_sha256: keys::to_hex(&keys::hash(b"tg-two")),
            models: None,
            limits: Default::default(),
            created_ms: 1,
        };
        a.rebuild(std::slice::from_ref(&stored), 1);
        let t = a.table.load();
        assert!(Arc::ptr_eq(
            &before,
            t.by_id["k1"].counters.as_ref().unwrap()
        ));
        // The new key shares its tenant's counters with k1.
        assert!(Arc::ptr_eq(
            t.by_id["k2"].tenant.counters.as_ref().unwrap(),
            t.by_id["k1"].tenant.counters.as_ref().unwrap()
        ));
        let (buf, hs) = head("x-api-key: tg-two");
        assert!(a.authenticate(&buf, &hs).is_ok());
        a.rebuild(&[], 2);
        assert_eq!(a.authenticate(&buf, &hs).unwrap_err().status(), 401);
    }
}
