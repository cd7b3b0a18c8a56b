//! The file as written: strings and numbers, every default in one place.
//!
//! Keep `config/gateway.toml` and `docs/config.md` in step with the defaults here.

use super::*;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub node: RawNode,
    pub listen: RawListen,
    pub tls: RawTls,
    pub auth: RawAuth,
    pub session: RawSession,
    pub heartbeat: RawHeartbeat,
    pub push_api: RawPushApi,
    pub upstream: RawUpstream,
    pub xdp: RawXdp,
    pub cluster: RawCluster,
    pub shutdown: RawShutdown,
    pub log: RawLog,
    pub abuse: RawAbuse,
    pub bans: RawBans,
    pub admin: RawAdmin,
    pub host: RawHost,
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            node: RawNode::default(),
            listen: RawListen::default(),
            tls: RawTls::default(),
            auth: RawAuth::default(),
            session: RawSession::default(),
            heartbeat: RawHeartbeat::default(),
            push_api: RawPushApi::default(),
            upstream: RawUpstream::default(),
            xdp: RawXdp::default(),
            cluster: RawCluster::default(),
            shutdown: RawShutdown::default(),
            log: RawLog::default(),
            abuse: RawAbuse::default(),
            bans: RawBans::default(),
            admin: RawAdmin::default(),
            host: RawHost::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawNode {
    pub id: String,
    pub state_dir: String,
}
impl Default for RawNode {
    fn default() -> Self {
        RawNode { id: String::new(), state_dir: "./state".into() }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawListen {
    pub addr: String,
    pub plaintext_addr: String,
    pub backlog: u32,
    pub max_connections: usize,
}
impl Default for RawListen {
    fn default() -> Self {
        RawListen {
            addr: "127.0.0.1:7000".into(),
            plaintext_addr: String::new(),
            backlog: 4096,
            max_connections: 100_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTls {
    pub cert_file: String,
    pub key_file: String,
    pub engine: String,
}
impl Default for RawTls {
    fn default() -> Self {
        RawTls { cert_file: String::new(), key_file: String::new(), engine: "lean".into() }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    pub algorithm: String,
    pub secret: Option<String>,
    pub secret_file: String,
    pub public_key_file: String,
    pub leeway: String,
}
impl Default for RawAuth {
    fn default() -> Self {
        RawAuth {
            algorithm: "HS256".into(),
            secret: None,
            secret_file: String::new(),
            public_key_file: String::new(),
            leeway: "30s".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSession {
    pub login_timeout: String,
    pub duplicate_login: String,
    pub max_frame_bytes: usize,
    pub max_prelogin_frame_bytes: usize,
    pub outbound_queue_bytes: usize,
    pub write_stall_timeout: String,
    pub max_uid_bytes: usize,
}
impl Default for RawSession {
    fn default() -> Self {
        RawSession {
            login_timeout: "10s".into(),
            duplicate_login: "kick_old".into(),
            max_frame_bytes: 64 * 1024,
            max_prelogin_frame_bytes: 4 * 1024,
            outbound_queue_bytes: 256 * 1024,
            write_stall_timeout: "30s".into(),
            max_uid_bytes: 128,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHeartbeat {
    pub interval: String,
    pub timeout_factor: u32,
    pub grace: String,
}
impl Default for RawHeartbeat {
    fn default() -> Self {
        RawHeartbeat { interval: "270s".into(), timeout_factor: 2, grace: "30s".into() }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPushApi {
    pub listen: String,
    pub max_body_bytes: usize,
    pub max_uids_per_request: usize,
    pub default_ack_timeout: String,
    pub max_ack_timeout: String,
}
impl Default for RawPushApi {
    fn default() -> Self {
        RawPushApi {
            listen: "127.0.0.1:7080".into(),
            max_body_bytes: 1024 * 1024,
            max_uids_per_request: 1000,
            default_ack_timeout: "5s".into(),
            max_ack_timeout: "60s".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUpstream {
    pub webhook_url: String,
    pub webhook_timeout: String,
    pub max_inflight: usize,
}
impl Default for RawUpstream {
    fn default() -> Self {
        RawUpstream { webhook_url: String::new(), webhook_timeout: "3s".into(), max_inflight: 1024 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawXdp {
    pub enabled: bool,
    pub interface: String,
    pub attach_mode: String,
    pub object: String,
    pub blacklist: Vec<String>,
    pub monitor: bool,
    pub drop_fragments: bool,
    pub drop_malformed: bool,
    pub syn_rate: u32,
    pub syn_burst: u32,
    pub pin: bool,
    pub pin_dir: String,
    pub drop_events: bool,
    pub drop_events_sample: u32,
    pub drop_events_per_sec: u32,
}
impl Default for RawXdp {
    fn default() -> Self {
        RawXdp {
            enabled: true,
            interface: String::new(),
            attach_mode: "auto".into(),
            object: String::new(),
            blacklist: Vec::new(),
            monitor: false,
            drop_fragments: false,
            drop_malformed: true,
            syn_rate: 1000,
            syn_burst: 2000,
            pin: false,
            pin_dir: String::new(),
            // Off: events are for debugging. When on, every drop is a
            // candidate and 100 lines a second is readable by a human and
            // harmless to the log pipeline even under a flood.
            drop_events: false,
            drop_events_sample: 1,
            drop_events_per_sec: 100,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCluster {
    pub etcd_endpoints: Vec<String>,
    pub advertise_addr: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHost {
    pub tcp_syncookies: i64,
    pub tcp_max_syn_backlog: i64,
    pub tcp_synack_retries: i64,
    pub tcp_abort_on_overflow: i64,
}
impl Default for RawHost {
    fn default() -> Self {
        RawHost { tcp_syncookies: 1, tcp_max_syn_backlog: 8192, tcp_synack_retries: 2, tcp_abort_on_overflow: 0 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawShutdown {
    pub grace: String,
}
impl Default for RawShutdown {
    fn default() -> Self {
        RawShutdown { grace: "10s".into() }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    pub level: String,
    pub format: String,
}
impl Default for RawLog {
    fn default() -> Self {
        RawLog { level: "info".into(), format: "text".into() }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAbuse {
    pub enabled: bool,
    pub conn_rate: u32,
    pub conn_rate_window: String,
    pub auto_ban_ttl: String,
    pub auto_ban_mode: String,
    pub packet_rate: u32,
    pub packet_rate_window: String,
    pub packet_rate_strikes: u32,
    pub max_conns_per_source: u32,
    pub max_prelogin_per_source: u32,
    pub ipv6_prefix: u8,
    pub allowlist: Vec<String>,
    pub max_tracked_sources: usize,
}
impl Default for RawAbuse {
    fn default() -> Self {
        RawAbuse {
            enabled: true,
            // The design article's figures: 100 connections/s per IP, 100 packets/s per connection.
            conn_rate: 100,
            conn_rate_window: "1s".into(),
            // Long enough to stop a reconnect loop, short enough that a NAT
            // shared with an attacker recovers without staff action.
            auto_ban_ttl: "10m".into(),
            auto_ban_mode: "enforce".into(),
            packet_rate: 100,
            packet_rate_window: "1s".into(),
            // Three bad seconds: a burst is forgiven, a sustained flood is not.
            packet_rate_strikes: 3,
            // Carrier-grade NAT puts many users behind one address.
            max_conns_per_source: 1000,
            max_prelogin_per_source: 200,
            ipv6_prefix: 64,
            allowlist: Vec::new(),
            // ~48 bytes each: a few MB at most.
            max_tracked_sources: 65_536,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBans {
    pub file: String,
    pub max_entries: usize,
    pub close_live_connections: bool,
    pub etcd_prefix: String,
}
impl Default for RawBans {
    fn default() -> Self {
        RawBans {
            file: String::new(),
            // The kernel's exact-ban map holds 65,536 per family.
            max_entries: 65_536,
            close_live_connections: true,
            etcd_prefix: "/gateway/bans/".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdminToken {
    pub name: String,
    pub token: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    pub enabled: bool,
    pub listen: String,
    pub tokens: Vec<RawAdminToken>,
    pub audit_file: String,
    pub audit_max_bytes: u64,
    pub max_body_bytes: usize,
    pub max_bulk: usize,
}
impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            enabled: true,
            // Loopback: bans are powerful, and without tokens the API is open.
            listen: "127.0.0.1:7081".into(),
            tokens: Vec::new(),
            audit_file: String::new(),
            audit_max_bytes: 64 * 1024 * 1024,
            max_body_bytes: 1024 * 1024,
            max_bulk: 1000,
        }
    }
}

/// Collects key errors while converting.
struct Check {
    errors: Vec<KeyError>,
}

impl Check {
    fn err(&mut self, key: &str, message: impl Into<String>) {
        self.errors.push(KeyError { key: key.to_string(), message: message.into() });
    }
    fn duration(&mut self, key: &str, value: &str) -> Duration {
        match parse_duration(value) {
            Ok(d) => d,
            Err(e) => {
                self.err(key, format!("{value:?}: {e}"));
                Duration::ZERO
            }
        }
    }
    fn positive_duration(&mut self, key: &str, value: &str) -> Duration {
        let d = self.duration(key, value);
        if d.is_zero() && parse_duration(value).is_ok() {
            self.err(key, "must be greater than zero");
        }
        d
    }
    fn socket_addr(&mut self, key: &str, value: &str) -> SocketAddr {
        match value.trim().parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                self.err(
                    key,
                    format!("{value:?} is not an IP:port address (e.g. \"127.0.0.1:7000\" or \"[::1]:7000\")"),
                );
                SocketAddr::from(([0, 0, 0, 0], 0))
            }
        }
    }
    fn optional_path(value: &str) -> Option<PathBuf> {
        let v = value.trim();
        (!v.is_empty()).then(|| PathBuf::from(v))
    }
    fn at_least(&mut self, key: &str, value: usize, min: usize) {
        if value < min {
            self.err(key, format!("{value} is below the minimum of {min}"));
        }
    }
}

impl RawConfig {
    pub fn parse(text: &str) -> Result<RawConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    pub fn validate(self, o: &Overrides) -> Result<Config, Vec<KeyError>> {
        let mut c = Check { errors: Vec::new() };
        let r = self;

        let node_id = match o.node_id.clone().unwrap_or(r.node.id) {
            id if id.trim().is_empty() => default_node_id(),
            id => id,
        };
        if node_id.len() > 64 || !node_id.chars().all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch)) {
            c.err("node.id", format!("{node_id:?}: use at most 64 characters from [A-Za-z0-9._-]"));
        }
        let state_dir = o.state_dir.clone().unwrap_or_else(|| PathBuf::from(r.node.state_dir.trim()));
        if state_dir.as_os_str().is_empty() {
            c.err("node.state_dir", "must not be empty");
        }

        let listen_addr_raw = o.listen.clone().unwrap_or(r.listen.addr);
        let addr = c.socket_addr("listen.addr", &listen_addr_raw);
        let plaintext_addr = match r.listen.plaintext_addr.trim() {
            "" => None,
            v => Some(c.socket_addr("listen.plaintext_addr", v)),
        };
        if plaintext_addr.is_some() && plaintext_addr == Some(addr) {
            c.err("listen.plaintext_addr", "must differ from listen.addr");
        }
        c.at_least("listen.backlog", r.listen.backlog as usize, 16);
        c.at_least("listen.max_connections", r.listen.max_connections, 1);

        let cert_file = Check::optional_path(&r.tls.cert_file);
        let key_file = Check::optional_path(&r.tls.key_file);
        match (&cert_file, &key_file) {
            (Some(_), None) => c.err("tls.key_file", "tls.cert_file is set, so tls.key_file must be set too"),
            (None, Some(_)) => c.err("tls.cert_file", "tls.key_file is set, so tls.cert_file must be set too"),
            _ => {}
        }

        let engine = match r.tls.engine.trim() {
            "lean" => TlsEngine::Lean,
            "buffered" => TlsEngine::Buffered,
            other => {
                c.err("tls.engine", format!("{other:?}: expected \"lean\" or \"buffered\""));
                TlsEngine::Lean
            }
        };
        let algorithm = match r.auth.algorithm.trim().to_ascii_uppercase().as_str() {
            "HS256" => JwtAlgorithm::Hs256,
            "RS256" => JwtAlgorithm::Rs256,
            "ES256" => JwtAlgorithm::Es256,
            other => {
                c.err("auth.algorithm", format!("{other:?}: expected HS256, RS256 or ES256"));
                JwtAlgorithm::Hs256
            }
        };
        let secret = r.auth.secret.clone();
        if let Some(s) = &secret {
            if s.len() < 16 {
                c.err("auth.secret", "must be at least 16 bytes (an empty or short secret makes tokens forgeable)");
            }
        }
        let secret_file = Check::optional_path(&r.auth.secret_file);
        let public_key_file = Check::optional_path(&r.auth.public_key_file);
        match algorithm {
            JwtAlgorithm::Hs256 => {
                if secret.is_some() && secret_file.is_some() {
                    c.err("auth.secret_file", "set either auth.secret or auth.secret_file, not both");
                }
            }
            JwtAlgorithm::Rs256 | JwtAlgorithm::Es256 => {
                if public_key_file.is_none() {
                    c.err("auth.public_key_file", "required for RS256 and ES256 (a PEM public key)");
                }
            }
        }
        let leeway = c.duration("auth.leeway", &r.auth.leeway);

        let login_timeout = c.positive_duration("session.login_timeout", &r.session.login_timeout);
        let duplicate_login = match r.session.duplicate_login.trim() {
            "kick_old" => DuplicateLogin::KickOld,
            "refuse_new" => DuplicateLogin::RefuseNew,
            other => {
                c.err("session.duplicate_login", format!("{other:?}: expected \"kick_old\" or \"refuse_new\""));
                DuplicateLogin::KickOld
            }
        };
        c.at_least("session.max_frame_bytes", r.session.max_frame_bytes, 256);
        if r.session.max_frame_bytes > 16 * 1024 * 1024 {
            c.err("session.max_frame_bytes", "must be at most 16 MiB");
        }
        c.at_least("session.max_prelogin_frame_bytes", r.session.max_prelogin_frame_bytes, 256);
        if r.session.max_prelogin_frame_bytes > r.session.max_frame_bytes {
            c.err("session.max_prelogin_frame_bytes", "must not exceed session.max_frame_bytes");
        }
        c.at_least("session.outbound_queue_bytes", r.session.outbound_queue_bytes, 1);
        // Room for one maximal frame plus the PUSH header (push id, sender
        // uid), or a single maximal push would count as a slow consumer.
        let min_queue = r.session.max_frame_bytes + crate::protocol::HEADER_LEN + 8 + 1 + 255;
        if r.session.outbound_queue_bytes > 0 && r.session.outbound_queue_bytes < min_queue {
            c.err(
                "session.outbound_queue_bytes",
                format!("must be at least session.max_frame_bytes + 276 ({min_queue}), or one maximal push would count as a slow consumer"),
            );
        }
        let write_stall_timeout = c.positive_duration("session.write_stall_timeout", &r.session.write_stall_timeout);
        c.at_least("session.max_uid_bytes", r.session.max_uid_bytes, 1);
        if r.session.max_uid_bytes > 255 {
            c.err("session.max_uid_bytes", "must be at most 255 (uids travel as a length-prefixed string)");
        }

        let interval = c.positive_duration("heartbeat.interval", &r.heartbeat.interval);
        if r.heartbeat.timeout_factor == 0 {
            c.err("heartbeat.timeout_factor", "must be at least 1, or every connection times out at once");
        }
        let grace = c.duration("heartbeat.grace", &r.heartbeat.grace);
        if interval > Duration::from_secs(24 * 3600) {
            c.err("heartbeat.interval", "must be at most 24h");
        }
        if interval.subsec_nanos() != 0 {
            // LOGIN_ACK tells clients the interval in whole seconds.
            c.err("heartbeat.interval", "must be a whole number of seconds (LOGIN_ACK carries seconds)");
        }
        if r.heartbeat.timeout_factor > 100 {
            c.err("heartbeat.timeout_factor", "must be at most 100");
        }
        if grace > Duration::from_secs(24 * 3600) {
            c.err("heartbeat.grace", "must be at most 24h");
        }

        let push_listen_raw = o.push_listen.clone().unwrap_or(r.push_api.listen);
        let push_listen = c.socket_addr("push_api.listen", &push_listen_raw);
        c.at_least("push_api.max_body_bytes", r.push_api.max_body_bytes, 1024);
        c.at_least("push_api.max_uids_per_request", r.push_api.max_uids_per_request, 1);
        let default_ack_timeout = c.positive_duration("push_api.default_ack_timeout", &r.push_api.default_ack_timeout);
        let max_ack_timeout = c.positive_duration("push_api.max_ack_timeout", &r.push_api.max_ack_timeout);
        if default_ack_timeout > max_ack_timeout {
            c.err("push_api.default_ack_timeout", "must not exceed push_api.max_ack_timeout");
        }

        let webhook_url = match r.upstream.webhook_url.trim() {
            "" => None,
            u if u.starts_with("http://") || u.starts_with("https://") => Some(u.to_string()),
            u => {
                c.err("upstream.webhook_url", format!("{u:?}: must start with http:// or https://"));
                None
            }
        };
        let webhook_timeout = c.positive_duration("upstream.webhook_timeout", &r.upstream.webhook_timeout);
        c.at_least("upstream.max_inflight", r.upstream.max_inflight, 1);

        let attach_mode = match r.xdp.attach_mode.trim() {
            "auto" => AttachMode::Auto,
            "native" => AttachMode::Native,
            "skb" => AttachMode::Skb,
            other => {
                c.err("xdp.attach_mode", format!("{other:?}: expected \"auto\", \"native\" or \"skb\""));
                AttachMode::Auto
            }
        };
        let mut blacklist = Vec::new();
        for (i, entry) in r.xdp.blacklist.iter().enumerate() {
            match entry.trim().parse::<IpAddr>() {
                Ok(ip) => blacklist.push(ip),
                Err(_) => c.err(&format!("xdp.blacklist[{i}]"), format!("{entry:?} is not an IPv4 or IPv6 address")),
            }
        }

        let syn_limit = match (r.xdp.syn_rate, r.xdp.syn_burst) {
            (0, _) => None,
            (rate, _) if rate > 100_000 => {
                c.err("xdp.syn_rate", format!("{rate} per second is over 100000 (0 turns the SYN limiter off)"));
                None
            }
            (_, 0) => {
                c.err("xdp.syn_burst", "must be at least 1: 0 would drop every new connection (set xdp.syn_rate = 0 to turn the limiter off)");
                None
            }
            (_, burst) if burst > 1_000_000 => {
                c.err("xdp.syn_burst", format!("{burst} is over 1000000"));
                None
            }
            (rate, burst) => Some((rate, burst)),
        };
        // Checked even while off, so turning events on later cannot surprise.
        if r.xdp.drop_events_sample == 0 {
            c.err("xdp.drop_events_sample", "must be at least 1 (1 = every drop, 10 = one drop in ten)");
        }
        let max = gateway_common::EVENTS_MAX_PER_SEC;
        if r.xdp.drop_events_per_sec == 0 || r.xdp.drop_events_per_sec > max {
            c.err(
                "xdp.drop_events_per_sec",
                format!(
                    "{} is outside 1..={max} (set xdp.drop_events = false to turn events off)",
                    r.xdp.drop_events_per_sec
                ),
            );
        }
        let drop_events = r.xdp.drop_events.then_some((r.xdp.drop_events_sample, r.xdp.drop_events_per_sec));
        let pin_dir = match (r.xdp.pin, r.xdp.pin_dir.trim()) {
            (false, "") => None,
            (false, _) => {
                c.err("xdp.pin_dir", "set, but xdp.pin is false: set xdp.pin = true to pin, or remove xdp.pin_dir");
                None
            }
            (true, "") => Some(crate::defense::pins::default_dir(&node_id)),
            (true, d) if !d.starts_with('/') => {
                c.err(
                    "xdp.pin_dir",
                    format!("{d:?} must be an absolute path in bpffs (e.g. /sys/fs/bpf/im-gateway/<node-id>)"),
                );
                None
            }
            (true, d) => Some(PathBuf::from(d)),
        };

        let etcd_endpoints = o.etcd_endpoints.clone().unwrap_or(r.cluster.etcd_endpoints);
        for (i, e) in etcd_endpoints.iter().enumerate() {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                c.err(&format!("cluster.etcd_endpoints[{i}]"), format!("{e:?}: expected http://host:port"));
            }
        }

        let h = &r.host;
        if !(0..=2).contains(&h.tcp_syncookies) {
            c.err("host.tcp_syncookies", "0, 1 or 2 (1: cookies when the SYN queue overflows)");
        }
        if h.tcp_syncookies == 0 {
            c.err(
                "host.tcp_syncookies",
                "0 would recommend turning SYN cookies off on an edge host facing floods; use 1 or 2",
            );
        }
        if !(128..=1 << 20).contains(&h.tcp_max_syn_backlog) {
            c.err("host.tcp_max_syn_backlog", "between 128 and 1048576");
        }
        if !(1..=10).contains(&h.tcp_synack_retries) {
            c.err("host.tcp_synack_retries", "between 1 and 10");
        }
        if !(0..=1).contains(&h.tcp_abort_on_overflow) {
            c.err("host.tcp_abort_on_overflow", "0 or 1");
        }

        let shutdown_grace = c.duration("shutdown.grace", &r.shutdown.grace);
        let json = match r.log.format.trim() {
            "text" => false,
            "json" => true,
            other => {
                c.err("log.format", format!("{other:?}: expected \"text\" or \"json\""));
                false
            }
        };
        if tracing_subscriber::EnvFilter::try_new(&r.log.level).is_err() {
            c.err("log.level", format!("{:?} is not a valid filter (e.g. \"info\" or \"gateway=debug\")", r.log.level));
        }

        let abuse = validate_abuse(&mut c, &r.abuse);
        let bans = validate_bans(&mut c, &r.bans, &state_dir);
        let admin = validate_admin(&mut c, r.admin, o, &state_dir);
        // Two listeners on one address would fail at bind; say which keys clash now.
        let mut seen: Vec<(&str, SocketAddr)> = vec![("listen.addr", addr), ("push_api.listen", push_listen)];
        seen.extend(plaintext_addr.map(|a| ("listen.plaintext_addr", a)));
        if admin.enabled {
            seen.push(("admin.listen", admin.listen));
        }
        for (i, (k1, a1)) in seen.iter().enumerate() {
            for (k2, a2) in &seen[i + 1..] {
                if a1 == a2 && a1.port() != 0 {
                    c.err(k2, format!("{a2} is also {k1}: every listener needs its own address"));
                }
            }
        }

        if !c.errors.is_empty() {
            return Err(c.errors);
        }
        Ok(Config {
            node: NodeConfig { id: node_id, state_dir },
            listen: ListenConfig {
                addr,
                plaintext_addr,
                backlog: r.listen.backlog,
                max_connections: r.listen.max_connections,
            },
            tls: TlsConfig { cert_file, key_file, engine },
            auth: AuthConfig { algorithm, secret, secret_file, public_key_file, leeway },
            session: SessionConfig {
                login_timeout,
                duplicate_login,
                max_frame_bytes: r.session.max_frame_bytes,
                max_prelogin_frame_bytes: r.session.max_prelogin_frame_bytes,
                outbound_queue_bytes: r.session.outbound_queue_bytes,
                write_stall_timeout,
                max_uid_bytes: r.session.max_uid_bytes,
            },
            heartbeat: HeartbeatConfig { interval, timeout_factor: r.heartbeat.timeout_factor, grace },
            push_api: PushApiConfig {
                listen: push_listen,
                max_body_bytes: r.push_api.max_body_bytes,
                max_uids_per_request: r.push_api.max_uids_per_request,
                default_ack_timeout,
                max_ack_timeout,
            },
            upstream: UpstreamConfig { webhook_url, webhook_timeout, max_inflight: r.upstream.max_inflight },
            xdp: XdpConfig {
                enabled: r.xdp.enabled,
                interface: Check::optional_path(&r.xdp.interface).map(|p| p.display().to_string()),
                attach_mode,
                object: Check::optional_path(&r.xdp.object),
                blacklist,
                monitor: r.xdp.monitor,
                drop_fragments: r.xdp.drop_fragments,
                drop_malformed: r.xdp.drop_malformed,
                syn_limit,
                pin_dir,
                drop_events,
            },
            cluster: ClusterConfig {
                etcd_endpoints,
                advertise_addr: Some(r.cluster.advertise_addr.trim().to_string()).filter(|s| !s.is_empty()),
            },
            shutdown: ShutdownConfig { grace: shutdown_grace },
            host: HostConfig {
                tcp_syncookies: r.host.tcp_syncookies,
                tcp_max_syn_backlog: r.host.tcp_max_syn_backlog,
                tcp_synack_retries: r.host.tcp_synack_retries,
                tcp_abort_on_overflow: r.host.tcp_abort_on_overflow,
            },
            log: LogConfig { level: r.log.level, json },
            abuse,
            bans,
            admin,
        })
    }
}

fn validate_abuse(c: &mut Check, r: &RawAbuse) -> AbuseConfig {
    // A zero limit would refuse everyone; "off" is `abuse.enabled = false`.
    for (key, v) in [
        ("abuse.conn_rate", r.conn_rate),
        ("abuse.packet_rate", r.packet_rate),
        ("abuse.packet_rate_strikes", r.packet_rate_strikes),
        ("abuse.max_conns_per_source", r.max_conns_per_source),
        ("abuse.max_prelogin_per_source", r.max_prelogin_per_source),
    ] {
        c.at_least(key, v as usize, 1);
    }
    if r.max_prelogin_per_source > r.max_conns_per_source {
        c.err("abuse.max_prelogin_per_source", "must not exceed abuse.max_conns_per_source");
    }
    let conn_rate_window = c.positive_duration("abuse.conn_rate_window", &r.conn_rate_window);
    let packet_rate_window = c.positive_duration("abuse.packet_rate_window", &r.packet_rate_window);
    let auto_ban_ttl = c.positive_duration("abuse.auto_ban_ttl", &r.auto_ban_ttl);
    let auto_ban_mode = match r.auto_ban_mode.trim().parse::<crate::bans::BanMode>() {
        Ok(m) => m,
        Err(e) => {
            c.err("abuse.auto_ban_mode", e);
            crate::bans::BanMode::Enforce
        }
    };
    if !(1..=128).contains(&r.ipv6_prefix) {
        c.err(
            "abuse.ipv6_prefix",
            format!("{} must be between 1 and 128 (default 64: one host usually owns a /64)", r.ipv6_prefix),
        );
    }
    let mut allowlist = Vec::new();
    for (i, entry) in r.allowlist.iter().enumerate() {
        match entry.parse::<crate::defense::IpNet>() {
            Ok(n) => allowlist.push(n),
            Err(e) => c.err(&format!("abuse.allowlist[{i}]"), e.to_string()),
        }
    }
    c.at_least("abuse.max_tracked_sources", r.max_tracked_sources, 16);
    AbuseConfig {
        enabled: r.enabled,
        conn_rate: r.conn_rate,
        conn_rate_window,
        auto_ban_ttl,
        auto_ban_mode,
        packet_rate: r.packet_rate,
        packet_rate_window,
        packet_rate_strikes: r.packet_rate_strikes,
        max_conns_per_source: r.max_conns_per_source,
        max_prelogin_per_source: r.max_prelogin_per_source,
        ipv6_prefix: r.ipv6_prefix,
        allowlist,
        max_tracked_sources: r.max_tracked_sources,
    }
}

fn validate_bans(c: &mut Check, r: &RawBans, state_dir: &Path) -> BansConfig {
    c.at_least("bans.max_entries", r.max_entries, 1);
    let prefix = r.etcd_prefix.trim();
    if !prefix.starts_with('/') || !prefix.ends_with('/') || prefix.len() < 3 {
        c.err("bans.etcd_prefix", format!("{prefix:?}: expected a key prefix such as \"/gateway/bans/\""));
    }
    BansConfig {
        file: Check::optional_path(&r.file).unwrap_or_else(|| state_dir.join("bans.json")),
        max_entries: r.max_entries,
        close_live_connections: r.close_live_connections,
        etcd_prefix: prefix.to_string(),
    }
}

fn validate_admin(c: &mut Check, r: RawAdmin, o: &Overrides, state_dir: &Path) -> AdminConfig {
    let listen = c.socket_addr("admin.listen", o.admin_listen.as_deref().unwrap_or(&r.listen));
    let mut tokens: Vec<(String, AdminToken)> = r
        .tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| (format!("admin.tokens[{i}]"), AdminToken { name: t.name, token: t.token }))
        .collect();
    for (i, pair) in o.admin_tokens.iter().flatten().enumerate() {
        match pair.split_once(':') {
            Some((name, token)) => tokens
                .push((format!("GATEWAY_ADMIN_TOKENS[{i}]"), AdminToken { name: name.into(), token: token.into() })),
            None => c.err(&format!("GATEWAY_ADMIN_TOKENS[{i}]"), "expected name:token"),
        }
    }
    let mut names = std::collections::HashSet::new();
    let mut secrets = std::collections::HashSet::new();
    for (key, t) in &tokens {
        if t.name.is_empty()
            || t.name.len() > 64
            || !t.name.chars().all(|ch| ch.is_ascii_alphanumeric() || "-_.@".contains(ch))
        {
            c.err(
                key,
                format!("name {:?}: use 1-64 characters from [A-Za-z0-9._@-] (it is written to the audit log)", t.name),
            );
        }
        if t.token.len() < 16 {
            c.err(
                key,
                format!("token for {:?} must be at least 16 bytes (generate one with `openssl rand -hex 24`)", t.name),
            );
        }
        if !names.insert(t.name.clone()) {
            c.err(key, format!("duplicate token name {:?}: the audit log could not tell them apart", t.name));
        }
        if !secrets.insert(t.token.clone()) {
            c.err(key, "duplicate token: each person gets their own");
        }
    }
    if r.enabled && tokens.is_empty() && !listen.ip().is_loopback() {
        c.err(
            "admin.tokens",
            format!("admin.listen {listen} is not loopback, so at least one token is required (or set admin.listen to 127.0.0.1)"),
        );
    }
    c.at_least("admin.max_body_bytes", r.max_body_bytes, 1024);
    c.at_least("admin.max_bulk", r.max_bulk, 1);
    c.at_least("admin.audit_max_bytes", r.audit_max_bytes as usize, 4096);
    AdminConfig {
        enabled: r.enabled,
        listen,
        tokens: tokens.into_iter().map(|(_, t)| t).collect(),
        audit_file: Check::optional_path(&r.audit_file).unwrap_or_else(|| state_dir.join("audit.log")),
        audit_max_bytes: r.audit_max_bytes,
        max_body_bytes: r.max_body_bytes,
        max_bulk: r.max_bulk,
    }
}

/// The host name, so two nodes on different hosts never share an id by default.
fn default_node_id() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        let name: String = String::from_utf8_lossy(&buf[..end])
            .chars()
            .map(|ch| if ch.is_ascii_alphanumeric() || "-_.".contains(ch) { ch } else { '-' })
            .take(64)
            .collect();
        if !name.is_empty() {
            return name;
        }
    }
    "gateway-node".to_string()
}
