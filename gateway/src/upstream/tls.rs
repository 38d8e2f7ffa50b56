//! TLS client settings per upstream: the webpki root store plus an
//! optional PEM bundle (`ca_file`), ALPN `http/1.1`, ring crypto.
//!
//! # Failure behavior
//! An unreadable or empty `ca_file` fails start-up (fail-closed): running
//! without the CA the operator asked for would only fail later, per
//! request, with a less clear error.

use std::sync::Arc;

use monoio_rustls::TlsConnector;
use rustls::pki_types::ServerName;

use crate::config::UpstreamConfig;

/// What a worker needs to open TLS connections to one upstream.
#[derive(Clone)]
pub struct TlsSettings {
    /// Shared rustls config.
    pub connector: TlsConnector,
    /// SNI and certificate name.
    pub server_name: ServerName<'static>,
}

/// Builds the TLS settings of an https upstream.
pub fn settings(cfg: &UpstreamConfig) -> Result<TlsSettings, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &cfg.ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut added = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!("{}: no PEM certificates found", path.display()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let server_name = ServerName::try_from(cfg.host.clone())
        .map_err(|e| format!("host `{}` is not a valid TLS name: {e}", cfg.host))?;
    Ok(TlsSettings {
        connector: TlsConnector::from(Arc::new(config)),
        server_name,
    })
}
