//! Per-worker keep-alive pools, one LIFO stack per upstream.
//!
//! LIFO keeps the hottest connections in use and lets the rest age out;
//! entries older than the upstream's idle timeout are dropped on the next
//! take or sweep. Pools are worker-local: no locks; with eBPF on, one
//! shared atomic slot per idle connection tells `take` which ones the
//! kernel saw reset (`health::cookies`).

use std::time::Duration;

use super::UpConn;
use crate::health::cookies;
use crate::route::UpstreamId;

struct Idle {
    conn: UpConn,
    /// When it went idle, `sys::coarse_mono_ms` (a few ms of resolution
    /// are nothing against idle timeouts of seconds).
    since_ms: u64,
}

/// What [`Pool::take`] found.
pub enum Take {
    /// A live connection and how long it sat idle (to the few ms of
    /// `coarse_mono_ms`).
    Idle(UpConn, Duration),
    /// No idle connection.
    Empty,
    /// The kernel saw the upstream close an idle connection moments
    /// after its last answer: the process behind it is gone (a crash, a
    /// restart). Every idle connection to it was dropped.
    Gone,
}

/// The pools of one worker.
#[derive(Default)]
pub struct Pool {
    idle: Vec<Vec<Idle>>,
}

impl Pool {
    /// Takes the most recently used live connection, if any. `recent`:
    /// a connection the kernel saw the upstream close within this time of
    /// its last use means the upstream went away (see [`Take::Gone`]).
    pub fn take(&mut self, up: UpstreamId, idle_timeout: Duration, recent: Duration) -> Take {
        let Some(stack) = self.idle.get_mut(up as usize) else {
            return Take::Empty;
        };
        let now = crate::sys::coarse_mono_ms();
        expire(stack, now, idle_timeout);
        // Connections the kernel saw reset while idle are dropped here,
        // before a request is written to them (eBPF; a no-op without).
        while let Some(i) = stack.pop() {
            let idle = Duration::from_millis(now.saturating_sub(i.since_ms));
            if !cookies::take(i.conn.cookie()) {
                return Take::Idle(i.conn, idle);
            }
            if idle < recent {
                self.purge(up);
                return Take::Gone;
            }
        }
        Take::Empty
    }

    /// Drops every idle connection to `up`: one of them died right after
    /// use, so the process they were opened to is gone (a crash or a
    /// restart) and the rest would only fail the next requests one by one.
    pub fn purge(&mut self, up: UpstreamId) {
        if let Some(stack) = self.idle.get_mut(up as usize) {
            forget(stack.drain(..));
        }
    }

    /// Returns a connection whose last response completed cleanly.
    pub fn put(&mut self, up: UpstreamId, conn: UpConn, max_idle: usize) {
        if max_idle == 0 {
            return;
        }
        let idx = up as usize;
        if self.idle.len() <= idx {
            self.idle.resize_with(idx + 1, Vec::new);
        }
        let stack = &mut self.idle[idx];
        if stack.len() >= max_idle {
            cookies::forget(stack.remove(0).conn.cookie());
        }
        cookies::idle(conn.cookie());
        stack.push(Idle {
            conn,
            since_ms: crate::sys::coarse_mono_ms(),
        });
    }

    /// Drops expired connections of every upstream; `timeout_of` gives the
    /// idle timeout per upstream id.
    pub fn sweep(&mut self, timeout_of: impl Fn(usize) -> Duration) {
        let now = crate::sys::coarse_mono_ms();
        for (i, stack) in self.idle.iter_mut().enumerate() {
            expire(stack, now, timeout_of(i));
        }
    }

    /// Idle connections held for an upstream.
    pub fn idle_count(&self, up: UpstreamId) -> usize {
        self.idle.get(up as usize).map_or(0, Vec::len)
    }
}

/// Drops the connections of `stack` idle for `timeout` or longer at `now`
/// (`coarse_mono_ms`). Entries are in age order: the front is oldest.
fn expire(stack: &mut Vec<Idle>, now: u64, timeout: Duration) {
    let t = timeout.as_millis() as u64;
    let old = stack.partition_point(|e| now.saturating_sub(e.since_ms) >= t);
    forget(stack.drain(..old));
}

/// Drops connections taken out of a pool unused.
fn forget(dropped: impl Iterator<Item = Idle>) {
    for e in dropped {
        cookies::forget(e.conn.cookie());
    }
}
