//! The local spool: append-only files of batches, one JSON line each,
//! that hold usage the store has not acknowledged yet.
//!
//! ```text
//! {spool_dir}/{instance}-m.spool    the writer thread's batches while the
//!                                   store is down or behind (fsync per batch)
//! {spool_dir}/{instance}-o{n}.spool one worker's records when the queue was
//!                                   full, one record per line (no fsync on
//!                                   the worker; at most OVERFLOW_LINES lines)
//! ```
//!
//! `instance` is random per process, so files of an earlier process (a
//! crash, a restart while Redis was down) are told apart and replayed on
//! start-up. Each file is one dedupe stream; lines are replayed in file
//! order, and a file is truncated (the writer's own) or deleted only once
//! every line in it was acknowledged by the store.
//!
//! # Failure behavior
//! A complete line that does not parse (disk corruption) or a torn last
//! line (a crash mid-write) is skipped with a warning and counted; the rest
//! of the file still replays. A failed append is rolled back to the last
//! whole line and reported to the caller (the records are then lost, and
//! counted): with the store down and the disk failing there is nowhere
//! left to put them.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::record::{Batch, Rec};

/// Lines per worker overflow file before it rotates (and can be deleted).
pub const OVERFLOW_LINES: u64 = 4096;
/// Most bytes read from a file in one replay step.
const READ_CHUNK: usize = 4 << 20;

/// Which kind of file, and whose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// This process's writer file: only the writer appends, always whole lines.
    OwnMain,
    /// A worker file of this process: a worker may be appending right now.
    OwnOverflow,
    /// Left by an earlier process: nobody writes it any more.
    Foreign,
}

struct Segment {
    path: PathBuf,
    file: File,
    kind: Kind,
    /// Bytes acknowledged (or skipped) from the start.
    acked: u64,
    /// Highest seq acknowledged.
    acked_seq: u64,
    /// File length when last seen.
    len: u64,
}

/// Where a pending batch came from (to acknowledge it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    /// The writer's own file.
    Main,
    /// Another file, by index in the spool's list.
    Other(usize),
}

/// A batch read back from the spool.
pub struct Pending {
    /// The batch.
    pub batch: Batch,
    /// Its file.
    pub from: From,
    /// Offset just after its line.
    pub end: u64,
}

/// What reading a file stopped at.
struct Read {
    items: Vec<(Batch, u64)>,
    /// Every whole line up to the end of the file was returned.
    to_end: bool,
}

/// The spool of one process.
pub struct Spool {
    dir: PathBuf,
    instance: Arc<str>,
    main: Option<Segment>,
    others: Vec<Segment>,
    /// Lines skipped as corrupt or torn since start.
    pub skipped: u64,
}

