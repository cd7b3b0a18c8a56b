//! Bans: who may not connect or log in, kept durably and shared by the cluster.
//!
//! - [`model`]: a ban (target, reason, by, created, until, mode) and the
//!   [`BanSet`]; sans-IO, wall-clock time as an argument.
//! - [`file`]: the local copy, replaced atomically on every change, so a
//!   restart (even with etcd down) loses nothing.
//! - [`replica`]: the small key-value interface replication needs, and an
//!   in-memory implementation for tests; [`etcd`]: etcd's JSON gateway.
//! - [`sync`]: the replication loop (push local changes, list, watch).
//! - [`enforce`]: a change's effects: kernel/accept-time rules via
//!   `Defense`, kicking uid sessions, closing connections from banned nets.
//!
//! [`Bans`] is the shell the rest of the node uses. Every change, whoever
//! makes it (staff, a detector, another node through etcd, expiry), goes
//! through `BanSet` and comes out as a [`Change`] that [`enforce`] carries
//! out exactly once, so the maps always mirror the set.

pub mod enforce;
pub mod etcd;
pub mod file;
pub mod model;
pub mod replica;
pub mod sync;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use parking_lot::RwLock;
use tokio::sync::Notify;

pub use file::FileError;
pub use model::{Ban, BanMode, BanSet, Change, SetError, Target, TargetError};

use crate::config::BansConfig;
use crate::node::Node;

#[derive(Debug)]
struct State {
    set: BanSet,
    /// Targets changed locally and not yet written to etcd, with the
    /// generation of the change (so a newer change is never marked synced by
    /// an older write finishing).
    pending: BTreeMap<Target, u64>,
    next_gen: u64,
}

pub struct Bans {
    cfg: BansConfig,
    /// etcd is configured: local changes are queued for it.
    replicated: bool,
    /// Read on every login (uid bans), written on changes: a read lock keeps
    /// a login storm from serialising on it.
    state: RwLock<State>,
    /// Serialises file writes; the snapshot is taken under it, so an older
    /// snapshot can never overwrite a newer one.
    save_lock: tokio::sync::Mutex<()>,
    /// A change that must reach the file (the persister task waits on it).
    pub(crate) dirty: Notify,
    /// A change that must reach etcd (the sync task waits on it).
    pub(crate) pending_changed: Notify,
    etcd_connected: AtomicBool,
    loaded: AtomicBool,
    /// Bumped by every enforcing ban, before live sessions are scanned. A
    /// connection accepted before the ban and registered after the scan sees
    /// a changed value and checks its own address and uid.
    epoch: AtomicU64,
}

impl Bans {
    pub fn new(cfg: &BansConfig, replicated: bool) -> Bans {
        Bans {
            state: RwLock::new(State { set: BanSet::new(cfg.max_entries), pending: BTreeMap::new(), next_gen: 0 }),
            cfg: cfg.clone(),
            replicated,
            save_lock: tokio::sync::Mutex::new(()),
            dirty: Notify::new(),
            pending_changed: Notify::new(),
            etcd_connected: AtomicBool::new(false),
            loaded: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
        }
    }

    pub fn config(&self) -> &BansConfig {
        &self.cfg
    }

    /// Read the local file and enforce what it holds. Called once at start,
    /// before the listeners accept anything.
    pub fn load(&self, node: &Node) -> Result<usize, FileError> {
        let snap = file::load(&self.cfg.file)?;
        let now = SystemTime::now();
        let mut changes = Vec::new();
        {
            let mut st = self.state.write();
            if let Some(snap) = snap {
                let publish_all = self.replicated && !snap.replicated;
                if publish_all && !snap.bans.is_empty() {
                    tracing::info!(
                        bans = snap.bans.len(),
                        "etcd newly configured: publishing the local ban list to the cluster"
                    );
                }
                for ban in snap.bans.into_iter().filter(|b| b.live(now)) {
                    let target = ban.target.clone();
                    match st.set.put(ban) {
                        Ok(c) => {
                            changes.extend(c);
                            if publish_all {
                                let g = st.next_gen;
                                st.next_gen += 1;
                                st.pending.insert(target, g);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "ban file holds more than bans.max_entries; the rest is ignored")
                        }
                    }
                }
                for t in snap.unsynced {
                    let g = st.next_gen;
                    st.next_gen += 1;
                    st.pending.insert(t, g);
                }
            }
        }
        for c in &changes {
            enforce::apply(node, c, self.cfg.close_live_connections);
        }
        self.drop_stale_rules(node);
        self.loaded.store(true, Ordering::Release);
        Ok(changes.len())
    }

