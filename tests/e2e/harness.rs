//! Starts real processes (`tollgate serve`, `tollgate mock`) on free
//! loopback ports and talks to them over real TCP with a small blocking
//! HTTP/1.1 client that shows exact bytes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tollgate::http::chunked::ChunkedDecoder;

pub const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

/// A free loopback port, never the same twice in this test run: tests
/// run in parallel, and a port released by `bind(0)` can be handed out
/// again before the process meant to use it binds it. Ports come from a
/// per-run counter below the kernel's ephemeral range, each checked free.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let _ = NEXT.compare_exchange(
        0,
        10_000 + (std::process::id() * 7919) % 15_000,
        Ordering::AcqRel,
        Ordering::Acquire,
    );
    loop {
        let p = NEXT.fetch_add(1, Ordering::AcqRel);
        let port = (10_000 + p % 20_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A child process killed on drop; stderr goes to a file shown on failure.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
    pub addr: SocketAddr,
}

impl Proc {
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, as an operator or systemd would.
    pub fn terminate(&self) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
    }

    /// Waits for exit up to `limit`; returns the exit status if it exited.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A gateway killed this way cannot remove the cgroup it made for
        // its eBPF sock_ops program (`tollgate-<pid>`); it is empty now.
        if let Ok(m) = tollgate_loader::cgroup::cgroup2_mount() {
            let _ = std::fs::remove_dir(m.join(format!("tollgate-{}", self.child.id())));
        }
    }
}

pub fn tmpdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "tollgate-e2e-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn spawn(args: &[&str], envs: &[(&str, &str)], addr: SocketAddr) -> Proc {
    let dir = tmpdir();
    let log = dir.join("stderr.log");
    let f = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(f);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    Proc {
        child: cmd.spawn().unwrap(),
        log,
        addr,
    }
}

/// Polls `path` until it answers 200, failing with the process log.
pub fn wait_ready(p: &mut Proc, path: &str) {
    let t0 = Instant::now();
    loop {
        if let Ok(Some(status)) = p.child.try_wait() {
            panic!(
                "process exited with {status} during start-up:\n{}",
                p.stderr()
            );
        }
        if try_request(p.addr, &get(path)).is_ok_and(|r| r.status == 200) {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "not ready after 30 s:\n{}",
            p.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `tollgate mock` with extra flags.
pub fn mock(flags: &[&str]) -> Proc {
    mock_on(format!("127.0.0.1:{}", free_port()).parse().unwrap(), flags)
}

/// Starts `tollgate mock` on a given address (e.g. to restart one).
pub fn mock_on(addr: SocketAddr, flags: &[&str]) -> Proc {
    let listen = addr.to_string();
    let mut args = vec!["mock", "--listen", listen.as_str()];
    args.extend_from_slice(flags);
    let mut p = spawn(&args, &[], addr);
    wait_ready(&mut p, "/mock/stats");
    p
}

/// The admin token every test gateway gets in `$TG_ADMIN_TOKEN`; configs
/// that use the admin API add [`ADMIN_AUTH`].
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
/// `[auth]` section enabling `/admin/*` with [`ADMIN_TOKEN`].
pub const ADMIN_AUTH: &str = "[auth]\nadmin_token_env = \"TG_ADMIN_TOKEN\"\n";

/// `GET` on the admin API with the admin token.
pub fn admin_get(admin: SocketAddr, path: &str) -> Resp {
    request(
        admin,
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\r\n")
            .as_bytes(),
    )
}

/// Starts `tollgate serve` with `config` where `{listen}` is replaced by
/// the chosen address.
pub fn gateway(config: &str, envs: &[(&str, &str)]) -> Proc {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text = config.replace("{listen}", &addr.to_string());
    let dir = tmpdir();
    let path = dir.join("tollgate.toml");
    std::fs::write(&path, text).unwrap();
    let p = path.to_string_lossy().into_owned();
    let mut all = vec![("TG_ADMIN_TOKEN", ADMIN_TOKEN)];
    all.extend_from_slice(envs);
    let mut g = spawn(&["serve", "--config", &p], &all, addr);
    wait_ready(&mut g, "/healthz");
    g
}

/// Runs `tollgate check-config` on a config text.
pub fn check_config(config: &str) -> (i32, String, PathBuf) {
    let path = tmpdir().join("check.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(BIN)
        .args(["check-config", &path.to_string_lossy()])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        path,
    )
}

/// A minimal config: one mock upstream and the given `[[models]]` text.
pub fn config_for(mock: &Proc, extra_server: &str, models: &str) -> String {
    format!(
        "[server]\nlisten = \"{{listen}}\"\nworkers = 2\n{extra_server}\n[log]\naccess = false\n\n\
         [[upstreams]]\nname = \"mock\"\nbase_url = \"http://{}/v1\"\n\n{models}",
        mock.addr
    )
}

pub fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").into_bytes()
}

pub fn post(path: &str, body: &str, extra: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

pub fn chat(body: &str) -> Vec<u8> {
    post("/v1/chat/completions", body, "")
}

/// A parsed response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Body bytes exactly as on the wire (chunk framing included).
    pub raw_body: Vec<u8>,
    /// Body with chunk framing removed.
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The OpenAI error code, asserting the error shape.
    pub fn error_code(&self) -> String {
        let j = self.json();
        let e = &j["error"];
        assert!(e["message"].is_string(), "no error.message in {j}");
        assert!(e["type"].is_string(), "no error.type in {j}");
        e["code"].as_str().unwrap_or_default().to_string()
    }
}

/// A client connection (keep-alive capable).
pub struct Conn {
    pub s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_nodelay(true).unwrap();
        Conn { s, buf: Vec::new() }
    }

    pub fn send(&mut self, raw: &[u8]) {
        self.s.write_all(raw).unwrap();
    }

    fn fill(&mut self) -> std::io::Result<usize> {
        let mut tmp = [0u8; 16384];
        let n = self.s.read(&mut tmp)?;
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    /// Reads one response head (skipping 1xx when `skip_interim`).
    pub fn read_head(
        &mut self,
        skip_interim: bool,
    ) -> std::io::Result<(u16, Vec<(String, String)>)> {
        loop {
            let mut h = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut h);
            if let httparse::Status::Complete(n) = r
                .parse(&self.buf)
                .map_err(|e| std::io::Error::other(e.to_string()))?
            {
                let status = r.code.unwrap_or(0);
                let headers = r
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                self.buf.drain(..n);
                if skip_interim && (100..200).contains(&status) {
                    continue;
                }
                return Ok((status, headers));
            }
            if self.fill()? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed before a response head",
                ));
            }
        }
    }

    /// Reads one full response.
    pub fn read_response(&mut self) -> std::io::Result<Resp> {
        let (status, headers) = self.read_head(true)?;
        let find = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let (raw_body, body) = if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            let mut dec = ChunkedDecoder::new();
            let mut body = Vec::new();
            let mut raw = Vec::new();
            loop {
                let used = dec
                    .feed(&self.buf, |d| body.extend_from_slice(d))
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                raw.extend_from_slice(&self.buf[..used]);
                self.buf.drain(..used);
                if dec.is_done() {
                    break;
                }
                if self.fill()? == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "closed inside a chunked body",
                    ));
                }
            }
            (raw, body)
        } else if let Some(len) = find("content-length") {
            let len: usize = len.trim().parse().unwrap();
            while self.buf.len() < len {
                if self.fill()? == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "closed inside a body",
                    ));
                }
            }
            let b: Vec<u8> = self.buf.drain(..len).collect();
            (b.clone(), b)
        } else {
            while self.fill()? > 0 {}
            let b: Vec<u8> = std::mem::take(&mut self.buf);
            (b.clone(), b)
        };
        Ok(Resp {
            status,
            headers,
            raw_body,
            body,
        })
    }

    /// True once the server closed the connection (EOF), within `limit`.
    pub fn closed_within(&mut self, limit: Duration) -> bool {
        self.s.set_read_timeout(Some(limit)).unwrap();
        matches!(self.fill(), Ok(0) | Err(_)) && self.buf.is_empty()
    }
}