impl Spool {
    /// A spool in `dir` (created on first write) for process `instance`.
    pub fn new(dir: PathBuf, instance: Arc<str>) -> Self {
        Spool {
            dir,
            instance,
            main: None,
            others: Vec::new(),
            skipped: 0,
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The writer's stream id.
    pub fn main_stream(instance: &str) -> String {
        format!("{instance}-m")
    }

    /// Registers files not seen yet; `foreign` also takes files of
    /// earlier processes. Returns how many were added.
    pub fn scan(&mut self, foreign: bool) -> io::Result<usize> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut found = Vec::new();
        for e in entries {
            let path = e?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(stem) = name.strip_suffix(".spool") else {
                continue;
            };
            let Some((inst, which)) = stem.rsplit_once('-') else {
                continue;
            };
            let own = inst == &*self.instance;
            let kind = match (own, which) {
                (true, "m") => continue,
                (true, w) if w.starts_with('o') => Kind::OwnOverflow,
                (false, w) if w == "m" || w.starts_with('o') => Kind::Foreign,
                _ => continue,
            };
            if (kind == Kind::Foreign && !foreign) || self.others.iter().any(|s| s.path == path) {
                continue;
            }
            found.push((path, kind));
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        let n = found.len();
        for (path, kind) in found {
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let len = file.metadata()?.len();
            if kind == Kind::Foreign {
                tracing::info!(target: "tollgate::ledger", file = %path.display(), bytes = len, "replaying a spool file left by an earlier process");
            }
            self.others.push(Segment {
                path,
                file,
                kind,
                acked: 0,
                acked_seq: 0,
                len,
            });
        }
        Ok(n)
    }

    /// Appends a batch to the writer's file and fsyncs it.
    pub fn append_main(&mut self, b: &Batch) -> io::Result<()> {
        if self.main.is_none() {
            std::fs::create_dir_all(&self.dir)?;
            let path = self
                .dir
                .join(format!("{}.spool", Spool::main_stream(&self.instance)));
            let file = OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(&path)?;
            let len = file.metadata()?.len();
            self.main = Some(Segment {
                path,
                file,
                kind: Kind::OwnMain,
                acked: 0,
                acked_seq: 0,
                len,
            });
        }
        let Some(seg) = self.main.as_mut() else {
            return Err(io::Error::other("spool file missing"));
        };
        let mut line = Vec::with_capacity(128 * b.recs.len() + 64);
        b.encode_line(&mut line);
        let res = (&seg.file)
            .write_all(&line)
            .and_then(|()| seg.file.sync_data());
        match res {
            Ok(()) => {
                seg.len += line.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Keep the file made of whole lines.
                let _ = seg.file.set_len(seg.len);
                Err(e)
            }
        }
    }

    /// Up to `max_lines` / about `max_recs` pending batches of the
    /// writer's file, and whether that is all of it.
    pub fn read_main(
        &mut self,
        max_lines: usize,
        max_recs: usize,
    ) -> io::Result<(Vec<Pending>, bool)> {
        let Some(seg) = self.main.as_mut() else {
            return Ok((Vec::new(), true));
        };
        let r = read(seg, max_lines, max_recs, &mut self.skipped)?;
        let items = r
            .items
            .into_iter()
            .map(|(batch, end)| Pending {
                batch,
                from: From::Main,
                end,
            })
            .collect();
        Ok((items, r.to_end))
    }

    /// Up to `max_lines` / about `max_recs` pending batches of the other
    /// files, oldest file first.
    pub fn read_others(&mut self, max_lines: usize, max_recs: usize) -> io::Result<Vec<Pending>> {
        let mut out = Vec::new();
        let mut recs = 0;
        for (i, seg) in self.others.iter_mut().enumerate() {
            if out.len() >= max_lines || recs >= max_recs {
                break;
            }
            let r = read(
                seg,
                max_lines - out.len(),
                max_recs - recs,
                &mut self.skipped,
            )?;
            for (batch, end) in r.items {
                recs += batch.recs.len();
                out.push(Pending {
                    batch,
                    from: From::Other(i),
                    end,
                });
            }
        }
        Ok(out)
    }

    /// Marks a batch acknowledged by the store.
    pub fn ack(&mut self, p: &Pending) {
        let seg = match p.from {
            From::Main => self.main.as_mut(),
            From::Other(i) => self.others.get_mut(i),
        };
        if let Some(s) = seg {
            s.acked = s.acked.max(p.end);
            s.acked_seq = s.acked_seq.max(p.batch.seq);
        }
    }

    /// Truncates the writer's file and deletes other files once all
    /// their lines are acknowledged. Call after acks, never between a
    /// read and its acks (indexes in `From::Other` would move).
    pub fn compact(&mut self) {
        if let Some(m) = self.main.as_mut()
            && m.acked >= m.len
            && m.len > 0
        {
            match m.file.set_len(0).and_then(|()| m.file.sync_data()) {
                Ok(()) => {
                    m.len = 0;
                    m.acked = 0;
                }
                Err(e) => {
                    tracing::warn!(target: "tollgate::ledger", error = %e, "could not truncate the spool");
                }
            }
        }
        self.others.retain(|s| {
            let done = s.acked >= s.len
                && match s.kind {
                    Kind::Foreign => true,
                    Kind::OwnOverflow => s.acked_seq >= OVERFLOW_LINES,
                    Kind::OwnMain => false,
                };
            if done && let Err(e) = std::fs::remove_file(&s.path) {
                tracing::warn!(target: "tollgate::ledger", file = %s.path.display(), error = %e, "could not delete a replayed spool file");
            }
            !done
        });
    }

    /// Bytes not yet acknowledged, as of the last look at each file.
    pub fn pending_bytes(&self) -> u64 {
        self.main
            .iter()
            .chain(self.others.iter())
            .map(|s| s.len.saturating_sub(s.acked))
            .sum()
    }

    /// At shutdown (no worker writes any more): deletes this process's
    /// spill files whose lines are all acknowledged, full or not.
    pub fn finish(&mut self) {
        for s in &mut self.others {
            if s.kind == Kind::OwnOverflow && s.acked >= s.len {
                s.kind = Kind::Foreign;
            }
        }
        self.compact();
    }

    /// True when the writer's file has nothing pending.
    pub fn main_is_empty(&self) -> bool {
        self.main.as_ref().is_none_or(|m| m.acked >= m.len)
    }
}

/// Reads whole lines from `seg.acked` on. Corrupt lines at the read
/// position are skipped at once (acknowledged as nothing); a torn tail of
/// a file nobody writes any more is skipped the same way.
fn read(
    seg: &mut Segment,
    max_lines: usize,
    max_recs: usize,
    skipped: &mut u64,
) -> io::Result<Read> {
    seg.len = seg.file.metadata()?.len();
    let mut items = Vec::new();
    let mut pos = seg.acked;
    let mut recs = 0;
    let mut chunk = READ_CHUNK;
    let mut buf = Vec::new();
    while items.len() < max_lines && recs < max_recs && pos < seg.len {
        let remaining = seg.len - pos;
        let want = remaining.min(chunk as u64) as usize;
        buf.resize(want, 0);
        let n = read_at_most(&seg.file, &mut buf, pos)?;
        buf.truncate(n);
        let mut at = 0;
        while items.len() < max_lines && recs < max_recs {
            let Some(nl) = memchr::memchr(b'\n', &buf[at..]) else {
                break;
            };
            let end = pos + (at + nl + 1) as u64;
            match Batch::decode_line(&buf[at..at + nl]) {
                Ok(b) => {
                    recs += b.recs.len();
                    items.push((b, end));
                }
                Err(e) if items.is_empty() => {
                    *skipped += 1;
                    tracing::warn!(target: "tollgate::ledger", file = %seg.path.display(), offset = pos + at as u64, error = %e, "skipping a corrupt spool line");
                    seg.acked = end;
                }
                // Skipped once everything before it is acknowledged.
                Err(_) => {
                    return Ok(Read {
                        items,
                        to_end: false,
                    });
                }
            }
            at += nl + 1;
        }
        if at == 0 {
            if (n as u64) < remaining {
                // A line longer than the chunk: read more at once.
                chunk = chunk.saturating_mul(2);
                continue;
            }
            // No newline up to the end of the file: a torn tail, unless a
            // worker is writing that line right now.
            if seg.kind != Kind::OwnOverflow && items.is_empty() {
                *skipped += 1;
                tracing::warn!(target: "tollgate::ledger", file = %seg.path.display(), offset = pos, bytes = remaining, "skipping a torn last spool line");
                seg.acked = seg.len;
                pos = seg.len;
            }
            break;
        }
        pos += at as u64;
    }
    let to_end = pos >= seg.len;
    Ok(Read { items, to_end })
}

fn read_at_most(f: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], at + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Creates `dir` and takes an exclusive lock on `dir/lock` (released when
/// the returned file is dropped, or the process dies).
pub fn lock(dir: &Path) -> Result<File, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating `{}`: {e}", dir.display()))?;
    let path = dir.join("lock");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("opening `{}`: {e}", path.display()))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(format!(
            "`{}` is in use by another tollgate process; give each process its own spool_dir",
            dir.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(format!("locking `{}`: {e}", path.display())),
    }
}

/// What a worker needs to spill records to its own file.
pub struct SpillCtx {
    /// Spool directory.
    pub dir: PathBuf,
    /// Process instance.
    pub instance: Arc<str>,
    /// Tells ledgers apart (tests build several in one process).
    pub ledger_id: u64,
    /// Next overflow file number.
    pub next_file: AtomicU64,
}

struct OverflowFile {
    ledger_id: u64,
    file: File,
    stream: Arc<str>,
    lines: u64,
    len: u64,
}

thread_local! {
    static OVERFLOW: RefCell<Option<OverflowFile>> = const { RefCell::new(None) };
}

/// Appends one record to the calling thread's overflow file (one
/// `write(2)`, no fsync: this runs on a worker).
pub fn spill(ctx: &SpillCtx, rec: Rec) -> io::Result<()> {
    OVERFLOW.with(|cell| {
        let mut slot = cell.borrow_mut();
        let stale = slot
            .as_ref()
            .is_none_or(|o| o.ledger_id != ctx.ledger_id || o.lines >= OVERFLOW_LINES);
        if stale {
            std::fs::create_dir_all(&ctx.dir)?;
            let n = ctx.next_file.fetch_add(1, Ordering::Relaxed);
            let stream: Arc<str> = Arc::from(format!("{}-o{n}", ctx.instance));
            let file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(ctx.dir.join(format!("{stream}.spool")))?;
            *slot = Some(OverflowFile {
                ledger_id: ctx.ledger_id,
                file,
                stream,
                lines: 0,
                len: 0,
            });
        }
        let Some(o) = slot.as_mut() else {
            return Err(io::Error::other("overflow file missing"));
        };
        let b = Batch {
            stream: o.stream.clone(),
            seq: o.lines + 1,
            recs: vec![rec],
        };
        let mut line = Vec::with_capacity(256);
        b.encode_line(&mut line);
        // O_APPEND + one write: the reader never sees half of a line
        // mixed with another, only (briefly) a line not finished yet.
        if let Err(e) = (&o.file).write_all(&line) {
            // Keep whole lines: cut the partial one, and never append to
            // this file again (the next spill starts a new one).
            let _ = o.file.set_len(o.len);
            *slot = None;
            return Err(e);
        }
        o.lines += 1;
        o.len += line.len() as u64;
        Ok(())
    })
}

#[cfg(test)]
mod tests;