    /// Remove ban rules the kernel still holds from an earlier run (pinned
    /// maps survive restarts) that neither the store nor `xdp.blacklist`
    /// knows: they were lifted or expired while this node was down.
    fn drop_stale_rules(&self, node: &Node) {
        let st = self.state.read();
        let stale: Vec<crate::defense::IpNet> = node
            .defense
            .rules()
            .into_iter()
            .filter(|r| r.kind == crate::defense::RuleKind::Ban)
            .map(|r| r.net)
            .filter(|net| st.set.get(&Target::Net(*net)).is_none())
            .filter(|net| {
                !(net.is_host() && node.config.xdp.blacklist.iter().any(|ip| crate::defense::IpNet::host(*ip) == *net))
            })
            .collect();
        drop(st);
        for net in stale {
            match node.defense.remove_rule(net, crate::defense::RuleKind::Ban) {
                Ok(_) => {
                    tracing::info!(target = %net, "lifted a kernel ban left from an earlier run that the ban store no longer has")
                }
                Err(e) => tracing::warn!(target = %net, error = %e, "could not lift a stale kernel ban"),
            }
        }
    }

    /// Add or replace a ban and enforce it now. The file is written by the
    /// persister shortly after; call [`Bans::persist`] to wait for it.
    pub fn add(&self, node: &Node, ban: Ban) -> Result<Option<Change>, SetError> {
        let change = {
            let mut st = self.state.write();
            let change = st.set.put(ban.clone())?;
            if change.is_some() {
                self.mark_pending(&mut st, ban.target.clone());
            }
            change
        };
        if let Some(c) = &change {
            enforce::apply(node, c, self.cfg.close_live_connections);
            self.dirty.notify_one();
        }
        Ok(change)
    }

    /// Lift a ban; `None` when there was none.
    pub fn remove(&self, node: &Node, target: &Target) -> Option<Ban> {
        let change = {
            let mut st = self.state.write();
            let change = st.set.remove(target);
            if change.is_some() {
                self.mark_pending(&mut st, target.clone());
            }
            change
        };
        let change = change?;
        enforce::apply(node, &change, self.cfg.close_live_connections);
        self.dirty.notify_one();
        match change {
            Change::Removed(b) => Some(b),
            Change::Put { ban, .. } => Some(ban),
        }
    }

    fn mark_pending(&self, st: &mut State, target: Target) {
        if self.replicated {
            let g = st.next_gen;
            st.next_gen += 1;
            st.pending.insert(target, g);
            self.pending_changed.notify_one();
        }
    }

    /// Remove expired bans everywhere (kernel, mirror, file). Returns how many.
    pub fn sweep(&self, node: &Node, now: SystemTime) -> usize {
        // Expiry is not replicated as a delete: every node expires on its own
        // clock, and the etcd lease removes the key there.
        // The scan runs under the read lock; logins only wait when something expired.
        if self.state.read().set.iter().all(|b| b.live(now)) {
            return 0;
        }
        let changes = self.state.write().set.expire(now);
        for c in &changes {
            enforce::apply(node, c, self.cfg.close_live_connections);
            if let Change::Removed(b) = c {
                node.audit.record("system", "ban.expire", &b.target.to_string(), &b.reason, None);
            }
        }
        if !changes.is_empty() {
            self.dirty.notify_one();
        }
        changes.len()
    }

    /// Write the current list to the file; returns once it is durable.
    pub async fn persist(&self) -> Result<(), FileError> {
        let _guard = self.save_lock.lock().await;
        let snap = {
            let st = self.state.read();
            file::Snapshot::new(st.set.iter().cloned().collect(), st.pending.keys().cloned().collect(), self.replicated)
        };
        let path = self.cfg.file.clone();
        match tokio::task::spawn_blocking(move || file::save(&path, &snap)).await {
            Ok(r) => r,
            Err(e) => Err(FileError::Io { path: self.cfg.file.clone(), source: std::io::Error::other(e.to_string()) }),
        }
    }

    pub fn get(&self, target: &Target) -> Option<Ban> {
        self.state.read().set.get(target).cloned()
    }

