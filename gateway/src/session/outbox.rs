//! A connection's outbound queue, bounded in bytes.
//!
//! Producers (the push API, the relay, the connection's own replies) never
//! wait: `push` either queues the encoded frame or, when the byte bound would
//! be exceeded, marks the connection as a slow consumer and reports it. The
//! connection task is the only consumer. An empty queue holds no allocation,
//! which matters at a million idle connections.

use std::collections::VecDeque;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};

use crate::protocol::Code;

/// Why the connection task must close, and what to tell the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// Send KICK(code, message) after what is queued, then close.
    Kick(Code, String),
    /// Send CLOSE(code, message) after what is queued, then close.
    Close(Code, String),
    /// Send ERROR(code, message) without flushing the queue (the peer is not
    /// reading or misbehaving), then close.
    Error(Code, String),
    /// As `Error`, answering the offending frame: the ERROR echoes its seq.
    Reject(Code, String, u32),
}

impl CloseReason {
    pub fn code(&self) -> Code {
        match self {
            CloseReason::Kick(c, _)
            | CloseReason::Close(c, _)
            | CloseReason::Error(c, _)
            | CloseReason::Reject(c, _, _) => *c,
        }
    }
}

pub struct Outgoing {
    pub frame: Bytes,
    /// Fired once the frame has been handed to the socket.
    pub written: Option<oneshot::Sender<()>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The connection is closing; the frame was not queued.
    Closed,
    /// The queue's byte bound was hit: the connection is now closing as a slow consumer.
    Slow,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Outgoing>,
    bytes: usize,
    closing: Option<CloseReason>,
}

pub struct Outbox {
    state: Mutex<State>,
    ready: Notify,
    /// Fired for closes that must not wait for a write in progress
    /// (slow consumer, protocol abuse): the writer races its write against it.
    abort: Notify,
    limit: usize,
}

impl Outbox {
    pub fn new(limit: usize) -> Outbox {
        Outbox { state: Mutex::new(State::default()), ready: Notify::new(), abort: Notify::new(), limit }
    }

    pub fn push(&self, frame: Bytes, written: Option<oneshot::Sender<()>>) -> Result<(), PushError> {
        let mut s = self.state.lock();
        if s.closing.is_some() {
            return Err(PushError::Closed);
        }
        if s.bytes + frame.len() > self.limit {
            s.closing =
                Some(CloseReason::Error(Code::SlowConsumer, "outbound queue full: client is not reading".into()));
            // Nothing queued will be written; free it now rather than at close.
            s.queue = VecDeque::new();
            s.bytes = 0;
            drop(s);
            self.ready.notify_one();
            self.abort.notify_one();
            return Err(PushError::Slow);
        }
        s.bytes += frame.len();
        s.queue.push_back(Outgoing { frame, written });
        drop(s);
        self.ready.notify_one();
        Ok(())
    }

    /// Ask the connection to close. The first reason wins.
    pub fn close(&self, reason: CloseReason) -> bool {
        let mut s = self.state.lock();
        if s.closing.is_some() {
            return false;
        }
        let abort = matches!(reason, CloseReason::Error(..) | CloseReason::Reject(..));
        if abort {
            s.queue = VecDeque::new();
            s.bytes = 0;
        }
        s.closing = Some(reason);
        drop(s);
        self.ready.notify_one();
        if abort {
            self.abort.notify_one();
        }
        true
    }

    pub fn is_closing(&self) -> bool {
        self.state.lock().closing.is_some()
    }

    /// Wait until there is something to write or a close was requested.
    pub async fn ready(&self) {
        self.ready.notified().await
    }

    /// Completes once an aborting close was requested (see [`Outbox::close`]).
    pub async fn aborted(&self) {
        self.abort.notified().await
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        self.state.lock().closing.clone()
    }

    /// Take everything queued (releasing the queue's allocation) and the close reason.
    pub fn take(&self) -> (VecDeque<Outgoing>, Option<CloseReason>) {
        let mut s = self.state.lock();
        s.bytes = 0;
        (std::mem::take(&mut s.queue), s.closing.clone())
    }

    pub fn queued_bytes(&self) -> usize {
        self.state.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_is_in_bytes_and_overflow_closes() {
        let o = Outbox::new(10);
        assert!(o.push(Bytes::from_static(b"12345"), None).is_ok());
        assert!(o.push(Bytes::from_static(b"12345"), None).is_ok());
        assert_eq!(o.queued_bytes(), 10);
        assert_eq!(o.push(Bytes::from_static(b"1"), None), Err(PushError::Slow));
        assert_eq!(o.push(Bytes::from_static(b"1"), None), Err(PushError::Closed));
        let (q, reason) = o.take();
        assert!(q.is_empty(), "a slow consumer's queue is dropped");
        assert_eq!(reason.map(|r| r.code()), Some(Code::SlowConsumer));
    }

    #[test]
    fn take_frees_room_and_first_close_wins() {
        let o = Outbox::new(4);
        o.push(Bytes::from_static(b"1234"), None).unwrap();
        let (q, r) = o.take();
        assert_eq!((q.len(), r), (1, None));
        o.push(Bytes::from_static(b"1234"), None).unwrap();
        assert!(o.close(CloseReason::Kick(Code::DuplicateLogin, "x".into())));
        assert!(!o.close(CloseReason::Close(Code::ShuttingDown, "y".into())));
        let (q, r) = o.take();
        assert_eq!(q.len(), 1, "a kick flushes what was queued first");
        assert_eq!(r.map(|r| r.code()), Some(Code::DuplicateLogin));
    }
}
