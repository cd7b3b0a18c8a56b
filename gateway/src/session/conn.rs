//! The task that owns one client socket, from accept to close.
//!
//! 1. **Admission** (TLS handshake + the LOGIN frame) runs under one absolute
//!    deadline (`session.login_timeout`), in this task, never in the accept
//!    loop, with the small pre-login frame limit.
//! 2. **Session**: one `select!` over "a frame arrived" and "the outbox has
//!    something". Everything we write goes through the outbox, so ordering is
//!    simple and the byte bound covers replies too. A write that stalls for
//!    `session.write_stall_timeout`, or an outbox overflow, ends the session
//!    as a slow consumer without touching any other connection.
//! 3. **Close**: unregister (only this session's own mapping), flush what a
//!    KICK/CLOSE allows, bounded by [`FINAL_WRITE_TIMEOUT`].
//!
//! One task per connection and no split halves: the read buffer starts at
//! [`READ_BUF_INITIAL`] bytes and is given back when it grew while idle.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::FramedRead;

use crate::abuse::{detector, FrameVerdict, PacketRate, SourceSlot};
use crate::auth::Identity;
use crate::config::DuplicateLogin;
use crate::config::TlsEngine;
use crate::node::Node;
use crate::protocol::{Code, DecodeError, Frame, FrameCodec, Message, Op};
use crate::registry::{Policy, Registered};
use crate::session::outbox::Outgoing;
use crate::session::{CloseReason, SessionHandle};

/// Bound on writing a last ERROR/KICK/CLOSE to a peer we are leaving.
pub const FINAL_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
const READ_BUF_INITIAL: usize = 256;
/// Bound on PUSH_ACKs exempt from the packet rate, so a client that never
/// acked cannot later flood acks under the exemption.
const MAX_ACK_CREDIT: u64 = 4096;
/// A read buffer that grew past this (a big frame came in) is replaced when empty.
const READ_BUF_KEEP: usize = 4096;

/// Decrements the node's connection gauges however the task ends.
struct ConnGuard<'a> {
    node: &'a Node,
    prelogin: bool,
    /// This connection's share of the per-source limits (see `abuse`).
    slot: SourceSlot,
    /// `Bans::epoch` when accepted (see there).
    ban_epoch: u64,
}

impl ConnGuard<'_> {
    fn logged_in(&mut self) {
        if std::mem::take(&mut self.prelogin) {
            self.node.metrics.connections_prelogin.dec();
        }
        self.slot.logged_in();
    }
}

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        self.node.metrics.connections_open.dec();
        if self.prelogin {
            self.node.metrics.connections_prelogin.dec();
        }
    }
}

/// Serve one accepted socket. `_permit` holds a slot of `listen.max_connections`.
pub async fn run(
    node: Arc<Node>,
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<ServerConfig>>,
    _permit: OwnedSemaphorePermit,
    slot: SourceSlot,
    ban_epoch: u64,
) {
    node.metrics.connections_open.inc();
    node.metrics.connections_prelogin.inc();
    let mut guard = ConnGuard { node: &node, prelogin: true, slot, ban_epoch };
    let deadline = Instant::now() + node.config.session.login_timeout;
    match tls {
        // Boxed calls: the handshake's state is freed when it completes, and
        // only the boxed stream comes back, so the task that lives for the
        // whole session holds no second copy of it.
        Some(config) => match node.config.tls.engine {
            TlsEngine::Lean => {
                let Some(framed) =
                    Box::pin(handshake(&node, crate::tls::lean::accept(config, tcp), peer, deadline)).await
                else {
                    return;
                };
                serve(&node, &mut guard, framed, peer, deadline).await
            }
            TlsEngine::Buffered => {
                let Some(framed) =
                    Box::pin(handshake(&node, TlsAcceptor::from(config).accept(tcp), peer, deadline)).await
                else {
                    return;
                };
                serve(&node, &mut guard, framed, peer, deadline).await
            }
        },
        None => serve(&node, &mut guard, framed(&node, tcp), peer, deadline).await,
    }
}

