//! The Redis store: one Lua call per batch, many batches per pipeline.
//!
//! Key layout (one Redis, not cluster-safe: the script derives its keys):
//!
//! ```text
//! tollgate:usage:{tenant}:{YYYY-MM-DD}   HASH  requests, prompt_tokens,
//!                                               completion_tokens, cost_micros  (tenant totals)
//!                                               requests:{model}, ...           (per served model)
//! tollgate:usage-tenants:{YYYY-MM-DD}    SET   tenants with usage that day
//! tollgate:ledger                        STREAM one entry per record, field `usage` = JSON
//!                                               {rid, key, tenant, model, served, upstream,
//!                                               prompt, completion, cost_micros, status, ms,
//!                                               est, stream}; trimmed to ~ledger_stream_max
//! tollgate:ledger:applied:{stream}       STRING highest seq applied, TTL 30 days
//! ```
//!
//! # Idempotency
//! The script reads the stream's high-water mark and does nothing when
//! `seq` is at or below it; otherwise it applies the counters, the set, the
//! audit entries and the new mark in one atomic step (a script runs alone).
//! A batch resent after a lost reply or replayed from the spool therefore
//! counts once, provided it comes back within the mark's TTL
//! ([`DEDUPE_TTL_S`], refreshed by every batch of the stream).
//!
//! Why a mark per stream rather than `SET NX` per request id: a spool may
//! be replayed days after the records were made (an outage over a weekend,
//! a node restarted later), so per-record keys would have to live that
//! long: one key per request for days (tens of millions of keys at a few
//! thousand requests per second), and one more command per record on the
//! hot Redis thread. The mark is one key per stream (per process, plus one
//! per worker spill file). It is exact because every record is bound to
//! one `(stream, seq)` when it enters the ledger and a stream reaches
//! Redis in `seq` order (see `writer.rs`). Not measured side by side.
//!
//! # Failure behavior
//! Every call has the store timeout; any error (refused, timeout, NOSCRIPT,
//! script error) drops the connection and reports the whole pipeline as
//! failed. The caller keeps the batches (spool) and resends them later:
//! those that did apply are skipped by the mark.

use std::time::Duration;

use super::aggregate::{Totals, fold};
use super::record::{Batch, day_string};
use super::{Store, StoreError};

/// Lifetime of a stream's high-water mark after its last batch.
pub const DEDUPE_TTL_S: u64 = 30 * 86_400;
/// The audit stream.
pub const STREAM_KEY: &str = "tollgate:ledger";

/// Hash of one tenant's day.
pub fn usage_key(tenant: &str, day: u32) -> String {
    format!("tollgate:usage:{tenant}:{}", day_string(day))
}

/// Set of the tenants of one day.
pub fn tenants_key(day: u32) -> String {
    format!("tollgate:usage-tenants:{}", day_string(day))
}

const SCRIPT: &str = r#"
local mark = 'tollgate:ledger:applied:' .. ARGV[1]
local seq = tonumber(ARGV[2])
local hwm = tonumber(redis.call('GET', mark) or '0')
if seq <= hwm then return 0 end
local i = 6
for _ = 1, tonumber(ARGV[5]) do
  redis.call('HINCRBY', ARGV[i], ARGV[i + 1], ARGV[i + 2])
  i = i + 3
end
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('SADD', ARGV[i], ARGV[i + 1])
  i = i + 2
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('XADD', 'tollgate:ledger', '*', 'usage', ARGV[i])
  i = i + 1
end
redis.call('XTRIM', 'tollgate:ledger', 'MAXLEN', '~', ARGV[4])
redis.call('SET', mark, ARGV[2], 'EX', ARGV[3])
return 1
"#;

/// Writes batches to one Redis.
pub struct RedisStore {
    client: redis::Client,
    conn: Option<(redis::Connection, String)>,
    timeout: Duration,
    stream_max: u64,
}

impl RedisStore {
    /// A store for `url`; connects lazily.
    pub fn new(url: &str, timeout: Duration, stream_max: u64) -> Result<Self, StoreError> {
        Ok(RedisStore {
            client: redis::Client::open(url)?,
            conn: None,
            timeout,
            stream_max,
        })
    }

    fn connection(&mut self) -> Result<&mut (redis::Connection, String), StoreError> {
        if self.conn.is_none() {
            self.conn = Some(connect(&self.client, self.timeout)?);
        }
        self.conn.as_mut().ok_or(StoreError::Closed)
    }
}

/// Opens a connection with read/write timeouts and loads the script.
fn connect(
    client: &redis::Client,
    timeout: Duration,
) -> Result<(redis::Connection, String), StoreError> {
    let mut c = client.get_connection_with_timeout(timeout)?;
    c.set_read_timeout(Some(timeout))?;
    c.set_write_timeout(Some(timeout))?;
    let sha: String = redis::cmd("SCRIPT").arg("LOAD").arg(SCRIPT).query(&mut c)?;
    Ok((c, sha))
}

