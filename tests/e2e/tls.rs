//! A small HTTPS upstream for tests: a private CA (rcgen), a `localhost`
//! certificate it signs, and a blocking rustls server that answers every
//! POST with a JSON body naming the path it saw. Keep-alive is supported,
//! and handshakes are counted so pooling over TLS can be checked.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

pub struct Server {
    pub port: u16,
    pub ca_pem: String,
    conns: Arc<AtomicUsize>,
}

impl Server {
    pub fn start() -> Server {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "tollgate test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone(), ca_cert.der().clone()], key)
            .unwrap();
        let cfg = Arc::new(cfg);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns = Arc::new(AtomicUsize::new(0));
        let counter = conns.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let cfg = cfg.clone();
                let counter = counter.clone();
                std::thread::spawn(move || {
                    let Ok(conn) = rustls::ServerConnection::new(cfg) else {
                        return;
                    };
                    let mut tls = rustls::StreamOwned::new(conn, stream);
                    let mut counted = false;
                    let mut buf = Vec::new();
                    loop {
                        let mut tmp = [0u8; 4096];
                        let n = match tls.read(&mut tmp) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if !counted {
                            counted = true;
                            counter.fetch_add(1, Ordering::SeqCst);
                        }
                        buf.extend_from_slice(&tmp[..n]);
                        let mut h = [httparse::EMPTY_HEADER; 32];
                        let mut req = httparse::Request::new(&mut h);
                        let Ok(httparse::Status::Complete(head)) = req.parse(&buf) else {
                            continue;
                        };
                        let len: usize = req
                            .headers
                            .iter()
                            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                            .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                            .unwrap_or(0);
                        if buf.len() < head + len {
                            continue;
                        }
                        let body =
                            serde_json::json!({"tls_path": req.path.unwrap_or("")}).to_string();
                        buf.drain(..head + len);
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if tls.write_all(resp.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Server {
            port,
            ca_pem: ca_cert.pem(),
            conns,
        }
    }

    /// Connections that completed a handshake and sent a request.
    pub fn connections(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }
}
