//! The rule set as plain data: what the XDP program decides, decided again in
//! userspace. Sans-IO: time comes in as an argument.
//!
//! Two jobs: it is the accept-time fallback when XDP cannot load, and, when
//! XDP is active, the mirror that `list()` and `is_blocked()` read without a
//! syscall. Its `judge` follows the kernel's order exactly (see
//! `gateway-ebpf/src/main.rs`): allowlist, then exact ban, then the longest
//! matching CIDR ban; monitor-mode matches are remembered, not enforced.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::time::Instant;

use gateway_common::Counter;

/// Treats `::ffff:a.b.c.d` as `a.b.c.d`, as the kernel program does.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// An address prefix (`10.0.0.0/8`, `2001:db8::/32`), host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpNetError {
    #[error("{0:?} is not an address or prefix (expected e.g. 192.0.2.7, 10.0.0.0/8, 2001:db8::/32)")]
    Syntax(String),
    #[error("prefix length /{prefix} is too long for {addr} (max /{max})")]
    PrefixTooLong { addr: IpAddr, prefix: u8, max: u8 },
}

impl IpNet {
    /// A prefix; an IPv4-mapped IPv6 prefix of at least /96 becomes IPv4.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<IpNet, IpNetError> {
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), prefix - 96),
                None => (addr, prefix),
            },
            _ => (addr, prefix),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(IpNetError::PrefixTooLong { addr, prefix, max });
        }
        Ok(IpNet { addr: mask(addr, prefix), prefix })
    }

    /// A single address (/32 or /128).
    pub fn host(ip: IpAddr) -> IpNet {
        let ip = canonical(ip);
        IpNet { addr: ip, prefix: if ip.is_ipv4() { 32 } else { 128 } }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }
    pub fn prefix(&self) -> u8 {
        self.prefix
    }
    pub fn is_host(&self) -> bool {
        self.prefix == if self.addr.is_ipv4() { 32 } else { 128 }
    }
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let m = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix.min(32))) };
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & m))
        }
        IpAddr::V6(v6) => {
            let m = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix.min(128))) };
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & m))
        }
    }
}

impl FromStr for IpNet {
    type Err = IpNetError;
    fn from_str(s: &str) -> Result<IpNet, IpNetError> {
        let s = s.trim();
        let syntax = || IpNetError::Syntax(s.to_string());
        match s.split_once('/') {
            None => s.parse::<IpAddr>().map(IpNet::host).map_err(|_| syntax()),
            Some((a, p)) => {
                let addr = a.parse::<IpAddr>().map_err(|_| syntax())?;
                let prefix = p.parse::<u8>().map_err(|_| syntax())?;
                IpNet::new(addr, prefix)
            }
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_host() {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RuleKind {
    /// Never dropped by any other rule.
    Allow,
    /// Dropped (or, in monitor mode, counted as would-drop).
    Ban,
}

/// One allow or ban entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub net: IpNet,
    pub kind: RuleKind,
    /// Count matches as would-drop and pass. Ignored for `Allow`.
    pub monitor: bool,
    /// None: until removed.
    pub expires_at: Option<Instant>,
}

impl Rule {
    pub fn ban(net: IpNet) -> Rule {
        Rule { net, kind: RuleKind::Ban, monitor: false, expires_at: None }
    }
    pub fn allow(net: IpNet) -> Rule {
        Rule { net, kind: RuleKind::Allow, monitor: false, expires_at: None }
    }
    fn live(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|t| now < t)
    }
}

/// A decision plus the one reason it is counted under (the kernel's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Judgement {
    pub drop: bool,
    pub reason: Counter,
}

/// Longest-prefix-match table: one hash map per prefix length present, probed
/// from the longest down (at most 33 or 129 probes, usually a handful).
#[derive(Default, Debug, Clone)]
struct Lpm {
    by_len: BTreeMap<u8, HashMap<IpAddr, Rule>>,
    len: usize,
}

impl Lpm {
    fn insert(&mut self, rule: Rule) -> bool {
        let fresh = self.by_len.entry(rule.net.prefix).or_default().insert(rule.net.addr, rule).is_none();
        if fresh {
            self.len += 1;
        }
        fresh
    }
    fn remove(&mut self, net: &IpNet) -> Option<Rule> {
        let table = self.by_len.get_mut(&net.prefix)?;
        let r = table.remove(&net.addr)?;
        if table.is_empty() {
            self.by_len.remove(&net.prefix);
        }
        self.len -= 1;
        Some(r)
    }
    fn get(&self, net: &IpNet) -> Option<&Rule> {
        self.by_len.get(&net.prefix)?.get(&net.addr)
    }
    fn longest(&self, ip: IpAddr) -> Option<&Rule> {
        self.by_len.iter().rev().find_map(|(len, t)| t.get(&mask(ip, *len)).filter(|r| r.net.contains(ip)))
    }
    fn iter(&self) -> impl Iterator<Item = &Rule> {
        self.by_len.values().flat_map(|t| t.values())
    }
}

/// All allow/ban rules, split the way the kernel's maps are.
#[derive(Default, Debug, Clone)]
pub struct RuleSet {
    allow: Lpm,
    ban_exact: HashMap<IpAddr, Rule>,
    ban_cidr: Lpm,
    /// Entries per [`Table`] and family (index 0 = IPv4), kept up to date so
    /// the capacity check stays O(1) during bulk inserts.
    counts: [[usize; 2]; 3],
    /// Global monitor: every would-drop passes.
    pub monitor: bool,
}

/// Which kernel map a rule lives in; also the capacity bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    Allow,
    BanExact,
    BanCidr,
}

