//! Helpers for the abuse, admin and cluster tests: a gateway whose state
//! directory outlives it (to test restarts), admin API calls with tokens,
//! and clients that connect from a chosen loopback source address
//! (127.0.0.0/8 is all loopback on Linux, so "other sources" are real).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use gateway::client::{Client, ClientError, Io, LoginInfo, TlsOptions};
use gateway::config::{Config, RawConfig};
use gateway::server::Gateway;
use serde_json::Value;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use crate::harness::{test_config, TempDir};

pub const ALICE_TOKEN: &str = "alice-secret-token-0001";
pub const BOB_TOKEN: &str = "bob-secret-token-000002";

/// Two named admin tokens, so audit entries can be told apart.
pub fn with_tokens(raw: &mut RawConfig) {
    raw.admin.tokens = vec![
        gateway::config::RawAdminToken { name: "alice".into(), token: ALICE_TOKEN.into() },
        gateway::config::RawAdminToken { name: "bob".into(), token: BOB_TOKEN.into() },
    ];
}

/// A running gateway on a caller-owned state directory.
pub struct BanNode {
    pub gw: Option<Gateway>,
    pub config: Config,
    pub tls: TlsOptions,
    pub secret: Vec<u8>,
    pub admin: Admin,
}

impl BanNode {
    pub async fn start(state: &TempDir, edit: impl FnOnce(&mut RawConfig)) -> BanNode {
        let config = test_config(state, |raw| {
            with_tokens(raw);
            edit(raw)
        });
        Self::start_config(config).await
    }

    pub async fn start_config(config: Config) -> BanNode {
        let gw = gateway::server::start(config.clone()).await.expect("gateway starts");
        let ca = gw.dev_ca_file.clone().expect("dev cert generated");
        let tls = TlsOptions::from_ca_file(&ca, "localhost").expect("client TLS config");
        let secret = gateway::state::resolve_secret(&config.auth, &config.node.state_dir)
            .expect("secret")
            .expect("HS256 secret")
            .0;
        let admin = Admin::new(gw.admin_addr.expect("admin API enabled"), Some(ALICE_TOKEN));
        BanNode { gw: Some(gw), config, tls, secret, admin }
    }

    pub fn gw(&self) -> &Gateway {
        self.gw.as_ref().expect("gateway running")
    }

    pub fn addr(&self) -> SocketAddr {
        self.gw().addr
    }

    pub fn token(&self, uid: &str) -> String {
        gateway::auth::mint_hs256(&self.secret, uid, None, Duration::from_secs(600)).expect("mint")
    }

    /// TLS connect from `src` and log in as `uid`.
    pub async fn login_from(&self, src: &str, uid: &str) -> Result<(Client, LoginInfo), ClientError> {
        let mut c = connect_from(src.parse().expect("source ip"), self.addr(), &self.tls).await?;
        let info = tokio::time::timeout(Duration::from_secs(5), c.login(&self.token(uid)))
            .await
            .map_err(|_| ClientError::Timeout)??;
        Ok((c, info))
    }

    /// True when a client from `src` cannot get a session (refused at accept,
    /// in the handshake, or at login).
    pub async fn refused_from(&self, src: &str) -> bool {
        self.login_from(src, "probe").await.is_err()
    }

    pub async fn stop(&mut self) {
        if let Some(gw) = self.gw.take() {
            gw.shutdown().await;
        }
    }
}

/// TCP from a chosen source address, then TLS.
pub async fn connect_from(src: IpAddr, addr: SocketAddr, tls: &TlsOptions) -> Result<Client, ClientError> {
    let sock = if src.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }
        .map_err(ClientError::Io)?;
    sock.bind(SocketAddr::new(src, 0)).map_err(ClientError::Io)?;
    let tcp = sock.connect(addr).await.map_err(|source| ClientError::Connect { addr, source })?;
    let _ = tcp.set_nodelay(true);
    let name =
        ServerName::try_from(tls.server_name.clone()).map_err(|_| ClientError::ServerName(tls.server_name.clone()))?;
    let stream =
        tokio::time::timeout(Duration::from_secs(5), TlsConnector::from(tls.config.clone()).connect(name, tcp))
            .await
            .map_err(|_| ClientError::Timeout)?
            .map_err(ClientError::Tls)?;
    let io: Box<dyn Io> = Box::new(stream);
    Ok(Client::over(io))
}

/// Plain TCP from a chosen source (no TLS): for counting sockets per source.
pub async fn tcp_from(src: &str, addr: SocketAddr) -> tokio::net::TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind(SocketAddr::new(src.parse().expect("ip"), 0)).expect("bind source");
    sock.connect(addr).await.expect("TCP connect")
}

/// True when the server closed `s` (EOF or reset) within `within`.
pub async fn closed_by_server(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut b = [0u8; 64];
    matches!(tokio::time::timeout(within, s.read(&mut b)).await, Ok(Ok(0)) | Ok(Err(_)))
}

/// Admin API calls with one token (or none).
#[derive(Clone)]
pub struct Admin {
    pub base: String,
    pub token: Option<String>,
    http: reqwest::Client,
}

impl Admin {
    pub fn new(addr: SocketAddr, token: Option<&str>) -> Admin {
        Admin { base: format!("http://{addr}"), token: token.map(str::to_string), http: reqwest::Client::new() }
    }

    pub fn with_token(&self, token: Option<&str>) -> Admin {
        Admin { token: token.map(str::to_string), ..self.clone() }
    }

    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("admin API reachable");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    /// Targets of every ban, sorted.
    pub async fn targets(&self) -> Vec<String> {
        let (s, v) = self.get("/v1/bans").await;
        assert_eq!(s, 200, "list bans: {v}");
        let mut t: Vec<String> = v["bans"]
            .as_array()
            .expect("bans array")
            .iter()
            .map(|b| b["target"].as_str().unwrap_or_default().to_string())
            .collect();
        t.sort();
        t
    }
}

/// Poll `cond` every 50 ms until it holds or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("not within {within:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