/// The connection's read side, on the heap: an async fn keeps its arguments
/// and moved-from locals in its state, so passing the (1.2 KiB) TLS stream by
/// value through a few calls would store it several times per connection.
type Conn<S> = Box<FramedRead<S, FrameCodec>>;

fn framed<S: AsyncRead>(node: &Node, io: S) -> Conn<S> {
    Box::new(FramedRead::with_capacity(
        io,
        FrameCodec::new(node.config.session.max_prelogin_frame_bytes),
        READ_BUF_INITIAL,
    ))
}

/// Run a TLS handshake (either engine) under the login deadline and frame the result.
async fn handshake<S, E>(
    node: &Node,
    accept: impl std::future::Future<Output = Result<S, E>>,
    peer: SocketAddr,
    deadline: Instant,
) -> Option<Conn<S>>
where
    S: AsyncRead,
    E: std::fmt::Display,
{
    let result = tokio::select! {
        r = tokio::time::timeout_at(deadline, accept) => r,
        _ = node.shutdown.cancelled() => return None,
    };
    match result {
        Ok(Ok(stream)) => Some(framed(node, stream)),
        Ok(Err(e)) => {
            node.metrics.tls_handshake_failures.inc();
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            node.metrics.tls_handshake_failures.inc();
            node.metrics.logins.inc("timeout");
            tracing::debug!(%peer, "TLS handshake did not finish before the login deadline");
            None
        }
    }
}

async fn serve<S>(node: &Arc<Node>, guard: &mut ConnGuard<'_>, mut framed: Conn<S>, peer: SocketAddr, deadline: Instant)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let cfg = &node.config.session;
    // Boxed for the same reason: the login wait must not size the idle task.
    let Some((identity, login_seq)) = Box::pin(admit(node, &mut framed, peer, deadline)).await else {
        return;
    };

    let session_id = node.registry.allocate_id(&identity.uid);
    let now = node.clock.now_ms();
    let handle =
        Arc::new(SessionHandle::new(session_id, &identity.uid, &identity.device, peer, cfg.outbound_queue_bytes, now));
    // LOGIN_ACK goes first in the queue, so no push can overtake it.
    let ack = Message::LoginAck {
        node_id: node.id.clone(),
        session_id,
        heartbeat_secs: node.config.heartbeat.interval.as_secs().max(1) as u32,
    };
    let _ = handle.outbox.push(ack.to_bytes(login_seq), None);

    let policy = match cfg.duplicate_login {
        DuplicateLogin::KickOld => Policy::KickOld,
        DuplicateLogin::RefuseNew => Policy::RefuseNew,
    };
    match node.registry.register(handle.clone(), policy) {
        Registered::Refused { existing } => {
            node.metrics.logins.inc("duplicate_session");
            let msg = format!("uid {} device {} already has session {}", identity.uid, identity.device, existing.id);
            send_final(framed.get_mut(), Message::error(Code::DuplicateSession, msg), login_seq).await;
            return;
        }
        Registered::Ok { replaced } => {
            if let Some(old) = replaced {
                node.metrics.kicks.inc(Code::DuplicateLogin.name());
                old.outbox.close(CloseReason::Kick(Code::DuplicateLogin, format!("logged in again from {peer}")));
                tracing::info!(uid = %identity.uid, device = %identity.device, old = old.id, new = session_id, "duplicate login: old session kicked");
            }
        }
    }
    // A ban that landed while this connection was logging in may have missed
    // it in its scan of live sessions: check once more, now it is registered.
    if guard.ban_epoch != node.bans.epoch() {
        let uid_banned = node.bans.uid_ban(&identity.uid).is_some_and(|b| b.enforced());
        if uid_banned || (node.config.bans.close_live_connections && node.defense.is_blocked(peer.ip())) {
            handle.outbox.close(CloseReason::Kick(Code::Banned, "banned".into()));
        }
    }
    node.metrics.logins.inc("ok");
    guard.logged_in();
    if node.shutdown.is_cancelled() {
        // Shutdown's sweep of the registry may have run before we registered.
        handle
            .outbox
            .close(CloseReason::Close(Code::ShuttingDown, "node is shutting down; reconnect to another node".into()));
    }
    node.liveness.lock().schedule(now + node.heartbeat_timeout_ms(), Arc::downgrade(&handle));
    framed.decoder_mut().set_max_body(cfg.max_frame_bytes);
    tracing::debug!(uid = %identity.uid, device = %identity.device, session_id, %peer, "logged in");

    let reason = session_loop(node, &handle, &mut framed).await;

    // However the loop ended (EOF, I/O error, protocol error), later pushes
    // must see a closed session at once, and pushes still queued learn
    // `closed` now (their `written` senders drop) instead of waiting out
    // their timeout.
    handle.outbox.close(CloseReason::Error(Code::Normal, String::new()));
    drop(handle.outbox.take());

    node.registry.unregister(session_id);
    if let Some(reason) = &reason {
        if reason.code() == Code::SlowConsumer {
            node.metrics.slow_consumer_disconnects.inc();
        }
        tracing::debug!(session_id, code = reason.code().name(), "session closed");
    }
}

