//! Abuse detection: the design article's "限制建连速度" and "限制发包速度",
//! plus per-source concurrency limits.
//!
//! - [`window`]: the fixed-window counter everything here is built on.
//! - [`conn_rate`]: connections per second per source → auto-ban with a TTL.
//! - [`per_source`]: open and not-yet-logged-in sockets per source.
//! - [`packet_rate`]: frames per second per connection → drop, then disconnect.
//!
//! Each is plain data taking `now` as an argument, unit-tested with a fake
//! clock. [`Abuse`] is the thin shell the accept loop calls; what to do with a
//! verdict (ban, close, reply) is the caller's job.
//!
//! A *source* is an IPv4 address, or an IPv6 prefix (`abuse.ipv6_prefix`,
//! default /64): one IPv6 host usually owns a whole /64 and could otherwise
//! dodge every per-address limit by rotating addresses.

pub mod conn_rate;
pub mod packet_rate;
pub mod per_source;
pub mod window;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

pub use conn_rate::{ConnRate, RateVerdict};
pub use packet_rate::{FrameVerdict, PacketLimits, PacketRate};
pub use per_source::{Admission, PerSource};

use crate::config::AbuseConfig;
use crate::defense::rules::canonical;
use crate::defense::IpNet;

/// Detector names: metric labels, and `detector:<name>` in a ban's `by`.
pub mod detector {
    pub const CONN_RATE: &str = "conn_rate";
    pub const PER_SOURCE_OPEN: &str = "per_source_open";
    pub const PER_SOURCE_PRELOGIN: &str = "per_source_prelogin";
    pub const GLOBAL_CAP: &str = "global_cap";
    pub const PACKET_RATE_DROP: &str = "packet_rate_drop";
    pub const PACKET_RATE_DISCONNECT: &str = "packet_rate_disconnect";
}

/// The accept-time decision for one new connection.
#[derive(Debug)]
pub enum Admit {
    /// Serve it; the slot keeps the per-source counts right until dropped.
    Ok(SourceSlot),
    /// Close it (detector name for the metric).
    Refuse(&'static str),
    /// Over the connection rate: close it, and ban `source` when `first`.
    Ban { source: IpNet, count: u32, first: bool },
}

pub struct Abuse {
    cfg: AbuseConfig,
    // One lock each: the accept loop is the only writer of `conn_rate`, and
    // `per_source` sees one update per connect/login/close, far below what a
    // mutex can take. Shard these if profiles ever say otherwise.
    conn_rate: Mutex<ConnRate>,
    per_source: Arc<Mutex<PerSource>>,
}

impl Abuse {
    pub fn new(cfg: &AbuseConfig) -> Abuse {
        Abuse {
            conn_rate: Mutex::new(ConnRate::new(cfg.conn_rate, cfg.conn_rate_window, cfg.max_tracked_sources)),
            per_source: Arc::new(Mutex::new(PerSource::new(cfg.max_conns_per_source, cfg.max_prelogin_per_source))),
            cfg: cfg.clone(),
        }
    }

    /// The key `ip` is counted and auto-banned under.
    pub fn source(&self, ip: IpAddr) -> IpNet {
        source_key(ip, self.cfg.ipv6_prefix)
    }

    pub fn allowlisted(&self, ip: IpAddr) -> bool {
        self.cfg.allowlist.iter().any(|n| n.contains(ip))
    }

    pub fn packet_limits(&self) -> PacketLimits {
        PacketLimits {
            per_window: self.cfg.packet_rate,
            window: self.cfg.packet_rate_window,
            max_strikes: self.cfg.packet_rate_strikes,
        }
    }

    /// Run the per-source detectors for a connection accepted at `now`.
    pub fn on_accept(&self, ip: IpAddr, now: Instant) -> Admit {
        if !self.cfg.enabled || self.allowlisted(ip) {
            return Admit::Ok(SourceSlot::untracked());
        }
        let source = self.source(ip);
        // Rate first: a flood is counted even while its sockets are refused
        // for concurrency, so it still ends in a ban.
        if let RateVerdict::Exceeded { count, first } = self.conn_rate.lock().on_connect(source, now) {
            return Admit::Ban { source, count, first };
        }
        match self.per_source.lock().try_open(source) {
            Admission::Ok => Admit::Ok(SourceSlot { tracked: Some((self.per_source.clone(), source)), prelogin: true }),
            Admission::TooManyOpen => Admit::Refuse(detector::PER_SOURCE_OPEN),
            Admission::TooManyPrelogin => Admit::Refuse(detector::PER_SOURCE_PRELOGIN),
        }
    }

