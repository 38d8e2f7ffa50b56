//! The lease thread: keeps every shared window's local grant topped up
//! from Redis, off the data path.
//!
//! Each round (every [`ROUND`], or at once when a worker nudges) it asks
//! every window what it needs (`Window::ask`) and sends all asks in one
//! pipeline of a small Lua script per window. The script adds the debt
//! (units a node already admitted beyond its grant) unconditionally and a
//! new lease only up to the limit, so the store's counter is the truth
//! across nodes and never grants more than the limit.
//!
//! Keys: `tollgate:limit:{scope}:{rpm|tpm|budget_tokens|budget_micros}:{window index}`,
//! expiring one window after the window ends.
//!
//! # Failure behavior
//! A failed round switches the limiter to the configured policy
//! (`fail_open`: each node admits against its own view; `fail_closed`:
//! only existing grants) and logs once per outage; the next success
//! switches back, and the first round after it pushes the usage admitted
//! meanwhile as debt.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use super::period::wall_ms;
use super::window::{Allow, Ask};
use super::{Counters, Limiter};
use crate::store_link::{Change, StoreLink};

/// Longest time between two rounds.
pub const ROUND: Duration = Duration::from_millis(100);

const GRANT: &str = r"
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local debt = tonumber(ARGV[1])
local want = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local g = limit - used - debt
if g > want then g = want end
if g < 0 then g = 0 end
local total = used + debt + g
if debt + g > 0 then
  redis.call('SET', KEYS[1], total, 'PX', ARGV[4])
end
local up = 0
if g < want or total >= limit then up = 1 end
return {debt + g, total, up}
";

/// Everything the thread needs.
pub struct LeaseThread {
    /// Redis client.
    pub client: redis::Client,
    /// The process's limiter (mode switches).
    pub limiter: Arc<Limiter>,
    /// Current set of counters (changes when keys are added or revoked).
    pub counters: Arc<dyn Fn() -> Vec<Arc<Counters>> + Send + Sync>,
    /// Policy while the store is down.
    pub down: Allow,
    /// Nudges from workers.
    pub wake: Receiver<()>,
}

impl LeaseThread {
    /// Runs until the limiter is dropped.
    pub fn run(self) {
        let mut link = StoreLink::new(
            self.client.clone(),
            Duration::from_millis(500),
            Duration::from_secs(1),
        );
        loop {
            match self.wake.recv_timeout(ROUND) {
                Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            while self.wake.try_recv().is_ok() {}
            let all = (self.counters)();
            let now = wall_ms();
            let asks: Vec<(&Counters, usize, Ask)> = all
                .iter()
                .flat_map(|c| {
                    c.windows
                        .iter()
                        .enumerate()
                        .filter_map(move |(i, (_, w))| w.ask(now).map(|a| (&**c, i, a)))
                })
                .collect();
            if asks.is_empty() && link.healthy() {
                continue;
            }
            let (result, change) = link.call(|c| round(c, &asks));
            match (&result, change) {
                (Err(e), Change::Down) => tracing::warn!(
                    target: "tollgate::limits",
                    error = %e,
                    policy = if self.down == Allow::Closed { "fail_closed" } else { "fail_open" },
                    "store unreachable: limits are per node until it is back"
                ),
                (_, Change::Up) => {
                    tracing::info!(target: "tollgate::limits", "store reachable again: limits shared");
                }
                _ => {}
            }
            self.limiter.set_allow(if result.is_ok() {
                Allow::Shared
            } else {
                self.down
            });
        }
    }
}

fn round(c: &mut redis::Connection, asks: &[(&Counters, usize, Ask)]) -> redis::RedisResult<()> {
    if asks.is_empty() {
        // Health check only (the store was down).
        return redis::cmd("PING").query::<()>(c);
    }
    let mut p = redis::pipe();
    for (counters, i, a) in asks {
        let Some((kind, w)) = counters.windows.get(*i) else {
            continue;
        };
        let key = format!(
            "tollgate:limit:{}:{}:{}",
            counters.scope,
            kind.name(),
            a.index
        );
        let ttl = w.period.end_ms(a.index).saturating_sub(wall_ms()) + w.period.max_len_ms();
        p.cmd("EVAL")
            .arg(GRANT)
            .arg(1)
            .arg(key)
            .arg(a.debt)
            .arg(a.want)
            .arg(w.limit)
            .arg(ttl);
    }
    let answers: Vec<(u64, u64, u8)> = p.query(c)?;
    for ((counters, i, a), (added, total, up)) in asks.iter().zip(answers) {
        if let Some((_, w)) = counters.windows.get(*i) {
            w.granted(a.index, added, total, up == 1);
        }
    }
    Ok(())
}
