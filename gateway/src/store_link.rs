//! One Redis connection of a background thread (breaker sync, limit
//! leases, key sync): connected lazily with short timeouts, dropped and
//! reconnected after any error, and the store's going away or coming back
//! reported once per outage (the owner logs it), never once per round.
//!
//! # Failure behavior
//! `call` never retries and never blocks longer than the timeouts: the
//! thread decides what an unreachable store means for its own state.

use std::time::Duration;

/// What a call changed about the store's reachability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Same as before.
    Same,
    /// The first failure of an outage.
    Down,
    /// The first success after an outage.
    Up,
}

/// A lazily connected Redis link that tracks outages.
pub struct StoreLink {
    client: redis::Client,
    conn: Option<redis::Connection>,
    healthy: bool,
    connect_timeout: Duration,
    io_timeout: Duration,
}

impl StoreLink {
    /// A link; nothing is connected until the first `call`.
    pub fn new(client: redis::Client, connect_timeout: Duration, io_timeout: Duration) -> Self {
        StoreLink {
            client,
            conn: None,
            healthy: true,
            connect_timeout,
            io_timeout,
        }
    }

    /// True unless the last call failed.
    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// Runs `f` on the connection (connecting first if needed). An error
    /// drops the connection; the change tells whether an outage began or
    /// ended with this call.
    pub fn call<T>(
        &mut self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> (redis::RedisResult<T>, Change) {
        if self.conn.is_none() {
            let (io, client) = (self.io_timeout, &self.client);
            self.conn = client
                .get_connection_with_timeout(self.connect_timeout)
                .ok()
                .inspect(|c| {
                    let _ = c.set_read_timeout(Some(io));
                    let _ = c.set_write_timeout(Some(io));
                });
        }
        let r = match self.conn.as_mut() {
            Some(c) => f(c),
            None => Err(redis::RedisError::from(std::io::Error::other(
                "cannot connect",
            ))),
        };
        let change = match (&r, self.healthy) {
            (Ok(_), false) => Change::Up,
            (Err(_), true) => Change::Down,
            _ => Change::Same,
        };
        self.healthy = r.is_ok();
        if r.is_err() {
            self.conn = None;
        }
        (r, change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::testredis::{free_addr, redis_on};

    fn ping(c: &mut redis::Connection) -> redis::RedisResult<String> {
        redis::cmd("PING").query(c)
    }

    #[test]
    fn an_outage_is_reported_once_at_each_end() {
        let addr = free_addr();
        let client = redis::Client::open(format!("redis://{addr}")).unwrap();
        let t = Duration::from_millis(300);
        let mut link = StoreLink::new(client, t, t);
        let (r, c) = link.call(ping);
        assert!(r.is_err());
        assert_eq!(c, Change::Down);
        assert!(!link.healthy());
        assert_eq!(link.call(ping).1, Change::Same);
        let _redis = redis_on(addr);
        let (r, c) = link.call(ping);
        assert_eq!(r.unwrap(), "PONG");
        assert_eq!(c, Change::Up);
        assert_eq!(link.call(ping).1, Change::Same);
        assert!(link.healthy());
    }
}
