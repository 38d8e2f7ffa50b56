//! The few OS calls std does not wrap: CPU affinity and abortive close.
//! All `unsafe` of the gateway lives here.

/// Pins the calling thread to `cpu`. Errors are returned, not fatal:
/// an unpinned worker still works.
pub fn pin_to_cpu(cpu: usize) -> std::io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(std::io::Error::other("cpu index out of range"));
    }
    // SAFETY: cpu_set_t is a plain bit array; all-zero is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE (checked above), so CPU_SET
    // writes inside `set`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; `set` is initialised and the
    // size passed is its exact size.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Makes the next close of `fd` send RST instead of FIN (SO_LINGER with a
/// zero timeout). Used by the mock to simulate a connection reset.
pub fn reset_on_close(fd: std::os::fd::RawFd) -> std::io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `linger` is a valid, initialised struct and the length passed
    // is its exact size; an invalid fd makes the call fail with EBADF, which
    // is returned as an error.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_in_a_thread() {
        std::thread::spawn(|| {
            pin_to_cpu(0).unwrap();
            // SAFETY: sched_getcpu has no preconditions.
            let cpu = unsafe { libc::sched_getcpu() };
            assert_eq!(cpu, 0);
            assert!(pin_to_cpu(usize::MAX).is_err());
        })
        .join()
        .unwrap();
    }

    #[test]
    fn reset_on_close_sends_rst() {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        reset_on_close(s.as_raw_fd()).unwrap();
        drop(s);
        let mut b = [0u8; 8];
        let err = c.read(&mut b).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
        assert!(reset_on_close(-1).is_err());
    }
}