/// Wait for a valid LOGIN before `deadline`. On any failure the client gets an
/// ERROR (best effort) and `None` is returned.
async fn admit<S>(
    node: &Node,
    framed: &mut FramedRead<S, FrameCodec>,
    peer: SocketAddr,
    deadline: Instant,
) -> Option<(Identity, u32)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let next = tokio::select! {
        r = tokio::time::timeout_at(deadline, framed.next()) => r,
        _ = node.shutdown.cancelled() => {
            send_final(framed.get_mut(), Message::error(Code::ShuttingDown, "node is shutting down; connect to another node"), 0).await;
            return None;
        }
    };
    let frame = match next {
        Err(_) => {
            node.metrics.logins.inc("timeout");
            send_final(framed.get_mut(), Message::error(Code::LoginTimeout, "no LOGIN before the deadline"), 0).await;
            return None;
        }
        Ok(None) => return None,
        Ok(Some(Err(e))) => {
            node.metrics.logins.inc("protocol");
            reject_decode(node, framed, e).await;
            return None;
        }
        Ok(Some(Ok(frame))) => frame,
    };
    if frame.op != Op::Login {
        node.metrics.logins.inc("protocol");
        node.metrics.frames_rejected.inc(Code::NotLoggedIn.name());
        let msg = format!("{} before LOGIN", frame.op.name());
        send_final(framed.get_mut(), Message::error(Code::NotLoggedIn, msg), frame.seq).await;
        return None;
    }
    let token = match Message::decode(&frame) {
        Ok(Message::Login { token }) => token,
        Ok(_) | Err(_) => {
            node.metrics.logins.inc("protocol");
            node.metrics.frames_rejected.inc(Code::Malformed.name());
            send_final(framed.get_mut(), Message::error(Code::Malformed, "malformed LOGIN body"), frame.seq).await;
            return None;
        }
    };
    match node.verifier.verify(&token) {
        Ok(identity) => {
            if let Some(ban) = node.bans.uid_ban(&identity.uid) {
                if ban.enforced() {
                    node.metrics.logins.inc(Code::Banned.name());
                    tracing::info!(%peer, uid = %identity.uid, by = %ban.by, "login refused: uid is banned");
                    let msg = format!("banned: {}", ban.reason);
                    send_final(framed.get_mut(), Message::error(Code::Banned, msg), frame.seq).await;
                    return None;
                }
                tracing::info!(%peer, uid = %identity.uid, by = %ban.by, "monitor-mode uid ban matched; login allowed");
            }
            Some((identity, frame.seq))
        }
        Err(e) => {
            let code = e.code();
            node.metrics.logins.inc(code.name());
            tracing::debug!(%peer, error = %e, "login refused");
            send_final(framed.get_mut(), Message::error(code, e.to_string()), frame.seq).await;
            None
        }
    }
}

