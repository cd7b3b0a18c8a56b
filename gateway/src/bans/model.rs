//! What a ban is, and the set of them as plain data. Sans-IO: wall-clock time
//! comes in as an argument (bans are shared between hosts and survive
//! restarts, so their times are `SystemTime`, not `Instant`).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::defense::{IpNet, IpNetError};

/// Who or what is banned.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// An address (`/32`, `/128`) or a network.
    Net(IpNet),
    /// A user id: logins refused, live sessions kicked.
    Uid(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error(transparent)]
    Net(#[from] IpNetError),
    #[error("uid {0:?} is empty, too long, or has whitespace/control characters")]
    Uid(String),
    #[error("{0} covers every address; set \"force\": true (CLI: --force) if you really mean it")]
    Everything(IpNet),
    #[error("{0} covers this host's loopback address: local tools and the gateway's own push and admin APIs on 127.0.0.1/::1 would be cut off; set \"force\": true (CLI: --force) if you really mean it")]
    Loopback(IpNet),
}

/// Whether `net` covers 127.0.0.1 or ::1, the addresses this host's own
/// services and tools talk to each other from. Banning them in XDP would
/// blackhole the host's loopback traffic, the admin API included.
pub fn covers_host_loopback(net: &IpNet) -> bool {
    [std::net::IpAddr::from([127, 0, 0, 1]), std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST)]
        .iter()
        .any(|ip| net.contains(*ip))
}

/// The longest uid a ban can name (uids travel length-prefixed in one byte).
pub const MAX_UID_BYTES: usize = 255;

impl Target {
    /// `uid:<uid>`, an address, or a CIDR. `/0` is refused unless `force`.
    pub fn parse(s: &str, force: bool) -> Result<Target, TargetError> {
        let s = s.trim();
        if let Some(uid) = s.strip_prefix("uid:") {
            if crate::auth::check_id(uid, MAX_UID_BYTES).is_err() {
                return Err(TargetError::Uid(uid.to_string()));
            }
            return Ok(Target::Uid(uid.to_string()));
        }
        let net: IpNet = s.parse()?;
        if net.prefix() == 0 && !force {
            return Err(TargetError::Everything(net));
        }
        if covers_host_loopback(&net) && !force {
            return Err(TargetError::Loopback(net));
        }
        Ok(Target::Net(net))
    }

    pub fn net(&self) -> Option<IpNet> {
        match self {
            Target::Net(n) => Some(*n),
            Target::Uid(_) => None,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Net(n) => write!(f, "{n}"),
            Target::Uid(u) => write!(f, "uid:{u}"),
        }
    }
}

impl Serialize for Target {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Target, D::Error> {
        let s = String::deserialize(d)?;
        // Stored bans were validated when made; a /0 in the store was forced.
        Target::parse(&s, true).map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BanMode {
    /// Drop / refuse.
    #[default]
    Enforce,
    /// Count and log matches but let them through: to try a rule first.
    Monitor,
}

impl FromStr for BanMode {
    type Err = String;
    fn from_str(s: &str) -> Result<BanMode, String> {
        match s {
            "enforce" => Ok(BanMode::Enforce),
            "monitor" => Ok(BanMode::Monitor),
            other => Err(format!("{other:?}: expected \"enforce\" or \"monitor\"")),
        }
    }
}

impl fmt::Display for BanMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BanMode::Enforce => "enforce",
            BanMode::Monitor => "monitor",
        })
    }
}

/// One ban. There is at most one per target; a new one replaces it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ban {
    pub target: Target,
    pub reason: String,
    /// A staff token's name, or `detector:<name>` for automatic bans.
    pub by: String,
    #[serde(with = "rfc3339")]
    pub created: SystemTime,
    /// None: until removed.
    #[serde(with = "rfc3339_opt", default, skip_serializing_if = "Option::is_none")]
    pub until: Option<SystemTime>,
    #[serde(default)]
    pub mode: BanMode,
}

impl Ban {
    pub fn live(&self, now: SystemTime) -> bool {
        self.until.is_none_or(|u| now < u)
    }

    pub fn enforced(&self) -> bool {
        self.mode == BanMode::Enforce
    }