pub fn try_request(addr: SocketAddr, raw: &[u8]) -> std::io::Result<Resp> {
    let mut c = Conn {
        s: TcpStream::connect(addr)?,
        buf: Vec::new(),
    };
    c.s.set_read_timeout(Some(Duration::from_secs(20)))?;
    c.s.write_all(raw)?;
    c.read_response()
}

/// One request on a new connection.
pub fn request(addr: SocketAddr, raw: &[u8]) -> Resp {
    try_request(addr, raw).unwrap()
}

/// The mock's counters.
pub fn mock_stats(m: &Proc) -> (u64, i64, u64) {
    let j = request(m.addr, &get("/mock/stats")).json();
    (
        j["accepted"].as_u64().unwrap(),
        j["open"].as_i64().unwrap(),
        j["requests"].as_u64().unwrap(),
    )
}

/// One series of the admin listener's `/metrics` (0 when absent).
pub fn sample(admin: SocketAddr, series: &str) -> f64 {
    let text = request(admin, &get("/metrics")).text();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Polls `cond` every 10 ms until true or `limit` passes.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// Starts a private `redis-server` on a free port (no persistence).
pub fn redis() -> Proc {
    redis_on(format!("127.0.0.1:{}", free_port()).parse().unwrap())
}

/// Starts a private `redis-server` on `addr` (e.g. to bring one back).
pub fn redis_on(addr: SocketAddr) -> Proc {
    redis_in(addr, &tmpdir(), false)
}

/// Starts a `redis-server` on `addr` with its data in `dir`. `durable`:
/// append-only file with fsync on every write, so every acknowledged
/// write survives a SIGKILL (restart it on the same `dir`); otherwise no
/// persistence at all.
pub fn redis_in(addr: SocketAddr, dir: &std::path::Path, durable: bool) -> Proc {
    // One log per start: a restart in the same `dir` keeps the old log.
    let log = dir.join(format!("redis-{}.log", free_port()));
    let f = std::fs::File::create(&log).unwrap();
    let persistence: &[&str] = if durable {
        &["--appendonly", "yes", "--appendfsync", "always"]
    } else {
        &["--appendonly", "no"]
    };
    let child = Command::new("redis-server")
        .args([
            "--port",
            &addr.port().to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(persistence)
        .args(["--dir", &dir.to_string_lossy()])
        .stdout(f)
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is needed (tests/run.sh installs it)");
    let p = Proc { child, log, addr };
    let t0 = Instant::now();
    loop {
        if let Ok(mut s) = TcpStream::connect(addr) {
            let _ = s.write_all(b"PING\r\n");
            let mut b = [0u8; 7];
            if s.read(&mut b).is_ok_and(|n| n >= 5) && b.starts_with(b"+PONG") {
                return p;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "redis did not start:\n{}",
            p.stderr()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
