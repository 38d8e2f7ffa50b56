//! Time to fail over, measured end to end on loopback.
//!
//! A client sends chat requests back to back through `tollgate serve` to
//! a model whose primary is a `tollgate mock`, with a fallback on another
//! mock. Then the primary breaks:
//! - `refused`: the primary process is killed (SIGKILL): pooled
//!   connections die and new connects are refused;
//! - `5xx`: the primary is replaced by a mock answering 503 to everything.
//!
//! Reported: client-visible errors after the break, time from the break to
//! the first answer served by the fallback, and requests that reached the
//! broken primary (the breaker should stop them after `max_failures`).
//!
//! `cargo build --release -p tollgate && cargo run --release -p tollgate-benches --bin failover-time`

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn main() -> std::process::ExitCode {
    let bin = std::env::var("TOLLGATE_BIN").unwrap_or_else(|_| "target/release/tollgate".into());
    for scenario in ["refused", "5xx"] {
        for run in 1..=3 {
            match measure(&bin, scenario) {
                Ok(r) => println!(
                    "{scenario:8} run {run}: errors={} first_fallback_after={:.2} ms primary_hits_after_break={} requests={}",
                    r.errors,
                    r.to_fallback.as_secs_f64() * 1000.0,
                    r.primary_hits,
                    r.requests
                ),
                Err(e) => {
                    eprintln!("{scenario} run {run}: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            }
        }
    }
    std::process::ExitCode::SUCCESS
}

struct Report {
    errors: u32,
    to_fallback: Duration,
    primary_hits: u64,
    requests: u32,
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn spawn(bin: &str, args: &[&str]) -> Result<Proc, String> {
    Command::new(bin)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Proc)
        .map_err(|e| format!("{bin}: {e}"))
}

fn wait_ready(addr: SocketAddr, path: &str) -> Result<(), String> {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(20) {
        if get(addr, path).is_ok_and(|(s, _)| s == 200) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(format!("{addr} not ready"))
}

fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((status, body))
}

fn requests_of(addr: SocketAddr) -> u64 {
    get(addr, "/mock/stats")
        .ok()
        .and_then(|(_, b)| serde_json_requests(&b))
        .unwrap_or(0)
}

fn serde_json_requests(body: &str) -> Option<u64> {
    let i = body.find("\"requests\":")? + 11;
    body[i..].trim_end_matches('}').parse().ok()
}

/// One request on a keep-alive connection; returns (status, upstream).
fn chat(c: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<(u16, String)> {
    let body = r#"{"model":"gpt-4","max_tokens":2,"messages":[{"role":"user","content":"hi"}]}"#;
    write!(
        c,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    buf.clear();
    let mut tmp = [0u8; 8192];
    loop {
        let n = c.read(&mut tmp)?;
        if n == 0 {
            return Err(std::io::Error::other("closed"));
        }
        buf.extend_from_slice(&tmp[..n]);
        let text = String::from_utf8_lossy(buf);
        let Some(head_end) = text.find("\r\n\r\n") else {
            continue;
        };
        let head = &text[..head_end].to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if buf.len() < head_end + 4 + len {
            continue;
        }
        let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        let up = head
            .lines()
            .find_map(|l| l.strip_prefix("x-tollgate-upstream: "))
            .unwrap_or("")
            .to_string();
        return Ok((status, up));
    }
}

fn measure(bin: &str, scenario: &str) -> Result<Report, String> {
    let (pp, bp, gp) = (port()?, port()?, port()?);
    let primary_addr: SocketAddr = format!("127.0.0.1:{pp}").parse().map_err(|_| "addr")?;
    let backup_addr: SocketAddr = format!("127.0.0.1:{bp}").parse().map_err(|_| "addr")?;
    let gw_addr: SocketAddr = format!("127.0.0.1:{gp}").parse().map_err(|_| "addr")?;
    let mut primary = Some(spawn(
        bin,
        &["mock", "--listen", &primary_addr.to_string()],
    )?);
    let _backup = spawn(bin, &["mock", "--listen", &backup_addr.to_string()])?;
    let dir = std::env::temp_dir().join(format!("tollgate-failover-{gp}"));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let cfg = dir.join("gw.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"{gw_addr}\"\nworkers = 1\n[log]\nlevel = \"error\"\naccess = false\n\
             [[upstreams]]\nname = \"primary\"\nbase_url = \"http://{primary_addr}/v1\"\n\
             [[upstreams]]\nname = \"backup\"\nbase_url = \"http://{backup_addr}/v1\"\n\
             [[models]]\nname = \"gpt-4\"\ntargets = [{{ upstream = \"primary\" }}]\n\
             breaker = {{ max_failures = 5, break_duration = \"60s\" }}\n\
             fallbacks = [{{ model = \"backup\" }}]\n\
             [[models]]\nname = \"backup\"\ntargets = [{{ upstream = \"backup\" }}]\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    wait_ready(primary_addr, "/mock/stats")?;
    wait_ready(backup_addr, "/mock/stats")?;
    let _gw = spawn(bin, &["serve", "--config", &cfg.to_string_lossy()])?;
    wait_ready(gw_addr, "/healthz")?;
    let mut c = TcpStream::connect(gw_addr).map_err(|e| e.to_string())?;
    c.set_nodelay(true).map_err(|e| e.to_string())?;
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    // Warm: the pool holds a live connection to the primary.
    for _ in 0..200 {
        let (s, up) = chat(&mut c, &mut buf).map_err(|e| e.to_string())?;
        if s != 200 || up != "primary" {
            return Err(format!("warm-up answered {s} from {up}"));
        }
    }
    // Break the primary.
    drop(primary.take());
    let mut _replacement = None;
    if scenario == "5xx" {
        _replacement = Some(spawn(
            bin,
            &[
                "mock",
                "--listen",
                &primary_addr.to_string(),
                "--status",
                "503",
            ],
        )?);
        wait_ready(primary_addr, "/mock/stats")?;
    }
    let base = if scenario == "5xx" {
        requests_of(primary_addr)
    } else {
        0
    };
    let t0 = Instant::now();
    let mut errors = 0;
    let mut to_fallback = None;
    let mut requests = 0;
    while t0.elapsed() < Duration::from_millis(500) || requests < 50 {
        requests += 1;
        match chat(&mut c, &mut buf) {
            Ok((200, up)) => {
                if up == "backup" && to_fallback.is_none() {
                    to_fallback = Some(t0.elapsed());
                }
            }
            Ok(_) => errors += 1,
            Err(e) => return Err(format!("client connection failed: {e}")),
        }
    }
    let primary_hits = if scenario == "5xx" {
        // Minus the stats request itself.
        requests_of(primary_addr).saturating_sub(base + 1)
    } else {
        0
    };
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Report {
        errors,
        to_fallback: to_fallback.ok_or("never served by the fallback")?,
        primary_hits,
        requests,
    })
}