    /// Every ban, ordered by target.
    pub fn list(&self) -> Vec<Ban> {
        self.state.read().set.iter().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.state.read().set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The live ban on `uid`, if any (login path).
    pub fn uid_ban(&self, uid: &str) -> Option<Ban> {
        self.state.read().set.uid_ban(uid, SystemTime::now()).cloned()
    }

    pub fn is_replicated(&self) -> bool {
        self.replicated
    }

    pub fn etcd_connected(&self) -> bool {
        self.etcd_connected.load(Ordering::Relaxed)
    }

    pub(crate) fn set_etcd_connected(&self, up: bool) {
        self.etcd_connected.store(up, Ordering::Relaxed);
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    pub(crate) fn bump_epoch(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Local changes not yet in etcd.
    pub fn unsynced(&self) -> usize {
        self.state.read().pending.len()
    }

    /// Pending targets with their generations, and the ban each now has (if any).
    pub(crate) fn pending_snapshot(&self) -> Vec<(Target, u64, Option<Ban>)> {
        let st = self.state.read();
        st.pending.iter().map(|(t, g)| (t.clone(), *g, st.set.get(t).cloned())).collect()
    }

    /// Mark `target` synced, unless it changed again since generation `gen`.
    pub(crate) fn synced(&self, target: &Target, gen: u64) {
        let mut st = self.state.write();
        if st.pending.get(target) == Some(&gen) {
            st.pending.remove(target);
        }
    }

    /// Replace the set with etcd's full list (after a (re)connect), keeping
    /// local changes that have not reached etcd yet.
    pub(crate) fn apply_listing(&self, node: &Node, remote: Vec<Ban>) {
        let changes = {
            let mut st = self.state.write();
            let State { set, pending, .. } = &mut *st;
            set.replace_with(remote, &|t| pending.contains_key(t), SystemTime::now())
        };
        self.finish_remote(node, changes);
    }

    /// One ban written or deleted in etcd by any node (ourselves included).
    pub(crate) fn apply_remote(&self, node: &Node, target: &Target, ban: Option<Ban>) {
        let changes: Vec<Change> = {
            let mut st = self.state.write();
            // A local change still on its way to etcd wins over older news.
            if st.pending.contains_key(target) {
                return;
            }
            match ban {
                Some(b) if b.live(SystemTime::now()) => match st.set.put(b) {
                    Ok(c) => c.into_iter().collect(),
                    Err(e) => {
                        tracing::warn!(error = %e, %target, "cannot apply a replicated ban");
                        Vec::new()
                    }
                },
                _ => st.set.remove(target).into_iter().collect(),
            }
        };
        self.finish_remote(node, changes);
    }

    fn finish_remote(&self, node: &Node, changes: Vec<Change>) {
        for c in &changes {
            enforce::apply(node, c, self.cfg.close_live_connections);
        }
        if !changes.is_empty() {
            tracing::debug!(changes = changes.len(), "applied replicated ban changes");
            self.dirty.notify_one();
        }
    }

    /// The etcd key for a target.
    pub fn key(&self, target: &Target) -> String {
        format!("{}{target}", self.cfg.etcd_prefix)
    }

    /// The target a key names, if it is one of ours.
    pub fn target_of(&self, key: &str) -> Option<Target> {
        Target::parse(key.strip_prefix(&self.cfg.etcd_prefix)?, true).ok()
    }
}

/// A detector's ban on `source` for `abuse.auto_ban_ttl`, enforced at once.
/// Allowlisted sources never get here (the detectors skip them).
pub fn auto_ban(node: &Node, source: crate::defense::IpNet, detector: &str, reason: String) {
    let cfg = &node.config.abuse;
    let now = SystemTime::now();
    let by = format!("detector:{detector}");
    if model::covers_host_loopback(&source) {
        // The host's own loopback: banning it in XDP would cut off every
        // local service, the admin API that could lift the ban included.
        // Count and refuse the connection, never ban.
        tracing::warn!(%source, %by, "not auto-banning this host's loopback address (add it to abuse.allowlist to silence)");
        return;
    }
    let ban = Ban {
        target: Target::Net(source),
        reason,
        by: by.clone(),
        created: now,
        until: Some(now + cfg.auto_ban_ttl),
        mode: cfg.auto_ban_mode,
    };
    let (target, reason) = (ban.target.to_string(), ban.reason.clone());
    // Never replace an existing ban: a staff ban (permanent, or in monitor
    // mode while they watch a source) must not become a 10-minute one, and a
    // monitor-mode auto-ban is not re-issued every window.
    if node.bans.get(&ban.target).is_some_and(|b| b.live(now)) {
        return;
    }
    match node.bans.add(node, ban) {
        Ok(_) => {
            node.metrics.auto_bans.inc();
            tracing::warn!(%target, %by, %reason, ttl = ?cfg.auto_ban_ttl, "auto-ban");
            node.audit.record(
                &by,
                "ban.add",
                &target,
                &reason,
                Some(serde_json::json!({ "ttl_secs": cfg.auto_ban_ttl.as_secs(), "mode": cfg.auto_ban_mode })),
            );
        }
        Err(e) => {
            node.metrics.ban_apply_errors.inc();
            tracing::warn!(%target, error = %e, "auto-ban not stored");
        }
    }
}
