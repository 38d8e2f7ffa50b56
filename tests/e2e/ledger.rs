//! The billing ledger end to end: a real gateway in front of the mock,
//! `[store] kind = "redis"` on a private redis-server, many concurrent
//! clients; the totals in Redis must equal, exactly, the `usage` the
//! clients were sent — also across a Redis crash and a gateway restart
//! while Redis is down.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::harness::*;

/// What the clients were billed, by their own reading of the responses.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Sums {
    requests: u64,
    prompt: u64,
    completion: u64,
}

impl Sums {
    fn add(&mut self, o: Sums) {
        self.requests += o.requests;
        self.prompt += o.prompt;
        self.completion += o.completion;
    }
}

/// The `usage` of one response: the body's, or the final stream chunk's.
fn usage_of(r: &Resp, stream: bool) -> (u64, u64) {
    let u = if stream {
        let text = r.text();
        let mut found = Vec::new();
        for line in text.lines() {
            let Some(data) = line.strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(data).unwrap();
            if v["usage"].is_object() {
                found.push(v["usage"].clone());
            }
        }
        assert_eq!(found.len(), 1, "one usage chunk expected:\n{text}");
        found.remove(0)
    } else {
        r.json()["usage"].clone()
    };
    (
        u["prompt_tokens"].as_u64().unwrap(),
        u["completion_tokens"].as_u64().unwrap(),
    )
}

/// `clients` threads, `per` requests each on one keep-alive connection,
/// every third one streamed; panics on any non-200 or missing usage.
fn load(addr: SocketAddr, clients: usize, per: usize, tag: &str, done: &Arc<AtomicUsize>) -> Sums {
    let hs: Vec<_> = (0..clients)
        .map(|c| {
            let tag = tag.to_string();
            let done = done.clone();
            std::thread::spawn(move || {
                let mut conn = Conn::open(addr);
                let mut sums = Sums::default();
                for i in 0..per {
                    let stream = (c + i) % 3 == 0;
                    let max = 1 + (c * 7 + i * 3) % 17;
                    let extra = if stream {
                        r#","stream":true,"stream_options":{"include_usage":true}"#
                    } else {
                        ""
                    };
                    let body = format!(
                        r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"{tag} client {c} request {i}{}"}}],"max_tokens":{max}{extra}}}"#,
                        " more".repeat(i % 5)
                    );
                    conn.send(&chat(&body));
                    let r = conn.read_response().unwrap_or_else(|e| {
                        panic!("{tag}: client {c} request {i}: {e}")
                    });
                    assert_eq!(r.status, 200, "{tag}: client {c} request {i}: {}", r.text());
                    let (p, k) = usage_of(&r, stream);
                    assert_eq!(k, max as u64);
                    sums.add(Sums {
                        requests: 1,
                        prompt: p,
                        completion: k,
                    });
                    done.fetch_add(1, Ordering::Relaxed);
                }
                sums
            })
        })
        .collect();
    let mut total = Sums::default();
    for h in hs {
        total.add(h.join().unwrap());
    }
    total
}

/// Totals of tenant `-` over every day in Redis, and the audit stream length.
fn redis_totals(url: &str) -> Option<(Sums, u64)> {
    let mut c = redis::Client::open(url).ok()?.get_connection().ok()?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("tollgate:usage:-:*")
        .query(&mut c)
        .ok()?;
    let mut s = Sums::default();
    for k in keys {
        let f: Vec<Option<u64>> = redis::cmd("HMGET")
            .arg(&k)
            .arg("requests")
            .arg("prompt_tokens")
            .arg("completion_tokens")
            .query(&mut c)
            .ok()?;
        s.add(Sums {
            requests: f[0].unwrap_or(0),
            prompt: f[1].unwrap_or(0),
            completion: f[2].unwrap_or(0),
        });
    }
    let len: u64 = redis::cmd("XLEN")
        .arg("tollgate:ledger")
        .query(&mut c)
        .ok()?;
    Some((s, len))
}

/// Bytes in the `.spool` files of `dir`. The gateway deletes a segment
/// once it is replayed, so a file listed may be gone a moment later: it
/// holds nothing then.
fn spooled_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| Some(e.ok()?.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "spool"))
                .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
                .sum()
        })
        .unwrap_or(0)
}

