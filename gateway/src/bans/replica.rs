//! Where bans are replicated: a tiny key-value interface, so the sync logic
//! is tested against [`MemKv`] and runs against etcd ([`super::etcd`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::mpsc;

pub type KvFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, KvError>> + Send + 'a>>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    #[error("no etcd endpoint reachable ({0}); bans keep being enforced from the last known list")]
    Unreachable(String),
    #[error("etcd answered unexpectedly: {0}")]
    Protocol(String),
    #[error("etcd compacted the history the watch needed; re-reading the full list")]
    Compacted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvEvent {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub kvs: Vec<(String, Vec<u8>)>,
    /// The store revision the listing was read at; watch from after it.
    pub revision: i64,
}

/// A watch: batches of events in order; ends (`None`) when it breaks.
pub type Watch = mpsc::Receiver<Result<Vec<KvEvent>, KvError>>;

pub trait Kv: Send + Sync + 'static {
    /// `ttl`: the store deletes the key by itself after this long (an etcd
    /// lease), so an expired ban disappears even if every node is down.
    fn put<'a>(&'a self, key: &'a str, value: Vec<u8>, ttl: Option<Duration>) -> KvFuture<'a, ()>;
    fn delete<'a>(&'a self, key: &'a str) -> KvFuture<'a, ()>;
    fn list<'a>(&'a self, prefix: &'a str) -> KvFuture<'a, Listing>;
    fn watch<'a>(&'a self, prefix: &'a str, after_revision: i64) -> KvFuture<'a, Watch>;
    /// A cheap call that fails when the store is unreachable: a watch on a
    /// silently partitioned connection would otherwise just go quiet.
    fn ping(&self) -> KvFuture<'_, ()>;
}

/// In-memory store for tests: one shared map, watchers, and an off switch.
#[derive(Default, Clone)]
pub struct MemKv {
    inner: Arc<Mutex<Mem>>,
}

#[derive(Default)]
struct Mem {
    kvs: BTreeMap<String, Vec<u8>>,
    revision: i64,
    down: bool,
    watchers: Vec<(String, mpsc::Sender<Result<Vec<KvEvent>, KvError>>)>,
}

impl MemKv {
    /// Simulate an outage: calls fail and watches end.
    pub fn set_down(&self, down: bool) {
        let mut m = self.inner.lock();
        m.down = down;
        if down {
            m.watchers.clear();
        }
    }

    pub fn keys(&self) -> Vec<String> {
        self.inner.lock().kvs.keys().cloned().collect()
    }

    fn change(&self, ev: KvEvent) -> Result<(), KvError> {
        let mut m = self.inner.lock();
        if m.down {
            return Err(KvError::Unreachable("test store is down".into()));
        }
        m.revision += 1;
        let key = match &ev {
            KvEvent::Put { key, value } => {
                m.kvs.insert(key.clone(), value.clone());
                key.clone()
            }
            KvEvent::Delete { key } => {
                if m.kvs.remove(key).is_none() {
                    return Ok(());
                }
                key.clone()
            }
        };
        m.watchers.retain(|(p, tx)| !key.starts_with(p.as_str()) || tx.try_send(Ok(vec![ev.clone()])).is_ok());
        Ok(())
    }
}

impl Kv for MemKv {
    fn put<'a>(&'a self, key: &'a str, value: Vec<u8>, _ttl: Option<Duration>) -> KvFuture<'a, ()> {
        Box::pin(async move { self.change(KvEvent::Put { key: key.to_string(), value }) })
    }
    fn delete<'a>(&'a self, key: &'a str) -> KvFuture<'a, ()> {
        Box::pin(async move { self.change(KvEvent::Delete { key: key.to_string() }) })
    }
    fn list<'a>(&'a self, prefix: &'a str) -> KvFuture<'a, Listing> {
        Box::pin(async move {
            let m = self.inner.lock();
            if m.down {
                return Err(KvError::Unreachable("test store is down".into()));
            }
            let kvs =
                m.kvs.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(k, v)| (k.clone(), v.clone())).collect();
            Ok(Listing { kvs, revision: m.revision })
        })
    }
    fn ping(&self) -> KvFuture<'_, ()> {
        Box::pin(async move {
            match self.inner.lock().down {
                true => Err(KvError::Unreachable("test store is down".into())),
                false => Ok(()),
            }
        })
    }
    fn watch<'a>(&'a self, prefix: &'a str, _after: i64) -> KvFuture<'a, Watch> {
        Box::pin(async move {
            let mut m = self.inner.lock();
            if m.down {
                return Err(KvError::Unreachable("test store is down".into()));
            }
            let (tx, rx) = mpsc::channel(1024);
            m.watchers.push((prefix.to_string(), tx));
            Ok(rx)
        })
    }
}
