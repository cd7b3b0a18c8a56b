//! LOGIN tokens: JWTs carrying uid, device id and expiry.
//!
//! HS256 uses a shared secret (dev default: generated into the state
//! directory on first run); RS256 and ES256 use a PEM public key so the
//! gateway can verify tokens it could never mint.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{decode, encode, errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{AuthConfig, JwtAlgorithm};
use crate::protocol::Code;

/// Device id used when a token carries none.
pub const DEFAULT_DEVICE: &str = "default";
/// Longest device id accepted in a token.
pub const MAX_DEVICE_BYTES: usize = 64;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub uid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

/// Who a verified token says the client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: String,
    pub device: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("token expired")]
    Expired,
    #[error("token invalid: {0}")]
    Invalid(String),
    #[error("token identity invalid: {0}")]
    BadIdentity(&'static str),
}

impl AuthError {
    pub fn code(&self) -> Code {
        match self {
            AuthError::Expired => Code::TokenExpired,
            AuthError::Invalid(_) => Code::TokenInvalid,
            AuthError::BadIdentity(_) => Code::BadIdentity,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is not a usable {what} PEM key: {message}")]
    Pem { path: String, what: &'static str, message: String },
    #[error("no HS256 secret available: {0}")]
    NoSecret(String),
}

pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    max_uid_bytes: usize,
}

impl Verifier {
    /// `secret` is the resolved HS256 secret (see [`crate::state::resolve_secret`]).
    pub fn new(cfg: &AuthConfig, secret: Option<&[u8]>, max_uid_bytes: usize) -> Result<Verifier, KeyError> {
        let (key, alg) = match cfg.algorithm {
            JwtAlgorithm::Hs256 => {
                let s =
                    secret.ok_or_else(|| KeyError::NoSecret("HS256 needs auth.secret or auth.secret_file".into()))?;
                (DecodingKey::from_secret(s), Algorithm::HS256)
            }
            JwtAlgorithm::Rs256 | JwtAlgorithm::Es256 => {
                let path = cfg
                    .public_key_file
                    .as_ref()
                    .ok_or_else(|| KeyError::NoSecret("auth.public_key_file is required".into()))?;
                let pem = std::fs::read(path)
                    .map_err(|source| KeyError::Read { path: path.display().to_string(), source })?;
                let (key, alg, what) = if cfg.algorithm == JwtAlgorithm::Rs256 {
                    (DecodingKey::from_rsa_pem(&pem), Algorithm::RS256, "RSA public")
                } else {
                    (DecodingKey::from_ec_pem(&pem), Algorithm::ES256, "EC public")
                };
                let key =
                    key.map_err(|e| KeyError::Pem { path: path.display().to_string(), what, message: e.to_string() })?;
                (key, alg)
            }
        };
        let mut validation = Validation::new(alg);
        validation.leeway = cfg.leeway.as_secs();
        validation.set_required_spec_claims(&["exp"]);
        validation.validate_exp = true;
        Ok(Verifier { key, validation, max_uid_bytes })
    }

    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        // The peer is unauthenticated: name the category of the problem, never
        // the library's internals.
        let data = decode::<Claims>(token, &self.key, &self.validation).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::InvalidSignature => AuthError::Invalid("bad signature".into()),
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                AuthError::Invalid("wrong algorithm".into())
            }
            ErrorKind::ImmatureSignature => AuthError::Invalid("not valid yet (nbf)".into()),
            ErrorKind::MissingRequiredClaim(_) | ErrorKind::Json(_) => {
                AuthError::Invalid("claims missing or malformed (uid, exp)".into())
            }
            _ => AuthError::Invalid("not a JWT".into()),
        })?;
        let c = data.claims;
        let device = c.dev.unwrap_or_else(|| DEFAULT_DEVICE.to_string());
        check_id(&c.uid, self.max_uid_bytes).map_err(AuthError::BadIdentity)?;
        check_id(&device, MAX_DEVICE_BYTES).map_err(AuthError::BadIdentity)?;
        Ok(Identity { uid: c.uid, device })
    }
}

/// Uids and device ids are printable, bounded strings: they appear in logs,
/// frames (as str8) and API answers.
pub fn check_id(s: &str, max: usize) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("empty uid or device");
    }
    if s.len() > max {
        return Err("uid or device too long");
    }
    if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("uid or device contains whitespace or control characters");
    }
    Ok(())
}

/// Mint an HS256 token (dev tooling and tests; production tokens come from the login service).
pub fn mint_hs256(
    secret: &[u8],
    uid: &str,
    device: Option<&str>,
    ttl: Duration,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    mint_hs256_at(secret, uid, device, now, now.saturating_add(ttl.as_secs()))
}

