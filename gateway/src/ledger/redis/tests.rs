use std::sync::Arc;

use super::*;
use crate::ledger::record::{NO_TENANT, rec};
use crate::ledger::testredis::redis;

fn batch(stream: &str, seq: u64, recs: Vec<crate::ledger::record::Rec>) -> Batch {
    Batch {
        stream: Arc::from(stream),
        seq,
        recs,
    }
}

#[test]
fn a_batch_applied_twice_counts_once() {
    let r = redis();
    let mut s = RedisStore::new(&r.url(), Duration::from_secs(2), 1000).unwrap();
    let day = 20_000;
    let b1 = batch(
        "n1-m",
        1,
        vec![
            rec("r1", "acme", "gpt-4o", 10, 5, day),
            rec("r2", "acme", "gpt-4o", 20, 7, day),
            rec("r3", "acme", "llama:8b", 1, 1, day),
            rec("r4", NO_TENANT, "gpt-4o", 3, 0, day),
        ],
    );
    let b2 = batch("n1-m", 2, vec![rec("r5", "acme", "gpt-4o", 100, 50, day)]);
    // Same batch twice in one pipeline, then again alone (a resend after a
    // lost reply), then the next one.
    assert_eq!(s.apply(&[&b1, &b1]).unwrap(), vec![true, false]);
    assert_eq!(s.apply(&[&b1, &b2]).unwrap(), vec![false, true]);
    // A new connection (the store restarted its connection) changes nothing.
    let mut s2 = RedisStore::new(&r.url(), Duration::from_secs(2), 1000).unwrap();
    assert_eq!(s2.apply(&[&b2, &b1]).unwrap(), vec![false, false]);
    // Another stream is independent.
    let other = batch("n2-m", 1, vec![rec("r6", "acme", "gpt-4o", 1, 1, day)]);
    assert_eq!(s.apply(&[&other]).unwrap(), vec![true]);

    let got = read_day(&r.url(), Duration::from_secs(2), day, None).unwrap();
    let acme = &got["acme"];
    assert_eq!(
        acme["*"],
        Totals {
            requests: 5,
            prompt_tokens: 10 + 20 + 1 + 100 + 1,
            completion_tokens: 5 + 7 + 1 + 50 + 1,
            cost_micros: (10 + 10) + (20 + 14) + (1 + 2) + (100 + 100) + (1 + 2),
        }
    );
    assert_eq!(acme["gpt-4o"].requests, 4);
    assert_eq!(acme["gpt-4o"].prompt_tokens, 131);
    // A model name with a colon survives the field encoding.
    assert_eq!(acme["llama:8b"].completion_tokens, 1);
    assert_eq!(got[NO_TENANT]["*"].prompt_tokens, 3);
    let only = read_day(&r.url(), Duration::from_secs(2), day, Some("acme")).unwrap();
    assert_eq!(only.keys().collect::<Vec<_>>(), vec!["acme"]);
    assert!(
        read_day(&r.url(), Duration::from_secs(2), day + 1, None)
            .unwrap()
            .is_empty()
    );

    // One audit entry per applied record, with its fields.
    let client = redis::Client::open(r.url()).unwrap();
    let mut c = client.get_connection().unwrap();
    let len: u64 = redis::cmd("XLEN").arg(STREAM_KEY).query(&mut c).unwrap();
    assert_eq!(len, 6);
    let first: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(STREAM_KEY)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query(&mut c)
        .unwrap();
    assert_eq!(first[0].1[0].0, "usage");
    let f: serde_json::Value = serde_json::from_str(&first[0].1[0].1).unwrap();
    assert_eq!(f["rid"], "r1");
    assert_eq!(f["key"], "k1");
    assert_eq!(f["tenant"], "acme");
    assert_eq!(f["model"], "gpt-4o");
    assert_eq!(f["prompt"], 10);
    assert_eq!(f["completion"], 5);
    assert_eq!(f["cost_micros"], 20);
    assert_eq!(f["status"], 200);
    assert_eq!(f["est"], "completion");
    assert_eq!(f["stream"], true);
    // The mark expires (bounded memory), but not soon.
    let ttl: i64 = redis::cmd("TTL")
        .arg("tollgate:ledger:applied:n1-m")
        .query(&mut c)
        .unwrap();
    assert!(ttl > (DEDUPE_TTL_S - 60) as i64, "{ttl}");
}

#[test]
fn an_unreachable_store_is_an_error_not_a_hang() {
    let addr = crate::ledger::testredis::free_addr();
    let mut s =
        RedisStore::new(&format!("redis://{addr}"), Duration::from_millis(300), 10).unwrap();
    let b = batch("x-m", 1, vec![rec("r1", "a", "m", 1, 1, 1)]);
    let t0 = std::time::Instant::now();
    assert!(s.apply(&[&b]).is_err());
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert!(
        read_day(
            &format!("redis://{addr}"),
            Duration::from_millis(300),
            1,
            None
        )
        .is_err()
    );
}