/// A spool directory no earlier run has used: records left in one by a
/// killed run would be replayed into this test's Redis.
fn fresh_spool() -> PathBuf {
    let d = tmpdir().join("spool");
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn wait_exact(url: &str, want: Sums, limit: Duration) {
    let mut last = None;
    let ok = eventually(limit, || {
        last = redis_totals(url);
        last == Some((want, want.requests))
    });
    assert!(ok, "Redis totals {last:?} != client sums {want:?}");
}

fn config(m: &Proc, redis: SocketAddr, admin: u16, spool: &Path) -> String {
    config_with(
        m,
        redis,
        admin,
        spool,
        "flush_interval = \"50ms\"\nbatch_max = 256\n",
    )
}

fn config_with(m: &Proc, redis: SocketAddr, admin: u16, spool: &Path, store: &str) -> String {
    config_for(
        m,
        &format!(
            "admin_listen = \"127.0.0.1:{admin}\"\n\
             [store]\nkind = \"redis\"\nurl = \"redis://{redis}\"\n\
             spool_dir = \"{}\"\ntimeout = \"300ms\"\n{store}\n{ADMIN_AUTH}",
            spool.display()
        ),
        "[[models]]\nname = \"gpt-4o\"\ntargets = [{ upstream = \"mock\" }]\n",
    )
}

#[test]
fn redis_totals_equal_the_usage_clients_received() {
    let r = redis();
    let m = mock(&[]);
    let spool = fresh_spool();
    let admin = free_port();
    let g = gateway(&config(&m, r.addr, admin, &spool), &[]);
    let done = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let want = load(g.addr, 24, 125, "exact", &done);
    assert_eq!(want.requests, 3000);
    let url = format!("redis://{}", r.addr);
    wait_exact(&url, want, Duration::from_secs(15));
    eprintln!("3000 requests billed exactly in {:?}", t0.elapsed());

    // The admin API reads the same totals back.
    let admin: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let u = admin_get(admin, "/admin/usage?tenant=-").json();
    assert_eq!(u["store"], "redis");
    let t = &u["tenants"][0];
    assert_eq!(t["tenant"], "-");
    // (Unless the day turned during the run, all of it is today's.)
    if u["tenants"][0]["totals"]["requests"] == 3000 {
        assert_eq!(t["totals"]["prompt_tokens"], want.prompt);
        assert_eq!(t["totals"]["completion_tokens"], want.completion);
        assert_eq!(t["models"]["gpt-4o"]["completion_tokens"], want.completion);
    }
    assert_eq!(admin_get(admin, "/admin/usage?day=2025-02-30").status, 400);
    // The writer counts a batch once Redis acknowledged it, a moment after
    // the totals are visible there.
    let mut metrics = String::new();
    let counted = eventually(Duration::from_secs(5), || {
        metrics = request(admin, &get("/metrics")).text();
        metrics.contains("tollgate_ledger_written_total 3000")
    });
    assert!(counted, "{metrics}");
    assert!(metrics.contains("tollgate_ledger_lost_total 0"));
    assert!(metrics.contains("tollgate_ledger_queue_depth 0"));
    // Nothing went through the spool.
    assert_eq!(spooled_bytes(&spool), 0);
}

#[test]
fn a_redis_crash_and_a_gateway_restart_lose_and_double_nothing() {
    let m = mock(&[]);
    let data = std::env::temp_dir().join(format!("tollgate-e2e-redis-{}", free_port()));
    std::fs::create_dir_all(&data).unwrap();
    let spool = data.join("spool");
    let raddr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let url = format!("redis://{raddr}");
    let mut r = redis_in(raddr, &data, true);
    let admin = free_port();
    let cfg = config(&m, raddr, admin, &spool);
    let mut g = gateway(&cfg, &[]);
    let done = Arc::new(AtomicUsize::new(0));
    let mut want = Sums::default();

    // 1. Load; Redis is SIGKILLed in the middle of it.
    let addr = g.addr;
    let d = done.clone();
    let first = std::thread::spawn(move || load(addr, 16, 100, "one", &d));
    assert!(eventually(Duration::from_secs(30), || done
        .load(Ordering::Relaxed)
        >= 500));
    r.child.kill().unwrap();
    r.child.wait().unwrap();
    want.add(first.join().unwrap());
    // 2. More load with Redis down.
    want.add(load(g.addr, 16, 50, "two", &done));
    let admin_addr: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let metrics = request(admin_addr, &get("/metrics")).text();
    assert!(
        !metrics.contains("tollgate_ledger_store_errors_total 0\n"),
        "{metrics}"
    );

    // 3. Gateway restart while Redis is still down: SIGTERM drains the
    //    queue into the spool; the new process finds it.
    g.terminate();
    let st = g
        .wait_exit(Duration::from_secs(20))
        .expect("gateway did not stop");
    assert!(st.success(), "{st}:\n{}", g.stderr());
    assert!(
        std::fs::read_dir(&spool).unwrap().count() > 0,
        "spool kept on disk"
    );
    let g2 = gateway(&cfg, &[]);
    want.add(load(g2.addr, 16, 50, "three", &done));

    // 4. Redis back (same port, same data); load continues meanwhile.
    let _r2 = redis_in(raddr, &data, true);
    want.add(load(g2.addr, 16, 50, "four", &done));
    assert_eq!(want.requests, 16 * 250);

    wait_exact(&url, want, Duration::from_secs(30));
    assert!(
        eventually(Duration::from_secs(10), || spooled_bytes(&spool) == 0),
        "spool emptied after the replay"
    );
    let metrics = request(admin_addr, &get("/metrics")).text();
    assert!(
        metrics.contains("tollgate_ledger_lost_total 0"),
        "{metrics}"
    );
    let replayed = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tollgate_ledger_replayed_total "))
        .unwrap();
    assert_ne!(replayed, "0", "g2 replayed the spool");
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn the_memory_store_answers_admin_usage_on_one_node() {
    let m = mock(&[]);
    let admin = free_port();
    let cfg = config_for(
        &m,
        &format!(
            "admin_listen = \"127.0.0.1:{admin}\"\n[store]\nflush_interval = \"10ms\"\n{ADMIN_AUTH}"
        ),
        "[[models]]\nname = \"gpt-4o\"\ntargets = [{ upstream = \"mock\", model = \"gpt-4o-2024-08-06\" }]\n",
    );
    let g = gateway(&cfg, &[]);
    let want = load(g.addr, 4, 25, "mem", &Arc::new(AtomicUsize::new(0)));
    let admin: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let mut last = serde_json::Value::Null;
    let ok = eventually(Duration::from_secs(10), || {
        last = admin_get(admin, "/admin/usage").json();
        last["tenants"][0]["totals"]["requests"] == want.requests
    });
    assert!(
        ok || last["day"] != admin_get(admin, "/admin/usage").json()["day"],
        "{last}"
    );
    if ok {
        assert_eq!(last["store"], "memory");
        let t = &last["tenants"][0];
        assert_eq!(t["tenant"], "-");
        assert_eq!(t["totals"]["prompt_tokens"], want.prompt);
        assert_eq!(t["totals"]["completion_tokens"], want.completion);
        // Counted per served model.
        assert_eq!(
            t["models"]["gpt-4o-2024-08-06"]["completion_tokens"],
            want.completion
        );
    }
    let other = admin_get(admin, "/admin/usage?tenant=nobody").json();
    assert_eq!(other["tenants"], serde_json::json!([]));
    let r = admin_get(admin, "/admin/usage?bogus=1");
    assert_eq!(r.status, 400);
    assert!(r.text().contains("unknown parameter"), "{}", r.text());
}

#[test]
fn ledger_config_errors_name_the_key() {
    let (code, err, _) = check_config(
        "[store]\nbatch_max = 0\nflush_interval = \"soon\"\nledger_queue = 0\nledger_stream_max = 0\ntimeout = \"0s\"\n",
    );
    assert_ne!(code, 0);
    for key in [
        "store.batch_max: must be greater than zero",
        "store.flush_interval:",
        "store.ledger_queue: must be greater than zero",
        "store.ledger_stream_max: must be greater than zero",
        "store.timeout: must be greater than zero",
    ] {
        assert!(err.contains(key), "missing `{key}` in:\n{err}");
    }
    let file = std::env::temp_dir().join(format!("tollgate-e2e-notadir-{}", free_port()));
    std::fs::write(&file, "x").unwrap();
    let (code, err, _) = check_config(&format!("[store]\nspool_dir = \"{}\"\n", file.display()));
    assert_ne!(code, 0);
    assert!(
        err.contains("store.spool_dir: ") && err.contains("is not a directory"),
        "{err}"
    );
    let _ = std::fs::remove_file(file);
}

#[test]
fn sigterm_drains_the_queue_to_redis() {
    let r = redis();
    let m = mock(&[]);
    let spool = fresh_spool();
    // A batch would only close after 30 s: everything is still in the
    // ledger when SIGTERM comes.
    let cfg = config_with(
        &m,
        r.addr,
        free_port(),
        &spool,
        "flush_interval = \"30s\"\nbatch_max = 65536\n",
    );
    let mut g = gateway(&cfg, &[]);
    let want = load(g.addr, 4, 50, "drain", &Arc::new(AtomicUsize::new(0)));
    let url = format!("redis://{}", r.addr);
    assert_eq!(
        redis_totals(&url),
        Some((Sums::default(), 0)),
        "nothing written yet"
    );
    let t0 = Instant::now();
    g.terminate();
    let st = g
        .wait_exit(Duration::from_secs(20))
        .expect("gateway did not stop");
    assert!(st.success(), "{st}:\n{}", g.stderr());
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        t0.elapsed()
    );
    // Written before the process exited: no waiting here.
    assert_eq!(redis_totals(&url), Some((want, want.requests)));
    assert_eq!(spooled_bytes(&spool), 0);
}

#[test]
fn a_full_queue_spills_to_disk_and_still_bills_exactly() {
    let r = redis();
    let m = mock(&[]);
    let spool = fresh_spool();
    let admin = free_port();
    let cfg = config_with(
        &m,
        r.addr,
        admin,
        &spool,
        "ledger_queue = 1\nflush_interval = \"20ms\"\n",
    );
    let g = gateway(&cfg, &[]);
    let want = load(g.addr, 12, 100, "spill", &Arc::new(AtomicUsize::new(0)));
    wait_exact(
        &format!("redis://{}", r.addr),
        want,
        Duration::from_secs(20),
    );
    let admin: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let metrics = request(admin, &get("/metrics")).text();
    let get_metric = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("tollgate_ledger_{name} ")))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(get_metric("overflowed_total") > 0, "{metrics}");
    assert_eq!(
        get_metric("queued_total") + get_metric("overflowed_total"),
        1200
    );
    assert_eq!(get_metric("lost_total"), 0);
}

#[test]
fn two_nodes_sharing_one_redis_add_up_exactly() {
    let r = redis();
    let m = mock(&[]);
    let node = || {
        let spool = fresh_spool();
        gateway(&config(&m, r.addr, free_port(), &spool), &[])
    };
    let (a, b) = (node(), node());
    let (aa, ba) = (a.addr, b.addr);
    let done = Arc::new(AtomicUsize::new(0));
    let d = done.clone();
    let on_a = std::thread::spawn(move || load(aa, 8, 100, "node-a", &d));
    let mut want = load(ba, 8, 100, "node-b", &done);
    want.add(on_a.join().unwrap());
    assert_eq!(want.requests, 1600);
    wait_exact(
        &format!("redis://{}", r.addr),
        want,
        Duration::from_secs(15),
    );
    // One high-water mark per node: their batch numbers never collide.
    let mut c = redis::Client::open(format!("redis://{}", r.addr))
        .unwrap()
        .get_connection()
        .unwrap();
    let marks: Vec<String> = redis::cmd("KEYS")
        .arg("tollgate:ledger:applied:*")
        .query(&mut c)
        .unwrap();
    assert_eq!(marks.len(), 2, "{marks:?}");
}
