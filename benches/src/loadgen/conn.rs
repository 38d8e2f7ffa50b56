//! One connection's request loop (active) and the idle connections.
//!
//! A connection sends one request, reads the whole answer, and only then
//! sends the next (no pipelining, as real clients do). Any error drops the
//! connection and the next request opens a new one, so one failure is
//! counted once and never poisons the rest of the run.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use super::response::{Bad, Outcome, Reader, Step};
use super::stats::Stats;
use super::{Ctx, unix_us};

/// Read buffer per connection.
const READ_BUF: usize = 64 * 1024;

/// How a request ended.
enum Failure {
    Io,
    Protocol,
    Timeout,
}

async fn connect(ctx: &Ctx) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(ctx.opts.addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Sends the request and reads the answer; returns the outcome and when
/// the first byte arrived.
async fn exchange(
    s: &mut TcpStream,
    request: &'static [u8],
    marker: &[u8],
    mut buf: Vec<u8>,
) -> (Result<(Outcome, Instant), Failure>, Vec<u8>) {
    let (res, _) = s.write_all(request).await;
    if res.is_err() {
        return (Err(Failure::Io), buf);
    }
    let mut reader = Reader::new(marker);
    let mut first = None;
    loop {
        buf.clear();
        let (res, b) = s.read(buf).await;
        buf = b;
        let n = match res {
            Ok(n) => n,
            Err(_) => return (Err(Failure::Io), buf),
        };
        if first.is_none() && n > 0 {
            first = Some(Instant::now());
        }
        let at = first.unwrap_or_else(Instant::now);
        if n == 0 {
            return match reader.eof() {
                Ok(o) => (Ok((o, at)), buf),
                Err(Bad::Truncated) => (Err(Failure::Io), buf),
                Err(_) => (Err(Failure::Protocol), buf),
            };
        }
        match reader.feed(&buf[..n]) {
            Ok(Step::More) => {}
            Ok(Step::Done(o)) => return (Ok((o, at)), buf),
            Err(_) => return (Err(Failure::Protocol), buf),
        }
    }
}

/// One request with the run's timeout.
async fn timed(
    ctx: &Ctx,
    s: &mut TcpStream,
    buf: Vec<u8>,
) -> (Result<(Outcome, Instant), Failure>, Vec<u8>) {
    match monoio::time::timeout(
        ctx.opts.timeout,
        exchange(s, ctx.opts.request, &ctx.opts.marker, buf),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => (Err(Failure::Timeout), Vec::with_capacity(READ_BUF)),
    }
}

/// Whether an answer is a success for this run.
fn good(ctx: &Ctx, o: &Outcome) -> Result<(), bool> {
    if o.status != 200 {
        return Err(false);
    }
    match ctx.opts.expect_events {
        Some(n) if o.events != n || !o.done => Err(true),
        _ => Ok(()),
    }
}

/// An active connection: requests back to back (closed loop) or on its
/// schedule (open loop) until the end of the run.
pub async fn active(ctx: Rc<Ctx>, stats: Rc<RefCell<Stats>>, offset: Duration) {
    let mut conn: Option<TcpStream> = None;
    let mut opened = false;
    let mut buf = Vec::with_capacity(READ_BUF);
    let mut k: u32 = 0;
    loop {
        let intended = match ctx.period {
            Some(p) => {
                let t = ctx.load_from + offset + p * k;
                k = k.saturating_add(1);
                if t >= ctx.end {
                    break;
                }
                let now = Instant::now();
                if t > now {
                    monoio::time::sleep(t - now).await;
                }
                t
            }
            None => {
                let now = Instant::now();
                if now < ctx.load_from {
                    monoio::time::sleep(ctx.load_from - now).await;
                }
                Instant::now()
            }
        };
        if intended >= ctx.end {
            break;
        }
        let measured = intended >= ctx.measure_from;
        if conn.is_none() {
            match connect(&ctx).await {
                Ok(s) => {
                    if opened && measured {
                        stats.borrow_mut().reconnects += 1;
                    }
                    opened = true;
                    conn = Some(s);
                }
                Err(_) => {
                    {
                        let mut st = stats.borrow_mut();
                        st.error_at(unix_us());
                        if measured {
                            st.errors.connect += 1;
                        }
                    }
                    // Do not spin on a refused port.
                    monoio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            }
        }
        let Some(s) = conn.as_mut() else { continue };
        let (res, b) = timed(&ctx, s, buf).await;
        buf = b;
        let done = Instant::now();
        // Answers that end after the window are neither counted nor
        // blamed: the run is over.
        let counted = measured && done <= ctx.end;
        let mut st = stats.borrow_mut();
        match res {
            Ok((o, first)) => {
                if !o.keep_alive {
                    conn = None;
                }
                if o.marker {
                    st.marked += 1;
                    if st.first_marker_unix_us.is_none() && good(&ctx, &o).is_ok() {
                        st.first_marker_unix_us = Some(unix_us());
                    }
                }
                match good(&ctx, &o) {
                    Ok(()) => {
                        if counted {
                            st.ok += 1;
                            st.body_bytes += o.body_len;
                            st.events += u64::from(o.events);
                            st.record(us(done - intended), us(first - intended));
                        }
                    }
                    Err(incomplete) => {
                        st.error_at(unix_us());
                        if counted {
                            if incomplete {
                                st.errors.incomplete += 1;
                            } else {
                                st.errors.status += 1;
                            }
                        }
                    }
                }
            }
            Err(f) => {
                conn = None;
                st.error_at(unix_us());
                if counted {
                    match f {
                        Failure::Io => st.errors.io += 1,
                        Failure::Protocol => st.errors.protocol += 1,
                        Failure::Timeout => st.errors.timeout += 1,
                    }
                }
            }
        }
    }
}

/// An idle keep-alive connection: opened `at` after the start, one
/// request, then silent until `at` after the end of the run, then one
/// more request to prove the server kept it.
pub async fn idle(ctx: Rc<Ctx>, stats: Rc<RefCell<Stats>>, at: Duration) {
    let start = ctx.load_from - ctx.opts.idle_ramp - Duration::from_secs(1) + at;
    let now = Instant::now();
    if start > now {
        monoio::time::sleep(start - now).await;
    }
    let Ok(mut s) = connect(&ctx).await else {
        stats.borrow_mut().errors.connect += 1;
        return;
    };
    let buf = Vec::with_capacity(4096);
    let (res, buf) = timed(&ctx, &mut s, buf).await;
    match res {
        Ok((o, _)) if good(&ctx, &o).is_ok() && o.keep_alive => stats.borrow_mut().idle.0 += 1,
        _ => return,
    }
    // The closing requests are spread like the opening ones, so the check
    // is not a 10k-request burst.
    let wake = ctx.end + at;
    let now = Instant::now();
    if wake > now {
        monoio::time::sleep(wake - now).await;
    }
    let (res, _) = timed(&ctx, &mut s, buf).await;
    if let Ok((o, _)) = res
        && good(&ctx, &o).is_ok()
    {
        stats.borrow_mut().idle.1 += 1;
    }
}

fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}
