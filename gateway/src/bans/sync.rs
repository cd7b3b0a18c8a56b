//! The ban store's background tasks: writing the file, expiring bans, and
//! replicating through etcd.
//!
//! Replication, per connection to etcd:
//! 1. push local changes made while disconnected (`pending`),
//! 2. read the full list and make the local set equal to it (pending
//!    targets excepted),
//! 3. watch from that revision, applying every event, and push each new
//!    local change as it happens.
//!
//! Any error ends the round; the node keeps enforcing its last-known set and
//! retries with backoff. Local changes always apply locally first, so a ban
//! made while etcd is down takes effect at once and reaches the cluster later.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::replica::{Kv, KvError, KvEvent};
use super::Target;
use crate::node::Node;

const SWEEP_EVERY: Duration = Duration::from_millis(250);
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How often a quiet watch is checked with a ping.
const PING_EVERY: Duration = Duration::from_secs(5);

/// Write the file whenever something changed (coalescing bursts).
pub async fn persister(node: Arc<Node>) {
    loop {
        tokio::select! {
            _ = node.bans.dirty.notified() => {}
            _ = node.shutdown.cancelled() => break,
        }
        // A burst of auto-bans becomes one write.
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Err(e) = node.bans.persist().await {
            node.metrics.ban_apply_errors.inc();
            tracing::error!(error = %e, "could not save the ban list; bans are enforced but would not survive a restart");
        }
    }
    // The final write at shutdown is `Gateway::shutdown`'s (it waits for it).
}

/// Lift expired bans on this node's clock.
pub async fn sweeper(node: Arc<Node>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = node.shutdown.cancelled() => return,
        }
        node.bans.sweep(&node, SystemTime::now());
        // Also frees kernel capacity held by expired rules that are not ours
        // (the static list has no expiry, so this only touches our rules).
        node.defense.sweep_expired();
    }
}

/// Replicate through `kv` until shutdown.
pub async fn replicate(node: Arc<Node>, kv: Arc<dyn Kv>) {
    let mut backoff = RETRY_MIN;
    let mut logged_down = false;
    loop {
        let round = tokio::select! {
            r = round(&node, kv.as_ref(), &mut backoff) => r,
            _ = node.shutdown.cancelled() => return,
        };
        node.bans.set_etcd_connected(false);
        if let Err(e) = round {
            if !logged_down || !matches!(e, KvError::Unreachable(_)) {
                tracing::warn!(error = %e, unsynced = node.bans.unsynced(), "ban replication interrupted; retrying");
            }
            logged_down = matches!(e, KvError::Unreachable(_));
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = node.shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(RETRY_MAX);
    }
}

async fn round(node: &Node, kv: &dyn Kv, backoff: &mut Duration) -> Result<(), KvError> {
    let bans = &node.bans;
    let prefix = bans.config().etcd_prefix.clone();
    flush(node, kv).await?;
    let listing = kv.list(&prefix).await?;
    let mut remote = Vec::with_capacity(listing.kvs.len());
    for (key, value) in &listing.kvs {
        match serde_json::from_slice::<super::Ban>(value) {
            Ok(b) => remote.push(b),
            Err(e) => tracing::warn!(%key, error = %e, "ignoring an unreadable ban in etcd"),
        }
    }
    bans.apply_listing(node, remote);
    let mut watch = kv.watch(&prefix, listing.revision).await?;
    bans.set_etcd_connected(true);
    *backoff = RETRY_MIN;
    tracing::info!(bans = bans.len(), revision = listing.revision, "ban store in sync with etcd");
    // Changes made between the flush and the watch are pushed now.
    flush(node, kv).await?;
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        tokio::select! {
            _ = ping.tick() => kv.ping().await?,
            events = watch.recv() => match events {
                Some(Ok(events)) => {
                    for ev in events {
                        apply_event(node, ev);
                    }
                }
                Some(Err(e)) => return Err(e),
                None => return Err(KvError::Unreachable("watch ended".into())),
            },
            _ = bans.pending_changed.notified() => flush(node, kv).await?,
        }
    }
}

fn apply_event(node: &Node, ev: KvEvent) {
    let bans = &node.bans;
    match ev {
        KvEvent::Put { key, value } => {
            let Some(target) = bans.target_of(&key) else { return };
            match serde_json::from_slice::<super::Ban>(&value) {
                Ok(ban) if ban.target == target => bans.apply_remote(node, &target, Some(ban)),
                Ok(_) => tracing::warn!(%key, "ignoring a ban whose key and target disagree"),
                Err(e) => tracing::warn!(%key, error = %e, "ignoring an unreadable ban in etcd"),
            }
        }
        KvEvent::Delete { key } => {
            if let Some(target) = bans.target_of(&key) {
                bans.apply_remote(node, &target, None);
            }
        }
    }
}

/// Write every pending local change to etcd.
async fn flush(node: &Node, kv: &dyn Kv) -> Result<(), KvError> {
    let bans = &node.bans;
    let pending = bans.pending_snapshot();
    if pending.is_empty() {
        return Ok(());
    }
    let now = SystemTime::now();
    for (target, gen, ban) in pending {
        let key = bans.key(&target);
        match ban {
            Some(ban) if ban.live(now) => {
                let value = serde_json::to_vec(&ban).map_err(|e| KvError::Protocol(e.to_string()))?;
                kv.put(&key, value, ban.remaining(now)).await?;
            }
            // Removed (or already expired) here: remove it there.
            _ => kv.delete(&key).await?,
        }
        bans.synced(&target, gen);
    }
    bans.dirty.notify_one();
    Ok(())
}

