//! Where the `sock_ops` program attaches: a cgroup v2 directory that holds
//! the gateway and nothing else of the host.
//!
//! A cgroup's `sock_ops` programs see every socket created by its
//! processes (and its descendants'). Attached to the root cgroup, that is
//! every socket of the host (about 280k callbacks in 13 s on the reference
//! VM), so the root is refused. `Auto` uses the cgroup the process runs in
//! when that is not the root (under systemd: the service's own cgroup);
//! from the root it creates `tollgate-<pid>` next to it, moves the process
//! in, and on drop moves it back and removes the directory.
//!
//! Sockets keep the cgroup they were created in, so placement must happen
//! before the gateway opens upstream connections.

use std::io;
use std::path::{Path, PathBuf};

/// Where to attach `sock_ops`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// The current cgroup, or a new child when the process is in the root.
    Auto,
    /// This existing cgroup v2 directory (never the root).
    Path(PathBuf),
    /// No `sock_ops` (no RTT telemetry).
    Off,
}

/// A cgroup in use; removes it on drop when the loader created it.
#[derive(Debug)]
pub struct Cgroup {
    /// The directory.
    pub dir: PathBuf,
    /// Created by us (and so removed on drop).
    created: bool,
}

impl Cgroup {
    /// Resolves a placement; `Ok(None)` for [`Placement::Off`].
    pub fn place(p: &Placement) -> io::Result<Option<Cgroup>> {
        if *p == Placement::Off {
            return Ok(None);
        }
        let mount = cgroup2_mount()?;
        match p {
            Placement::Off => Ok(None),
            Placement::Path(dir) => {
                if same_dir(dir, &mount) {
                    return Err(io::Error::other(format!(
                        "{} is the root cgroup: it sees every socket of the host",
                        dir.display()
                    )));
                }
                Ok(Some(Cgroup {
                    dir: dir.clone(),
                    created: false,
                }))
            }
            Placement::Auto => {
                let current = current_cgroup()?;
                if current != "/" {
                    return Ok(Some(Cgroup {
                        dir: mount.join(current.trim_start_matches('/')),
                        created: false,
                    }));
                }
                sweep_stale(&mount);
                let pid = std::process::id();
                let dir = mount.join(format!("tollgate-{pid}"));
                match std::fs::create_dir(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => {
                        return Err(io::Error::new(
                            e.kind(),
                            format!("creating {}: {e}", dir.display()),
                        ));
                    }
                }
                let cg = Cgroup { dir, created: true };
                std::fs::write(cg.dir.join("cgroup.procs"), pid.to_string()).map_err(|e| {
                    io::Error::new(e.kind(), format!("moving into {}: {e}", cg.dir.display()))
                })?;
                Ok(Some(cg))
            }
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if !self.created {
            return;
        }
        if let Some(parent) = self.dir.parent() {
            let _ = std::fs::write(parent.join("cgroup.procs"), std::process::id().to_string());
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The cgroup v2 mount point (`/sys/fs/cgroup` on unified hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones), from `/proc/self/mountinfo`.
pub fn cgroup2_mount() -> io::Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    for line in info.lines() {
        // "... mount_point options - fstype source super_options"
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        if post.split_whitespace().next() == Some("cgroup2")
            && let Some(mp) = pre.split_whitespace().nth(4)
        {
            return Ok(PathBuf::from(mp));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        "no cgroup2 file system mounted",
    ))
}

/// This process's cgroup v2 path (`0::/path` in `/proc/self/cgroup`).
pub fn current_cgroup() -> io::Result<String> {
    let s = std::fs::read_to_string("/proc/self/cgroup")?;
    s.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no cgroup v2 entry"))
}

/// Removes `tollgate-<pid>` directories of processes that are gone (a
/// gateway killed with SIGKILL cannot clean up). `rmdir` of a cgroup
/// fails while it has members, so a live gateway's directory is safe.
fn sweep_stale(mount: &Path) {
    let Ok(rd) = std::fs::read_dir(mount) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("tollgate-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_cgroup_is_refused() {
        let mount = cgroup2_mount().unwrap();
        assert!(Cgroup::place(&Placement::Off).unwrap().is_none());
        let err = Cgroup::place(&Placement::Path(mount)).unwrap_err();
        assert!(err.to_string().contains("root cgroup"), "{err}");
    }
}
