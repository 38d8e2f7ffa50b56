//! Spare byte buffers of one worker, reused from request to request.
//!
//! Every proxied request needs the same three buffers: the upstream
//! request it builds, the upstream read buffer (16 KiB) and the client's
//! copy of the answer's head (and payload, when the gateway frames it).
//! Freed at the end of one request and asked for again by the next, each
//! took mimalloc's slow path: a size class whose only block was freed has
//! an empty free list, and the allocation that follows goes through
//! `_mi_malloc_generic` to collect it back (~100 instructions a buffer,
//! counted with callgrind). A worker keeps a few instead: a pop, then a
//! push.
//!
//! Two lists, by size: read buffers (16 KiB and up) and the rest
//! (requests and answer heads, a few KiB). A take pops the top of its
//! list, no search; one smaller than asked is replaced by a new one (the
//! buffers of a list settle at the size the traffic needs).
//! Bounded in count and size, so a worker holds at most 2 × [`KEPT`] ×
//! [`MAX_CAPACITY`] bytes in spares, whatever the load was.

use std::cell::RefCell;

/// Most buffers kept in each list.
const KEPT: usize = 16;
/// Larger buffers are freed, not kept (a backed-up stream's 64 KiB read
/// buffer is the largest the relay makes).
const MAX_CAPACITY: usize = 64 * 1024;
/// Buffers at least this large are read buffers.
pub const READ_SIZE: usize = 16 * 1024;

/// A worker's spare buffers.
#[derive(Default)]
pub struct Spares {
    reads: RefCell<Vec<Vec<u8>>>,
    others: RefCell<Vec<Vec<u8>>>,
}

impl Spares {
    fn list(&self, cap: usize) -> &RefCell<Vec<Vec<u8>>> {
        if cap >= READ_SIZE {
            &self.reads
        } else {
            &self.others
        }
    }

    /// An empty buffer with room for `cap` bytes: the last one kept of
    /// its size, else a new one (also when that one is smaller: it is
    /// freed rather than grown, which would copy its old bytes).
    pub fn take(&self, cap: usize) -> Vec<u8> {
        match self.list(cap).borrow_mut().pop() {
            Some(b) if b.capacity() >= cap => b,
            _ => Vec::with_capacity(cap),
        }
    }

    /// Keeps `buf` for a later [`take`](Self::take) (emptied), unless
    /// enough are kept or it is too large or has no memory.
    pub fn give(&self, mut buf: Vec<u8>) {
        let cap = buf.capacity();
        if cap == 0 || cap > MAX_CAPACITY {
            return;
        }
        let mut list = self.list(cap).borrow_mut();
        if list.len() < KEPT {
            buf.clear();
            list.push(buf);
        }
    }

    #[cfg(test)]
    fn kept(&self) -> (usize, usize) {
        (self.reads.borrow().len(), self.others.borrow().len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_buffer_comes_back_empty_with_its_memory() {
        let s = Spares::default();
        let mut b = Vec::with_capacity(1000);
        b.extend_from_slice(b"left over");
        let at = b.as_ptr();
        s.give(b);
        let again = s.take(500);
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), at);
        assert!(again.capacity() >= 1000);
        assert_eq!(s.kept(), (0, 0));
    }

    #[test]
    fn read_buffers_and_the_rest_are_kept_apart_and_replaced_when_short() {
        let s = Spares::default();
        s.give(Vec::with_capacity(READ_SIZE));
        s.give(Vec::with_capacity(100));
        assert_eq!(s.kept(), (1, 1));
        // A small take does not get the read buffer; the kept one is too
        // small for it, and is replaced.
        let b = s.take(2000);
        assert!(b.capacity() >= 2000 && b.capacity() < READ_SIZE);
        assert_eq!(s.kept(), (1, 0));
        assert!(s.take(READ_SIZE).capacity() >= READ_SIZE);
        // A backed-up stream's larger read buffer.
        s.give(Vec::with_capacity(READ_SIZE));
        assert!(s.take(4 * READ_SIZE).capacity() >= 4 * READ_SIZE);
        // Nothing kept: new ones.
        assert!(s.take(READ_SIZE).capacity() >= READ_SIZE);
        assert!(s.take(10).capacity() >= 10);
        assert_eq!(s.kept(), (0, 0));
    }

    #[test]
    fn what_is_kept_is_bounded_in_count_and_size() {
        let s = Spares::default();
        s.give(Vec::with_capacity(MAX_CAPACITY + 1));
        s.give(Vec::new());
        assert_eq!(s.kept(), (0, 0));
        for _ in 0..KEPT + 5 {
            s.give(Vec::with_capacity(64));
            s.give(Vec::with_capacity(READ_SIZE));
        }
        assert_eq!(s.kept(), (KEPT, KEPT));
    }
}
