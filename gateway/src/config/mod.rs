//! Typed configuration: one TOML file, then environment, then CLI flags.
//!
//! Loading happens in two steps. `raw` mirrors the file with plain strings and
//! numbers (so serde only fails on syntax, wrong types or unknown keys), and
//! [`RawConfig::validate`] turns it into [`Config`], collecting *every* problem
//! with the key that caused it before giving up, so an operator fixes a file in
//! one pass instead of one error per restart.

#[cfg(test)]
mod example_test;
mod raw;

pub use raw::{RawAdminToken, RawConfig};

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One invalid key and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid TOML for this gateway: {message}")]
    Parse { path: String, message: String },
    #[error("invalid configuration ({} problem(s)):\n{}", .0.len(), .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<KeyError>),
}

/// Overrides for the keys that change per host. Filled from CLI flags, which
/// themselves fall back to `GATEWAY_*` environment variables (see `main.rs`).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub node_id: Option<String>,
    pub etcd_endpoints: Option<Vec<String>>,
    pub push_listen: Option<String>,
    pub state_dir: Option<PathBuf>,
    /// `name:token` pairs for the admin API (`GATEWAY_ADMIN_TOKENS`); added
    /// to `admin.tokens`, so secrets can stay out of the file.
    pub admin_tokens: Option<Vec<String>>,
    pub admin_listen: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DuplicateLogin {
    /// The old session gets KICK(DUPLICATE_LOGIN) and the new one takes its place.
    KickOld,
    /// The new login gets ERROR(DUPLICATE_SESSION) and the old one stays.
    RefuseNew,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAlgorithm {
    Hs256,
    Rs256,
    Es256,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// Try native (driver) mode, then generic (SKB) mode.
    Auto,
    Native,
    Skb,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub node: NodeConfig,
    pub listen: ListenConfig,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    pub session: SessionConfig,
    pub heartbeat: HeartbeatConfig,
    pub push_api: PushApiConfig,
    pub upstream: UpstreamConfig,
    pub xdp: XdpConfig,
    pub cluster: ClusterConfig,
    pub shutdown: ShutdownConfig,
    pub log: LogConfig,
    pub abuse: AbuseConfig,
    pub bans: BansConfig,
    pub admin: AdminConfig,
    pub host: HostConfig,
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: String,
    pub state_dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct ListenConfig {
    pub addr: SocketAddr,
    /// Plaintext listener for internal use and benchmarks; never on by default.
    pub plaintext_addr: Option<SocketAddr>,
    pub backlog: u32,
    pub max_connections: usize,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Both set, or both unset (then a dev certificate is generated).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub engine: TlsEngine,
}

/// Which TLS stream implementation serves client connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsEngine {
    /// `tls::lean`: rustls' unbuffered API, no buffers held while idle (~4 KiB less per session).
    Lean,
    /// tokio-rustls: rustls' buffered connection (keeps a 4 KiB read buffer per session).
    Buffered,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub algorithm: JwtAlgorithm,
    pub secret: Option<String>,
    pub secret_file: Option<PathBuf>,
    pub public_key_file: Option<PathBuf>,
    pub leeway: Duration,
}

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub login_timeout: Duration,
    pub duplicate_login: DuplicateLogin,
    pub max_frame_bytes: usize,
    pub max_prelogin_frame_bytes: usize,
    pub outbound_queue_bytes: usize,
    pub write_stall_timeout: Duration,
    pub max_uid_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct HeartbeatConfig {
    pub interval: Duration,
    pub timeout_factor: u32,
    pub grace: Duration,
}

impl HeartbeatConfig {
    /// How long a logged-in connection may stay silent before it is closed.
    pub fn timeout(&self) -> Duration {
        self.interval * self.timeout_factor + self.grace
    }
}

#[derive(Debug, Clone)]
pub struct PushApiConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub max_uids_per_request: usize,
    pub default_ack_timeout: Duration,
    pub max_ack_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// When set, SEND frames are posted here; otherwise the built-in relay delivers them.
    pub webhook_url: Option<String>,
    pub webhook_timeout: Duration,
    pub max_inflight: usize,
}