    /// Time left, for an etcd lease or a kernel expiry.
    pub fn remaining(&self, now: SystemTime) -> Option<Duration> {
        self.until.map(|u| u.duration_since(now).unwrap_or(Duration::ZERO))
    }
}

mod rfc3339 {
    use super::*;
    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(*t))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&s)
            .map_err(|e| serde::de::Error::custom(format!("{s:?}: {e} (expected RFC 3339, e.g. 2030-01-02T03:04:05Z)")))
    }
}

mod rfc3339_opt {
    use super::*;
    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::rfc3339::serialize(t, s),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) => humantime::parse_rfc3339_weak(&s).map(Some).map_err(|e| {
                serde::de::Error::custom(format!("{s:?}: {e} (expected RFC 3339, e.g. 2030-01-02T03:04:05Z)"))
            }),
        }
    }
}

/// What changed in a [`BanSet`], so the shell can update kernel maps and
/// sessions exactly once per change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// New, or replacing `old`.
    Put {
        ban: Ban,
        old: Option<Ban>,
    },
    Removed(Ban),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetError {
    #[error("the ban list is full ({0} entries, bans.max_entries); remove bans or ban a network instead")]
    Full(usize),
}

/// Every known ban, by target. Bounded by `bans.max_entries`.
#[derive(Debug, Clone)]
pub struct BanSet {
    bans: BTreeMap<Target, Ban>,
    max: usize,
}

impl BanSet {
    pub fn new(max: usize) -> BanSet {
        BanSet { bans: BTreeMap::new(), max }
    }

    /// Insert or replace. `None` when nothing changed (the same ban again).
    pub fn put(&mut self, ban: Ban) -> Result<Option<Change>, SetError> {
        if let Some(old) = self.bans.get(&ban.target) {
            if *old == ban {
                return Ok(None);
            }
        } else if self.bans.len() >= self.max {
            return Err(SetError::Full(self.max));
        }
        let old = self.bans.insert(ban.target.clone(), ban.clone());
        Ok(Some(Change::Put { ban, old }))
    }

    pub fn remove(&mut self, target: &Target) -> Option<Change> {
        self.bans.remove(target).map(Change::Removed)
    }

