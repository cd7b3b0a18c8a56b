//! The state one running gateway node shares between its tasks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::abuse::Abuse;
use crate::admin::AuditLog;
use crate::auth::Verifier;
use crate::bans::Bans;
use crate::config::Config;
use crate::defense::Defense;
use crate::heartbeat::{Clock, Wheel};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::session::acks::AckWaiters;
use crate::session::SessionHandle;
use crate::upstream::Upstream;

pub struct Node {
    pub id: String,
    pub config: Config,
    pub registry: Registry<Arc<SessionHandle>>,
    pub metrics: Metrics,
    pub verifier: Verifier,
    pub clock: Clock,
    /// Check times for logged-in sessions (see `heartbeat`). Weak, so a
    /// closed session is skipped rather than kept alive by the wheel.
    pub liveness: Mutex<Wheel<Weak<SessionHandle>>>,
    pub acks: AckWaiters,
    pub upstream: Upstream,
    pub defense: Defense,
    /// Per-source abuse detectors consulted at accept.
    pub abuse: Abuse,
    /// The ban store; its changes drive `defense` and kick sessions.
    pub bans: Bans,
    /// Who changed bans and kicked whom; written by a task `server::start` spawns.
    pub audit: AuditLog,
    /// Cancelled once when the node starts shutting down.
    pub shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    next_push_id: AtomicU64,
}

impl Node {
    pub fn new(config: Config, verifier: Verifier, upstream: Upstream, defense: Defense) -> Node {
        // Push ids start from a random point so ids from before a restart are
        // unlikely to match a new push (a stale PUSH_ACK must not ack it).
        let start = rand::random::<u64>() >> 16;
        Node {
            id: config.node.id.clone(),
            registry: Registry::new(),
            metrics: Metrics::default(),
            verifier,
            clock: Clock::default(),
            liveness: Mutex::new(Wheel::new(Duration::from_millis(250))),
            acks: AckWaiters::default(),
            upstream,
            defense,
            abuse: Abuse::new(&config.abuse),
            bans: Bans::new(&config.bans, !config.cluster.etcd_endpoints.is_empty()),
            audit: AuditLog::new(&config.node.id),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            next_push_id: AtomicU64::new(start.max(1)),
            config,
        }
    }

    pub fn next_push_id(&self) -> u64 {
        self.next_push_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn heartbeat_timeout_ms(&self) -> u64 {
        self.config.heartbeat.timeout().as_millis() as u64
    }
}