    pub fn tracked_sources(&self) -> usize {
        self.conn_rate.lock().tracked()
    }
}

/// IPv4 (and IPv4-mapped IPv6) as the address; IPv6 as its `/v6_prefix`.
pub fn source_key(ip: IpAddr, v6_prefix: u8) -> IpNet {
    match canonical(ip) {
        v4 @ IpAddr::V4(_) => IpNet::host(v4),
        v6 => IpNet::new(v6, v6_prefix).unwrap_or_else(|_| IpNet::host(v6)),
    }
}

/// One connection's share of its source's counts; released on drop.
#[derive(Debug)]
pub struct SourceSlot {
    tracked: Option<(Arc<Mutex<PerSource>>, IpNet)>,
    prelogin: bool,
}

impl SourceSlot {
    /// For allowlisted sources and when detection is off.
    pub fn untracked() -> SourceSlot {
        SourceSlot { tracked: None, prelogin: false }
    }

    pub fn logged_in(&mut self) {
        if std::mem::take(&mut self.prelogin) {
            if let Some((p, src)) = &self.tracked {
                p.lock().logged_in(*src);
            }
        }
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        if let Some((p, src)) = &self.tracked {
            p.lock().closed(*src, self.prelogin);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::time::Duration;

    fn cfg(edit: impl FnOnce(&mut AbuseConfig)) -> AbuseConfig {
        let mut c = Config::defaults().abuse;
        edit(&mut c);
        c
    }

    #[test]
    fn ipv6_sources_share_their_prefix() {
        let a = source_key("2001:db8:1:2:aaaa::1".parse().unwrap(), 64);
        let b = source_key("2001:db8:1:2:bbbb::9".parse().unwrap(), 64);
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        assert_eq!(source_key("::ffff:192.0.2.1".parse().unwrap(), 64).to_string(), "192.0.2.1");
    }

    #[test]
    fn rate_then_ban_and_slots_release() {
        let abuse = Abuse::new(&cfg(|c| {
            c.conn_rate = 2;
            c.max_conns_per_source = 1;
        }));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        let slot = match abuse.on_accept(ip, t0) {
            Admit::Ok(s) => s,
            other => panic!("first connection must be admitted, got {other:?}"),
        };
        assert!(matches!(abuse.on_accept(ip, t0), Admit::Refuse(detector::PER_SOURCE_OPEN)));
        assert!(matches!(abuse.on_accept(ip, t0), Admit::Ban { first: true, count: 3, .. }));
        drop(slot);
        let later = t0 + Duration::from_secs(1);
        assert!(matches!(abuse.on_accept(ip, later), Admit::Ok(_)), "slot released and a new window started");
    }

    #[test]
    fn allowlisted_and_disabled_are_never_limited() {
        let abuse = Abuse::new(&cfg(|c| {
            c.conn_rate = 1;
            c.allowlist = vec!["10.0.0.0/8".parse().unwrap()];
        }));
        let t0 = Instant::now();
        for _ in 0..10 {
            assert!(matches!(abuse.on_accept("10.1.2.3".parse().unwrap(), t0), Admit::Ok(_)));
        }
        let off = Abuse::new(&cfg(|c| {
            c.conn_rate = 1;
            c.enabled = false;
        }));
        for _ in 0..10 {
            assert!(matches!(off.on_accept("192.0.2.1".parse().unwrap(), t0), Admit::Ok(_)));
        }
    }

    #[test]
    fn prelogin_slot_released_by_login() {
        let abuse = Abuse::new(&cfg(|c| c.max_prelogin_per_source = 1));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        let Admit::Ok(mut s) = abuse.on_accept(ip, t0) else { panic!("admitted") };
        assert!(matches!(abuse.on_accept(ip, t0), Admit::Refuse(detector::PER_SOURCE_PRELOGIN)));
        s.logged_in();
        assert!(matches!(abuse.on_accept(ip, t0), Admit::Ok(_)));
    }
}