/// Appends the script call of one batch to `p`.
fn add_batch(p: &mut redis::Pipeline, sha: &str, b: &Batch, stream_max: u64) {
    let f = fold(&b.recs);
    let mut incr: Vec<(String, String, u64)> = Vec::new();
    let mut sadd: Vec<(String, &str)> = Vec::new();
    for (&day, tenants) in &f {
        for (tenant, models) in tenants {
            let key = usage_key(tenant, day);
            let mut total = Totals::default();
            for (model, t) in models {
                total.add(t);
                for (name, v) in Totals::FIELDS.iter().zip(t.values()) {
                    if v > 0 {
                        incr.push((key.clone(), format!("{name}:{model}"), v));
                    }
                }
            }
            for (name, v) in Totals::FIELDS.iter().zip(total.values()) {
                if v > 0 {
                    incr.push((key.clone(), (*name).to_string(), v));
                }
            }
            sadd.push((tenants_key(day), tenant));
        }
    }
    let c = p
        .cmd("EVALSHA")
        .arg(sha)
        .arg(0)
        .arg(&*b.stream)
        .arg(b.seq)
        .arg(DEDUPE_TTL_S)
        .arg(stream_max)
        .arg(incr.len());
    for (k, f, v) in &incr {
        c.arg(k).arg(f).arg(v);
    }
    c.arg(sadd.len());
    for (k, m) in &sadd {
        c.arg(k).arg(*m);
    }
    c.arg(b.recs.len());
    let mut json = Vec::with_capacity(256);
    for r in &b.recs {
        json.clear();
        audit_json(r, &mut json);
        c.arg(&json[..]);
    }
}

/// One audit stream entry.
#[derive(serde::Serialize)]
struct Audit<'a> {
    rid: &'a str,
    key: &'a str,
    tenant: &'a str,
    model: &'a str,
    served: &'a str,
    upstream: &'a str,
    prompt: u64,
    completion: u64,
    cost_micros: u64,
    status: u16,
    ms: u64,
    est: &'a str,
    stream: bool,
}

/// The JSON of a record's audit entry.
pub fn audit_json(r: &super::record::Rec, out: &mut Vec<u8>) {
    let a = Audit {
        rid: &r.request_id,
        key: r.key_id.as_deref().unwrap_or("-"),
        tenant: r.tenant(),
        model: &r.model,
        served: &r.served,
        upstream: &r.upstream,
        prompt: r.prompt,
        completion: r.completion,
        cost_micros: r.cost_micros,
        status: r.status,
        ms: r.at_ms,
        est: r.est_name(),
        stream: r.stream,
    };
    // Strings and numbers into a Vec: cannot fail.
    let _ = serde_json::to_writer(out, &a);
}

impl Store for RedisStore {
    fn apply(&mut self, batches: &[&Batch]) -> Result<Vec<bool>, StoreError> {
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        let stream_max = self.stream_max;
        let (conn, sha) = self.connection()?;
        let mut p = redis::pipe();
        for b in batches {
            add_batch(&mut p, sha, b, stream_max);
        }
        match p.query::<Vec<i64>>(conn) {
            Ok(v) if v.len() == batches.len() => Ok(v.into_iter().map(|x| x == 1).collect()),
            Ok(v) => {
                self.conn = None;
                Err(StoreError::Protocol(format!(
                    "{} replies to {} batches",
                    v.len(),
                    batches.len()
                )))
            }
            Err(e) => {
                self.conn = None;
                Err(e.into())
            }
        }
    }
}

/// Reads one day's totals: tenant → model → totals (a tenant's own
/// totals under model `*`).
pub fn read_day(
    url: &str,
    timeout: Duration,
    day: u32,
    tenant: Option<&str>,
) -> Result<
    std::collections::BTreeMap<String, std::collections::BTreeMap<String, Totals>>,
    StoreError,
> {
    let client = redis::Client::open(url)?;
    let mut c = client.get_connection_with_timeout(timeout)?;
    c.set_read_timeout(Some(timeout))?;
    c.set_write_timeout(Some(timeout))?;
    let tenants: Vec<String> = match tenant {
        Some(t) => vec![t.to_string()],
        None => {
            let mut v: Vec<String> = redis::cmd("SMEMBERS").arg(tenants_key(day)).query(&mut c)?;
            v.sort();
            v
        }
    };
    let mut out = std::collections::BTreeMap::new();
    if tenants.is_empty() {
        return Ok(out);
    }
    let mut p = redis::pipe();
    for t in &tenants {
        p.cmd("HGETALL").arg(usage_key(t, day));
    }
    let hashes: Vec<Vec<(String, u64)>> = p.query(&mut c)?;
    for (t, fields) in tenants.into_iter().zip(hashes) {
        if fields.is_empty() {
            continue;
        }
        let mut models: std::collections::BTreeMap<String, Totals> = Default::default();
        for (field, v) in fields {
            let (name, model) = field.split_once(':').unwrap_or((field.as_str(), "*"));
            models.entry(model.to_string()).or_default().set(name, v);
        }
        out.insert(t, models);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
