//! The whole ledger (queue, writer thread, spool, store) against the
//! memory store and a real redis-server.

use std::path::Path;
use std::time::Duration;

use super::aggregate::Totals;
use super::record::rec;
use super::testredis::{eventually, free_addr, redis_on, tmpdir};
use super::*;

fn opts(backend: Backend, dir: &Path, queue: usize) -> Options {
    Options {
        backend,
        settings: crate::config::LedgerConfig {
            spool_dir: dir.to_path_buf(),
            batch_max: 64,
            flush_interval: Duration::from_millis(20),
            queue,
            timeout: Duration::from_millis(500),
            stream_max: 1_000_000,
        },
    }
}

const DAY: u32 = 20_100;

/// Pushes `n` records per thread from `threads` threads; returns the sums.
fn load(l: &Arc<Ledger>, tag: &str, threads: usize, n: usize) -> Totals {
    let hs: Vec<_> = (0..threads)
        .map(|t| {
            let l = l.clone();
            let tag = tag.to_string();
            std::thread::spawn(move || {
                let mut sum = Totals::default();
                for i in 0..n {
                    let r = rec(&format!("{tag}-{t}-{i}"), "acme", "m", i as u64 % 7, 3, DAY);
                    sum.add_rec(&r);
                    l.push(r);
                }
                sum
            })
        })
        .collect();
    let mut total = Totals::default();
    for h in hs {
        total.add(&h.join().unwrap());
    }
    total
}

fn metric(l: &Ledger, name: &str) -> u64 {
    let mut out = String::new();
    l.render(&mut out);
    out.lines()
        .find_map(|line| line.strip_prefix(&format!("tollgate_ledger_{name} ")))
        .unwrap()
        .parse()
        .unwrap()
}

fn memory_total(l: &Ledger) -> Totals {
    l.memory_totals()
        .day(DAY, Some("acme"))
        .get("acme")
        .and_then(|m| m.get("m").copied())
        .unwrap_or_default()
}

#[test]
fn a_full_queue_spills_to_disk_and_every_record_still_counts_once() {
    let dir = tmpdir("ledger");
    // A tiny queue: most records take the worker spill path.
    let (l, t) = start(opts(Backend::Memory, &dir, 8)).unwrap();
    let want = load(&l, "a", 4, 5000);
    assert!(metric(&l, "overflowed_total") > 0, "the spill path ran");
    assert_eq!(
        metric(&l, "queued_total") + metric(&l, "overflowed_total"),
        20_000
    );
    assert!(
        eventually(Duration::from_secs(20), || memory_total(&l) == want),
        "{:?} != {want:?}",
        memory_total(&l)
    );
    assert_eq!(metric(&l, "lost_total"), 0);
    assert_eq!(metric(&l, "duplicates_total"), 0);
    t.finish();
    assert_eq!(memory_total(&l), want);
}

#[test]
fn an_outage_goes_to_the_spool_and_replays_exactly_when_redis_is_back() {
    let dir = tmpdir("ledger");
    let addr = free_addr();
    let url = format!("redis://{addr}");
    let (l, t) = start(opts(Backend::Redis(url.clone()), &dir, 1024)).unwrap();
    // Nothing listens yet: everything is spooled, nothing blocks.
    let t0 = std::time::Instant::now();
    let want = load(&l, "b", 2, 3000);
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "pushing never waits on the store"
    );
    assert!(eventually(Duration::from_secs(10), || metric(
        &l,
        "spooled_total"
    ) + metric(
        &l,
        "overflowed_total"
    ) == 6000));
    assert!(metric(&l, "store_errors_total") > 0);
    assert!(metric(&l, "spool_bytes") > 0);
    let _r = redis_on(addr);
    let read = || {
        redis::read_day(&url, Duration::from_secs(1), DAY, Some("acme"))
            .ok()
            .and_then(|m| m.get("acme").and_then(|m| m.get("*").copied()))
            .unwrap_or_default()
    };
    assert!(
        eventually(Duration::from_secs(20), || read() == want),
        "{:?} != {want:?}",
        read()
    );
    assert!(eventually(Duration::from_secs(5), || metric(
        &l,
        "spool_bytes"
    ) == 0));
    t.finish();
    assert_eq!(read(), want);
    let mut c = ::redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let len: u64 = ::redis::cmd("XLEN")
        .arg(redis::STREAM_KEY)
        .query(&mut c)
        .unwrap();
    assert_eq!(len, 6000);
}

