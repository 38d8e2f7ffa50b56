//! The admin listener: `GET /healthz`, `/status`, `/metrics`, the breaker
//! API (`admin_breakers.rs`), usage totals (`admin_usage.rs`) on a separate
//! address (and thread) so operators can probe a node without touching
//! the client port. Key management and limits: `admin_keys.rs`.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use super::worker::{Driver, Shared, bind, run_on_runtime};
use crate::config::{DriverChoice, TaskRun};
use crate::error::{Error, Kind};
use crate::http::response::{Local, error, full};
use crate::http::{Method, request};

/// Starts the admin thread; returns once it listens. `driver` is the
/// workers' driver, set once they run (shown by `/status`).
pub fn spawn(
    addr: SocketAddr,
    shared: Arc<Shared>,
    driver: Arc<OnceLock<Driver>>,
) -> std::io::Result<()> {
    let (tx, rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
    std::thread::Builder::new()
        .name("tollgate-admin".into())
        .spawn(move || {
            let tx2 = tx.clone();
            let ran = run_on_runtime(DriverChoice::Legacy, TaskRun::Interrupt, |_| async move {
                let l = match bind(addr) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = tx2.send(Err(e));
                        return;
                    }
                };
                let _ = tx2.send(Ok(()));
                loop {
                    if let Ok((s, _)) = l.accept().await {
                        let shared = shared.clone();
                        let driver = driver.get().copied();
                        monoio::spawn(async move { serve(s, &shared, driver).await });
                    }
                }
            });
            if let Err(e) = ran {
                let _ = tx.send(Err(e));
            }
        })?;
    rx.recv()
        .map_err(|_| std::io::Error::other("admin thread exited"))?
}

async fn serve(mut s: TcpStream, shared: &Shared, driver: Option<Driver>) {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        let head = loop {
            match request::parse(&buf) {
                Ok(Some(h)) => break h,
                Ok(None) if buf.len() < 16 * 1024 => {}
                _ => return,
            }
            let len = buf.len();
            buf.reserve(4096);
            let cap = buf.capacity();
            let (res, slice) = s.read(buf.slice_mut(len..cap)).await;
            buf = slice.into_inner();
            if !matches!(res, Ok(n) if n > 0) {
                return;
            }
        };
        // A body (admin API calls): read it whole, bounded.
        let body_len = match head.body {
            request::BodyFraming::None => 0,
            request::BodyFraming::Length(n) if n <= 64 * 1024 => n as usize,
            _ => return,
        };
        while buf.len() < head.len + body_len {
            let len = buf.len();
            buf.reserve(head.len + body_len - len);
            let cap = buf.capacity();
            let (res, slice) = s.read(buf.slice_mut(len..cap)).await;
            buf = slice.into_inner();
            if !matches!(res, Ok(n) if n > 0) {
                return;
            }
        }
        let mut out = Vec::new();
        let r = Local {
            request_id: b"admin",
            close: !head.keep_alive,
            head_only: false,
        };
        let cfg = &shared.cfg;
        let method = buf.split(|&b| b == b' ').next().unwrap_or(b"");
        let path = head.path(&buf);
        if path.starts_with(b"/admin/") {
            let p = String::from_utf8_lossy(path);
            let body = &buf[head.len..head.len + body_len];
            let (status, json) = super::admin_keys::authorized(shared, &buf, &head)
                .and_then(|()| {
                    let q = String::from_utf8_lossy(head.query(&buf));
                    super::admin_keys::handle(shared, method, &p, &q, body).ok_or_else(|| {
                        (
                            404,
                            "{\"error\":{\"message\":\"unknown admin call\",\"type\":\"admin_error\",\"code\":\"not_found\"}}".to_string(),
                        )
                    })
                })
                .unwrap_or_else(|e| e);
            full(
                &mut out,
                status,
                &[],
                b"application/json",
                json.as_bytes(),
                r,
            );
            buf.drain(..head.len + body_len);
            let (res, _) = s.write_all(out).await;
            if res.is_err() || !head.keep_alive {
                return;
            }
            continue;
        }
        match path {
            b"/healthz" => full(
                &mut out,
                200,
                &[],
                b"application/json",
                b"{\"status\":\"ok\"}",
                r,
            ),
            b"/metrics" => {
                let mut text = String::with_capacity(4096);
                shared.token_metrics.render(&mut text);
                super::admin_breakers::render(shared, &mut text);
                crate::health::render(&shared.health, &shared.upstreams, &mut text);
                shared.auth.metrics.render(&mut text);
                shared.ledger.render(&mut text);
                shared.conns.render(&mut text);
                full(
                    &mut out,
                    200,
                    &[],
                    b"text/plain; version=0.0.4",
                    text.as_bytes(),
                    r,
                );
            }
            b"/status" => {
                let upstreams: Vec<serde_json::Value> = shared
                    .upstreams
                    .iter()
                    .map(|u| {
                        serde_json::json!({
                            "name": u.cfg.name.as_ref(),
                            "addresses": u.addrs().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                            "tls": u.cfg.tls,
                        })
                    })
                    .collect();
                let body = serde_json::json!({
                    "version": env!("CARGO_PKG_VERSION"),
                    "config": cfg.source.display().to_string(),
                    "workers": cfg.server.workers,
                    "driver": driver.map_or("starting", Driver::name),
                    "uptime_s": shared.started.elapsed().as_secs(),
                    "models": cfg.routes.len(),
                    "upstreams": upstreams,
                });
                full(
                    &mut out,
                    200,
                    &[],
                    b"application/json",
                    body.to_string().as_bytes(),
                    r,
                );
            }
            b"/breakers" => full(
                &mut out,
                200,
                &[],
                b"application/json",
                super::admin_breakers::list(shared).as_bytes(),
                r,
            ),
            path => {
                let action = path
                    .strip_prefix(b"/breakers/")
                    .filter(|_| head.method == Method::Post)
                    .map(|p| {
                        let p = String::from_utf8_lossy(p);
                        let q = String::from_utf8_lossy(head.query(&buf));
                        super::admin_breakers::act(shared, &p, q.trim_start_matches('?'))
                    })
                    .unwrap_or_else(|| {
                        Err(Error::new(
                            Kind::NotFound,
                            "admin serves GET /healthz, /status, /metrics, /breakers, POST /breakers/{model}/{upstream}/{open|close} and, with the admin token, /admin/keys, /admin/limits, /admin/usage",
                        ))
                    });
                match action {
                    Ok(body) => full(&mut out, 200, &[], b"application/json", body.as_bytes(), r),
                    Err(e) => error(&mut out, &e, b"admin", r.close),
                }
            }
        }
        buf.drain(..head.len + body_len);
        let (res, _) = s.write_all(out).await;
        if res.is_err() || !head.keep_alive {
            return;
        }
    }
}
