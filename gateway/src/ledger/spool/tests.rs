use std::io::Write as _;
use std::sync::Arc;

use super::*;
use crate::ledger::record::rec;
use crate::ledger::testredis::tmpdir;

fn batch(stream: &str, seq: u64, n: usize) -> Batch {
    Batch {
        stream: Arc::from(stream),
        seq,
        recs: (0..n)
            .map(|i| rec(&format!("{seq}-{i}"), "t", "m", i as u64, 1, 3))
            .collect(),
    }
}

#[test]
fn appended_batches_replay_in_order_and_the_file_is_truncated_after_acks() {
    let dir = tmpdir("spool");
    let mut s = Spool::new(dir.join("sub"), Arc::from("aaaa"));
    assert_eq!(s.read_main(10, 1000).unwrap().0.len(), 0);
    for q in 1..=5 {
        s.append_main(&batch("aaaa-m", q, 3)).unwrap();
    }
    let (items, all) = s.read_main(3, 1000).unwrap();
    assert!(!all);
    assert_eq!(
        items.iter().map(|p| p.batch.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(items[0].batch, batch("aaaa-m", 1, 3));
    // Not acknowledged: read again from the same place.
    let (again, _) = s.read_main(10, 1000).unwrap();
    assert_eq!(again.len(), 5);
    for p in &again[..2] {
        s.ack(p);
    }
    s.compact();
    let (rest, all) = s.read_main(10, 1000).unwrap();
    assert!(all);
    assert_eq!(
        rest.iter().map(|p| p.batch.seq).collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    for p in &rest {
        s.ack(p);
    }
    s.compact();
    assert!(s.main_is_empty());
    assert_eq!(s.pending_bytes(), 0);
    let path = dir.join("sub/aaaa-m.spool");
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        0,
        "truncated once acked"
    );
    // The record cap stops a read early (whole batches only).
    for q in 6..=8 {
        s.append_main(&batch("aaaa-m", q, 3)).unwrap();
    }
    assert_eq!(s.read_main(10, 4).unwrap().0.len(), 2);
}

#[test]
fn files_of_an_earlier_process_replay_and_a_torn_last_line_is_skipped() {
    let dir = tmpdir("spool");
    let mut old = Spool::new(dir.clone(), Arc::from("old1"));
    for q in 1..=3 {
        old.append_main(&batch("old1-m", q, 2)).unwrap();
    }
    drop(old);
    // A crash in the middle of the next append: half a line, no newline.
    let path = dir.join("old1-m.spool");
    let mut line = Vec::new();
    batch("old1-m", 4, 2).encode_line(&mut line);
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&line[..line.len() / 2]).unwrap();
    drop(f);
    // Junk that is not a spool file is left alone.
    std::fs::write(dir.join("notes.txt"), "x").unwrap();

    let mut s = Spool::new(dir.clone(), Arc::from("new2"));
    // Without `foreign` (memory store) the old file is not taken.
    assert_eq!(s.scan(false).unwrap(), 0);
    assert_eq!(s.scan(true).unwrap(), 1);
    assert_eq!(s.scan(true).unwrap(), 0, "registered once");
    let items = s.read_others(10, 1000).unwrap();
    assert_eq!(
        items.iter().map(|p| p.batch.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    for p in &items {
        s.ack(p);
    }
    // The torn tail is skipped (counted) on the next read.
    assert!(s.read_others(10, 1000).unwrap().is_empty());
    assert_eq!(s.skipped, 1);
    s.compact();
    assert!(!path.exists(), "deleted once replayed");
    assert!(dir.join("notes.txt").exists());
}

#[test]
fn a_corrupt_line_is_skipped_and_the_rest_replays() {
    let dir = tmpdir("spool");
    let mut a = Vec::new();
    batch("dead-m", 1, 1).encode_line(&mut a);
    a.extend_from_slice(b"{\"s\":garbage\n");
    batch("dead-m", 2, 1).encode_line(&mut a);
    std::fs::write(dir.join("dead-m.spool"), &a).unwrap();
    let mut s = Spool::new(dir.clone(), Arc::from("live"));
    s.scan(true).unwrap();
    let first = s.read_others(10, 1000).unwrap();
    assert_eq!(first.len(), 1, "stops before the bad line");
    s.ack(&first[0]);
    let second = s.read_others(10, 1000).unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].batch.seq, 2);
    assert_eq!(s.skipped, 1);
    s.ack(&second[0]);
    s.compact();
    assert!(!dir.join("dead-m.spool").exists());
}

#[test]
fn worker_spills_rotate_and_are_deleted_only_when_full_and_replayed() {
    let dir = tmpdir("spool");
    let ctx = SpillCtx {
        dir: dir.clone(),
        instance: Arc::from("me"),
        ledger_id: 9_999,
        next_file: AtomicU64::new(0),
    };
    let n = OVERFLOW_LINES + 3;
    for i in 0..n {
        spill(&ctx, rec(&format!("r{i}"), "t", "m", 1, 2, 3)).unwrap();
    }
    let mut s = Spool::new(dir.clone(), Arc::from("me"));
    assert_eq!(s.scan(false).unwrap(), 2);
    let mut seen = 0;
    loop {
        let items = s.read_others(64, 100_000).unwrap();
        if items.is_empty() {
            break;
        }
        for p in &items {
            assert_eq!(p.batch.recs.len(), 1);
            s.ack(p);
        }
        seen += items.len() as u64;
        s.compact();
    }
    assert_eq!(seen, n);
    // The full file is gone, the one still in use stays.
    assert!(!dir.join("me-o0.spool").exists());
    assert!(dir.join("me-o1.spool").exists());
    spill(&ctx, rec("late", "t", "m", 1, 2, 3)).unwrap();
    let items = s.read_others(64, 100_000).unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].batch.seq, 4);
    assert_eq!(&*items[0].batch.recs[0].request_id, "late");
}
