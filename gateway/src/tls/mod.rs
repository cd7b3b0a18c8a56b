//! rustls configuration for the listener and the reference client.

pub mod lean;

use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::{
    self,
    pki_types::{CertificateDer, PrivateKeyDer},
    ClientConfig, RootCertStore, ServerConfig,
};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Pem { path: String, message: String },
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let p = path.display().to_string();
    let f = std::fs::File::open(path).map_err(|source| TlsError::Read { path: p.clone(), source })?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut BufReader::new(f)).collect();
    let certs = certs.map_err(|e| TlsError::Pem { path: p.clone(), message: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Pem { path: p, message: "no CERTIFICATE block found".into() });
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let p = path.display().to_string();
    let f = std::fs::File::open(path).map_err(|source| TlsError::Read { path: p.clone(), source })?;
    rustls_pemfile::private_key(&mut BufReader::new(f))
        .map_err(|e| TlsError::Pem { path: p.clone(), message: e.to_string() })?
        .ok_or(TlsError::Pem { path: p, message: "no PRIVATE KEY block found".into() })
}

pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(cert)?;
    let key = load_key(key)?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    // Session tickets would add per-connection state for little gain: IM
    // clients reconnect rarely and to changing nodes.
    cfg.send_tls13_tickets = 0;
    Ok(Arc::new(cfg))
}

/// A client config trusting exactly the certificates in `ca_file`.
pub fn client_config(ca_file: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(ca_file)? {
        roots.add(c)?;
    }
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}