impl Table {
    fn index(self) -> usize {
        match self {
            Table::Allow => 0,
            Table::BanExact => 1,
            Table::BanCidr => 2,
        }
    }

    pub fn of(rule: &Rule) -> Table {
        match (rule.kind, rule.net.is_host()) {
            (RuleKind::Allow, _) => Table::Allow,
            (RuleKind::Ban, true) => Table::BanExact,
            (RuleKind::Ban, false) => Table::BanCidr,
        }
    }
    /// Entries per address family, as sized in the kernel program.
    pub fn capacity(self) -> usize {
        (match self {
            Table::Allow => gateway_common::ALLOW_CAPACITY,
            Table::BanExact => gateway_common::BAN_EXACT_CAPACITY,
            Table::BanCidr => gateway_common::BAN_CIDR_CAPACITY,
        }) as usize
    }
    pub fn name(self) -> &'static str {
        match self {
            Table::Allow => "allowlist",
            Table::BanExact => "exact blacklist",
            Table::BanCidr => "CIDR blacklist",
        }
    }
}

impl RuleSet {
    /// Entries of `table` in the same address family as `v4`.
    pub fn count(&self, table: Table, v4: bool) -> usize {
        self.counts[table.index()][usize::from(!v4)]
    }

    fn adjust(&mut self, rule: &Rule, added: bool) {
        let slot = &mut self.counts[Table::of(rule).index()][usize::from(!rule.net.addr.is_ipv4())];
        if added {
            *slot += 1;
        } else {
            *slot = slot.saturating_sub(1);
        }
    }

    /// True when inserting `rule` would exceed its table's capacity (an
    /// update of an existing entry never does).
    pub fn would_overflow(&self, rule: &Rule) -> bool {
        let table = Table::of(rule);
        self.get(&rule.net, rule.kind).is_none() && self.count(table, rule.net.addr.is_ipv4()) >= table.capacity()
    }

    pub fn get(&self, net: &IpNet, kind: RuleKind) -> Option<&Rule> {
        match (kind, net.is_host()) {
            (RuleKind::Allow, _) => self.allow.get(net),
            (RuleKind::Ban, true) => self.ban_exact.get(&net.addr),
            (RuleKind::Ban, false) => self.ban_cidr.get(net),
        }
    }

