//! Keys made at run time (admin API): where they are kept and how every
//! node learns about a new, rotated or revoked key.
//!
//! Memory store: the admin thread edits the list and rebuilds the table
//! itself. Redis store: keys live in the hash `tollgate:keys` (id → JSON
//! of [`StoredKey`], holding the key's SHA-256, never the key), and every
//! change increments `tollgate:keys:rev`. A sync thread per node reads the
//! revision every [`POLL`] and reloads the hash when it moved, so a
//! revocation reaches every node within that interval; the node that made
//! the change is woken at once and the admin call returns once its own
//! table has the change.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use super::Auth;
use super::keys::{from_hex, generate, hash, to_hex};
use crate::config::auth::{KeyConfig, limit_spec, valid_id};
use crate::config::raw::RawLimits;
use crate::limits::period::wall_ms;
use crate::store_link::{Change, StoreLink};

/// How often each node reads the key revision.
pub const POLL: Duration = Duration::from_millis(250);
const HASH: &str = "tollgate:keys";
const REV: &str = "tollgate:keys:rev";

/// A key as kept in the store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredKey {
    /// Key id.
    pub id: String,
    /// Tenant id.
    pub tenant: String,
    /// Hex SHA-256 of the key.
    pub key_sha256: String,
    /// Allowed model patterns; absent = all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// Limits.
    #[serde(default)]
    pub limits: RawLimits,
    /// Creation time, Unix ms.
    #[serde(default)]
    pub created_ms: u64,
}

impl StoredKey {
    /// As a config key; `None` if the stored JSON is unusable.
    pub fn to_config(&self) -> Option<KeyConfig> {
        Some(KeyConfig {
            id: self.id.clone(),
            tenant: self.tenant.clone(),
            digest: from_hex(&self.key_sha256)?,
            models: self.models.clone(),
            limits: limit_spec(&self.limits).ok()?,
            model_limits: Vec::new(),
        })
    }
}

/// What an admin call asks to create.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// Key id; default `k-` and 8 hex digits.
    pub id: Option<String>,
    /// Tenant id.
    pub tenant: String,
    /// Allowed model patterns; absent = all.
    pub models: Option<Vec<String>>,
    /// Limits.
    #[serde(default)]
    pub limits: RawLimits,
}

/// Why an admin call failed: (HTTP status, message).
pub type AdminError = (u16, String);

/// Where run-time keys are kept.
pub enum KeyStore {
    /// In this process only.
    Memory {
        /// The keys.
        keys: ArcSwap<Vec<StoredKey>>,
    },
    /// In Redis, shared by all nodes.
    Redis {
        /// Client for admin calls.
        client: redis::Client,
        /// Wakes this node's sync thread.
        wake: SyncSender<()>,
    },
}

impl KeyStore {
    /// A memory store.
    pub fn memory() -> Self {
        KeyStore::Memory {
            keys: ArcSwap::from_pointee(Vec::new()),
        }
    }

