//! The few OS calls std does not wrap: CPU affinity, abortive close and
//! the coarse clocks.
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

/// Milliseconds on `clock`, a coarse clock: the time of the last timer
/// tick (1–4 ms resolution), read from the vDSO in ~5 ns against ~22 ns
/// for the precise clocks on this VM. For breaker timing, limit windows
/// and record stamps, which are read several times per request and where
/// a few milliseconds do not matter; latencies are measured with
/// `Instant`.
fn coarse_ms(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime writes
    // only it.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000
}

/// Coarse monotonic milliseconds (since boot).
pub fn coarse_mono_ms() -> u64 {
    coarse_ms(libc::CLOCK_MONOTONIC_COARSE)
}

/// Coarse wall-clock milliseconds since the Unix epoch.
pub fn coarse_wall_ms() -> u64 {
    coarse_ms(libc::CLOCK_REALTIME_COARSE)
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
    fn coarse_clocks_follow_the_precise_ones() {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let coarse = coarse_wall_ms();
        assert!(coarse.abs_diff(wall) <= 20, "{coarse} vs {wall}");
        let a = coarse_mono_ms();
        std::thread::sleep(std::time::Duration::from_millis(30));
        let b = coarse_mono_ms();
        assert!((20..=1000).contains(&(b - a)), "{a} → {b}");
    }

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