    /// Inserts or replaces; true when it was new.
    pub fn insert(&mut self, rule: Rule) -> bool {
        let fresh = match Table::of(&rule) {
            Table::Allow => self.allow.insert(rule),
            Table::BanExact => self.ban_exact.insert(rule.net.addr, rule).is_none(),
            Table::BanCidr => self.ban_cidr.insert(rule),
        };
        if fresh {
            self.adjust(&rule, true);
        }
        fresh
    }

    pub fn remove(&mut self, net: &IpNet, kind: RuleKind) -> Option<Rule> {
        let removed = match (kind, net.is_host()) {
            (RuleKind::Allow, _) => self.allow.remove(net),
            (RuleKind::Ban, true) => self.ban_exact.remove(&net.addr),
            (RuleKind::Ban, false) => self.ban_cidr.remove(net),
        };
        if let Some(r) = &removed {
            self.adjust(r, false);
        }
        removed
    }

    /// Every rule, allowlist first, then bans, each sorted by prefix.
    pub fn rules(&self) -> Vec<Rule> {
        let mut allow: Vec<Rule> = self.allow.iter().copied().collect();
        let mut ban: Vec<Rule> = self.ban_exact.values().chain(self.ban_cidr.iter()).copied().collect();
        allow.sort_by_key(|r| r.net);
        ban.sort_by_key(|r| r.net);
        allow.extend(ban);
        allow
    }

    /// Drops rules whose expiry passed; returns them (so the kernel copy can
    /// be removed too).
    pub fn expire(&mut self, now: Instant) -> Vec<Rule> {
        let dead: Vec<Rule> = self.rules().into_iter().filter(|r| !r.live(now)).collect();
        for r in &dead {
            self.remove(&r.net, r.kind);
        }
        dead
    }

    /// The kernel program's source-address decision for `ip` at `now`,
    /// global monitor included (a would-drop passes under its monitor reason).
    pub fn judge(&self, ip: IpAddr, now: Instant) -> Judgement {
        let j = self.judge_source(ip, now);
        if j.drop && self.monitor {
            let reason = match j.reason {
                Counter::DropBanExact => Counter::MonitorBanExact,
                _ => Counter::MonitorBanCidr,
            };
            return Judgement { drop: false, reason };
        }
        j
    }

