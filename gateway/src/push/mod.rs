//! Fan-out of one push to a uid's sessions, and what became of it.
//!
//! Every session gets an explicit outcome; nothing is dropped silently. The
//! push API and the built-in relay both deliver through here.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::time::Instant;

use crate::node::Node;
use crate::protocol::Message;
use crate::session::{PushError, SessionHandle};

/// Outcome for one session (and, aggregated, for one uid).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    // Ordered worst to best, so the aggregate for a uid is the maximum.
    /// No session for this uid on this node.
    Offline,
    /// The session closed before the frame reached its socket.
    Closed,
    /// The session's outbound queue was full: it is being disconnected as a slow consumer.
    Slow,
    /// Not written (or, with `wait_ack`, not acknowledged) within the timeout.
    Timeout,
    /// Written to the socket.
    Delivered,
    /// Written and acknowledged with PUSH_ACK.
    Acked,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Offline => "offline",
            Status::Closed => "closed",
            Status::Slow => "slow",
            Status::Timeout => "timeout",
            Status::Delivered => "delivered",
            Status::Acked => "acked",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SessionOutcome {
    pub session_id: u64,
    pub device: String,
    pub status: Status,
}

#[derive(Debug, Clone, Serialize)]
pub struct UidOutcome {
    pub uid: String,
    pub status: Status,
    pub sessions: Vec<SessionOutcome>,
}

pub struct PushOptions {
    pub wait_ack: bool,
    /// Bound on waiting for the write and, with `wait_ack`, for the ack.
    pub timeout: Duration,
    /// Session not to deliver to (the sender of a relayed SEND).
    pub except_session: Option<u64>,
}

/// Deliver `payload` to every session of `uid` and wait for the outcomes.
pub async fn push_to_uid(
    node: &Arc<Node>,
    uid: &str,
    from: &str,
    payload: &Bytes,
    push_id: u64,
    opts: &PushOptions,
) -> UidOutcome {
    let sessions: Vec<Arc<SessionHandle>> =
        node.registry.by_uid(uid).into_iter().filter(|s| Some(s.id) != opts.except_session).collect();
    if sessions.is_empty() {
        node.metrics.pushes.inc(Status::Offline.name());
        return UidOutcome { uid: uid.to_string(), status: Status::Offline, sessions: Vec::new() };
    }
    let frame = Message::Push { push_id, from: from.to_string(), payload: payload.clone() }.to_bytes(0);
    let deadline = Instant::now() + opts.timeout;
    let waits = sessions.iter().map(|s| deliver_one(node, s, frame.clone(), push_id, opts.wait_ack, deadline));
    let outcomes = futures::future::join_all(waits).await;
    let status = outcomes.iter().map(|o| o.status).max().unwrap_or(Status::Offline);
    UidOutcome { uid: uid.to_string(), status, sessions: outcomes }
}

async fn deliver_one(
    node: &Arc<Node>,
    s: &Arc<SessionHandle>,
    frame: Bytes,
    push_id: u64,
    wait_ack: bool,
    deadline: Instant,
) -> SessionOutcome {
    // Register before queueing, or a fast client could ack before we listen.
    let ack = wait_ack.then(|| node.acks.wait(push_id, s.id));
    let (written_tx, written_rx) = tokio::sync::oneshot::channel();
    let status = match s.outbox.push(frame, Some(written_tx)) {
        Err(PushError::Slow) => Status::Slow,
        Err(PushError::Closed) => Status::Closed,
        Ok(()) => match tokio::time::timeout_at(deadline, written_rx).await {
            Err(_) => Status::Timeout,
            Ok(Err(_)) => Status::Closed,
            Ok(Ok(())) => match ack {
                None => Status::Delivered,
                Some(rx) => match tokio::time::timeout_at(deadline, rx).await {
                    Ok(Ok(())) => Status::Acked,
                    // Written but not acknowledged in time (or the session closed).
                    _ => Status::Timeout,
                },
            },
        },
    };
    if wait_ack && status != Status::Acked {
        node.acks.cancel(push_id, s.id);
    }
    node.metrics.pushes.inc(status.name());
    SessionOutcome { session_id: s.id, device: s.device.to_string(), status }
}

/// Queue `payload` to every session on the node without waiting for writes.
/// Returns (queued, slow, closed) counts.
pub fn broadcast(node: &Arc<Node>, from: &str, payload: &Bytes, push_id: u64) -> (u64, u64, u64) {
    let frame = Message::Push { push_id, from: from.to_string(), payload: payload.clone() }.to_bytes(0);
    let (mut queued, mut slow, mut closed) = (0, 0, 0);
    node.registry.for_each(|s| match s.outbox.push(frame.clone(), None) {
        Ok(()) => queued += 1,
        Err(PushError::Slow) => slow += 1,
        Err(PushError::Closed) => closed += 1,
    });
    node.metrics.pushes.add("queued", queued);
    node.metrics.pushes.add("slow", slow);
    node.metrics.pushes.add("closed", closed);
    (queued, slow, closed)
}
