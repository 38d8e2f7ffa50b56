//! Failover end to end: real mock processes with fault flags behind a real
//! gateway.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::harness::*;

fn upstream(name: &str, addr: &str) -> String {
    format!("[[upstreams]]\nname = \"{name}\"\nbase_url = \"http://{addr}/v1\"\n")
}

#[test]
fn a_failing_primary_is_routed_around_with_zero_client_errors_then_recovers() {
    let primary = mock(&["--status", "503"]);
    let backup = mock(&[]);
    let cfg = format!(
        "[server]\nlisten = \"{{listen}}\"\nworkers = 2\n[log]\naccess = false\n{}{}\
         [[models]]\nname = \"gpt-4\"\ntargets = [{{ upstream = \"primary\" }}]\n\
         breaker = {{ max_failures = 3, break_duration = \"700ms\" }}\n\
         fallbacks = [{{ model = \"backup\", when = \"status >= 500\" }}]\n\
         [[models]]\nname = \"backup\"\ntargets = [{{ upstream = \"backup\" }}]\n",
        upstream("primary", &primary.addr.to_string()),
        upstream("backup", &backup.addr.to_string()),
    );
    let g = gateway(&cfg, &[]);
    let (_, _, before) = mock_stats(&primary);
    let mut conns: Vec<Conn> = (0..4).map(|_| Conn::open(g.addr)).collect();
    let mut served = HashMap::<String, u32>::new();
    let t0 = Instant::now();
    for i in 0..1000 {
        let stream = i % 3 == 0;
        let c = &mut conns[i % 4];
        c.send(&chat(&format!(
            r#"{{"model":"gpt-4","max_tokens":2,"stream":{stream}}}"#
        )));
        let r = c.read_response().unwrap();
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        *served
            .entry(r.header("x-tollgate-upstream").unwrap().to_string())
            .or_default() += 1;
    }
    let elapsed = t0.elapsed();
    assert_eq!(served.get("backup"), Some(&1000));
    // The breaker opened after 3 failures; while open the primary saw
    // nothing but the half-open probes of each elapsed break.
    let (_, _, after) = mock_stats(&primary);
    let hits = after - before - 1; // minus the stats call itself
    let breaks = (elapsed.as_millis() / 700) as u64;
    assert!(
        hits >= 3 && hits <= 3 + breaks + 2,
        "primary got {hits} requests in {elapsed:?}"
    );

    // The primary heals (restarted on the same address without faults):
    // after the break a probe succeeds and traffic returns to it.
    let addr = primary.addr;
    drop(primary);
    let _healed = mock_on(addr, &[]);
    let back = eventually(Duration::from_secs(5), || {
        let r = request(g.addr, &chat(r#"{"model":"gpt-4","max_tokens":1}"#));
        assert_eq!(r.status, 200);
        r.header("x-tollgate-upstream") == Some("primary")
    });
    assert!(back, "traffic never returned to the healed primary");
    for _ in 0..20 {
        let r = request(g.addr, &chat(r#"{"model":"gpt-4","max_tokens":1}"#));
        assert_eq!(r.header("x-tollgate-upstream"), Some("primary"));
    }
}

#[test]
fn the_articles_fallback_chain() {
    let p5xx = mock(&["--status", "503"]);
    let p429 = mock(&["--status", "429"]);
    let p401 = mock(&["--status", "401"]);
    let p400 = mock(&["--status", "400"]);
    let slow = mock(&["--delay-ms", "3000"]);
    let claude = mock(&[]);
    let gpt35 = mock(&[]);
    let chain = "fallbacks = [\n  { model = \"claude-3\", when = \"status >= 500 or latency > 300ms\" },\n  { model = \"gpt-3.5-turbo\", when = \"status == 429\" },\n]\nbreaker = { max_failures = 5, break_duration = \"60s\" }\n";
    let mut cfg = "[server]\nlisten = \"{listen}\"\n[log]\naccess = false\n".to_string();
    for (name, m) in [
        ("p5xx", &p5xx),
        ("p429", &p429),
        ("p401", &p401),
        ("p400", &p400),
        ("slow", &slow),
        ("claude", &claude),
        ("gpt35", &gpt35),
    ] {
        cfg.push_str(&upstream(name, &m.addr.to_string()));
    }
    for (model, up) in [
        ("gpt-4-5xx", "p5xx"),
        ("gpt-4-429", "p429"),
        ("gpt-4-401", "p401"),
        ("gpt-4-400", "p400"),
        ("gpt-4-slow", "slow"),
    ] {
        cfg.push_str(&format!(
            "[[models]]\nname = \"{model}\"\ntargets = [{{ upstream = \"{up}\", model = \"gpt-4\" }}]\n{chain}"
        ));
    }
    cfg.push_str("[[models]]\nname = \"claude-3\"\ntargets = [{ upstream = \"claude\" }]\n");
    cfg.push_str("[[models]]\nname = \"gpt-3.5-turbo\"\ntargets = [{ upstream = \"gpt35\" }]\n");
    let g = gateway(&cfg, &[]);
    let ask = |model: &str| {
        request(
            g.addr,
            &chat(&format!(r#"{{"model":"{model}","max_tokens":1}}"#)),
        )
    };
    let claude0 = mock_stats(&claude).2;

    let r = ask("gpt-4-5xx");
    assert_eq!(
        (r.status, r.header("x-tollgate-upstream")),
        (200, Some("claude"))
    );
    assert_eq!(r.header("x-tollgate-model"), Some("claude-3"));
    assert_eq!(r.header("x-tollgate-attempts"), Some("2"));
    let r = ask("gpt-4-429");
    assert_eq!(
        (r.status, r.header("x-tollgate-upstream")),
        (200, Some("gpt35"))
    );
    let t0 = Instant::now();
    let r = ask("gpt-4-slow");
    assert_eq!(
        (r.status, r.header("x-tollgate-upstream")),
        (200, Some("claude"))
    );
    assert!(
        t0.elapsed() < Duration::from_millis(2500),
        "waited {:?}",
        t0.elapsed()
    );

    // 401: no failover, no breaker change, a clear 502.
    let (_, _, before) = mock_stats(&p401);
    for _ in 0..8 {
        let r = ask("gpt-4-401");
        assert_eq!(r.status, 502);
        assert_eq!(r.error_code(), "upstream_auth_failed");
    }
    let (_, _, after) = mock_stats(&p401);
    assert_eq!(after - before - 1, 8, "the breaker must not open on 401s");
    let claude1 = mock_stats(&claude).2;
    assert_eq!(
        claude1 - claude0 - 1,
        2,
        "claude served only the 5xx and slow cases:\n{}",
        g.stderr()
    );

    // 400: the client's own mistake is passed through.
    let r = ask("gpt-4-400");
    assert_eq!(r.status, 400);
    assert_eq!(r.header("x-tollgate-upstream"), Some("p400"));
}

#[test]
fn refused_connections_fail_over_without_client_errors() {
    let dead = free_port();
    let backup = mock(&[]);
    let cfg = format!(
        "[server]\nlisten = \"{{listen}}\"\n[log]\naccess = false\n{}{}\
         [[models]]\nname = \"m\"\ntargets = [{{ upstream = \"dead\" }}, {{ upstream = \"backup\" }}]\n",
        upstream("dead", &format!("127.0.0.1:{dead}")),
        upstream("backup", &backup.addr.to_string()),
    );
    let g = gateway(&cfg, &[]);
    let mut worst = Duration::ZERO;
    for i in 0..200 {
        let t0 = Instant::now();
        let r = request(
            g.addr,
            &chat(&format!(
                r#"{{"model":"m","max_tokens":1,"stream":{}}}"#,
                i % 2 == 0
            )),
        );
        worst = worst.max(t0.elapsed());
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-tollgate-upstream"), Some("backup"));
    }
    // A refused connect costs one loopback round trip, not a timeout.
    assert!(worst < Duration::from_secs(1), "slowest request {worst:?}");
}

#[test]
fn breakers_are_listed_forced_and_exported_on_the_admin_listener() {
    let a = mock(&[]);
    let b = mock(&["--status", "500"]);
    let admin = free_port();
    let cfg = format!(
        "[server]\nlisten = \"{{listen}}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n[log]\naccess = false\n{}{}\
         [[models]]\nname = \"m\"\ntargets = [{{ upstream = \"a\" }}, {{ upstream = \"b\" }}]\n\
         breaker = {{ max_failures = 2, break_duration = \"60s\" }}\n",
        upstream("a", &a.addr.to_string()),
        upstream("b", &b.addr.to_string()),
    );
    let g = gateway(&cfg, &[]);
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    // b fails twice (each time the request goes on to a): its breaker opens.
    for _ in 0..10 {
        let r = request(g.addr, &chat(r#"{"model":"m","max_tokens":1}"#));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-tollgate-upstream"), Some("a"));
    }
    let list = request(admin, &get("/breakers")).json();
    let state = |list: &serde_json::Value, up: &str| {
        list["breakers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["upstream"] == up)
            .unwrap()["state"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(state(&list, "b"), "open");
    assert_eq!(state(&list, "a"), "closed");
    let metrics = request(admin, &get("/metrics")).text();
    assert!(
        metrics.contains("tollgate_breaker_state{model=\"m\",upstream=\"b\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "tollgate_upstream_failures_total{model=\"m\",upstream=\"b\",class=\"status_5xx\"} 2"
        ),
        "{metrics}"
    );

    // Force a open: with both open and no fallback, requests get a clear 503.
    let r = request(admin, &post("/breakers/m/a/open", "", ""));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(state(&r.json(), "a"), "open");
    let r = request(g.addr, &chat(r#"{"model":"m","max_tokens":1}"#));
    assert_eq!(r.status, 503);
    assert_eq!(r.error_code(), "no_healthy_target");
    // Close both by hand: a serves again (b answers 500, fails over to a).
    for up in ["a", "b"] {
        let r = request(admin, &post(&format!("/breakers/m/{up}/close"), "", ""));
        assert_eq!(r.status, 200);
    }
    let r = request(g.addr, &chat(r#"{"model":"m","max_tokens":1}"#));
    assert_eq!(r.status, 200);
    assert_eq!(
        request(admin, &post("/breakers/m/zzz/open", "", "")).status,
        404
    );
}

#[test]
fn a_breaker_opened_on_one_node_is_honoured_by_the_other() {
    let redis = redis();
    let primary = mock(&["--status", "503"]);
    let backup = mock(&[]);
    let node = |admin: u16| {
        format!(
            "[server]\nlisten = \"{{listen}}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n[log]\naccess = false\n\
             [store]\nkind = \"redis\"\nurl = \"redis://{}\"\n{}{}\
             [[models]]\nname = \"gpt-4\"\ntargets = [{{ upstream = \"primary\" }}]\n\
             breaker = {{ max_failures = 2, break_duration = \"30s\" }}\n\
             fallbacks = [{{ model = \"backup\" }}]\n\
             [[models]]\nname = \"backup\"\ntargets = [{{ upstream = \"backup\" }}]\n",
            redis.addr,
            upstream("primary", &primary.addr.to_string()),
            upstream("backup", &backup.addr.to_string()),
        )
    };
    let (admin_a, admin_b) = (free_port(), free_port());
    let a = gateway(&node(admin_a), &[]);
    let b = gateway(&node(admin_b), &[]);
    let b_admin: std::net::SocketAddr = format!("127.0.0.1:{admin_b}").parse().unwrap();
    let primary_state = |admin: std::net::SocketAddr| {
        request(admin, &get("/breakers")).json()["breakers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["upstream"] == "primary")
            .unwrap()["state"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(primary_state(b_admin), "closed");
    // Two failures on node A open its breaker...
    for _ in 0..2 {
        let r = request(a.addr, &chat(r#"{"model":"gpt-4","max_tokens":1}"#));
        assert_eq!(r.header("x-tollgate-upstream"), Some("backup"));
    }
    // ...and node B, which never saw a failure, adopts it within a second.
    let t0 = Instant::now();
    assert!(
        eventually(Duration::from_secs(2), || primary_state(b_admin) == "open"),
        "node B did not adopt the open breaker"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t0.elapsed()
    );
    let (_, _, before) = mock_stats(&primary);
    let r = request(b.addr, &chat(r#"{"model":"gpt-4","max_tokens":1}"#));
    assert_eq!(
        (r.status, r.header("x-tollgate-upstream")),
        (200, Some("backup"))
    );
    assert_eq!(
        r.header("x-tollgate-attempts"),
        Some("1"),
        "B skipped the primary"
    );
    let (_, _, after) = mock_stats(&primary);
    assert_eq!(
        after - before,
        1,
        "only the stats call itself reached the primary"
    );
    // Redis gone: both nodes keep serving on their own state.
    drop(redis);
    for g in [&a, &b] {
        let r = request(g.addr, &chat(r#"{"model":"gpt-4","max_tokens":1}"#));
        assert_eq!(r.status, 200);
    }
}

#[test]
fn resets_before_the_first_byte_fail_over_and_the_deadline_bounds_all_attempts() {
    let resets = mock(&["--reset-after", "0"]);
    let slow = mock(&["--delay-ms", "5000"]);
    let backup = mock(&[]);
    let cfg = format!(
        "[server]\nlisten = \"{{listen}}\"\n[log]\naccess = false\n{}{}{}\
         [[models]]\nname = \"m\"\ntargets = [{{ upstream = \"resets\" }}, {{ upstream = \"backup\" }}]\n\
         [[models]]\nname = \"slow\"\ntargets = [{{ upstream = \"slow\" }}, {{ upstream = \"slow\", model = \"again\" }}]\n\
         deadline = \"600ms\"\nmax_attempts = 5\n",
        upstream("resets", &resets.addr.to_string()),
        upstream("slow", &slow.addr.to_string()),
        upstream("backup", &backup.addr.to_string()),
    );
    let g = gateway(&cfg, &[]);
    for i in 0..50 {
        let r = request(
            g.addr,
            &chat(&format!(
                r#"{{"model":"m","max_tokens":1,"stream":{}}}"#,
                i % 2 == 0
            )),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-tollgate-upstream"), Some("backup"));
    }
    let t0 = Instant::now();
    let r = request(g.addr, &chat(r#"{"model":"slow","max_tokens":1}"#));
    let took = t0.elapsed();
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.error_code(), "upstream_timeout");
    assert!(
        took >= Duration::from_millis(550) && took < Duration::from_millis(2000),
        "took {took:?}"
    );
}

/// gpt-4 on `primary` (a bounded response wait), falling back to `backup`.
fn primary_with_fallback(primary: &str, backup: &str, ebpf: &str, admin: u16) -> String {
    format!(
        "[server]\nlisten = \"{{listen}}\"\nadmin_listen = \"127.0.0.1:{admin}\"\nworkers = 1\n[log]\naccess = false\n\
         [ebpf]\nenabled = \"{ebpf}\"\n{}response_timeout = \"3s\"\n{}\
         [[models]]\nname = \"gpt-4\"\ntargets = [{{ upstream = \"primary\" }}]\n\
         fallbacks = [{{ model = \"backup\" }}]\n\
         [[models]]\nname = \"backup\"\ntargets = [{{ upstream = \"backup\" }}]\n",
        upstream("primary", primary),
        upstream("backup", backup),
    )
}

#[test]
fn a_primary_that_dies_fails_over_at_its_first_dead_connection() {
    // Without eBPF the request finds the pooled connection dead; with it,
    // the kernel has told the pool before the request is written. The
    // primary on epoll as well: its sockets close at exit, not when the
    // kernel has torn an io_uring ring down.
    for (ebpf, driver) in [("off", "auto"), ("on", "auto"), ("off", "legacy")] {
        primary_dies(ebpf, driver);
    }
}

fn primary_dies(ebpf: &str, driver: &str) {
    let primary = mock(&["--driver", driver]);
    let backup = mock(&[]);
    let addr = primary.addr;
    let port = free_port();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let g = gateway(
        &primary_with_fallback(&addr.to_string(), &backup.addr.to_string(), ebpf, port),
        &[],
    );
    let mut c = Conn::open(g.addr);
    for _ in 0..3 {
        c.send(&chat(r#"{"model":"gpt-4","max_tokens":1}"#));
        let r = c.read_response().unwrap();
        assert_eq!(r.header("x-tollgate-upstream"), Some("primary"));
    }
    // The primary dies; its address now belongs to a process that is
    // still exiting: the kernel accepts connections on its listener, but
    // nothing will ever answer them.
    drop(primary);
    // (Its own listener may outlive it by a few ms: the kernel tears an
    // io_uring process down in the background.)
    let mut exiting = None;
    let bound = eventually(Duration::from_secs(5), || {
        exiting = std::net::TcpListener::bind(addr).ok();
        exiting.is_some()
    });
    assert!(bound, "the dead primary's address stayed in use");
    let exiting = exiting.unwrap();
    if ebpf == "on" {
        // The kernel's word on the pooled connection reaches the pool.
        let closed = || {
            sample(
                admin,
                "tollgate_upstream_pool_idle_closed_total{how=\"fin\"}",
            ) + sample(
                admin,
                "tollgate_upstream_pool_idle_closed_total{how=\"rst\"}",
            )
        };
        assert!(
            eventually(Duration::from_secs(3), || closed() >= 1.0),
            "the pooled connection's close never reached the pool"
        );
    }
    c.send(&chat(r#"{"model":"gpt-4","max_tokens":1}"#));
    let r = c.read_response().unwrap();
    assert_eq!(
        r.status,
        200,
        "eBPF {ebpf}, primary on {driver}: {}",
        r.text()
    );
    assert_eq!(
        r.header("x-tollgate-upstream"),
        Some("backup"),
        "eBPF {ebpf}, primary on {driver}"
    );
    assert_eq!(
        r.header("x-tollgate-attempts"),
        Some("2"),
        "eBPF {ebpf}, primary on {driver}"
    );
    // The pooled connection that died moments after its last answer was
    // enough: no new connection was opened to the dead primary.
    if ebpf == "on" {
        // Evicted before the request was written to it.
        assert_eq!(sample(admin, "tollgate_upstream_pool_evictions_total"), 1.0);
    }
    exiting.set_nonblocking(true).unwrap();
    let accepted = exiting.accept();
    assert!(
        matches!(&accepted, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "eBPF {ebpf}, primary on {driver}: the gateway connected to the dead primary again: {accepted:?}"
    );
}

#[test]
fn a_connection_the_primary_closed_while_idle_is_resent_not_failed_over() {
    let primary = mock(&[]);
    let backup = mock(&[]);
    let addr = primary.addr;
    let g = gateway(
        &primary_with_fallback(
            &addr.to_string(),
            &backup.addr.to_string(),
            "auto",
            free_port(),
        ),
        &[],
    );
    let mut c = Conn::open(g.addr);
    c.send(&chat(r#"{"model":"gpt-4","max_tokens":1}"#));
    assert_eq!(c.read_response().unwrap().status, 200);
    // The pooled connection is closed under the gateway (the process
    // behind it is replaced) and then sits idle past the time a server's
    // keep-alive timeout would close it.
    drop(primary);
    let primary = mock_on(addr, &[]);
    let (_, _, before) = mock_stats(&primary);
    std::thread::sleep(Duration::from_millis(1100));
    c.send(&chat(r#"{"model":"gpt-4","max_tokens":1}"#));
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-tollgate-upstream"), Some("primary"));
    assert_eq!(r.header("x-tollgate-attempts"), Some("1"));
    let (_, _, after) = mock_stats(&primary);
    assert_eq!(after - before, 2, "the resent request plus a stats call");
}