async fn reject_decode<S>(node: &Node, framed: &mut FramedRead<S, FrameCodec>, e: DecodeError)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let Some(code) = e.code() {
        node.metrics.frames_rejected.inc(code.name());
        send_final(framed.get_mut(), Message::error(code, e.to_string()), e.seq()).await;
    }
}

/// Why the loop ended, or `None` when the peer went away.
async fn session_loop<S>(
    node: &Arc<Node>,
    handle: &Arc<SessionHandle>,
    framed: &mut FramedRead<S, FrameCodec>,
) -> Option<CloseReason>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let stall = node.config.session.write_stall_timeout;
    let mut rate = PacketRate::new(node.abuse.packet_limits(), std::time::Instant::now());
    // PUSH frames written and not yet acknowledged. A PUSH_ACK within this
    // credit answers our own traffic, so it does not count toward the packet
    // rate: a busy group chat must not get a client throttled for acking.
    // Acks beyond it count like any other frame.
    let mut ack_credit: u64 = 0;
    loop {
        tokio::select! {
            // Writes first: a reply or push waiting is older than the next read.
            biased;
            _ = handle.outbox.ready() => {
                // Boxed: write state (timer, partial write) exists only while
                // writing, so an idle connection's task stays small.
                if let Some(end) = Box::pin(flush(framed.get_mut(), handle, stall, &mut ack_credit)).await {
                    return end;
                }
            }
            next = framed.next() => {
                let frame = match next {
                    None => return None,
                    Some(Err(e)) => {
                        let code = e.code();
                        reject_decode(node, framed, e).await;
                        return code.map(|c| CloseReason::Error(c, String::new()));
                    }
                    Some(Ok(frame)) => frame,
                };
                // Any inbound frame proves the peer alive.
                handle.touch(node.clock.now_ms());
                let answers_a_push = frame.op == Op::PushAck && ack_credit > 0;
                if answers_a_push {
                    ack_credit -= 1;
                }
                let verdict = if answers_a_push { FrameVerdict::Pass } else { rate.on_frame(std::time::Instant::now()) };
                match verdict {
                    FrameVerdict::Pass => {}
                    FrameVerdict::Drop { notify } => {
                        node.metrics.abuse_hits.inc(detector::PACKET_RATE_DROP);
                        if notify {
                            let msg = Message::error(Code::RateLimited, "too many frames: this one and the rest of this second are dropped");
                            let _ = handle.outbox.push(msg.to_bytes(frame.seq), None);
                        }
                        continue;
                    }
                    FrameVerdict::Disconnect => {
                        node.metrics.abuse_hits.inc(detector::PACKET_RATE_DISCONNECT);
                        tracing::info!(peer = %handle.peer, uid = %handle.uid, "closing a connection that keeps exceeding the packet rate");
                        handle.outbox.close(CloseReason::Error(Code::RateLimited, "packet rate exceeded repeatedly".into()));
                        continue;
                    }
                }
                if let Err(reason) = on_frame(node, handle, frame) {
                    handle.outbox.close(reason);
                }
                release_idle_buffer(framed.read_buffer_mut());
            }
        }
    }
}

/// Write everything queued. `Some(end)` ends the session with that reason
/// (`None` inside: the peer went away).
async fn flush<S: AsyncWrite + Unpin>(
    io: &mut S,
    handle: &SessionHandle,
    stall: Duration,
    ack_credit: &mut u64,
) -> Option<Option<CloseReason>> {
    let (items, closing) = handle.outbox.take();
    if !items.is_empty() {
        let result = tokio::select! {
            r = tokio::time::timeout(stall, write_all(io, &items)) => r,
            // Overflow or abuse while we were blocked writing: stop now.
            _ = handle.outbox.aborted() => return Some(handle.outbox.close_reason()),
        };
        match result {
            Ok(Ok(())) => {
                // Byte 5 of every frame is its op (see protocol::codec).
                let pushes = items.iter().filter(|it| it.frame.get(5) == Some(&(Op::Push as u8))).count() as u64;
                *ack_credit = ack_credit.saturating_add(pushes).min(MAX_ACK_CREDIT);
                for item in items {
                    if let Some(tx) = item.written {
                        let _ = tx.send(());
                    }
                }
            }
            Ok(Err(_)) => return Some(None),
            Err(_) => {
                let reason = CloseReason::Error(Code::SlowConsumer, "write stalled: client is not reading".into());
                handle.outbox.close(reason.clone());
                // Mid-frame: the stream cannot carry an ERROR any more.
                return Some(Some(reason));
            }
        }
    }
    match closing {
        Some(reason) => {
            finish(io, handle, &reason).await;
            Some(Some(reason))
        }
        None => None,
    }
}

