//! Which connection resets on an upstream address say the upstream failed.
//!
//! The kernel reports `ECONNRESET` on a socket in two cases that say
//! nothing about the upstream's health:
//! - an RST on an idle pooled connection: the upstream ended a connection
//!   nobody was using (the pool evicts it; `cookies`);
//! - a *hang-up*: this host closed or shut down its side first (the socket
//!   went ESTABLISHED → FIN_WAIT1) while the upstream was still sending,
//!   as happens to any stream whose client left. Data arriving after that
//!   makes this host's own kernel abort the connection (RFC 1122), and it
//!   reports that abort as a reset of the local socket. A reset after this
//!   host closed second (CLOSE_WAIT → LAST_ACK: the upstream had already
//!   ended the connection with its FIN) is treated the same way.
//!
//! The second case is real traffic on a shared host: any process whose
//! socket shuts down with the fd still open (a proxy cancelling a stream,
//! a client library half-closing) produces it, and the tracepoints see
//! every socket to the upstream's address. Counting it opened breakers on
//! healthy upstreams: found with a load test whose clients left mid-stream,
//! where one such reset opened the breaker of a healthy upstream for 30 s.
//!
//! Connections are keyed by (upstream id, local port), the key every event
//! on the address carries. The kernel's event order per socket, measured
//! on 6.18 with the tracepoints the programs use:
//! - the upstream resets:   RstReceived, State(ESTABLISHED → CLOSE), Reset
//! - this host hung up:     State(ESTABLISHED → FIN_WAIT1), …,
//!   RstReceived, State(FIN_WAIT2 → CLOSE), Reset, RstSent (abort on data)
//!
//! A hang-up is remembered until its reset arrives or the local port is
//! connected again (SYN_SENT → ESTABLISHED), so a later connection on the
//! same port is judged on its own; both lists are bounded.

use std::collections::VecDeque;

/// Most idle resets and hang-ups remembered at once (oldest dropped).
const REMEMBERED: usize = 1024;

/// Kernel `TCP_*` state numbers.
const TCP_ESTABLISHED: u16 = 1;
const TCP_SYN_SENT: u16 = 2;
const TCP_FIN_WAIT1: u16 = 4;
const TCP_CLOSE_WAIT: u16 = 8;
const TCP_LAST_ACK: u16 = 9;

/// (upstream id, local port).
pub type Key = (u32, u16);

/// What a reset means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The upstream reset a connection in use: a failure.
    Failure,
    /// An idle pooled connection: evicted, not a failure.
    Idle,
    /// This host hung up first: not a failure.
    HungUp,
}

/// The connections whose next reset is not a failure.
#[derive(Debug, Default)]
pub struct Resets {
    idle: VecDeque<Key>,
    hung_up: VecDeque<Key>,
}

fn remember(list: &mut VecDeque<Key>, key: Key) {
    if list.contains(&key) {
        return;
    }
    if list.len() == REMEMBERED {
        list.pop_front();
    }
    list.push_back(key);
}

fn forget(list: &mut VecDeque<Key>, key: Key) -> bool {
    match list.iter().position(|k| *k == key) {
        Some(i) => {
            list.remove(i);
            true
        }
        None => false,
    }
}

impl Resets {
    /// An RST arrived on an idle pooled connection.
    pub fn idle_rst(&mut self, key: Key) {
        remember(&mut self.idle, key);
    }

    /// A state change of a socket to the upstream.
    pub fn state(&mut self, key: Key, old: u16, new: u16) {
        match (old, new) {
            // This host closed first, or closed after the upstream had
            // already ended the connection (its FIN): either way the
            // connection was over when a reset came.
            (TCP_ESTABLISHED, TCP_FIN_WAIT1) | (TCP_CLOSE_WAIT, TCP_LAST_ACK) => {
                remember(&mut self.hung_up, key)
            }
            (TCP_SYN_SENT, TCP_ESTABLISHED) => {
                forget(&mut self.hung_up, key);
                forget(&mut self.idle, key);
            }
            _ => {}
        }
    }

    /// The kernel reported `ECONNRESET` on the connection.
    pub fn reset(&mut self, key: Key) -> Verdict {
        if forget(&mut self.idle, key) {
            Verdict::Idle
        } else if forget(&mut self.hung_up, key) {
            Verdict::HungUp
        } else {
            Verdict::Failure
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLOSE: u16 = 7;
    const FIN_WAIT2: u16 = 5;

    const KEY: Key = (0, 40000);

    /// Replays one connection's state changes, then judges its reset.
    fn verdict(states: &[(u16, u16)]) -> Verdict {
        let mut r = Resets::default();
        for &(old, new) in states {
            r.state(KEY, old, new);
        }
        r.reset(KEY)
    }

    #[test]
    fn a_reset_of_a_connection_in_use_is_a_failure() {
        let used = [(TCP_SYN_SENT, TCP_ESTABLISHED), (TCP_ESTABLISHED, CLOSE)];
        assert_eq!(verdict(&used), Verdict::Failure);
        // The upstream's FIN alone (this host has not closed) does not
        // excuse a reset.
        assert_eq!(
            verdict(&[(TCP_ESTABLISHED, TCP_CLOSE_WAIT)]),
            Verdict::Failure
        );
    }

    #[test]
    fn a_reset_after_this_host_closed_is_not_a_failure() {
        let first = [
            (TCP_ESTABLISHED, TCP_FIN_WAIT1),
            (TCP_FIN_WAIT1, FIN_WAIT2),
            (FIN_WAIT2, CLOSE),
        ];
        assert_eq!(verdict(&first), Verdict::HungUp);
        let second = [
            (TCP_ESTABLISHED, TCP_CLOSE_WAIT),
            (TCP_CLOSE_WAIT, TCP_LAST_ACK),
        ];
        assert_eq!(verdict(&second), Verdict::HungUp);
    }

    #[test]
    fn a_hang_up_excuses_one_reset_of_its_own_connection() {
        let mut r = Resets::default();
        r.state(KEY, TCP_ESTABLISHED, TCP_FIN_WAIT1);
        // Another connection (other port, other upstream) is unaffected.
        assert_eq!(r.reset((0, 40001)), Verdict::Failure);
        assert_eq!(r.reset((1, 40000)), Verdict::Failure);
        assert_eq!(r.reset(KEY), Verdict::HungUp);
        // Consumed: the same key resetting again is judged afresh.
        assert_eq!(r.reset(KEY), Verdict::Failure);
    }

    #[test]
    fn a_new_connection_on_the_port_forgets_the_old_hang_up() {
        let mut r = Resets::default();
        r.state((0, 40000), TCP_ESTABLISHED, TCP_FIN_WAIT1);
        r.idle_rst((0, 40000));
        r.state((0, 40000), TCP_SYN_SENT, TCP_ESTABLISHED);
        assert_eq!(r.reset((0, 40000)), Verdict::Failure);
    }

    #[test]
    fn an_idle_reset_is_told_apart_and_the_lists_stay_bounded() {
        let mut r = Resets::default();
        r.idle_rst((2, 1));
        assert_eq!(r.reset((2, 1)), Verdict::Idle);
        for port in 0..(REMEMBERED as u16 + 10) {
            r.state((0, port), TCP_ESTABLISHED, TCP_FIN_WAIT1);
        }
        assert_eq!(r.hung_up.len(), REMEMBERED);
        // The oldest were dropped, the newest kept.
        assert_eq!(r.reset((0, 0)), Verdict::Failure);
        assert_eq!(r.reset((0, REMEMBERED as u16 + 9)), Verdict::HungUp);
    }
}
