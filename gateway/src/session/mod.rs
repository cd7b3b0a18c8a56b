//! One client connection: the shared handle others use to reach it, its
//! outbound queue, push-ack waiters, and the task that runs the socket.

pub mod acks;
pub mod conn;
pub mod outbox;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use outbox::{CloseReason, Outbox, PushError};

use crate::registry::RegistryEntry;

/// What the rest of the node holds for a logged-in connection. Kept small:
/// one exists per session, and the socket state lives in the task instead.
pub struct SessionHandle {
    pub id: u64,
    pub uid: Box<str>,
    pub device: Box<str>,
    pub peer: SocketAddr,
    pub outbox: Outbox,
    /// Monotonic ms of the last inbound frame. Only the client's own traffic
    /// moves it: our writes must never keep a dead peer alive.
    last_seen_ms: AtomicU64,
}

impl SessionHandle {
    pub fn new(id: u64, uid: &str, device: &str, peer: SocketAddr, queue_bytes: usize, now_ms: u64) -> SessionHandle {
        SessionHandle {
            id,
            uid: uid.into(),
            device: device.into(),
            peer,
            outbox: Outbox::new(queue_bytes),
            last_seen_ms: AtomicU64::new(now_ms),
        }
    }

    pub fn touch(&self, now_ms: u64) {
        self.last_seen_ms.store(now_ms, Ordering::Relaxed);
    }

    pub fn last_seen_ms(&self) -> u64 {
        self.last_seen_ms.load(Ordering::Relaxed)
    }
}

impl RegistryEntry for Arc<SessionHandle> {
    fn session_id(&self) -> u64 {
        self.id
    }
    fn uid(&self) -> &str {
        &self.uid
    }
    fn device(&self) -> &str {
        &self.device
    }
}