    /// The source stage alone, as the kernel runs it before the global
    /// monitor rewrite: a drop is an enforcing ban; a pass carries
    /// `PassAllowlist`, the first per-entry monitor match, or `PassNoMatch`.
    pub fn judge_source(&self, ip: IpAddr, now: Instant) -> Judgement {
        let ip = canonical(ip);
        let pass = |reason| Judgement { drop: false, reason };
        if self.allow.longest(ip).is_some() {
            return pass(Counter::PassAllowlist);
        }
        let mut monitor_hit = None;
        let candidates = [
            (self.ban_exact.get(&ip), Counter::DropBanExact, Counter::MonitorBanExact),
            (self.ban_cidr.longest(ip), Counter::DropBanCidr, Counter::MonitorBanCidr),
        ];
        for (rule, enforce, monitor) in candidates {
            let Some(rule) = rule.filter(|r| r.live(now)) else { continue };
            if rule.monitor {
                monitor_hit.get_or_insert(monitor);
                continue;
            }
            return Judgement { drop: true, reason: enforce };
        }
        pass(monitor_hit.unwrap_or(Counter::PassNoMatch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_normalises_prefixes() {
        assert_eq!(net("10.1.2.3/8").to_string(), "10.0.0.0/8");
        assert_eq!(net("::ffff:10.1.2.3").to_string(), "10.1.2.3");
        assert_eq!(net("::ffff:10.1.2.0/120").to_string(), "10.1.2.0/24");
        assert_eq!(net("2001:db8::1/32").to_string(), "2001:db8::/32");
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("nonsense".parse::<IpNet>().is_err());
        assert!(net("0.0.0.0/0").contains(ip("1.2.3.4")));
        assert!(!net("0.0.0.0/0").contains(ip("::1")));
    }

    #[test]
    fn exact_ban_covers_v4_mapped_v6() {
        let mut rs = RuleSet::default();
        rs.insert(Rule::ban(net("192.0.2.7")));
        let now = Instant::now();
        assert!(rs.judge(ip("192.0.2.7"), now).drop);
        assert!(rs.judge(ip("::ffff:192.0.2.7"), now).drop);
        assert_eq!(rs.judge(ip("192.0.2.8"), now).reason, Counter::PassNoMatch);
    }

    #[test]
    fn allow_wins_and_longest_cidr_decides() {
        let mut rs = RuleSet::default();
        let now = Instant::now();
        rs.insert(Rule::ban(net("10.0.0.0/8")));
        rs.insert(Rule::allow(net("10.1.0.0/16")));
        rs.insert(Rule::ban(net("10.1.2.3")));
        assert_eq!(rs.judge(ip("10.9.9.9"), now), Judgement { drop: true, reason: Counter::DropBanCidr });
        assert_eq!(rs.judge(ip("10.1.2.3"), now).reason, Counter::PassAllowlist);
        // A monitor entry on the longer prefix shadows the shorter enforcing
        // one, exactly like the kernel's LPM lookup returns only the longest.
        rs.insert(Rule { monitor: true, ..Rule::ban(net("10.2.0.0/16")) });
        assert_eq!(rs.judge(ip("10.2.0.1"), now), Judgement { drop: false, reason: Counter::MonitorBanCidr });
    }

    #[test]
    fn monitor_entry_defers_to_enforcing_cidr() {
        let mut rs = RuleSet::default();
        let now = Instant::now();
        rs.insert(Rule { monitor: true, ..Rule::ban(net("10.0.0.1")) });
        assert_eq!(rs.judge(ip("10.0.0.1"), now).reason, Counter::MonitorBanExact);
        rs.insert(Rule::ban(net("10.0.0.0/24")));
        assert_eq!(rs.judge(ip("10.0.0.1"), now), Judgement { drop: true, reason: Counter::DropBanCidr });
        rs.monitor = true;
        assert_eq!(rs.judge(ip("10.0.0.1"), now), Judgement { drop: false, reason: Counter::MonitorBanCidr });
    }

    #[test]
    fn expired_rules_stop_matching_and_are_swept() {
        let mut rs = RuleSet::default();
        let t0 = Instant::now();
        rs.insert(Rule { expires_at: Some(t0 + Duration::from_secs(5)), ..Rule::ban(net("2001:db8::1")) });
        assert!(rs.judge(ip("2001:db8::1"), t0).drop);
        assert!(!rs.judge(ip("2001:db8::1"), t0 + Duration::from_secs(5)).drop);
        assert_eq!(rs.expire(t0 + Duration::from_secs(6)).len(), 1);
        assert!(rs.rules().is_empty());
    }

    #[test]
    fn capacity_counts_per_family_and_ignores_updates() {
        let mut rs = RuleSet::default();
        rs.insert(Rule::ban(net("10.0.0.1")));
        rs.insert(Rule::ban(net("10.0.0.1")));
        rs.insert(Rule::ban(net("2001:db8::/32")));
        assert_eq!(rs.count(Table::BanExact, true), 1);
        assert_eq!(rs.count(Table::BanExact, false), 0);
        assert_eq!(rs.count(Table::BanCidr, false), 1);
        assert!(!rs.would_overflow(&Rule::ban(net("10.0.0.1"))));
        rs.remove(&net("10.0.0.1"), RuleKind::Ban);
        rs.remove(&net("10.0.0.1"), RuleKind::Ban);
        assert_eq!(rs.count(Table::BanExact, true), 0);
        // Fill the v6 exact table to its capacity: the next new one overflows.
        for i in 0..Table::BanExact.capacity() as u128 {
            rs.insert(Rule::ban(IpNet::host(IpAddr::V6(Ipv6Addr::from(0x2001_0db8_u128 << 96 | i)))));
        }
        assert!(rs.would_overflow(&Rule::ban(net("2001:db9::1"))));
        assert!(!rs.would_overflow(&Rule::ban(net("10.9.9.9"))), "per family");
    }
}
