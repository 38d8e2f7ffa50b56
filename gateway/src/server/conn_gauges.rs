//! Client connection gauges for `/metrics`: how many connections are open
//! and how many of those idle parked, holding no read buffer. Memory per
//! idle connection is what a node with many keep-alive clients runs out of
//! first; these say how much of it is in use. Updated once per connection
//! and once per park, never per request.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Process-wide counts, shared by the workers.
#[derive(Debug, Default)]
pub struct ConnGauges {
    open: AtomicU64,
    parked: AtomicU64,
}

/// Holds one unit of a gauge until dropped.
pub struct Held<'a>(&'a AtomicU64);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ConnGauges {
    /// A client connection was accepted (see `worker::Accepted`, which
    /// pairs it with [`closed`](Self::closed)).
    pub fn opened(&self) {
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    /// A client connection ended.
    pub fn closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts a parked connection while the guard lives.
    pub fn parked(&self) -> Held<'_> {
        self.parked.fetch_add(1, Ordering::Relaxed);
        Held(&self.parked)
    }

    /// Appends the Prometheus text of the gauges.
    pub fn render(&self, out: &mut String) {
        let open = self.open.load(Ordering::Relaxed);
        let parked = self.parked.load(Ordering::Relaxed);
        let _ = write!(
            out,
            "# HELP tollgate_client_connections Open client connections.\n\
             # TYPE tollgate_client_connections gauge\n\
             tollgate_client_connections {open}\n\
             # HELP tollgate_client_connections_parked Idle client connections holding no read buffer.\n\
             # TYPE tollgate_client_connections_parked gauge\n\
             tollgate_client_connections_parked {parked}\n"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_and_parked_guards_are_counted() {
        let g = ConnGauges::default();
        g.opened();
        g.opened();
        let p = g.parked();
        let mut text = String::new();
        g.render(&mut text);
        assert!(text.contains("\ntollgate_client_connections 2\n"), "{text}");
        assert!(
            text.contains("\ntollgate_client_connections_parked 1\n"),
            "{text}"
        );
        g.closed();
        drop(p);
        text.clear();
        g.render(&mut text);
        assert!(text.contains("\ntollgate_client_connections 1\n"), "{text}");
        assert!(
            text.contains("\ntollgate_client_connections_parked 0\n"),
            "{text}"
        );
        g.closed();
        text.clear();
        g.render(&mut text);
        assert!(text.contains("\ntollgate_client_connections 0\n"), "{text}");
    }
}