    pub fn get(&self, target: &Target) -> Option<&Ban> {
        self.bans.get(target)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Ban> {
        self.bans.values()
    }

    pub fn len(&self) -> usize {
        self.bans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bans.is_empty()
    }

    /// Remove every ban whose `until` has passed.
    pub fn expire(&mut self, now: SystemTime) -> Vec<Change> {
        let dead: Vec<Target> = self.bans.values().filter(|b| !b.live(now)).map(|b| b.target.clone()).collect();
        dead.iter().filter_map(|t| self.remove(t)).collect()
    }

    /// The live ban on `uid`, if any.
    pub fn uid_ban(&self, uid: &str, now: SystemTime) -> Option<&Ban> {
        // Building the key allocates; a login is rare enough for that.
        self.bans.get(&Target::Uid(uid.to_string())).filter(|b| b.live(now))
    }

    /// Make this set equal to `other` (live entries only), except for targets
    /// in `keep`, whose local state wins (changes not yet written upstream).
    pub fn replace_with(&mut self, other: Vec<Ban>, keep: &dyn Fn(&Target) -> bool, now: SystemTime) -> Vec<Change> {
        let mut incoming: BTreeMap<Target, Ban> =
            other.into_iter().filter(|b| b.live(now)).map(|b| (b.target.clone(), b)).collect();
        let mut changes = Vec::new();
        let gone: Vec<Target> = self.bans.keys().filter(|t| !incoming.contains_key(*t) && !keep(t)).cloned().collect();
        for t in gone {
            changes.extend(self.remove(&t));
        }
        incoming.retain(|t, _| !keep(t));
        for (_, ban) in incoming {
            match self.put(ban) {
                Ok(c) => changes.extend(c),
                Err(e) => tracing::warn!(error = %e, "ban store full while syncing; some remote bans are not applied"),
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn loopback_needs_force() {
        for t in ["127.0.0.1", "127.0.0.0/8", "0.0.0.0/1", "::1", "::/64", "::ffff:127.0.0.1"] {
            assert!(matches!(Target::parse(t, false), Err(TargetError::Loopback(_))), "{t} must need force");
            assert!(Target::parse(t, true).is_ok(), "{t} with force");
        }
        for t in ["127.0.0.2", "10.0.0.0/8", "2001:db8::/32"] {
            assert!(Target::parse(t, false).is_ok(), "{t} does not cover the host's loopback");
        }
    }

    use super::*;

    fn ban(target: &str, until: Option<SystemTime>) -> Ban {
        Ban {
            target: Target::parse(target, false).unwrap(),
            reason: "test".into(),
            by: "alice".into(),
            created: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            until,
            mode: BanMode::Enforce,
        }
    }

    #[test]
    fn targets_parse_and_print_canonically() {
        assert_eq!(Target::parse(" 10.1.2.3/8 ", false).unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(Target::parse("uid:alice", false).unwrap(), Target::Uid("alice".into()));
        assert_eq!(Target::parse("::ffff:192.0.2.1", false).unwrap().to_string(), "192.0.2.1");
        assert!(matches!(Target::parse("0.0.0.0/0", false), Err(TargetError::Everything(_))));
        assert!(Target::parse("::/0", true).is_ok());
        assert!(matches!(Target::parse("uid:", false), Err(TargetError::Uid(_))));
        assert!(matches!(Target::parse("uid:a b", false), Err(TargetError::Uid(_))));
        assert!(matches!(Target::parse("300.1.1.1", false), Err(TargetError::Net(_))));
    }

    #[test]
    fn json_round_trip_and_unknown_fields_refused() {
        let b = ban("2001:db8::/64", Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_800_000_000_123)));
        let text = serde_json::to_string(&b).unwrap();
        assert!(text.contains("\"target\":\"2001:db8::/64\""), "{text}");
        assert!(text.contains("2027-01-15T08:00:00.123Z"), "{text}");
        assert_eq!(serde_json::from_str::<Ban>(&text).unwrap(), b);
        let extra = text.replacen('{', "{\"colour\":1,", 1);
        assert!(serde_json::from_str::<Ban>(&extra).is_err());
    }

    #[test]
    fn put_replace_remove_and_bound() {
        let mut s = BanSet::new(2);
        let a = ban("192.0.2.1", None);
        assert!(matches!(s.put(a.clone()), Ok(Some(Change::Put { old: None, .. }))));
        assert_eq!(s.put(a.clone()), Ok(None), "the same ban again changes nothing");
        let mut a2 = a.clone();
        a2.reason = "other".into();
        assert!(matches!(s.put(a2), Ok(Some(Change::Put { old: Some(_), .. }))));
        s.put(ban("uid:bob", None)).unwrap();
        assert_eq!(s.put(ban("192.0.2.3", None)), Err(SetError::Full(2)));
        assert!(matches!(s.remove(&a.target), Some(Change::Removed(_))));
        assert_eq!(s.remove(&a.target), None);
    }

    #[test]
    fn expiry_is_exclusive_at_until() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let mut s = BanSet::new(10);
        s.put(ban("uid:bob", Some(t))).unwrap();
        s.put(ban("192.0.2.1", None)).unwrap();
        assert!(s.uid_ban("bob", t - Duration::from_millis(1)).is_some());
        assert!(s.uid_ban("bob", t).is_none(), "a ban is over at `until`");
        assert!(s.expire(t - Duration::from_millis(1)).is_empty());
        assert_eq!(s.expire(t).len(), 1);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn replace_with_keeps_pending_local_changes() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let mut s = BanSet::new(10);
        s.put(ban("192.0.2.1", None)).unwrap(); // synced, deleted remotely
        s.put(ban("192.0.2.2", None)).unwrap(); // local, not yet written
        let remote = vec![ban("uid:carol", None), ban("192.0.2.9", Some(now - Duration::from_secs(1)))];
        let pending = Target::parse("192.0.2.2", false).unwrap();
        let changes = s.replace_with(remote, &|t| *t == pending, now);
        let mut got: Vec<String> = s.iter().map(|b| b.target.to_string()).collect();
        got.sort();
        assert_eq!(got, vec!["192.0.2.2", "uid:carol"], "expired remote entries are not applied");
        assert_eq!(changes.len(), 2);
    }
}
