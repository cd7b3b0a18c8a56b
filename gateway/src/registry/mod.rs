//! The session registry: uid(+device) -> session and session id -> session.
//!
//! Both directions live in the same shard under the same lock, so they can
//! never disagree. The shard is chosen from the uid's hash, and every session
//! id carries its shard index in its low bits, so a lookup by id finds the
//! right shard without a second map. All operations are O(1).
//!
//! The registry is generic over the entry so it can be tested without sockets;
//! the gateway stores `Arc<session::SessionHandle>`.

use std::collections::hash_map::{DefaultHasher, Entry as HashEntry};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;

const SHARD_BITS: u32 = 6;
const SHARDS: usize = 1 << SHARD_BITS;

/// What the registry needs to know about an entry.
pub trait RegistryEntry: Clone {
    fn session_id(&self) -> u64;
    fn uid(&self) -> &str;
    fn device(&self) -> &str;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    KickOld,
    RefuseNew,
}

#[derive(Debug)]
pub enum Registered<E> {
    /// The entry is now mapped; `replaced` is the old session for the same
    /// uid+device, already unmapped, which the caller must kick.
    Ok { replaced: Option<E> },
    /// Policy `RefuseNew` and uid+device already has a session; nothing changed.
    Refused { existing: E },
}

struct Shard<E> {
    /// uid -> its sessions, one per device. Most users have one or two
    /// devices, so a small Vec beats a nested map.
    by_uid: HashMap<Box<str>, Vec<E>>,
    by_id: HashMap<u64, E>,
}

pub struct Registry<E> {
    shards: Box<[Mutex<Shard<E>>]>,
    next_id: AtomicU64,
    len: AtomicUsize,
}

impl<E: RegistryEntry> Default for Registry<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E: RegistryEntry> Registry<E> {
    pub fn new() -> Registry<E> {
        let shards = (0..SHARDS)
            .map(|_| Mutex::new(Shard { by_uid: HashMap::new(), by_id: HashMap::new() }))
            .collect::<Vec<_>>()
            .into_boxed_slice();
        Registry { shards, next_id: AtomicU64::new(1), len: AtomicUsize::new(0) }
    }

    fn shard_of_uid(uid: &str) -> usize {
        let mut h = DefaultHasher::new();
        uid.hash(&mut h);
        (h.finish() as usize) & (SHARDS - 1)
    }

    /// A fresh session id for `uid`, encoding the uid's shard.
    pub fn allocate_id(&self, uid: &str) -> u64 {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        (n << SHARD_BITS) | Self::shard_of_uid(uid) as u64
    }

    /// Map `entry` (whose id came from [`Self::allocate_id`]) under `policy`.
    pub fn register(&self, entry: E, policy: Policy) -> Registered<E> {
        let idx = Self::shard_of_uid(entry.uid());
        debug_assert_eq!(entry.session_id() as usize & (SHARDS - 1), idx, "id from allocate_id");
        let mut shard = self.shards[idx].lock();
        let shard = &mut *shard;
        let devices = shard.by_uid.entry(entry.uid().into()).or_default();
        let mut replaced = None;
        if let Some(pos) = devices.iter().position(|e| e.device() == entry.device()) {
            match policy {
                Policy::RefuseNew => return Registered::Refused { existing: devices[pos].clone() },
                Policy::KickOld => {
                    let old = devices.swap_remove(pos);
                    shard.by_id.remove(&old.session_id());
                    self.len.fetch_sub(1, Ordering::Relaxed);
                    replaced = Some(old);
                }
            }
        }
        devices.push(entry.clone());
        shard.by_id.insert(entry.session_id(), entry);
        self.len.fetch_add(1, Ordering::Relaxed);
        Registered::Ok { replaced }
    }

    /// Unmap session `id`. A no-op when it is already gone or was replaced, so
    /// an old connection's cleanup can never remove a newer session's mapping.
    /// Returns whether this call removed it.
    pub fn unregister(&self, id: u64) -> bool {
        let idx = id as usize & (SHARDS - 1);
        let mut shard = self.shards[idx].lock();
        let shard = &mut *shard;
        let Some(entry) = shard.by_id.remove(&id) else {
            return false;
        };
        if let HashEntry::Occupied(mut o) = shard.by_uid.entry(entry.uid().into()) {
            o.get_mut().retain(|e| e.session_id() != id);
            if o.get().is_empty() {
                o.remove();
            }
        }
        self.len.fetch_sub(1, Ordering::Relaxed);
        true
    }

    /// Every session of `uid` (one per device).
    pub fn by_uid(&self, uid: &str) -> Vec<E> {
        let shard = self.shards[Self::shard_of_uid(uid)].lock();
        shard.by_uid.get(uid).cloned().unwrap_or_default()
    }

