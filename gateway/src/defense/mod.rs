//! Kernel-level defense: the XDP program's maps seen from userspace, and the
//! accept-time fallback that applies the same rules when XDP cannot be loaded.
//!
//! - [`rules`]: the rule set as plain data (allowlist, exact and CIDR bans,
//!   monitor mode, expiry) and `judge`, the kernel's decision redone in Rust.
//!   Sans-IO; it is both the fallback and the mirror that `is_blocked` reads.
//! - [`xdp`]: loading `gateway-xdp.o`, filling maps, attaching, counters.
//! - [`events`]: the optional sampled stream of drops (ring buffer) and the
//!   task that logs it, bounded.
//! - [`packet`]: the XDP program's per-frame decision in plain Rust, the
//!   reference the kernel is tested against.
//! - [`iface`]: which interface to attach to when the config names none.
//! - [`pins`]: pinned maps and link in bpffs, so enforcement outlives the
//!   process; `remove_all` is `gateway xdp detach`.
//! - [`syn_limit`]: the SYN token bucket redone per accepted connection, for
//!   the fallback.
//!
//! [`Defense::start`] never fails: when XDP cannot be used it logs exactly why
//! (with the fix) and the gateway enforces the same list at accept time.
//! Whatever the mode, `is_blocked` is also checked at accept, because XDP
//! covers one interface and the listener may be reachable through others.

pub mod events;
pub mod iface;
pub mod packet;
pub mod pins;
pub mod rules;
pub mod syn_limit;
pub mod xdp;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use gateway_common::Counter;
use parking_lot::{Mutex, RwLock};

pub use events::EventSampling;
pub use rules::{IpNet, IpNetError, Judgement, Rule, RuleKind, RuleSet, Table};
pub use xdp::{KernelPolicy, SynLimit, XdpError};

use crate::config::XdpConfig;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enforcement {
    /// The XDP program is attached; the kernel drops blacklisted sources.
    /// `mode` is "native" or "skb".
    Xdp { interface: String, mode: String },
    /// XDP is unavailable; the same list is checked at accept.
    Userspace { reason: String },
}

impl std::fmt::Display for Enforcement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Enforcement::Xdp { interface, mode } => write!(f, "xdp on {interface} ({mode} mode)"),
            Enforcement::Userspace { reason } => write!(f, "userspace accept-time checks ({reason})"),
        }
    }
}