#[test]
fn the_spool_survives_a_restart_and_a_second_replay_counts_nothing() {
    let dir = tmpdir("ledger");
    let addr = free_addr();
    let url = format!("redis://{addr}");
    // Process A: Redis down the whole time; shutdown drains to the spool.
    let (a, ta) = start(opts(Backend::Redis(url.clone()), &dir, 1024)).unwrap();
    let want = load(&a, "c", 2, 1000);
    ta.finish();
    let spooled: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "spool"))
        .collect();
    assert!(!spooled.is_empty());
    let copy = tmpdir("ledger-copy");
    for p in &spooled {
        std::fs::copy(p, copy.join(p.file_name().unwrap())).unwrap();
    }
    // Process B: Redis is back; B replays A's files on start-up.
    let _r = redis_on(addr);
    let (b, tb) = start(opts(Backend::Redis(url.clone()), &dir, 1024)).unwrap();
    let read = || {
        redis::read_day(&url, Duration::from_secs(1), DAY, Some("acme"))
            .ok()
            .and_then(|m| m.get("acme").and_then(|m| m.get("*").copied()))
            .unwrap_or_default()
    };
    assert!(eventually(Duration::from_secs(20), || read() == want));
    assert!(eventually(Duration::from_secs(5), || metric(
        &b,
        "spool_bytes"
    ) == 0));
    tb.finish();
    // As if B had crashed after Redis applied but before the files went:
    // process C finds the same files again. Nothing counts twice.
    for p in &spooled {
        std::fs::copy(copy.join(p.file_name().unwrap()), p).unwrap();
    }
    let (c, tc) = start(opts(Backend::Redis(url.clone()), &dir, 1024)).unwrap();
    assert!(eventually(Duration::from_secs(20), || metric(
        &c,
        "duplicates_total"
    ) == 2000));
    assert_eq!(metric(&c, "replayed_total"), 0);
    tc.finish();
    assert_eq!(read(), want);
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "lock")
        .collect();
    assert!(left.is_empty(), "spool emptied: {left:?}");
}

#[test]
fn two_live_processes_never_share_a_spool() {
    let dir = tmpdir("ledger");
    let url = format!("redis://{}", free_addr());
    let (_a, ta) = start(opts(Backend::Redis(url.clone()), &dir, 16)).unwrap();
    let err = start(opts(Backend::Redis(url.clone()), &dir, 16))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("in use by another tollgate process"), "{err}");
    // Released when the first one stops.
    ta.finish();
    let (_b, tb) = start(opts(Backend::Redis(url), &dir, 16)).unwrap();
    tb.finish();
}

#[test]
fn a_batch_applied_after_its_timeout_is_not_counted_again_on_replay() {
    let dir = tmpdir("ledger");
    let r = super::testredis::redis();
    let url = r.url();
    let mut o = opts(Backend::Redis(url.clone()), &dir, 1024);
    o.settings.timeout = Duration::from_millis(200);
    let (l, t) = start(o).unwrap();
    let mut want = load(&l, "warm", 1, 10);
    assert!(eventually(Duration::from_secs(10), || l.stats().written == 10));
    // Redis busy for 1.5 s (a script spinning on TIME): the next batch is
    // sent, times out after 200 ms and is spooled, yet Redis still runs
    // it when the spin ends; the reply is what gets lost.
    let busy_url = url.clone();
    let spin = std::thread::spawn(move || {
        let mut c = ::redis::Client::open(busy_url.as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        let _: () = ::redis::cmd("EVAL")
            .arg(
                "local s = redis.call('TIME') \
                 while true do local n = redis.call('TIME') \
                 if (n[1] - s[1]) * 1000000 + (n[2] - s[2]) > 1500000 then return end end",
            )
            .arg(0)
            .query(&mut c)
            .unwrap();
    });
    let client = ::redis::Client::open(url.as_str()).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || client
            .get_connection_with_timeout(Duration::from_millis(50))
            .and_then(|mut c| {
                c.set_read_timeout(Some(Duration::from_millis(50)))?;
                ::redis::cmd("PING").query::<String>(&mut c)
            })
            .is_err()),
        "redis never got busy"
    );
    want.add(&load(&l, "lost-reply", 1, 100));
    spin.join().unwrap();
    let read = || {
        redis::read_day(&url, Duration::from_secs(1), DAY, Some("acme"))
            .ok()
            .and_then(|m| m.get("acme").and_then(|m| m.get("*").copied()))
            .unwrap_or_default()
    };
    assert!(eventually(Duration::from_secs(10), || l
        .stats()
        .spool_bytes
        == 0
        && l.stats().store_errors > 0
        && read() == want));
    let s = l.stats();
    assert!(
        s.duplicates > 0,
        "the replay found the batch applied: {s:?}"
    );
    assert_eq!(s.written + s.replayed + s.duplicates, 110, "{s:?}");
    t.finish();
    assert_eq!(read(), want);
}
