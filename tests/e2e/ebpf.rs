//! eBPF health signals end to end: a real gateway with its programs
//! loaded (CI runs as root), real upstream processes and sockets on
//! 127.0.0.1, and the kernel's own refused connects and resets.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::harness::*;

fn upstream(name: &str, addr: SocketAddr) -> String {
    format!("[[upstreams]]\nname = \"{name}\"\nbase_url = \"http://{addr}/v1\"\n")
}

/// A `/metrics` sample by its exact series text, 0 when absent.
fn breaker_states(admin: SocketAddr) -> Vec<(String, String)> {
    let j = request(admin, &get("/breakers")).json();
    j["breakers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["model"].as_str().unwrap().to_string(),
                b["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

struct DeadUpstream {
    /// Requests whose first attempt still went to the dead primary.
    touched: u32,
    /// Kill to every breaker on the primary open.
    elapsed: Duration,
    requests: u32,
}

/// Three models on one primary, each falling back to a backup. The
/// primary dies; requests go round-robin over the three models until every
/// breaker on the primary is open.
fn dead_upstream(ebpf: &str) -> DeadUpstream {
    let primary = mock(&[]);
    let backup = mock(&[]);
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut cfg = format!(
        "[server]\nlisten = \"{{listen}}\"\nadmin_listen = \"{admin}\"\nworkers = 1\n\
         [log]\naccess = false\n[ebpf]\nenabled = \"{ebpf}\"\n{}{}",
        upstream("primary", primary.addr),
        upstream("backup", backup.addr)
    );
    for m in ["m1", "m2", "m3"] {
        cfg.push_str(&format!(
            "[[models]]\nname = \"{m}\"\ntargets = [{{ upstream = \"primary\" }}]\n\
             breaker = {{ max_failures = 3, break_duration = \"60s\" }}\n\
             fallbacks = [{{ model = \"backup\" }}]\n"
        ));
    }
    cfg.push_str("[[models]]\nname = \"backup\"\ntargets = [{ upstream = \"backup\" }]\n");
    let g = gateway(&cfg, &[]);
    let ask = |m: &str| {
        request(
            g.addr,
            &chat(&format!(r#"{{"model":"{m}","max_tokens":1}}"#)),
        )
    };
    for m in ["m1", "m2", "m3"] {
        assert_eq!(ask(m).header("x-tollgate-upstream"), Some("primary"));
    }
    let primary_addr = primary.addr;
    drop(primary);
    let t0 = Instant::now();
    let mut touched = 0;
    let mut requests = 0;
    let all_open = |admin| {
        breaker_states(admin)
            .iter()
            .filter(|(m, s)| m != "backup" && s == "open")
            .count()
            == 3
    };
    while !all_open(admin) {
        assert!(
            requests < 60,
            "breakers never all opened: {:?}",
            breaker_states(admin)
        );
        let m = ["m1", "m2", "m3"][requests as usize % 3];
        let r = ask(m);
        assert_eq!(r.status, 200, "client error with eBPF {ebpf}: {}", r.text());
        assert_eq!(r.header("x-tollgate-upstream"), Some("backup"));
        if r.header("x-tollgate-attempts") != Some("1") {
            touched += 1;
        }
        requests += 1;
    }
    let elapsed = t0.elapsed();
    if ebpf == "on" {
        // Which path crossed each breaker's threshold above (the request's
        // own failure or the kernel's) is a race. With no requests at all:
        // close the breakers, then three refused connects from this test
        // (the kernel view is per host) must open all three by themselves.
        for m in ["m1", "m2", "m3"] {
            let r = request(
                admin,
                &post(&format!("/breakers/{m}/primary/close"), "", ""),
            );
            assert_eq!(r.status, 200, "{}", r.text());
        }
        for _ in 0..3 {
            assert!(std::net::TcpStream::connect(primary_addr).is_err());
        }
        assert!(
            eventually(Duration::from_secs(3), || all_open(admin)),
            "kernel signals alone did not open the breakers: {:?}",
            breaker_states(admin)
        );
        // The log writer is asynchronous: wait for the line.
        assert!(
            eventually(Duration::from_secs(3), || g
                .stderr()
                .contains("source=\"ebpf\"")),
            "no breaker opened from a kernel signal:\n{}",
            g.stderr()
        );
        assert!(
            sample(
                admin,
                "tollgate_upstream_tcp_events_total{upstream=\"primary\",kind=\"refused\"}"
            ) >= 1.0
        );
        assert!(sample(admin, "tollgate_ebpf_signal_delay_seconds_count") >= 1.0);
    }
    // Every later request goes straight to the backup.
    for m in ["m1", "m2", "m3"] {
        let r = ask(m);
        assert_eq!(
            (r.status, r.header("x-tollgate-attempts")),
            (200, Some("1"))
        );
    }
    DeadUpstream {
        touched,
        elapsed,
        requests,
    }
}

#[test]
fn a_dead_upstream_opens_every_breaker_on_it_from_the_kernel_signal() {
    let off = dead_upstream("off");
    let on = dead_upstream("on");
    eprintln!(
        "dead upstream: without eBPF {} of {} requests tried it, all breakers open after {:?}; \
         with eBPF {} of {}, {:?}",
        off.touched, off.requests, off.elapsed, on.touched, on.requests, on.elapsed
    );
    // Without eBPF each model's breaker needs its own 3 failed requests.
    assert_eq!(off.touched, 9);
    // With it one refused connect counts for all three models.
    assert!(
        on.touched < off.touched,
        "{} vs {}",
        on.touched,
        off.touched
    );
}

/// An HTTP/1.1 upstream that answers every request on a connection and,
/// when asked, ends its idle connection: [`RST`] aborts it (SO_LINGER 0),
/// [`FIN`] closes it (as a keep-alive timeout does).
struct RstUpstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    end: Arc<AtomicU8>,
}

const RST: u8 = 1;
const FIN: u8 = 2;

const BODY: &str = r#"{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;

impl RstUpstream {
    fn start() -> RstUpstream {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let end = Arc::new(AtomicU8::new(0));
        let (a, r) = (accepted.clone(), end.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { return };
                a.fetch_add(1, Ordering::SeqCst);
                serve(s, &r);
            }
        });
        RstUpstream {
            addr,
            accepted,
            end,
        }
    }
}

/// Serves requests on one connection until asked to end it.
fn serve(mut s: TcpStream, end: &AtomicU8) {
    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let mut buf = Vec::new();
    loop {
        let how = end.swap(0, Ordering::SeqCst);
        if how == FIN {
            return;
        }
        if how == RST {
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: setsockopt with a live linger struct of the size passed.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&raw const linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
            }
            return;
        }
        let mut tmp = [0u8; 4096];
        match s.read(&mut tmp) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
            Err(_) => return,
        }
        let text = String::from_utf8_lossy(&buf).into_owned();
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let len: usize = text[..end]
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        if buf.len() < end + 4 + len {
            continue;
        }
        buf.drain(..end + 4 + len);
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{BODY}",
            BODY.len()
        );
        if s.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// A gateway with eBPF on and one model `m` on upstream `name`, whose
/// breaker opens on a single failure; and its admin address.
fn one_failure_gateway(name: &str, addr: SocketAddr) -> (Proc, SocketAddr) {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = format!(
        "[server]\nlisten = \"{{listen}}\"\nadmin_listen = \"{admin}\"\nworkers = 1\n\
         [log]\naccess = false\n[ebpf]\nenabled = \"on\"\n{}\
         [[models]]\nname = \"m\"\ntargets = [{{ upstream = \"{name}\" }}]\n\
         breaker = {{ max_failures = 1 }}\n",
        upstream(name, addr)
    );
    (gateway(&cfg, &[]), admin)
}

/// The upstream ends the gateway's idle pooled connection with `how`;
/// the next request must not be written to it.
fn idle_connection_ended(how: u8) {
    let up = RstUpstream::start();
    // One failure would open the breaker: an idle reset must not count.
    let (g, admin) = one_failure_gateway("raw", up.addr);
    let ask = || request(g.addr, &chat(r#"{"model":"m","max_tokens":1}"#));
    assert_eq!(ask().status, 200);
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
    // The pooled connection is idle; the upstream ends it.
    up.end.store(how, Ordering::SeqCst);
    let series = if how == RST {
        "tollgate_upstream_pool_idle_closed_total{how=\"rst\"}"
    } else {
        "tollgate_upstream_pool_idle_closed_total{how=\"fin\"}"
    };
    assert!(
        eventually(Duration::from_secs(3), || sample(admin, series) == 1.0),
        "the kernel's view of the idle connection never reached the pool"
    );
    let r = ask();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-tollgate-attempts"), Some("1"));
    // Evicted before use: a new connection, no stale write.
    assert_eq!(sample(admin, "tollgate_upstream_pool_evictions_total"), 1.0);
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
    let resets = sample(
        admin,
        "tollgate_upstream_tcp_events_total{upstream=\"raw\",kind=\"reset\"}",
    );
    assert_eq!(resets, if how == RST { 1.0 } else { 0.0 });
    assert_eq!(breaker_states(admin), vec![("m".into(), "closed".into())]);
    assert_eq!(ask().status, 200);
}

#[test]
fn an_idle_pooled_connection_reset_by_the_upstream_is_evicted_before_use() {
    idle_connection_ended(RST);
}

#[test]
fn an_idle_pooled_connection_closed_by_the_upstream_is_evicted_before_use() {
    idle_connection_ended(FIN);
}

/// The other side of the rule: when the upstream resets a connection that
/// is in use (here another process's, as the kernel's view is per host),
/// the kernel's reset alone opens the breaker, with no request through the
/// gateway.
#[test]
fn an_upstream_reset_of_a_connection_in_use_opens_the_breaker() {
    let up = RstUpstream::start();
    let (g, admin) = one_failure_gateway("raw", up.addr);
    let mut s = TcpStream::connect(up.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    write!(
        s,
        "POST /v1/x HTTP/1.1\r\nHost: up\r\ncontent-length: 0\r\n\r\n"
    )
    .unwrap();
    let mut answer = [0u8; 512];
    assert!(s.read(&mut answer).unwrap() > 0);
    assert_eq!(breaker_states(admin), vec![("m".into(), "closed".into())]);
    up.end.store(RST, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(3), || breaker_states(admin)
            == vec![("m".into(), "open".into())]),
        "the upstream's reset did not open the breaker: {:?}\n{}",
        breaker_states(admin),
        g.stderr()
    );
    drop(s);
}

/// Another process on this host streams from the upstream and hangs up
/// mid-stream with its socket still open (as a proxy cancelling a stream
/// does): the upstream's next event makes this host's kernel abort the
/// connection, which it reports as a reset on the upstream's address. That
/// is not the upstream failing, and must not open its breaker.
#[test]
fn a_reset_after_this_host_hung_up_does_not_open_the_breaker() {
    let m = mock(&[]);
    let (g, admin) = one_failure_gateway("mock", m.addr);
    let ask = || request(g.addr, &chat(r#"{"model":"m","max_tokens":1}"#));
    assert_eq!(ask().status, 200);
    let mut s = TcpStream::connect(m.addr).unwrap();
    let body = r#"{"model":"m","max_tokens":50,"stream":true}"#;
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: up\r\ncontent-type: application/json\r\n\
         x-mock-chunk-delay-ms: 20\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut first = [0u8; 4096];
    assert!(s.read(&mut first).unwrap() > 0);
    s.shutdown(std::net::Shutdown::Both).unwrap();
    // The mock's next event (20 ms later) meets the hung-up socket.
    let reset = eventually(
        Duration::from_secs(3),
        || matches!(s.take_error(), Ok(Some(e)) if e.raw_os_error() == Some(libc::ECONNRESET)),
    );
    assert!(reset, "the kernel never aborted the hung-up connection");
    let series = "tollgate_upstream_tcp_events_total{upstream=\"mock\",kind=\"reset\"}";
    assert!(
        eventually(Duration::from_secs(3), || sample(admin, series) >= 1.0),
        "the gateway never saw the reset"
    );
    assert_eq!(breaker_states(admin), vec![("m".into(), "closed".into())]);
    let r = ask();
    assert_eq!(
        (r.status, r.header("x-tollgate-attempts")),
        (200, Some("1"))
    );
    drop(s);
}

#[test]
fn the_srtt_histogram_has_samples_and_the_cgroup_is_removed_at_exit() {
    let m = mock(&[]);
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = format!(
        "[server]\nlisten = \"{{listen}}\"\nadmin_listen = \"{admin}\"\nworkers = 2\n\
         [log]\naccess = true\n[ebpf]\nenabled = \"on\"\n{}\
         [[models]]\nname = \"m\"\ntargets = [{{ upstream = \"mock\" }}]\n",
        upstream("mock", m.addr)
    );
    let mut g = gateway(&cfg, &[]);
    let pid = g.child.id();
    let cg = tollgate_loader::cgroup::cgroup2_mount()
        .unwrap()
        .join(format!("tollgate-{pid}"));
    let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap();
    assert!(procs.lines().any(|l| l == pid.to_string()), "{procs}");
    for _ in 0..20 {
        let r = request(
            g.addr,
            &chat(r#"{"model":"m","max_tokens":3,"stream":true}"#),
        );
        assert_eq!(r.status, 200);
    }
    let series = "tollgate_upstream_tcp_srtt_seconds_count{upstream=\"mock\"}";
    assert!(
        eventually(Duration::from_secs(5), || sample(admin, series) > 0.0),
        "no srtt samples"
    );
    let text = request(admin, &get("/metrics")).text();
    assert!(text.contains("tollgate_ebpf_program_up{program=\"sock_ops\"} 1"));
    let sum = sample(
        admin,
        "tollgate_upstream_tcp_srtt_seconds_sum{upstream=\"mock\"}",
    );
    assert!(sum > 0.0 && sum < 1.0, "{sum}");
    // Per request: the access log has the upstream connection's srtt and
    // the retransmits seen while it ran (none on loopback).
    assert!(
        eventually(Duration::from_secs(3), || g.stderr().lines().any(|l| {
            l.contains("tollgate::access") && l.contains("srtt_us=") && l.contains("retrans=0")
        })),
        "{}",
        g.stderr()
    );
    // ... and so does the usage record.
    assert!(
        g.stderr().lines().any(|l| {
            l.contains("tollgate::usage") && l.contains("srtt_us=") && l.contains("retrans=0")
        }),
        "{}",
        g.stderr()
    );
    g.terminate();
    let st = g
        .wait_exit(Duration::from_secs(10))
        .expect("gateway did not exit");
    assert!(st.success(), "{}", g.stderr());
    assert!(!cg.exists(), "{} left behind", cg.display());
}

#[test]
fn without_privileges_the_gateway_logs_each_missing_program_and_serves() {
    let m = mock(&[]);
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = |mode: &str| {
        format!(
            "[server]\nlisten = \"{addr}\"\nworkers = 1\n[log]\naccess = false\n\
             [ebpf]\nenabled = \"{mode}\"\n{}\
             [[models]]\nname = \"m\"\ntargets = [{{ upstream = \"mock\" }}]\n",
            upstream("mock", m.addr)
        )
    };
    let dir = tmpdir();
    let run = |mode: &str| {
        let path = dir.join(format!("{mode}.toml"));
        std::fs::write(&path, cfg(mode)).unwrap();
        let log = dir.join(format!("{mode}.log"));
        let child = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(BIN)
            .args(["serve", "--config", &path.to_string_lossy()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Proc { child, log, addr }
    };
    let mut g = run("auto");
    wait_ready(&mut g, "/healthz");
    let r = request(g.addr, &chat(r#"{"model":"m","max_tokens":2}"#));
    assert_eq!(r.status, 200, "{}", r.text());
    // The log writer is asynchronous: wait for the start-up lines.
    eventually(Duration::from_secs(3), || {
        g.stderr().matches("eBPF program unavailable").count() >= tollgate_loader::PROGRAMS.len()
    });
    let log = g.stderr();
    for (p, _) in tollgate_loader::PROGRAMS {
        let lines = log
            .lines()
            .filter(|l| {
                l.contains("eBPF program unavailable") && l.contains(&format!("program=\"{p}\""))
            })
            .count();
        assert_eq!(lines, 1, "{p}:\n{log}");
    }
    drop(g);
    // `on` refuses to start, naming what did not load.
    let mut g = run("on");
    let st = g
        .wait_exit(Duration::from_secs(10))
        .expect("`on` did not exit");
    assert!(!st.success());
    let log = g.stderr();
    assert!(
        log.contains("[ebpf] enabled = \\\"on\\\"") || log.contains("[ebpf] enabled = \"on\""),
        "{log}"
    );
    assert!(log.contains("sk_error_report"), "{log}");
}

#[test]
fn ebpf_settings_are_checked_with_their_key() {
    let (code, err, path) =
        check_config("[ebpf]\nenabled = \"maybe\"\ncgroup = \"relative/dir\"\n");
    assert_eq!(code, 2);
    let file = path.display().to_string();
    assert!(
        err.contains(&format!("{file}: ebpf.enabled: unknown value `maybe`")),
        "{err}"
    );
    assert!(err.contains(&format!("{file}: ebpf.cgroup:")), "{err}");
    let (code, err, _) = check_config("[ebpf]\nenabled = \"off\"\ncgroup = \"/sys/fs/cgroup/x\"\n");
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_syn_retransmit_marks_the_upstream_slow_and_the_balancer_moves_off_it() {
    // An upstream that never answers a SYN: a listener whose accept queue
    // (backlog 0) is full. The kernel retransmits the SYN after ~1 s.
    let hole = TcpListener::bind("127.0.0.1:0").unwrap();
    // SAFETY: listen(2) again on our own listening socket shrinks its backlog.
    assert_eq!(unsafe { libc::listen(hole.as_raw_fd(), 0) }, 0);
    let _filler = TcpStream::connect(hole.local_addr().unwrap()).unwrap();
    let good = mock(&[]);
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = format!(
        "[server]\nlisten = \"{{listen}}\"\nadmin_listen = \"{admin}\"\nworkers = 1\n\
         [log]\naccess = false\n[ebpf]\nenabled = \"on\"\n{}connect_timeout = \"2s\"\n{}\
         [[models]]\nname = \"probe\"\ntargets = [{{ upstream = \"hole\" }}]\n\
         fallbacks = [{{ model = \"good\" }}]\n\
         [[models]]\nname = \"good\"\ntargets = [{{ upstream = \"good\" }}]\n\
         [[models]]\nname = \"split\"\ntargets = [{{ upstream = \"hole\" }}, {{ upstream = \"good\" }}]\n",
        upstream("hole", hole.local_addr().unwrap()),
        upstream("good", good.addr)
    );
    let g = gateway(&cfg, &[]);
    let slow = "tollgate_upstream_slow{upstream=\"hole\"}";
    assert_eq!(sample(admin, slow), 0.0);
    // One request's connect hangs on the hole; the kernel's first SYN
    // retransmit marks it slow long before the 2 s connect timeout.
    let t0 = Instant::now();
    let gaddr = g.addr;
    let prober =
        std::thread::spawn(move || request(gaddr, &chat(r#"{"model":"probe","max_tokens":1}"#)));
    assert!(
        eventually(Duration::from_secs(3), || sample(admin, slow) == 1.0),
        "never marked slow"
    );
    let marked = t0.elapsed();
    assert!(
        marked < Duration::from_millis(1900),
        "marked after {marked:?}"
    );
    assert!(
        sample(
            admin,
            "tollgate_upstream_tcp_events_total{upstream=\"hole\",kind=\"syn_retransmit\"}"
        ) >= 1.0
    );
    // While slow, the balancer's picks of the hole move to the other
    // target: every request is answered at once by `good` (round robin
    // alone would send every other one into the hole).
    for _ in 0..6 {
        let t = Instant::now();
        let r = request(g.addr, &chat(r#"{"model":"split","max_tokens":1}"#));
        assert_eq!(
            (r.status, r.header("x-tollgate-upstream")),
            (200, Some("good"))
        );
        assert_eq!(r.header("x-tollgate-attempts"), Some("1"));
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
    }
    // The hung request itself timed out on the hole and fell back.
    let r = prober.join().unwrap();
    assert_eq!(
        (r.status, r.header("x-tollgate-upstream")),
        (200, Some("good"))
    );
    assert!(t0.elapsed() >= Duration::from_secs(2));
    assert!(eventually(Duration::from_secs(2), || g
        .stderr()
        .contains("upstream marked slow")));
}