    /// A Redis store; starts the sync thread that keeps `auth` current.
    pub fn redis(url: &str, auth: Arc<Auth>) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("store.url: {e}"))?;
        let (tx, rx) = sync_channel(1);
        let c2 = client.clone();
        std::thread::Builder::new()
            .name("tollgate-key-sync".into())
            .spawn(move || sync(c2, auth, rx))
            .map_err(|e| e.to_string())?;
        Ok(KeyStore::Redis { client, wake: tx })
    }

    fn connect(client: &redis::Client) -> Result<redis::Connection, AdminError> {
        let c = client
            .get_connection_with_timeout(Duration::from_secs(1))
            .map_err(|e| (503, format!("store unreachable: {e}")))?;
        let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = c.set_write_timeout(Some(Duration::from_secs(2)));
        Ok(c)
    }

    fn stored(&self) -> Result<Vec<StoredKey>, AdminError> {
        match self {
            KeyStore::Memory { keys } => Ok(keys.load().as_ref().clone()),
            KeyStore::Redis { client, .. } => {
                let mut c = Self::connect(client)?;
                let all: Vec<(String, String)> = redis::cmd("HGETALL")
                    .arg(HASH)
                    .query(&mut c)
                    .map_err(store_err)?;
                Ok(all
                    .into_iter()
                    .filter_map(|(_, v)| serde_json::from_str(&v).ok())
                    .collect())
            }
        }
    }

    /// Creates a key; returns it (the only time it is shown) and its record.
    pub fn create(&self, auth: &Auth, req: NewKey) -> Result<(String, StoredKey), AdminError> {
        let id = match req.id {
            Some(id) => id,
            None => {
                let k = generate().map_err(|e| (500, e))?;
                format!("k-{}", to_hex(&hash(k.as_bytes())[..4]))
            }
        };
        if !valid_id(&id) || !valid_id(&req.tenant) {
            return Err((
                400,
                "id and tenant must be 1-64 characters of letters, digits, - _ .".into(),
            ));
        }
        limit_spec(&req.limits).map_err(|(f, r)| (400, format!("limits.{f}: {r}")))?;
        if auth.config_ids().any(|c| c == id) {
            return Err((409, format!("key id `{id}` is defined in the config file")));
        }
        let key = generate().map_err(|e| (500, e))?;
        let rec = StoredKey {
            id: id.clone(),
            tenant: req.tenant,
            key_sha256: to_hex(&hash(key.as_bytes())),
            models: req.models,
            limits: req.limits,
            created_ms: wall_ms(),
        };
        match self {
            KeyStore::Memory { keys } => {
                let cur = keys.load_full();
                if cur.iter().any(|k| k.id == id) {
                    return Err((409, format!("key id `{id}` exists")));
                }
                let mut next = cur.as_ref().clone();
                next.push(rec.clone());
                install(keys, auth, next);
            }
            KeyStore::Redis { client, wake } => {
                let mut c = Self::connect(client)?;
                let json = serde_json::to_string(&rec).map_err(|e| (500, e.to_string()))?;
                let (added, rev): (u8, u64) = redis::pipe()
                    .atomic()
                    .cmd("HSETNX")
                    .arg(HASH)
                    .arg(&id)
                    .arg(json)
                    .cmd("INCR")
                    .arg(REV)
                    .query(&mut c)
                    .map_err(store_err)?;
                if added == 0 {
                    return Err((409, format!("key id `{id}` exists")));
                }
                wait_for(auth, wake, rev);
            }
        }
        Ok((key, rec))
    }

    /// Revokes a run-time key.
    pub fn revoke(&self, auth: &Auth, id: &str) -> Result<(), AdminError> {
        if auth.config_ids().any(|c| c == id) {
            return Err((
                409,
                format!("key `{id}` is defined in the config file; remove it there"),
            ));
        }
        match self {
            KeyStore::Memory { keys } => {
                let cur = keys.load_full();
                if !cur.iter().any(|k| k.id == id) {
                    return Err((404, format!("no key `{id}`")));
                }
                let next: Vec<StoredKey> = cur.iter().filter(|k| k.id != id).cloned().collect();
                install(keys, auth, next);
            }
            KeyStore::Redis { client, wake } => {
                let mut c = Self::connect(client)?;
                let (gone, rev): (u8, u64) = redis::pipe()
                    .atomic()
                    .cmd("HDEL")
                    .arg(HASH)
                    .arg(id)
                    .cmd("INCR")
                    .arg(REV)
                    .query(&mut c)
                    .map_err(store_err)?;
                wait_for(auth, wake, rev);
                if gone == 0 {
                    return Err((404, format!("no key `{id}`")));
                }
            }
        }
        Ok(())
    }

    /// Gives a run-time key a new secret; the old one stops working at once.
    pub fn rotate(&self, auth: &Auth, id: &str) -> Result<(String, StoredKey), AdminError> {
        if auth.config_ids().any(|c| c == id) {
            return Err((
                409,
                format!("key `{id}` is defined in the config file; change it there"),
            ));
        }
        let key = generate().map_err(|e| (500, e))?;
        let digest = to_hex(&hash(key.as_bytes()));
        match self {
            KeyStore::Memory { keys } => {
                let mut next = keys.load().as_ref().clone();
                let Some(k) = next.iter_mut().find(|k| k.id == id) else {
                    return Err((404, format!("no key `{id}`")));
                };
                k.key_sha256 = digest;
                let rec = k.clone();
                install(keys, auth, next);
                Ok((key, rec))
            }
            KeyStore::Redis { client, wake } => {
                let mut c = Self::connect(client)?;
                let old: Option<String> = redis::cmd("HGET")
                    .arg(HASH)
                    .arg(id)
                    .query(&mut c)
                    .map_err(store_err)?;
                let mut rec: StoredKey = old
                    .and_then(|j| serde_json::from_str(&j).ok())
                    .ok_or_else(|| (404, format!("no key `{id}`")))?;
                rec.key_sha256 = digest;
                let json = serde_json::to_string(&rec).map_err(|e| (500, e.to_string()))?;
                let (rev,): (u64,) = redis::pipe()
                    .atomic()
                    .cmd("HSET")
                    .arg(HASH)
                    .arg(id)
                    .arg(json)
                    .ignore()
                    .cmd("INCR")
                    .arg(REV)
                    .query(&mut c)
                    .map_err(store_err)?;
                wait_for(auth, wake, rev);
                Ok((key, rec))
            }
        }
    }

    /// Every run-time key (for listings).
    pub fn list(&self) -> Result<Vec<StoredKey>, AdminError> {
        self.stored()
    }
}