/// Errors a caller of `add`/`remove` can act on.
#[derive(Debug, thiserror::Error)]
pub enum DefenseError {
    #[error("the {table} for IPv{family} is full ({capacity} entries); remove entries or use a CIDR rule")]
    Full { table: &'static str, family: u8, capacity: usize },
    #[error(transparent)]
    Kernel(#[from] XdpError),
    #[error(transparent)]
    Pin(#[from] pins::PinError),
}

/// Start-up choices beyond [`XdpConfig`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pub policy: KernelPolicy,
    /// Pin maps and link here (e.g. [`pins::default_dir`] of the node id) so
    /// the kernel keeps enforcing across restarts and crashes; None: the
    /// program is detached when the gateway exits.
    pub pin_dir: Option<PathBuf>,
}

impl Options {
    /// Default policy for the listening port, no pinning.
    pub fn for_listen(listen: SocketAddr) -> Options {
        Options { policy: KernelPolicy::for_port(listen.port()), pin_dir: None }
    }
}

pub struct Defense {
    enforcement: Enforcement,
    /// Mirror of the kernel maps (or the whole truth in userspace mode).
    rules: RwLock<RuleSet>,
    /// Held while a change goes to the kernel, so the mirror and the maps are
    /// updated in the same order by concurrent callers.
    kernel: Mutex<Option<xdp::Kernel>>,
    /// Accept-time judgements, used as the counters in userspace mode.
    accept_counts: [AtomicU64; Counter::COUNT as usize],
    /// Userspace mode only: the SYN limiter, one token per accepted connection.
    syn: Mutex<Option<syn_limit::SourceBuckets>>,
    /// XDP mode: the drop-event ring buffer until [`Defense::spawn_event_reader`]
    /// takes it. Taken even while events are off, so `set_policy` can turn
    /// them on without a reader restart.
    event_ring: Mutex<Option<aya::maps::RingBuf<aya::maps::MapData>>>,
    /// The reader's log bound: the policy's `per_sec`, 0 while events are off.
    events_per_sec: Arc<AtomicU32>,
}

impl Defense {
    /// Starts with [`Options::for_listen`]: default policy, no pinning.
    pub fn start(cfg: &XdpConfig, listen: SocketAddr) -> Defense {
        Defense::start_with(cfg, listen, Options::for_listen(listen))
    }

    /// Loads and attaches the XDP program per `cfg`, or falls back to
    /// accept-time checks and says why. Never fails.
    pub fn start_with(cfg: &XdpConfig, listen: SocketAddr, opts: Options) -> Defense {
        let policy = opts.policy;
        let mut rules = RuleSet::default();
        rules.monitor = policy.monitor;
        let configured: Vec<Rule> = cfg.blacklist.iter().map(|ip| Rule::ban(IpNet::host(*ip))).collect();
        let (mut kernel, enforcement) = if cfg.enabled {
            match Self::start_kernel(cfg, &policy, listen, &configured, opts.pin_dir.as_deref()) {
                Ok(k) => {
                    // State of the previous run first, so the config wins.
                    for r in &k.adopted {
                        rules.insert(*r);
                    }
                    tracing::info!(
                        interface = %k.interface,
                        mode = k.mode,
                        entries = cfg.blacklist.len(),
                        pinned = ?k.pin_dir().map(Path::display),
                        adopted = k.adopted.len(),
                        link_reused = k.link_reused,
                        "XDP defense active"
                    );
                    let e = Enforcement::Xdp { interface: k.interface.clone(), mode: k.mode.to_string() };
                    (Some(k), e)
                }
                Err(reason) => {
                    tracing::warn!(%reason, "XDP defense unavailable; enforcing the blacklist at accept time instead");
                    if let Some(dir) = opts.pin_dir.as_deref() {
                        let stale = pins::links(dir);
                        if !stale.is_empty() {
                            // The old program keeps running on its old list, and
                            // nothing this process does will change that list.
                            tracing::warn!(
                                pin_dir = %dir.display(),
                                links = ?stale.iter().map(|(_, i, m)| format!("{i} ({m})")).collect::<Vec<_>>(),
                                "a previous gateway's XDP program is still attached through pins and enforces its old list; run `gateway xdp detach` to remove it"
                            );
                        }
                    }
                    (None, Enforcement::Userspace { reason })
                }
            }
        } else {
            tracing::info!("XDP disabled by xdp.enabled = false; enforcing the blacklist at accept time");
            (None, Enforcement::Userspace { reason: "disabled by xdp.enabled = false".into() })
        };
        for r in configured {
            rules.insert(r);
        }
        let syn = match (&kernel, policy.syn_limit) {
            (None, Some(limit)) => {
                Some(syn_limit::SourceBuckets::new(limit, gateway_common::SYN_BUCKETS_CAPACITY as usize))
            }
            _ => None,
        };
        let event_ring = kernel.as_mut().and_then(xdp::Kernel::take_events);
        Defense {
            enforcement,
            rules: RwLock::new(rules),
            kernel: Mutex::new(kernel),
            accept_counts: std::array::from_fn(|_| AtomicU64::new(0)),
            syn: Mutex::new(syn),
            event_ring: Mutex::new(event_ring),
            events_per_sec: Arc::new(AtomicU32::new(policy.events.map_or(0, |e| e.per_sec))),
        }
    }

    fn start_kernel(
        cfg: &XdpConfig,
        policy: &KernelPolicy,
        listen: SocketAddr,
        rules: &[Rule],
        pins: Option<&Path>,
    ) -> Result<xdp::Kernel, String> {
        let interface = match &cfg.interface {
            Some(i) => i.clone(),
            None => iface::for_listen_addr(listen.ip()).map_err(|e| e.to_string())?,
        };
        let object = xdp::object_path(cfg.object.as_deref());
        xdp::Kernel::start(&object, &interface, cfg.attach_mode, policy, rules, pins).map_err(|e| e.to_string())
    }

    /// `gateway xdp detach`: unpins the link (detaching the program) and the
    /// maps in `pin_dir`, and removes the folder. Returns what was removed.
    pub fn detach_pinned(pin_dir: &Path) -> Result<Vec<PathBuf>, DefenseError> {
        Ok(pins::remove_all(pin_dir)?)
    }

    /// `gateway xdp status`: what is pinned in `pin_dir` (links, exact bans,
    /// counters), readable while no gateway runs.
    pub fn pinned_status(pin_dir: &Path) -> Result<pins::Status, DefenseError> {
        Ok(pins::status(pin_dir)?)
    }

    pub fn enforcement(&self) -> &Enforcement {
        &self.enforcement
    }

    /// Accept-time check: one read lock and a few hash probes. Treats
    /// `::ffff:a.b.c.d` as `a.b.c.d`.
    pub fn is_blocked(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let (mut j, monitor) = {
            let rules = self.rules.read();
            (rules.judge(ip, now), rules.monitor)
        };
        let userspace = matches!(self.enforcement, Enforcement::Userspace { .. });
        if userspace && !j.drop && j.reason != Counter::PassAllowlist {
            // The kernel's L4 stage: one connection = one SYN.
            if let Some(b) = self.syn.lock().as_mut() {
                if !b.take(ip, now) {
                    j = if monitor {
                        Judgement { drop: false, reason: Counter::MonitorSynRate }
                    } else {
                        Judgement { drop: true, reason: Counter::DropSynRate }
                    };
                }
            }
        }
        if userspace || j.drop {
            self.accept_counts[j.reason as usize].fetch_add(1, Ordering::Relaxed);
            let v = if j.drop { Counter::VerdictDrop } else { Counter::VerdictPass };
            self.accept_counts[v as usize].fetch_add(1, Ordering::Relaxed);
        }
        j.drop
    }

    /// Changes the global knobs (monitor, fragment/malformed verdicts, SYN
    /// limit, listening ports) in the kernel and the fallback alike.
    pub fn set_policy(&self, policy: KernelPolicy) -> Result<(), DefenseError> {
        let mut kernel = self.kernel.lock();
        if let Some(k) = kernel.as_mut() {
            k.set_policy(&policy)?;
        } else {
            let mut syn = self.syn.lock();
            let same = syn.as_ref().map(|b| b.limit()) == policy.syn_limit;
            if !same {
                *syn = policy
                    .syn_limit
                    .map(|l| syn_limit::SourceBuckets::new(l, gateway_common::SYN_BUCKETS_CAPACITY as usize));
            }
        }
        self.events_per_sec.store(policy.events.map_or(0, |e| e.per_sec), Ordering::Relaxed);
        self.rules.write().monitor = policy.monitor;
        Ok(())
    }

    /// XDP mode: spawns the task that logs drop events (see [`events`]); it
    /// idles while events are off. None in userspace mode, or when already
    /// spawned. Must be called inside a tokio runtime.
    pub fn spawn_event_reader(&self) -> Option<tokio::task::JoinHandle<()>> {
        let ring = self.event_ring.lock().take()?;
        match events::Reader::new(ring, self.events_per_sec.clone()) {
            Ok(r) => Some(tokio::spawn(r.run())),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the drop-event ring buffer; xdp.drop_events will log nothing");
                None
            }
        }
    }

    /// Drop-event bookkeeping by stable name ([`gateway_common::EventStat::name`]);
    /// empty in userspace mode (accept-time checks emit no events).
    pub fn event_stats(&self) -> Vec<(&'static str, u64)> {
        match self.kernel.lock().as_ref() {
            Some(k) => k.event_stats().into_iter().map(|(s, v)| (s.name(), v)).collect(),
            None => Vec::new(),
        }
    }

    /// Bans one address (exact, enforcing, no expiry).
    pub fn add(&self, ip: IpAddr) -> Result<(), DefenseError> {
        self.add_rule(Rule::ban(IpNet::host(ip)))
    }

    /// Lifts an exact ban; `Ok(false)` when there was none.
    pub fn remove(&self, ip: IpAddr) -> Result<bool, DefenseError> {
        self.remove_rule(IpNet::host(ip), RuleKind::Ban)
    }

    /// Exact bans, sorted.
    pub fn list(&self) -> Vec<IpAddr> {
        self.rules
            .read()
            .rules()
            .into_iter()
            .filter(|r| r.kind == RuleKind::Ban && r.net.is_host())
            .map(|r| r.net.addr())
            .collect()
    }

    /// Inserts or replaces an allow/ban rule (exact or CIDR) in the kernel and
    /// the mirror. A full table is an error, never an eviction.
    pub fn add_rule(&self, rule: Rule) -> Result<(), DefenseError> {
        let mut kernel = self.kernel.lock();
        if self.rules.read().would_overflow(&rule) {
            let table = Table::of(&rule);
            let family = if rule.net.addr().is_ipv4() { 4 } else { 6 };
            return Err(DefenseError::Full { table: table.name(), family, capacity: table.capacity() });
        }
        if let Some(k) = kernel.as_mut() {
            k.insert(&rule)?;
        }
        self.rules.write().insert(rule);
        Ok(())
    }

    /// Removes the rule for exactly `net` of `kind`; `Ok(false)` if absent.
    pub fn remove_rule(&self, net: IpNet, kind: RuleKind) -> Result<bool, DefenseError> {
        let mut kernel = self.kernel.lock();
        let Some(rule) = self.rules.read().get(&net, kind).copied() else {
            return Ok(false);
        };
        if let Some(k) = kernel.as_mut() {
            k.remove(&rule)?;
        }
        self.rules.write().remove(&net, kind);
        Ok(true)
    }

    /// Every allow and ban rule.
    pub fn rules(&self) -> Vec<Rule> {
        self.rules.read().rules()
    }

    /// Removes expired rules from the mirror and the kernel (they already
    /// stopped matching; this frees their capacity). Returns how many.
    pub fn sweep_expired(&self) -> usize {
        let mut kernel = self.kernel.lock();
        let dead = self.rules.write().expire(Instant::now());
        if let Some(k) = kernel.as_mut() {
            for r in &dead {
                if let Err(e) = k.remove(r) {
                    tracing::warn!(rule = %r.net, error = %e, "could not remove an expired rule from the kernel");
                }
            }
        }
        dead.len()
    }

    /// Counters by stable name ([`Counter::name`]), in a fixed order. In XDP
    /// mode: packets judged by the kernel (summed over CPUs). In userspace
    /// mode: connections judged at accept.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        let kernel = self.kernel.lock();
        match kernel.as_ref() {
            Some(k) => k.counters().into_iter().map(|(c, v)| (c.name(), v)).collect(),
            None => Counter::ALL
                .iter()
                .map(|c| (c.name(), self.accept_counts[*c as usize].load(Ordering::Relaxed)))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AttachMode;

    fn cfg(enabled: bool, blacklist: &[&str]) -> XdpConfig {
        XdpConfig {
            enabled,
            interface: None,
            attach_mode: AttachMode::Auto,
            object: Some("/nonexistent/gateway-xdp.o".into()),
            blacklist: blacklist.iter().map(|s| s.parse().unwrap()).collect(),
            monitor: false,
            drop_fragments: false,
            drop_malformed: true,
            syn_limit: None,
            pin_dir: None,
            ..crate::config::Config::defaults().xdp
        }
    }

    #[test]
    fn missing_object_falls_back_with_reason_and_enforces_at_accept() {
        let d = Defense::start(&cfg(true, &["192.0.2.1", "2001:db8::1"]), "127.0.0.1:1".parse().unwrap());
        match d.enforcement() {
            Enforcement::Userspace { reason } => {
                assert!(reason.contains("not found") && reason.contains("cargo xtask build"), "{reason}")
            }
            other => panic!("expected userspace fallback, got {other:?}"),
        }
        assert!(d.is_blocked("192.0.2.1".parse().unwrap()));
        assert!(d.is_blocked("::ffff:192.0.2.1".parse().unwrap()));
        assert!(d.is_blocked("2001:db8::1".parse().unwrap()));
        assert!(!d.is_blocked("192.0.2.2".parse().unwrap()));
        let counts: std::collections::HashMap<_, _> = d.counters().into_iter().collect();
        assert_eq!(counts["drop_ban_exact"], 3);
        assert_eq!(counts["pass_no_match"], 1);
        assert_eq!(counts["verdict_drop"], 3);
    }

    #[test]
    fn add_remove_list_in_userspace_mode() {
        let d = Defense::start(&cfg(false, &[]), "127.0.0.1:1".parse().unwrap());
        assert!(matches!(d.enforcement(), Enforcement::Userspace { .. }));
        let ip: IpAddr = "198.51.100.9".parse().unwrap();
        d.add(ip).unwrap();
        assert_eq!(d.list(), vec![ip]);
        assert!(d.is_blocked("::ffff:198.51.100.9".parse().unwrap()));
        assert!(d.remove(ip).unwrap());
        assert!(!d.remove(ip).unwrap());
        assert!(!d.is_blocked(ip));
        d.add_rule(Rule::ban("198.51.100.0/24".parse().unwrap())).unwrap();
        assert!(d.is_blocked(ip));
        assert!(d.list().is_empty(), "list() is exact bans only");
    }

    #[test]
    fn fallback_applies_syn_limit_and_monitor() {
        let policy =
            KernelPolicy { syn_limit: Some(SynLimit { rate_per_sec: 1, burst: 2 }), ..KernelPolicy::for_port(1) };
        let listen = "127.0.0.1:1".parse().unwrap();
        let d = Defense::start_with(&cfg(false, &[]), listen, Options { policy: policy.clone(), pin_dir: None });
        let ip: IpAddr = "203.0.113.5".parse().unwrap();
        assert!(!d.is_blocked(ip) && !d.is_blocked(ip));
        assert!(d.is_blocked(ip), "third connection within the burst window is over the limit");
        d.add_rule(Rule::allow(IpNet::host(ip))).unwrap();
        assert!(!d.is_blocked(ip), "allowlisted sources are never limited");
        d.remove_rule(IpNet::host(ip), RuleKind::Allow).unwrap();
        d.set_policy(KernelPolicy { monitor: true, ..policy }).unwrap();
        assert!(!d.is_blocked(ip), "monitor mode passes would-drops");
        let counts: std::collections::HashMap<_, _> = d.counters().into_iter().collect();
        assert_eq!(counts["drop_syn_rate"], 1);
        assert_eq!(counts["monitor_syn_rate"], 1);
        assert_eq!(counts["pass_allowlist"], 1);
    }
}
