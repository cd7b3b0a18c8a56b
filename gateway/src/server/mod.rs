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

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::abuse::{detector, Admit};
use crate::auth::{KeyError, Verifier};
use crate::bans::FileError;
use crate::config::Config;
use crate::defense::{Defense, Enforcement};
use crate::heartbeat::{check, Liveness};
use crate::node::Node;
use crate::protocol::{Code, Message};
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
    #[error(transparent)]
    Bans(#[from] FileError),
    #[error("cannot listen on {addr} ({what}): {source}{hint}")]
    Bind { addr: SocketAddr, what: &'static str, source: io::Error, hint: &'static str },
}

/// The kernel policy from `[xdp]`: the SYN limiter covers every client listener.
fn defense_options(config: &Config, addr: SocketAddr, plaintext: Option<SocketAddr>) -> crate::defense::Options {
    let x = &config.xdp;
    let mut ports = vec![addr.port()];
    ports.extend(plaintext.map(|a| a.port()));
    let policy = crate::defense::KernelPolicy {
        monitor: x.monitor,
        drop_fragments: x.drop_fragments,
        drop_malformed: x.drop_malformed,
        syn_limit: x.syn_limit.map(|(rate_per_sec, burst)| crate::defense::SynLimit { rate_per_sec, burst }),
        listen_ports: ports,
        events: x.drop_events.map(|(one_in, per_sec)| crate::defense::EventSampling { one_in, per_sec }),
    };
    crate::defense::Options { policy, pin_dir: x.pin_dir.clone() }
}

/// A running node.
pub struct Gateway {
    pub node: Arc<Node>,
    /// The TLS listener's bound address.
    pub addr: SocketAddr,
    pub plaintext_addr: Option<SocketAddr>,
    pub push_api_addr: SocketAddr,
    /// The admin API's bound address (None when `admin.enabled = false`).
    pub admin_addr: Option<SocketAddr>,
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
    let server_tls = tls::server_config(&cert, &key)?;
    let secret = state::resolve_secret(&config.auth, &state_dir)?;
    if let Some((_, state::SecretSource::Generated(p))) = &secret {
        tracing::info!(file = %p.display(), "generated a dev JWT secret (mint tokens with `gateway token`)");
    }
    let verifier =
        Verifier::new(&config.auth, secret.as_ref().map(|(s, _)| s.as_slice()), config.session.max_uid_bytes)?;
    let upstream = Upstream::from_config(&config.upstream)?;

    let listener = bind(config.listen.addr, config.listen.backlog, "listen.addr")?;
    let plain = match config.listen.plaintext_addr {
        Some(a) => Some(bind(a, config.listen.backlog, "listen.plaintext_addr")?),
        None => None,
    };
    let api = bind(config.push_api.listen, 1024, "push_api.listen")?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen.addr,
        what: "listen.addr",
        source,
        hint: "",
    })?;
    let plaintext_addr = plain.as_ref().and_then(|l| l.local_addr().ok());
    let push_api_addr = api.local_addr().map_err(|source| StartError::Bind {
        addr: config.push_api.listen,
        what: "push_api.listen",
        source,
        hint: "",
    })?;
    let admin = match config.admin.enabled {
        true => Some(bind(config.admin.listen, 1024, "admin.listen")?),
        false => None,
    };
    let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());

    let defense = Defense::start_with(&config.xdp, addr, defense_options(&config, addr, plaintext_addr));
    match defense.enforcement() {
        Enforcement::Xdp { interface, mode } => tracing::info!(%interface, %mode, "XDP blacklist active in the kernel"),
        Enforcement::Userspace { reason } => {
            tracing::warn!(%reason, "XDP not active: the blacklist is checked at accept instead")
        }
    }
    tracing::info!(upstream = %upstream.describe(), "SEND handling");

    let max_conns = config.listen.max_connections;
    let node = Arc::new(Node::new(config, verifier, upstream, defense));
    // Bans are in force before the first accept.
    let loaded = node.bans.load(&node)?;
    tracing::info!(bans = loaded, file = %node.config.bans.file.display(), "ban list loaded");
    let mut tasks = Vec::new();
    tasks.extend(node.audit.spawn_writer(node.config.admin.audit_file.clone(), node.config.admin.audit_max_bytes));
    tasks.push(tokio::spawn(crate::bans::sync::persister(node.clone())));
    tasks.push(tokio::spawn(crate::bans::sync::sweeper(node.clone())));
    if !node.config.cluster.etcd_endpoints.is_empty() {
        let kv = Arc::new(crate::bans::etcd::EtcdHttp::new(&node.config.cluster.etcd_endpoints));
        tasks.push(tokio::spawn(crate::bans::sync::replicate(node.clone(), kv)));
    }
    let limit = Arc::new(Semaphore::new(max_conns));
    let busy = Arc::new(Semaphore::new(BUSY_REPLY_SLOTS));
    tasks.push(tokio::spawn(accept_loop(node.clone(), listener, Some(server_tls), limit.clone(), busy.clone())));
    if let Some(p) = plain {
        tracing::warn!(addr = ?plaintext_addr, "plaintext listener enabled (internal use only)");
        tasks.push(tokio::spawn(accept_loop(node.clone(), p, None, limit, busy)));
    }
    if let Some(a) = admin {
        tasks.push(tokio::spawn(crate::admin::serve(node.clone(), a)));
    }
    tasks.push(tokio::spawn(liveness_sweeper(node.clone())));
    // XDP mode only; idles until xdp.drop_events turns the stream on.
    tasks.extend(node.defense.spawn_event_reader());
    tasks.push(tokio::spawn(crate::api::serve(node.clone(), api)));
    tracing::info!(node = %node.id, %addr, push_api = %push_api_addr, "gateway serving");
    Ok(Gateway { node, addr, plaintext_addr, push_api_addr, admin_addr, dev_ca_file, tasks })
}