/// Act on one frame from a logged-in client. `Err` closes the session.
fn on_frame(node: &Arc<Node>, handle: &Arc<SessionHandle>, frame: Frame) -> Result<(), CloseReason> {
    let reply = |m: Message| {
        let _ = handle.outbox.push(m.to_bytes(frame.seq), None);
    };
    let msg = match Message::decode(&frame) {
        Ok(m) => m,
        Err(e) => {
            node.metrics.frames_rejected.inc(Code::Malformed.name());
            return Err(CloseReason::Reject(Code::Malformed, e.to_string(), frame.seq));
        }
    };
    match msg {
        Message::Heartbeat => {
            node.metrics.heartbeats.inc();
            reply(Message::HeartbeatAck);
        }
        Message::PushAck { push_id } => {
            let matched = node.acks.complete(push_id, handle.id);
            node.metrics.push_acks.inc(if matched { "matched" } else { "other" });
        }
        Message::Send { to, payload } => node.upstream.handle_send(node, handle, frame.seq, to, payload),
        Message::Close { .. } => return Err(CloseReason::Close(Code::Normal, "bye".into())),
        Message::Login { .. } => {
            node.metrics.frames_rejected.inc(Code::AlreadyLoggedIn.name());
            return Err(CloseReason::Reject(
                Code::AlreadyLoggedIn,
                "LOGIN on a logged-in connection".into(),
                frame.seq,
            ));
        }
        other => {
            node.metrics.frames_rejected.inc(Code::UnexpectedOp.name());
            return Err(CloseReason::Reject(
                Code::UnexpectedOp,
                format!("{} is a server-to-client op", other.op().name()),
                frame.seq,
            ));
        }
    }
    Ok(())
}

async fn write_all<S: AsyncWrite + Unpin>(io: &mut S, items: &VecDeque<Outgoing>) -> std::io::Result<()> {
    for item in items {
        io.write_all(&item.frame).await?;
    }
    io.flush().await
}

/// Write the frame that explains the close, then shut the stream down.
async fn finish<S: AsyncWrite + Unpin>(io: &mut S, _handle: &SessionHandle, reason: &CloseReason) {
    let (msg, seq) = match reason {
        CloseReason::Kick(c, m) => (Message::Kick { code: *c as u16, message: m.clone() }, 0),
        CloseReason::Close(c, m) => (Message::Close { code: *c as u16, message: m.clone() }, 0),
        CloseReason::Error(c, m) => (Message::error(*c, m.clone()), 0),
        CloseReason::Reject(c, m, seq) => (Message::error(*c, m.clone()), *seq),
    };
    send_final(io, msg, seq).await;
}

/// Best effort, bounded: the peer may be gone or not reading.
async fn send_final<S: AsyncWrite + Unpin>(io: &mut S, msg: Message, seq: u32) {
    let bytes: Bytes = msg.to_bytes(seq);
    // Boxed: this runs once per connection, at its end; keeping its timer and
    // write state out of the task keeps idle connections small.
    let write = async move {
        io.write_all(&bytes).await?;
        io.flush().await?;
        io.shutdown().await
    };
    let _ = Box::pin(tokio::time::timeout(FINAL_WRITE_TIMEOUT, write)).await;
}

fn release_idle_buffer(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > READ_BUF_KEEP {
        *buf = BytesMut::with_capacity(READ_BUF_INITIAL);
    }
}
