//! Starting a node: listeners, the accept loops, the liveness sweeper, the
//! push API, and shutdown.
//!
//! [`start`] binds everything before returning, so a caller (the binary or a
//! test) knows the real addresses (port 0 works) and any bind error surfaces
//! at once. [`Gateway::shutdown`] stops accepting, tells every client why,
//! and waits a bounded time for connection tasks to finish.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::auth::{KeyError, Verifier};
use crate::config::Config;
use crate::defense::{Defense, Enforcement};
use crate::heartbeat::{check, Liveness};
use crate::node::Node;
use crate::protocol::Code;
use crate::session::{conn, CloseReason};
use crate::state::{self, StateError};
use crate::tls::{self, TlsError};
use crate::upstream::{Upstream, UpstreamError};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("cannot listen on {addr} ({what}): {source}{hint}")]
    Bind { addr: SocketAddr, what: &'static str, source: io::Error, hint: &'static str },
}

/// A running node.
pub struct Gateway {
    pub node: Arc<Node>,
    /// The TLS listener's bound address.
    pub addr: SocketAddr,
    pub plaintext_addr: Option<SocketAddr>,
    pub push_api_addr: SocketAddr,
    /// The generated dev certificate, when no certificate was configured.
    pub dev_ca_file: Option<PathBuf>,
    tasks: Vec<JoinHandle<()>>,
}

fn bind(addr: SocketAddr, backlog: u32, what: &'static str) -> Result<TcpListener, StartError> {
    let err = |source: io::Error| {
        let hint = match source.kind() {
            io::ErrorKind::AddrInUse => " (another process holds the port: stop it or pick another address)",
            io::ErrorKind::PermissionDenied => " (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
            io::ErrorKind::AddrNotAvailable => " (no interface on this host has that address)",
            _ => "",
        };
        StartError::Bind { addr, what, source, hint }
    };
    let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(backlog).map_err(err)
}

/// Bind every listener and start serving.
pub async fn start(config: Config) -> Result<Gateway, StartError> {
    let state_dir = config.node.state_dir.clone();
    let (cert, key, dev_ca_file) = match (&config.tls.cert_file, &config.tls.key_file) {
        (Some(c), Some(k)) => (c.clone(), k.clone(), None),
        _ => {
            let (c, k, fresh) = state::ensure_dev_cert(&state_dir, Some(config.listen.addr.ip()))?;
            if fresh {
                tracing::info!(cert = %c.display(), "generated a self-signed dev certificate; clients must trust this file");
            }
            (c.clone(), k, Some(c))
        }
    };
    let acceptor = TlsAcceptor::from(tls::server_config(&cert, &key)?);
    let secret = state::resolve_secret(&config.auth, &state_dir)?;
    if let Some((_, state::SecretSource::Generated(p))) = &secret {
        tracing::info!(file = %p.display(), "generated a dev JWT secret (mint tokens with `gateway token`)");
    }
    let verifier = Verifier::new(&config.auth, secret.as_ref().map(|(s, _)| s.as_slice()), config.session.max_uid_bytes)?;
    let upstream = Upstream::from_config(&config.upstream)?;

    let listener = bind(config.listen.addr, config.listen.backlog, "listen.addr")?;
    let plain = match config.listen.plaintext_addr {
        Some(a) => Some(bind(a, config.listen.backlog, "listen.plaintext_addr")?),
        None => None,
    };
    let api = bind(config.push_api.listen, 1024, "push_api.listen")?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind { addr: config.listen.addr, what: "listen.addr", source, hint: "" })?;
    let plaintext_addr = plain.as_ref().and_then(|l| l.local_addr().ok());
    let push_api_addr = api.local_addr().map_err(|source| StartError::Bind { addr: config.push_api.listen, what: "push_api.listen", source, hint: "" })?;

    let defense = Defense::start(&config.xdp, addr);
    match defense.enforcement() {
        Enforcement::Xdp { interface, mode } => tracing::info!(%interface, %mode, "XDP blacklist active in the kernel"),
        Enforcement::Userspace { reason } => {
            tracing::warn!(%reason, "XDP not active: the blacklist is checked at accept instead")
        }
    }
    tracing::info!(upstream = %upstream.describe(), "SEND handling");

    let max_conns = config.listen.max_connections;
    let node = Arc::new(Node::new(config, verifier, upstream, defense));
    let limit = Arc::new(Semaphore::new(max_conns));
    let mut tasks = vec![tokio::spawn(accept_loop(node.clone(), listener, Some(acceptor), limit.clone()))];
    if let Some(p) = plain {
        tracing::warn!(addr = ?plaintext_addr, "plaintext listener enabled (internal use only)");
        tasks.push(tokio::spawn(accept_loop(node.clone(), p, None, limit)));
    }
    tasks.push(tokio::spawn(liveness_sweeper(node.clone())));
    tasks.push(tokio::spawn(crate::api::serve(node.clone(), api)));
    tracing::info!(node = %node.id, %addr, push_api = %push_api_addr, "gateway serving");
    Ok(Gateway { node, addr, plaintext_addr, push_api_addr, dev_ca_file, tasks })
}

