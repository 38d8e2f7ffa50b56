//! Breaker state shared between gateway nodes through Redis.
//!
//! A node whose breaker trips publishes `tollgate:breaker:<model>:<upstream>:<i>`
//! = the wall-clock millisecond the break ends, with a TTL of the break
//! (`SET .. PX`), so a node that dies cannot keep a target open. One
//! background thread per node publishes trips and polls every key every
//! [`POLL`]; a key that says "open until T" opens the local breaker until
//! T. Workers never wait for Redis: they hand trips to the thread through
//! a bounded channel (`try_send`, dropped when full).
//!
//! # Failure behavior
//! Fail-open: when Redis is unreachable each node keeps its own breakers
//! (the thread logs once per outage and reconnects); no request waits.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::breaker::{Breaker, now_ms};
use crate::store_link::{Change, StoreLink};

/// How often shared state is read.
pub const POLL: Duration = Duration::from_millis(200);
/// Trips waiting to be published.
const QUEUE: usize = 1024;

/// One breaker with its Redis key.
pub struct Shared {
    /// Key.
    pub key: String,
    /// The local breaker.
    pub breaker: Arc<Breaker>,
}

/// Handle the workers use to publish a trip.
#[derive(Clone)]
pub struct BreakerSync {
    tx: SyncSender<(usize, Duration)>,
}

impl BreakerSync {
    /// Publishes that breaker `index` opened for `d` (never blocks).
    pub fn publish(&self, index: usize, d: Duration) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send((index, d)) {
            tracing::warn!(target: "tollgate::breaker", "breaker sync queue full; trip not shared");
        }
    }
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Starts the sync thread for `breakers` (indexed as `publish` uses them).
pub fn start(url: &str, breakers: Vec<Shared>) -> Result<BreakerSync, String> {
    let client = redis::Client::open(url).map_err(|e| format!("store.url: {e}"))?;
    let (tx, rx) = sync_channel(QUEUE);
    std::thread::Builder::new()
        .name("tollgate-breaker-sync".into())
        .spawn(move || run(client, breakers, rx))
        .map_err(|e| e.to_string())?;
    Ok(BreakerSync { tx })
}

fn run(client: redis::Client, breakers: Vec<Shared>, rx: Receiver<(usize, Duration)>) {
    let second = Duration::from_secs(1);
    let mut link = StoreLink::new(client, second, second);
    let keys: Vec<&str> = breakers.iter().map(|b| b.key.as_str()).collect();
    loop {
        // Wait for a trip or the next poll, whichever comes first.
        let mut trips = Vec::new();
        match rx.recv_timeout(POLL) {
            Ok(t) => trips.push(t),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        }
        trips.extend(rx.try_iter());
        match link.call(|c| sync(c, &breakers, &keys, &trips)) {
            (Err(e), Change::Down) => {
                tracing::warn!(target: "tollgate::breaker", error = %e, "store unreachable: breakers are per node until it is back");
            }
            (_, Change::Up) => {
                tracing::info!(target: "tollgate::breaker", "store reachable again: breakers shared");
            }
            _ => {}
        }
    }
}

fn sync(
    c: &mut redis::Connection,
    breakers: &[Shared],
    keys: &[&str],
    trips: &[(usize, Duration)],
) -> redis::RedisResult<()> {
    let now = wall_ms();
    if !trips.is_empty() {
        let mut p = redis::pipe();
        for &(i, d) in trips {
            let Some(b) = breakers.get(i) else { continue };
            let ms = d.as_millis().max(1) as u64;
            p.cmd("SET")
                .arg(&b.key)
                .arg(now + ms)
                .arg("PX")
                .arg(ms)
                .ignore();
        }
        p.query::<()>(c)?;
    }
    if keys.is_empty() {
        return Ok(());
    }
    let until: Vec<Option<u64>> = redis::cmd("MGET").arg(keys).query(c)?;
    let local = now_ms();
    for (b, u) in breakers.iter().zip(until) {
        if let Some(u) = u.filter(|&u| u > now) {
            b.breaker.adopt_open(Duration::from_millis(u - now), local);
        }
    }
    Ok(())
}