#[derive(Debug, Clone)]
pub struct XdpConfig {
    pub enabled: bool,
    /// None: the interface that owns the listen address (`lo` for 127.0.0.1).
    pub interface: Option<String>,
    pub attach_mode: AttachMode,
    /// None: `$GATEWAY_XDP_OBJECT`, then `gateway-xdp.o` beside the executable.
    pub object: Option<PathBuf>,
    /// Static blacklist of exact addresses, loaded at start.
    pub blacklist: Vec<IpAddr>,
    /// Count would-drops, drop nothing (trial a rule set before enforcing).
    pub monitor: bool,
    pub drop_fragments: bool,
    pub drop_malformed: bool,
    /// Per-source SYN token bucket on the listening ports; None: off.
    pub syn_limit: Option<(u32, u32)>,
    /// Pin maps and link in bpffs so the kernel keeps enforcing across restarts.
    pub pin_dir: Option<PathBuf>,
    /// Sampled drop events for debugging, (1 in N, at most per second);
    /// None: off (the default: a log line per drop is no defense under flood).
    pub drop_events: Option<(u32, u32)>,
}

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub etcd_endpoints: Vec<String>,
    pub advertise_addr: Option<String>,
}

/// Recommended kernel settings checked by `gateway doctor`.
#[derive(Debug, Clone)]
pub struct HostConfig {
    pub tcp_syncookies: i64,
    pub tcp_max_syn_backlog: i64,
    pub tcp_synack_retries: i64,
    pub tcp_abort_on_overflow: i64,
}

#[derive(Debug, Clone)]
pub struct ShutdownConfig {
    pub grace: Duration,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub level: String,
    pub json: bool,
}

/// Abuse detectors (see `crate::abuse` and `docs/config.md`).
#[derive(Debug, Clone)]
pub struct AbuseConfig {
    /// Per-source detectors (rate, concurrency, pre-login). The global cap
    /// (`listen.max_connections`) and per-connection packet rate always apply.
    pub enabled: bool,
    pub conn_rate: u32,
    pub conn_rate_window: Duration,
    pub auto_ban_ttl: Duration,
    /// `Monitor` records auto-bans without enforcing them (a dry run).
    pub auto_ban_mode: crate::bans::BanMode,
    pub packet_rate: u32,
    pub packet_rate_window: Duration,
    pub packet_rate_strikes: u32,
    pub max_conns_per_source: u32,
    pub max_prelogin_per_source: u32,
    /// IPv6 sources are counted (and auto-banned) per prefix of this length:
    /// one host usually owns a whole /64.
    pub ipv6_prefix: u8,
    /// Never auto-banned nor limited per source (staff bans still apply).
    pub allowlist: Vec<crate::defense::IpNet>,
    pub max_tracked_sources: usize,
}

/// The ban store (see `crate::bans`).
#[derive(Debug, Clone)]
pub struct BansConfig {
    /// Default `<node.state_dir>/bans.json`.
    pub file: PathBuf,
    pub max_entries: usize,
    /// Close live connections from a newly banned address or network.
    pub close_live_connections: bool,
    /// etcd key prefix for replicated bans.
    pub etcd_prefix: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminToken {
    /// Who, in the audit log.
    pub name: String,
    pub token: String,
}

/// The admin API for security staff (see `crate::admin`, `docs/admin-api.md`).
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
    pub tokens: Vec<AdminToken>,
    /// Default `<node.state_dir>/audit.log`.
    pub audit_file: PathBuf,
    pub audit_max_bytes: u64,
    pub max_body_bytes: usize,
    pub max_bulk: usize,
}

impl Config {
    /// Built-in defaults: what `cargo xtask run` uses with no file.
    pub fn defaults() -> Config {
        match RawConfig::default().validate(&Overrides::default()) {
            Ok(c) => c,
            // The defaults are covered by a unit test; reaching this is a bug.
            Err(e) => panic!("built-in defaults are invalid: {e:?}"),
        }
    }

