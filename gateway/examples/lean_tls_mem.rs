//! Heap held per idle TLS session: `tls::lean` against tokio-rustls.
//!
//! `cargo run -p gateway --example lean_tls_mem -- lean 2000` (or `tokio-rustls`). Servers run on
//! one thread whose allocations alone are counted; clients run on another. Each session does a
//! handshake and one small echo, then the server parks a read on it (as the session task does) and
//! the live heap of the server thread is compared with before the sessions existed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::task::Poll;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::{
    self,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName},
    ClientConfig, RootCertStore, ServerConfig,
};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
thread_local! {
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

fn counted() -> bool {
    COUNTED.try_with(Cell::get).unwrap_or(false)
}

// SAFETY: forwards to `System`; the bookkeeping neither allocates nor unwinds.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if counted() {
            LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        }
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if counted() {
            LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        }
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if counted() {
            LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        }
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Both boxed, so the counted heap is the whole per-session cost of either stream.
enum Session {
    Lean(Box<gateway::tls::lean::LeanTlsStream>),
    Rustls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

fn configs() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let cert = CertificateDer::from(ck.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .expect("server config");
    server.send_tls13_tickets = 0;
    let mut roots = RootCertStore::empty();
    roots.add(cert).expect("root");
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

/// Resident set size in bytes (Linux), for the whole process: clients included, identical in
/// both runs, so the difference between two runs is the server side's.
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn main() {
    let mut args = std::env::args().skip(1);
    let kind = args.next().unwrap_or_else(|| "lean".into());
    let n: usize = args.next().map(|s| s.parse().expect("count")).unwrap_or(2000);
    let (server_cfg, client_cfg) = configs();

    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    std_listener.set_nonblocking(true).expect("nonblocking");
    let addr = std_listener.local_addr().expect("addr");
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();

    let clients = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("client rt");
        rt.block_on(async move {
            let connector = tokio_rustls::TlsConnector::from(client_cfg);
            let mut held = Vec::with_capacity(n);
            for _ in 0..n {
                let tcp = TcpStream::connect(addr).await.expect("connect");
                let mut tls = connector
                    .connect(ServerName::try_from("localhost").expect("name"), tcp)
                    .await
                    .expect("client handshake");
                tls.write_all(b"hello").await.expect("client write");
                tls.flush().await.expect("client flush");
                let mut back = [0u8; 5];
                tls.read_exact(&mut back).await.expect("client read");
                held.push(tls);
            }
            // Keep the sessions open until the server has measured.
            tokio::task::spawn_blocking(move || done_rx.recv()).await.expect("join").ok();
            drop(held);
        });
    });

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("server rt");
    rt.block_on(async move {
        let listener = TcpListener::from_std(std_listener).expect("listener");
        let acceptor = tokio_rustls::TlsAcceptor::from(server_cfg.clone());
        let mut sessions: Vec<Session> = Vec::with_capacity(n);
        COUNTED.with(|c| c.set(true));
        let before = LIVE.load(Ordering::Relaxed);
        let rss_before = rss();
        for _ in 0..n {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut s = match kind.as_str() {
                "lean" => Session::Lean(Box::new(
                    gateway::tls::lean::accept(server_cfg.clone(), tcp).await.expect("lean handshake"),
                )),
                _ => Session::Rustls(Box::new(acceptor.accept(tcp).await.expect("rustls handshake"))),
            };
            let mut buf = [0u8; 5];
            match &mut s {
                Session::Lean(t) => {
                    t.read_exact(&mut buf).await.expect("read");
                    t.write_all(&buf).await.expect("write");
                    t.flush().await.expect("flush");
                }
                Session::Rustls(t) => {
                    t.read_exact(&mut buf).await.expect("read");
                    t.write_all(&buf).await.expect("write");
                    t.flush().await.expect("flush");
                }
            }
            sessions.push(s);
        }
        // Park one read on every session, as an idle session task does.
        for s in &mut sessions {
            poll_fn(|cx| {
                let mut b = [0u8; 64];
                let mut rb = ReadBuf::new(&mut b);
                let r = match s {
                    Session::Lean(t) => Pin::new(&mut **t).poll_read(cx, &mut rb),
                    Session::Rustls(t) => Pin::new(&mut **t).poll_read(cx, &mut rb),
                };
                assert!(r.is_pending(), "idle session produced data or an error: {r:?}");
                Poll::Ready(())
            })
            .await;
        }
        let after = LIVE.load(Ordering::Relaxed);
        let rss_per = (rss() as f64 - rss_before as f64) / n as f64;
        // `sessions` was allocated before counting began, so `after - before` is the sessions alone.
        let per = (after - before) as f64 / n as f64;
        let own = match &sessions[0] {
            Session::Lean(t) => format!(", lean buffered_bytes() = {}", t.buffered_bytes()),
            Session::Rustls(_) => String::new(),
        };
        println!(
            "{kind}: {n} idle sessions, server-thread heap {per:.0} B/session (stream struct {} B \
             included{own}); process RSS {rss_per:.0} B/session incl. the client side",
            match kind.as_str() {
                "lean" => std::mem::size_of::<gateway::tls::lean::LeanTlsStream>(),
                _ => std::mem::size_of::<tokio_rustls::server::TlsStream<TcpStream>>(),
            }
        );
        COUNTED.with(|c| c.set(false));
        done_tx.send(()).ok();
        drop(sessions);
    });
    clients.join().expect("clients");
}