/// Memory store: makes `next` the run-time keys and rebuilds the table.
fn install(keys: &ArcSwap<Vec<StoredKey>>, auth: &Auth, next: Vec<StoredKey>) {
    auth.rebuild(&next, auth.table.load().rev + 1);
    keys.store(Arc::new(next));
}

fn store_err(e: redis::RedisError) -> AdminError {
    (503, format!("store error: {e}"))
}

/// Wakes the sync thread and waits (bounded) until this node's table has
/// revision `rev`.
fn wait_for(auth: &Auth, wake: &SyncSender<()>, rev: u64) {
    let _ = wake.try_send(());
    let until = Instant::now() + Duration::from_secs(2);
    while auth.table.load().rev < rev && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn sync(client: redis::Client, auth: Arc<Auth>, wake: Receiver<()>) {
    let mut link = StoreLink::new(client, Duration::from_secs(1), Duration::from_secs(2));
    let mut loaded = false;
    loop {
        match wake.recv_timeout(POLL) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        match link.call(|c| reload(c, &auth, &mut loaded)) {
            (Err(e), Change::Down) => {
                tracing::warn!(target: "tollgate::auth", error = %e, "store unreachable: keeping the last known keys");
            }
            (_, Change::Up) => {
                tracing::info!(target: "tollgate::auth", "store reachable again: keys in sync");
            }
            _ => {}
        }
    }
}

/// Reloads the keys when the revision moved (or on the first contact).
fn reload(c: &mut redis::Connection, auth: &Auth, loaded: &mut bool) -> redis::RedisResult<()> {
    let rev: Option<u64> = redis::cmd("GET").arg(REV).query(c)?;
    let rev = rev.unwrap_or(0);
    if *loaded && rev == auth.table.load().rev {
        return Ok(());
    }
    let all: Vec<(String, String)> = redis::cmd("HGETALL").arg(HASH).query(c)?;
    let mut keys = Vec::with_capacity(all.len());
    for (id, json) in all {
        match serde_json::from_str::<StoredKey>(&json) {
            Ok(k) if k.to_config().is_some() => keys.push(k),
            _ => {
                tracing::warn!(target: "tollgate::auth", key_id = %id, "unreadable key record in the store; ignored")
            }
        }
    }
    auth.rebuild(&keys, rev);
    *loaded = true;
    Ok(())
}
