//! One upstream connection, plain TCP or TLS, behind a single type so the
//! pool and the relay do not care which.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio_rustls::ClientTlsStream;

use super::UpstreamRuntime;
use crate::error::{Error, Kind};

/// An open connection to an upstream.
pub struct UpConn {
    io: Io,
    /// The socket's kernel cookie while eBPF tracks resets, else 0.
    cookie: u64,
    /// Local port while eBPF maps per-port stats, else 0.
    port: u16,
}

enum Io {
    /// `http://`
    Plain(TcpStream),
    /// `https://`
    Tls(Box<ClientTlsStream<TcpStream>>),
}

impl UpConn {
    /// The socket cookie (0 when eBPF does not track resets).
    pub fn cookie(&self) -> u64 {
        self.cookie
    }

    /// The local port (0 when eBPF does not map per-port stats).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connects (and handshakes) within the upstream's connect timeout.
    pub async fn connect(up: &UpstreamRuntime) -> Result<UpConn, Error> {
        let addrs = up.addrs();
        let Some(&first) = addrs.first() else {
            return Err(Error::msg(
                Kind::UpstreamConnect,
                format!("upstream `{}`: host did not resolve", up.cfg.name),
            ));
        };
        let timeout = up.cfg.connect_timeout;
        let connect = async {
            let mut last = None;
            // Try each resolved address in order, as a browser would.
            for addr in std::iter::once(first).chain(addrs.iter().skip(1).copied()) {
                match tcp(addr).await {
                    Ok(s) => return Ok(s),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| io::Error::other("no address")))
        };
        let tcp = match monoio::time::timeout(timeout, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(Error::msg(
                    Kind::UpstreamConnect,
                    format!("upstream `{}`: connect failed: {e}", up.cfg.name),
                ));
            }
            Err(_) => return Err(timed_out(up, "connect", timeout)),
        };
        let cookie = crate::health::cookies::of(std::os::fd::AsRawFd::as_raw_fd(&tcp));
        let port = if crate::health::cookies::ports() {
            tcp.local_addr().map_or(0, |a| a.port())
        } else {
            0
        };
        let Some(tls) = &up.tls else {
            return Ok(UpConn {
                io: Io::Plain(tcp),
                cookie,
                port,
            });
        };
        match monoio::time::timeout(timeout, tls.connector.connect(tls.server_name.clone(), tcp))
            .await
        {
            Ok(Ok(s)) => Ok(UpConn {
                io: Io::Tls(Box::new(s)),
                cookie,
                port,
            }),
            Ok(Err(e)) => Err(Error::msg(
                Kind::UpstreamTls,
                format!("upstream `{}`: TLS handshake failed: {e}", up.cfg.name),
            )),
            Err(_) => Err(timed_out(up, "TLS handshake", timeout)),
        }
    }

    /// Reads into the spare capacity of `buf`, appending.
    ///
    /// The TLS branches' futures are boxed: a rustls read or write future
    /// is large, and inline it would size this future (and every future
    /// that holds it: the relay's reads run once per upstream read)
    /// for TLS even on plain connections, which then pay a copy of it
    /// each time one is made.
    pub async fn read_more(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let len = buf.len();
        let cap = buf.capacity();
        let slice = monoio::buf::IoBufMut::slice_mut(buf, len..cap);
        let (res, slice) = match &mut self.io {
            Io::Plain(s) => s.read(slice).await,
            Io::Tls(s) => Box::pin(s.read(slice)).await,
        };
        (res, slice.into_inner())
    }

    /// Writes all of `buf` (the TLS branch boxed, as in `read_more`).
    pub async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        match &mut self.io {
            Io::Plain(s) => s.write_all(buf).await,
            Io::Tls(s) => {
                Box::pin(async {
                    let r = s.write_all(buf).await;
                    // rustls buffers records; push them to the socket now.
                    match s.flush().await {
                        Ok(()) => r,
                        Err(e) => (Err(e), r.1),
                    }
                })
                .await
            }
        }
    }
}

async fn tcp(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_addr(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

fn timed_out(up: &UpstreamRuntime, what: &str, d: Duration) -> Error {
    Error::msg(
        Kind::UpstreamTimeout,
        format!("upstream `{}`: {what} timed out after {d:?}", up.cfg.name),
    )
}