/// For tests and tools: the key under which `target` is stored.
pub fn key_for(prefix: &str, target: &Target) -> String {
    format!("{prefix}{target}")
}

#[cfg(test)]
mod tests {
    //! The replication logic against the in-memory store: no etcd, no sockets.
    use super::*;
    use crate::bans::replica::MemKv;
    use crate::bans::{Ban, BanMode};
    use crate::config::Config;

    fn node(tag: &str) -> Arc<Node> {
        let mut config = Config::defaults();
        config.xdp.enabled = false;
        config.cluster.etcd_endpoints = vec!["http://unused".into()];
        config.bans.file = std::env::temp_dir().join(format!("gw-sync-{tag}-{}.json", std::process::id()));
        let _ = std::fs::remove_file(&config.bans.file);
        let verifier = crate::auth::Verifier::new(&config.auth, Some(&[7u8; 32]), 64).expect("verifier");
        let upstream = crate::upstream::Upstream::from_config(&config.upstream).expect("upstream");
        let defense = crate::defense::Defense::start(&config.xdp, "127.0.0.1:1".parse().unwrap());
        Arc::new(Node::new(config, verifier, upstream, defense))
    }

    fn ban(target: &str) -> Ban {
        Ban {
            target: Target::parse(target, false).unwrap(),
            reason: "test".into(),
            by: "alice".into(),
            created: SystemTime::now(),
            until: None,
            mode: BanMode::Enforce,
        }
    }

    async fn until(what: &str, f: impl Fn() -> bool) {
        for _ in 0..200 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for: {what}");
    }

    #[tokio::test]
    async fn changes_flow_both_ways_and_survive_an_outage() {
        let kv = MemKv::default();
        let (a, b) = (node("a"), node("b"));
        tokio::spawn(replicate(a.clone(), Arc::new(kv.clone())));
        tokio::spawn(replicate(b.clone(), Arc::new(kv.clone())));
        until("both connected", || a.bans.etcd_connected() && b.bans.etcd_connected()).await;

        a.bans.add(&a, ban("192.0.2.1")).unwrap();
        until("b has a's ban and enforces it", || b.defense.is_blocked("192.0.2.1".parse().unwrap())).await;
        assert_eq!(kv.keys(), vec!["/gateway/bans/192.0.2.1"]);

        // Outage: b bans locally; it applies at once and is queued.
        kv.set_down(true);
        until("b sees the outage", || !b.bans.etcd_connected()).await;
        b.bans.add(&b, ban("uid:mallory")).unwrap();
        assert!(b.bans.uid_ban("mallory").is_some());
        assert_eq!(b.bans.unsynced(), 1);
        // Meanwhile nobody can lift a's ban on b: b keeps its last-known list.
        assert!(b.defense.is_blocked("192.0.2.1".parse().unwrap()));

        kv.set_down(false);
        until("the queued ban reached a", || a.bans.uid_ban("mallory").is_some()).await;
        assert_eq!(b.bans.unsynced(), 0);

        // A delete in the store (by another node) lifts it everywhere.
        a.bans.remove(&a, &Target::parse("192.0.2.1", false).unwrap());
        until("b lifted it", || !b.defense.is_blocked("192.0.2.1".parse().unwrap())).await;
        a.shutdown.cancel();
        b.shutdown.cancel();
    }

    #[tokio::test]
    async fn a_list_made_without_etcd_is_published_when_etcd_is_turned_on() {
        let kv = MemKv::default();
        let a = node("publish");
        // Written by a node without etcd.
        let snap = crate::bans::file::Snapshot::new(vec![ban("192.0.2.60")], Vec::new(), false);
        crate::bans::file::save(&a.config.bans.file, &snap).unwrap();
        a.bans.load(&a).unwrap();
        tokio::spawn(replicate(a.clone(), Arc::new(kv.clone())));
        until("connected", || a.bans.etcd_connected()).await;
        assert_eq!(kv.keys(), vec!["/gateway/bans/192.0.2.60"], "published, not dropped");
        assert!(a.defense.is_blocked("192.0.2.60".parse().unwrap()));
        a.shutdown.cancel();
    }

    #[tokio::test]
    async fn resync_drops_bans_deleted_while_disconnected_but_keeps_pending_ones() {
        let kv = MemKv::default();
        let a = node("resync");
        // Known locally and already synced: not in the store any more.
        a.bans.add(&a, ban("192.0.2.50")).unwrap();
        a.bans.synced(&Target::parse("192.0.2.50", false).unwrap(), 0);
        // Made locally while disconnected: must be pushed, not dropped.
        a.bans.add(&a, ban("192.0.2.51")).unwrap();
        kv.put("/gateway/bans/uid:zed", serde_json::to_vec(&ban("uid:zed")).unwrap(), None).await.unwrap();
        tokio::spawn(replicate(a.clone(), Arc::new(kv.clone())));
        until("connected", || a.bans.etcd_connected()).await;
        let mut got: Vec<String> = a.bans.list().iter().map(|b| b.target.to_string()).collect();
        got.sort();
        assert_eq!(got, vec!["192.0.2.51", "uid:zed"]);
        assert!(!a.defense.is_blocked("192.0.2.50".parse().unwrap()), "the dropped ban left the kernel mirror too");
        assert_eq!(kv.keys(), vec!["/gateway/bans/192.0.2.51", "/gateway/bans/uid:zed"]);
        a.shutdown.cancel();
    }
}
