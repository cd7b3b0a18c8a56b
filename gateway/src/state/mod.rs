//! The node's state directory: generated dev credentials live here.
//!
//! Nothing secret is a constant in the code: the dev JWT secret and the dev
//! TLS certificate are generated on first run, written with owner-only
//! permissions, and reused afterwards so tokens and trust survive restarts.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;

use crate::config::{AuthConfig, JwtAlgorithm};

pub const DEV_SECRET_FILE: &str = "dev-jwt-secret";
pub const DEV_CERT_FILE: &str = "dev-cert.pem";
pub const DEV_KEY_FILE: &str = "dev-key.pem";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state directory {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("auth secret file {path} is empty or shorter than 16 bytes")]
    WeakSecret { path: PathBuf },
    #[error("cannot generate the dev certificate: {0}")]
    Cert(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io { path: path.to_path_buf(), source }
}

pub fn ensure_dir(dir: &Path) -> Result<(), StateError> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    Ok(())
}

/// Write `data` to `path` atomically (temp file + rename) with mode 0600.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), StateError> {
    let tmp = path.with_extension("tmp");
    let mut f =
        fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io(&tmp))?;
    f.write_all(data).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

/// Where the HS256 secret comes from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Config,
    File(PathBuf),
    Generated(PathBuf),
}

/// Resolve the HS256 secret: `auth.secret`, else `auth.secret_file`, else the
/// dev secret in the state directory (generated when missing).
pub fn resolve_secret(cfg: &AuthConfig, state_dir: &Path) -> Result<Option<(Vec<u8>, SecretSource)>, StateError> {
    if cfg.algorithm != JwtAlgorithm::Hs256 {
        return Ok(None);
    }
    if let Some(s) = &cfg.secret {
        return Ok(Some((s.as_bytes().to_vec(), SecretSource::Config)));
    }
    if let Some(p) = &cfg.secret_file {
        let data = fs::read(p).map_err(io(p))?;
        let trimmed = trim_ascii(&data).to_vec();
        if trimmed.len() < 16 {
            return Err(StateError::WeakSecret { path: p.clone() });
        }
        return Ok(Some((trimmed, SecretSource::File(p.clone()))));
    }
    ensure_dir(state_dir)?;
    let path = state_dir.join(DEV_SECRET_FILE);
    match fs::read(&path) {
        Ok(data) if trim_ascii(&data).len() >= 16 => Ok(Some((trim_ascii(&data).to_vec(), SecretSource::File(path)))),
        Ok(_) => Err(StateError::WeakSecret { path }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut raw = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut raw);
            let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
            write_private(&path, hex.as_bytes())?;
            Ok(Some((hex.into_bytes(), SecretSource::Generated(path))))
        }
        Err(e) => Err(StateError::Io { path, source: e }),
    }
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !c.is_ascii_whitespace()).map_or(start, |i| i + 1);
    &b[start..end]
}

/// Paths of the dev certificate and key, generating them when missing.
/// The certificate names localhost, 127.0.0.1, ::1 and `extra_ip` (the listen
/// address, when specific), so the reference client can verify it by CA file.
pub fn ensure_dev_cert(state_dir: &Path, extra_ip: Option<IpAddr>) -> Result<(PathBuf, PathBuf, bool), StateError> {
    ensure_dir(state_dir)?;
    let cert_path = state_dir.join(DEV_CERT_FILE);
    let key_path = state_dir.join(DEV_KEY_FILE);
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path, false));
    }
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    if let Some(ip) = extra_ip.filter(|ip| !ip.is_unspecified() && !ip.is_loopback()) {
        names.push(ip.to_string());
    }
    let cert = rcgen::generate_simple_self_signed(names).map_err(|e| StateError::Cert(e.to_string()))?;
    write_private(&key_path, cert.key_pair.serialize_pem().as_bytes())?;
    write_private(&cert_path, cert.cert.pem().as_bytes())?;
    // The certificate is public: let a client running as another user read it.
    let _ = fs::set_permissions(&cert_path, fs::Permissions::from_mode(0o644));
    Ok((cert_path, key_path, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gw-state-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn dev_secret_is_generated_once_and_reused() {
        let dir = tempdir("secret");
        let cfg = Config::defaults().auth;
        let (a, src) = resolve_secret(&cfg, &dir).unwrap().unwrap();
        assert!(matches!(src, SecretSource::Generated(_)));
        assert_eq!(a.len(), 64);
        let (b, src) = resolve_secret(&cfg, &dir).unwrap().unwrap();
        assert!(matches!(src, SecretSource::File(_)));
        assert_eq!(a, b);
        let mode = fs::metadata(dir.join(DEV_SECRET_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "secret must be private");
        let other = resolve_secret(&cfg, &tempdir("secret2")).unwrap().unwrap().0;
        assert_ne!(a, other, "two nodes must not share a generated secret");
    }

    #[test]
    fn dev_cert_is_generated_once() {
        let dir = tempdir("cert");
        let (c, k, fresh) = ensure_dev_cert(&dir, None).unwrap();
        assert!(fresh && c.exists() && k.exists());
        let (_, _, fresh) = ensure_dev_cert(&dir, None).unwrap();
        assert!(!fresh);
    }
}