    pub fn by_id(&self, id: u64) -> Option<E> {
        self.shards[id as usize & (SHARDS - 1)].lock().by_id.get(&id).cloned()
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Visit every session, one shard at a time; `f` runs outside the lock
    /// so a slow visitor never blocks logins.
    pub fn for_each(&self, mut f: impl FnMut(&E)) {
        let mut batch = Vec::new();
        for shard in self.shards.iter() {
            batch.clear();
            batch.extend(shard.lock().by_id.values().cloned());
            batch.iter().for_each(&mut f);
        }
    }

    /// Check that both directions agree (tests and debug assertions).
    pub fn consistent(&self) -> bool {
        self.shards.iter().all(|s| {
            let s = s.lock();
            let forward: usize = s.by_uid.values().map(Vec::len).sum();
            forward == s.by_id.len()
                && s.by_uid.iter().all(|(uid, v)| {
                    v.iter().all(|e| {
                        e.uid() == &**uid && s.by_id.get(&e.session_id()).is_some_and(|b| b.device() == e.device())
                    })
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Clone, Debug)]
    struct E(Arc<(u64, String, String)>);
    impl RegistryEntry for E {
        fn session_id(&self) -> u64 {
            self.0 .0
        }
        fn uid(&self) -> &str {
            &self.0 .1
        }
        fn device(&self) -> &str {
            &self.0 .2
        }
    }
    fn entry(r: &Registry<E>, uid: &str, dev: &str) -> E {
        E(Arc::new((r.allocate_id(uid), uid.into(), dev.into())))
    }

    #[test]
    fn both_directions_find_the_session() {
        let r = Registry::new();
        let a = entry(&r, "alice", "phone");
        assert!(matches!(r.register(a.clone(), Policy::KickOld), Registered::Ok { replaced: None }));
        assert_eq!(r.by_uid("alice").len(), 1);
        assert_eq!(r.by_id(a.session_id()).unwrap().uid(), "alice");
        assert_eq!(r.len(), 1);
        assert!(r.consistent());
    }

    #[test]
    fn devices_coexist_and_duplicates_follow_policy() {
        let r = Registry::new();
        let phone = entry(&r, "bob", "phone");
        let desk = entry(&r, "bob", "desktop");
        r.register(phone.clone(), Policy::KickOld);
        r.register(desk.clone(), Policy::KickOld);
        assert_eq!(r.by_uid("bob").len(), 2);

        let phone2 = entry(&r, "bob", "phone");
        match r.register(phone2.clone(), Policy::RefuseNew) {
            Registered::Refused { existing } => assert_eq!(existing.session_id(), phone.session_id()),
            other => panic!("expected refusal, got {other:?}"),
        }
        assert!(r.by_id(phone2.session_id()).is_none());

        match r.register(phone2.clone(), Policy::KickOld) {
            Registered::Ok { replaced: Some(old) } => assert_eq!(old.session_id(), phone.session_id()),
            other => panic!("expected a replaced session, got {other:?}"),
        }
        assert_eq!(r.len(), 2);
        assert!(r.by_id(phone.session_id()).is_none());
        assert!(r.consistent());
    }

    #[test]
    fn old_cleanup_never_removes_the_newer_mapping() {
        let r = Registry::new();
        let old = entry(&r, "carol", "phone");
        r.register(old.clone(), Policy::KickOld);
        let new = entry(&r, "carol", "phone");
        r.register(new.clone(), Policy::KickOld);
        // The kicked connection's task cleans up late:
        assert!(!r.unregister(old.session_id()), "old id was already unmapped");
        let now = r.by_uid("carol");
        assert_eq!(now.len(), 1);
        assert_eq!(now[0].session_id(), new.session_id());
        assert!(r.unregister(new.session_id()));
        assert!(r.by_uid("carol").is_empty() && r.is_empty());
        assert!(r.consistent());
    }

    #[test]
    fn ids_are_unique_and_route_to_the_uid_shard() {
        let r: Registry<E> = Registry::new();
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000 {
            let uid = format!("u{i}");
            let id = r.allocate_id(&uid);
            assert!(seen.insert(id));
            assert_eq!(id as usize & (SHARDS - 1), Registry::<E>::shard_of_uid(&uid));
        }
    }

    #[test]
    fn concurrent_churn_stays_consistent() {
        let r = Arc::new(Registry::new());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for i in 0..2000 {
                        let e = entry(&r, &format!("u{}", i % 50), if t % 2 == 0 { "a" } else { "b" });
                        let id = e.session_id();
                        r.register(e, Policy::KickOld);
                        if i % 3 == 0 {
                            r.unregister(id);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(r.consistent());
        let mut n = 0;
        r.for_each(|_| n += 1);
        assert_eq!(n, r.len());
    }
}
