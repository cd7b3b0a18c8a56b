//! Waiters for PUSH_ACK, for push API callers that asked to wait.
//!
//! Keyed by (push id, session id): one push to a uid reaches each of its
//! devices with the same push id, and an ack only counts from the session the
//! push went to. Entries exist only while a caller waits; the caller removes
//! its entry on timeout, so nothing accumulates.

use std::collections::HashMap;

use parking_lot::Mutex;
use tokio::sync::oneshot;

const SHARDS: usize = 16;

pub struct AckWaiters {
    shards: [Mutex<HashMap<(u64, u64), oneshot::Sender<()>>>; SHARDS],
}

impl Default for AckWaiters {
    fn default() -> Self {
        AckWaiters { shards: std::array::from_fn(|_| Mutex::new(HashMap::new())) }
    }
}

impl AckWaiters {
    fn shard(&self, push_id: u64) -> &Mutex<HashMap<(u64, u64), oneshot::Sender<()>>> {
        &self.shards[(push_id as usize) % SHARDS]
    }

    pub fn wait(&self, push_id: u64, session_id: u64) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.shard(push_id).lock().insert((push_id, session_id), tx);
        rx
    }

    /// Called when `session_id` sends PUSH_ACK(push_id). False when nobody waits.
    pub fn complete(&self, push_id: u64, session_id: u64) -> bool {
        match self.shard(push_id).lock().remove(&(push_id, session_id)) {
            Some(tx) => tx.send(()).is_ok(),
            None => false,
        }
    }

    pub fn cancel(&self, push_id: u64, session_id: u64) {
        self.shard(push_id).lock().remove(&(push_id, session_id));
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_only_counts_from_the_right_session() {
        let w = AckWaiters::default();
        let mut rx = w.wait(7, 1);
        assert!(!w.complete(7, 2), "another session's ack must not match");
        assert!(rx.try_recv().is_err());
        assert!(w.complete(7, 1));
        assert!(rx.try_recv().is_ok());
        assert!(w.is_empty());
    }

    #[test]
    fn cancel_removes_the_waiter() {
        let w = AckWaiters::default();
        let _rx = w.wait(1, 1);
        w.cancel(1, 1);
        assert!(!w.complete(1, 1));
        assert!(w.is_empty());
    }
}