impl Gateway {
    /// Stop accepting, tell clients, wait up to `shutdown.grace` for their tasks.
    pub async fn shutdown(self) {
        let node = &self.node;
        node.shutdown.cancel();
        let mut told = 0usize;
        node.registry.for_each(|s| {
            if s.outbox.close(CloseReason::Close(Code::ShuttingDown, "node is shutting down; reconnect to another node".into())) {
                told += 1;
            }
        });
        node.tasks.close();
        tracing::info!(sessions = told, "shutting down: waiting for connections to close");
        if tokio::time::timeout(node.config.shutdown.grace, node.tasks.wait()).await.is_err() {
            tracing::warn!(remaining = node.tasks.len(), "shutdown grace elapsed; dropping remaining connections");
        }
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Errors that mean "out of a resource": retrying at once would spin.
fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

async fn accept_loop(node: Arc<Node>, listener: TcpListener, tls: Option<TlsAcceptor>, limit: Arc<Semaphore>) {
    let mut backoff = Duration::ZERO;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = node.shutdown.cancelled() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => {
                backoff = Duration::ZERO;
                a
            }
            Err(e) => {
                node.metrics.accept_errors.inc();
                if is_resource_exhaustion(&e) {
                    backoff = (backoff * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
                    tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed: out of resources, backing off");
                    tokio::time::sleep(backoff).await;
                } else {
                    tracing::debug!(error = %e, "accept failed");
                }
                continue;
            }
        };
        node.metrics.connections_accepted.inc();
        if node.defense.is_blocked(peer.ip()) {
            node.metrics.connections_refused.inc("blacklisted");
            continue;
        }
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            node.metrics.connections_refused.inc("capacity");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        node.tasks.spawn(conn::run(node.clone(), tcp, peer, tls.clone(), permit));
    }
}

/// Close sessions that have been silent longer than the heartbeat timeout.
async fn liveness_sweeper(node: Arc<Node>) {
    let timeout = node.heartbeat_timeout_ms();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = node.shutdown.cancelled() => return,
        }
        let now = node.clock.now_ms();
        let due = node.liveness.lock().pop_due(now);
        if due.is_empty() {
            continue;
        }
        let mut refile = Vec::new();
        for weak in due {
            let Some(s) = weak.upgrade() else { continue };
            if s.outbox.is_closing() {
                continue;
            }
            match check(s.last_seen_ms(), now, timeout) {
                Liveness::Expired => {
                    node.metrics.heartbeat_timeouts.inc();
                    s.outbox.close(CloseReason::Error(Code::HeartbeatTimeout, "no heartbeat within the timeout".into()));
                }
                Liveness::RecheckAt(at) => refile.push((at, weak)),
            }
        }
        let mut wheel = node.liveness.lock();
        for (at, weak) in refile {
            wheel.schedule(at, weak);
        }
    }
}