    /// Load `path` (or the built-in defaults when `None`) and apply overrides.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let raw = match path {
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).map_err(|source| ConfigError::Read { path: p.to_path_buf(), source })?;
                RawConfig::parse(&text)
                    .map_err(|message| ConfigError::Parse { path: p.display().to_string(), message })?
            }
            None => RawConfig::default(),
        };
        raw.validate(overrides).map_err(ConfigError::Invalid)
    }
}

/// Parse a duration such as `10s`, `270s`, `1h`, `500ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e} (expected a duration such as \"10s\", \"500ms\" or \"1h\")"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_safe() {
        let c = Config::defaults();
        assert_eq!(c.listen.addr, "127.0.0.1:7000".parse().unwrap());
        assert!(c.listen.plaintext_addr.is_none(), "plaintext must be off by default");
        assert_eq!(c.heartbeat.interval, Duration::from_secs(270));
        assert_eq!(c.session.login_timeout, Duration::from_secs(10));
        assert_eq!(c.session.duplicate_login, DuplicateLogin::KickOld);
        assert!(c.push_api.listen.ip().is_loopback());
        assert!(c.session.max_prelogin_frame_bytes < c.session.max_frame_bytes);
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let text = r#"
            [listen]
            addr = "not-an-address"
            max_connections = 0
            [heartbeat]
            interval = "soon"
            [session]
            duplicate_login = "both"
            [tls]
            cert_file = "/x.pem"
        "#;
        let raw = RawConfig::parse(text).expect("syntax is fine");
        let errs = raw.validate(&Overrides::default()).expect_err("must be invalid");
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        for k in
            ["listen.addr", "listen.max_connections", "heartbeat.interval", "session.duplicate_login", "tls.key_file"]
        {
            assert!(keys.contains(&k), "expected an error for {k}, got {errs:?}");
        }
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let err = RawConfig::parse("[listen]\nadress = \"127.0.0.1:1\"\n").expect_err("typo must fail");
        assert!(err.contains("adress"), "error should name the key: {err}");
    }

    #[test]
    fn overrides_win_over_the_file() {
        let raw = RawConfig::parse("[listen]\naddr = \"127.0.0.1:1\"\n").unwrap();
        let o = Overrides {
            listen: Some("127.0.0.1:2".into()),
            node_id: Some("edge-7".into()),
            etcd_endpoints: Some(vec!["http://127.0.0.1:2379".into()]),
            ..Default::default()
        };
        let c = raw.validate(&o).unwrap();
        assert_eq!(c.listen.addr.port(), 2);
        assert_eq!(c.node.id, "edge-7");
        assert_eq!(c.cluster.etcd_endpoints.len(), 1);
    }

    #[test]
    fn drop_events_are_off_by_default_and_validated() {
        assert_eq!(Config::defaults().xdp.drop_events, None, "drop events must be off by default");
        let on = RawConfig::parse("[xdp]\ndrop_events = true\n").unwrap().validate(&Overrides::default()).unwrap();
        assert_eq!(on.xdp.drop_events, Some((1, 100)), "on: every drop, at most 100 a second");
        let bad = RawConfig::parse("[xdp]\ndrop_events_sample = 0\ndrop_events_per_sec = 0\n").unwrap();
        let errs = bad.validate(&Overrides::default()).unwrap_err();
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.contains(&"xdp.drop_events_sample") && keys.contains(&"xdp.drop_events_per_sec"), "{errs:?}");
        let too_many = RawConfig::parse("[xdp]\ndrop_events = true\ndrop_events_per_sec = 1000000\n").unwrap();
        assert!(too_many.validate(&Overrides::default()).is_err());
    }

    #[test]
    fn values_that_fail_open_are_refused() {
        let raw = RawConfig::parse(
            "[auth]\nsecret = \"\"\n[session]\noutbound_queue_bytes = 0\n[heartbeat]\ntimeout_factor = 0\n",
        )
        .unwrap();
        let errs = raw.validate(&Overrides::default()).unwrap_err();
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.contains(&"auth.secret"), "{errs:?}");
        assert!(keys.contains(&"session.outbound_queue_bytes"), "{errs:?}");
        assert!(keys.contains(&"heartbeat.timeout_factor"), "{errs:?}");
    }
}
