//! Per-port connection stats read straight from kernel memory.
//!
//! `PORT_STATS` is a `BPF_F_MMAPABLE` array the `sock_ops` program writes
//! (one u64 per local port: srtt in µs low, retransmits high). Mapped
//! read-only into the process, a worker reads a request's upstream srtt
//! and retransmits with one load, no system call on the data path.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

const PORTS: usize = 65536;

/// The mapping; shared by all workers.
#[derive(Debug)]
pub struct PortStats {
    base: NonNull<AtomicU64>,
}

// SAFETY: the mapping is read-only for the process, lives until drop, and
// is only read through atomic loads; the kernel is the only writer.
unsafe impl Send for PortStats {}
// SAFETY: as above; `&PortStats` only allows atomic loads.
unsafe impl Sync for PortStats {}

impl PortStats {
    /// Maps the array behind `fd` (65,536 u64 values).
    pub(crate) fn map(fd: BorrowedFd<'_>) -> io::Result<PortStats> {
        // SAFETY: a fresh shared read-only mapping of a BPF array fd; the
        // kernel checks the size against the map and the flag
        // BPF_F_MMAPABLE. No existing memory is touched.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PORTS * 8,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        NonNull::new(p.cast::<AtomicU64>())
            .map(|base| PortStats { base })
            .ok_or_else(|| io::Error::other("mmap returned null"))
    }

    /// (srtt µs, retransmits) of the upstream connection on local `port`,
    /// `None` before its first sample.
    pub fn get(&self, port: u16) -> Option<(u32, u32)> {
        // SAFETY: `port` < 65,536 = the mapped length in u64s; the base is
        // page aligned, so every element is 8-byte aligned; AtomicU64 has
        // the layout of u64.
        let v = unsafe { &*self.base.as_ptr().add(usize::from(port)) }.load(Ordering::Relaxed);
        (v != 0).then_some((v as u32, (v >> 32) as u32))
    }
}

impl Drop for PortStats {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, of that length, unmapped once.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), PORTS * 8);
        }
    }
}