impl Gateway {
    /// Stop accepting, tell clients, wait up to `shutdown.grace` for their tasks.
    pub async fn shutdown(self) {
        let node = &self.node;
        node.shutdown.cancel();
        let mut told = 0usize;
        node.registry.for_each(|s| {
            if s.outbox.close(CloseReason::Close(
                Code::ShuttingDown,
                "node is shutting down; reconnect to another node".into(),
            )) {
                told += 1;
            }
        });
        node.tasks.close();
        tracing::info!(sessions = told, "shutting down: waiting for connections to close");
        if tokio::time::timeout(node.config.shutdown.grace, node.tasks.wait()).await.is_err() {
            tracing::warn!(remaining = node.tasks.len(), "shutdown grace elapsed; dropping remaining connections");
        }
        // Auto-bans of the last moments may not have reached the file yet.
        if let Err(e) = node.bans.persist().await {
            tracing::error!(error = %e, "could not save the ban list at shutdown");
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

/// Connections refused at the global cap that may get a "busy" reply at once;
/// beyond this they are closed without one (a reply costs a TLS handshake).
const BUSY_REPLY_SLOTS: usize = 64;
const BUSY_REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// Tell a client refused at `listen.max_connections` to try another node.
fn refuse_busy(node: &Node, tcp: TcpStream, tls: Option<Arc<ServerConfig>>, busy: &Arc<Semaphore>) {
    let Ok(slot) = busy.clone().try_acquire_owned() else { return };
    node.metrics.busy_replies.inc();
    tokio::spawn(async move {
        let _slot = slot;
        let frame = Message::error(Code::ServerBusy, "busy, try another node").to_bytes(0);
        let _ = tokio::time::timeout(BUSY_REPLY_TIMEOUT, async move {
            match tls {
                Some(config) => {
                    let mut s = TlsAcceptor::from(config).accept(tcp).await?;
                    s.write_all(&frame).await?;
                    s.shutdown().await
                }
                None => {
                    let mut t = tcp;
                    t.write_all(&frame).await?;
                    t.shutdown().await
                }
            }
        })
        .await;
    });
}

async fn accept_loop(
    node: Arc<Node>,
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    limit: Arc<Semaphore>,
    busy: Arc<Semaphore>,
) {
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
        // Read before the check: a ban landing after it is caught at login.
        let ban_epoch = node.bans.epoch();
        if node.defense.is_blocked(peer.ip()) {
            node.metrics.connections_refused.inc("blacklisted");
            continue;
        }
        let slot = match node.abuse.on_accept(peer.ip(), std::time::Instant::now()) {
            Admit::Ok(slot) => slot,
            Admit::Refuse(detector) => {
                node.metrics.abuse_hits.inc(detector);
                node.metrics.connections_refused.inc(detector);
                continue;
            }
            Admit::Ban { source, count, first } => {
                node.metrics.abuse_hits.inc(detector::CONN_RATE);
                node.metrics.connections_refused.inc(detector::CONN_RATE);
                if first {
                    let cfg = &node.config.abuse;
                    let reason =
                        format!("over {} connections per {:?} (abuse.conn_rate)", cfg.conn_rate, cfg.conn_rate_window);
                    crate::bans::auto_ban(&node, source, detector::CONN_RATE, reason);
                }
                tracing::debug!(%peer, count, "connection over the rate limit closed");
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            node.metrics.connections_refused.inc("capacity");
            node.metrics.abuse_hits.inc(detector::GLOBAL_CAP);
            refuse_busy(&node, tcp, tls.clone(), &busy);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        node.tasks.spawn(conn::run(node.clone(), tcp, peer, tls.clone(), permit, slot, ban_epoch));
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
                    s.outbox
                        .close(CloseReason::Error(Code::HeartbeatTimeout, "no heartbeat within the timeout".into()));
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
