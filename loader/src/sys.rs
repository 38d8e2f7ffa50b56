//! The few system calls the loader makes itself: socket cookies, polling
//! the ring-buffer fd, the monotonic clock the kernel stamps events with,
//! and mounting tracefs. Each `unsafe` block is one libc call on values
//! this module owns.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// The kernel's cookie of a socket (`SO_COOKIE`): the id the eBPF
/// programs key per-connection state by.
pub fn socket_cookie(fd: RawFd) -> io::Result<u64> {
    let mut v: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `v` and `len` are live locals of the sizes passed; the
    // kernel writes at most `len` bytes into `v`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&raw mut v).cast(),
            &raw mut len,
        )
    };
    if r == 0 {
        Ok(v)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Waits up to `timeout` for `fd` to be readable; true when it is.
pub fn wait_readable(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one pollfd on the stack, count 1.
    let r = unsafe { libc::poll(&raw mut p, 1, ms) };
    match r {
        n if n > 0 => Ok(true),
        0 => Ok(false),
        _ => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live local timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `mount -t tracefs nodev /sys/kernel/tracing` (needs CAP_SYS_ADMIN).
pub fn mount_tracefs() -> io::Result<()> {
    let src = c"nodev";
    let target = c"/sys/kernel/tracing";
    let fstype = c"tracefs";
    // SAFETY: NUL-terminated static strings; no data argument.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn cookies_are_stable_per_socket_and_differ_between_sockets() {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ca = socket_cookie(a.as_raw_fd()).unwrap();
        assert_ne!(ca, 0);
        assert_eq!(ca, socket_cookie(a.as_raw_fd()).unwrap());
        assert_ne!(ca, socket_cookie(b.as_raw_fd()).unwrap());
        assert!(socket_cookie(-1).is_err());
    }

    #[test]
    fn poll_times_out_on_a_quiet_fd_and_wakes_on_data() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(!wait_readable(l.as_raw_fd(), Duration::from_millis(10)).unwrap());
        let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        assert!(wait_readable(l.as_raw_fd(), Duration::from_secs(5)).unwrap());
        let t = monotonic_ns();
        assert!(monotonic_ns() >= t);
    }
}