/// Mint with explicit times (tests build expired tokens with this).
pub fn mint_hs256_at(
    secret: &[u8],
    uid: &str,
    device: Option<&str>,
    iat: u64,
    exp: u64,
) -> Result<String, jsonwebtoken::errors::Error> {
    let claims = Claims { uid: uid.to_string(), dev: device.map(str::to_string), exp, iat: Some(iat) };
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn verifier(secret: &[u8]) -> Verifier {
        let cfg = Config::defaults().auth;
        Verifier::new(&cfg, Some(secret), 128).unwrap()
    }

    #[test]
    fn good_token_yields_identity() {
        let t = mint_hs256(b"0123456789abcdef0123", "alice", Some("phone"), Duration::from_secs(60)).unwrap();
        let id = verifier(b"0123456789abcdef0123").verify(&t).unwrap();
        assert_eq!(id, Identity { uid: "alice".into(), device: "phone".into() });
    }

    #[test]
    fn device_defaults() {
        let t = mint_hs256(b"0123456789abcdef0123", "alice", None, Duration::from_secs(60)).unwrap();
        assert_eq!(verifier(b"0123456789abcdef0123").verify(&t).unwrap().device, DEFAULT_DEVICE);
    }

    #[test]
    fn expired_and_forged_tokens_have_distinct_codes() {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let old = mint_hs256_at(b"0123456789abcdef0123", "a", None, now - 7200, now - 3600).unwrap();
        let v = verifier(b"0123456789abcdef0123");
        assert_eq!(v.verify(&old).unwrap_err().code(), Code::TokenExpired);
        let forged = mint_hs256(b"another-secret-entirely", "a", None, Duration::from_secs(60)).unwrap();
        assert_eq!(v.verify(&forged).unwrap_err().code(), Code::TokenInvalid);
        assert_eq!(v.verify("garbage").unwrap_err().code(), Code::TokenInvalid);
    }

    #[test]
    fn hostile_uids_are_refused() {
        let v = verifier(b"0123456789abcdef0123");
        for uid in ["", "a b", "x\n", &"u".repeat(129)] {
            let t = mint_hs256(b"0123456789abcdef0123", uid, None, Duration::from_secs(60)).unwrap();
            assert_eq!(v.verify(&t).unwrap_err().code(), Code::BadIdentity, "uid {uid:?}");
        }
    }

    fn claims(uid: &str) -> Claims {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        Claims { uid: uid.into(), dev: Some("phone".into()), exp: now + 60, iat: Some(now) }
    }

    fn key_dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("gw-auth-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn es256_tokens_verify_with_the_public_key_only() {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let dir = key_dir("es256");
        let public = dir.join("pub.pem");
        std::fs::write(&public, kp.public_key_pem()).unwrap();
        let mut cfg = Config::defaults().auth;
        cfg.algorithm = JwtAlgorithm::Es256;
        cfg.public_key_file = Some(public);
        let v = Verifier::new(&cfg, None, 128).unwrap();
        let key = EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap();
        let t = encode(&Header::new(Algorithm::ES256), &claims("erin"), &key).unwrap();
        assert_eq!(v.verify(&t).unwrap(), Identity { uid: "erin".into(), device: "phone".into() });
        // An HS256 token must not pass an ES256 verifier (algorithm confusion).
        let hs = mint_hs256(b"0123456789abcdef0123", "erin", None, Duration::from_secs(60)).unwrap();
        assert_eq!(v.verify(&hs).unwrap_err().code(), Code::TokenInvalid);
        // A token signed by another key is refused.
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let forged = encode(
            &Header::new(Algorithm::ES256),
            &claims("erin"),
            &EncodingKey::from_ec_pem(other.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(v.verify(&forged).unwrap_err().code(), Code::TokenInvalid);
    }

    #[test]
    fn rs256_tokens_verify_with_the_public_key_only() {
        // rcgen cannot make RSA keys with ring; Debian's openssl (always present here) can.
        let dir = key_dir("rs256");
        let private = dir.join("key.pem");
        let public = dir.join("pub.pem");
        let ok = std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
            .arg(&private)
            .status()
            .expect("openssl must be installed to test RS256")
            .success();
        assert!(ok, "openssl genpkey failed");
        let ok = std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public)
            .status()
            .unwrap()
            .success();
        assert!(ok, "openssl pkey -pubout failed");
        let mut cfg = Config::defaults().auth;
        cfg.algorithm = JwtAlgorithm::Rs256;
        cfg.public_key_file = Some(public);
        let v = Verifier::new(&cfg, None, 128).unwrap();
        let key = EncodingKey::from_rsa_pem(&std::fs::read(&private).unwrap()).unwrap();
        let t = encode(&Header::new(Algorithm::RS256), &claims("rita"), &key).unwrap();
        assert_eq!(v.verify(&t).unwrap().uid, "rita");
        let mut expired = claims("rita");
        expired.exp = 1000;
        let t = encode(&Header::new(Algorithm::RS256), &expired, &key).unwrap();
        assert_eq!(v.verify(&t).unwrap_err().code(), Code::TokenExpired);
    }

    #[test]
    fn a_public_key_that_is_not_pem_is_a_clear_error() {
        let dir = key_dir("badpem");
        let public = dir.join("pub.pem");
        std::fs::write(&public, "not a key").unwrap();
        let mut cfg = Config::defaults().auth;
        cfg.algorithm = JwtAlgorithm::Es256;
        cfg.public_key_file = Some(public);
        let err = Verifier::new(&cfg, None, 128).err().expect("must fail").to_string();
        assert!(err.contains("pub.pem") && err.contains("EC public"), "{err}");
    }
}
