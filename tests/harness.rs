//! An in-process gateway on port-0 listeners with its own state directory,
//! plus helpers to log clients in and call the push API. Real TLS, real
//! sockets; nothing mocked.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use gateway::client::{Client, LoginInfo, TlsOptions};
use gateway::config::{Config, Overrides, RawConfig};
use gateway::server::Gateway;

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// The `gateway` binary for tests that run it as a process: `$GATEWAY_BIN`
/// (set by `cargo xtask test`), else `target/<profile>/gateway` beside the
/// test executable's folder.
pub fn gateway_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("GATEWAY_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current test executable");
    let bin = exe.parent().and_then(|d| d.parent()).map(|d| d.join("gateway")).expect("target dir layout");
    assert!(bin.exists(), "no gateway binary at {}; set GATEWAY_BIN or run `cargo xtask test`", bin.display());
    bin
}

/// A child process (a gateway binary under test), killed and reaped on drop
/// so a failing test leaves nothing running.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("gw-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Defaults for tests: loopback port 0 everywhere, XDP off (the netns tests
/// cover it), a fresh state dir. `edit` adjusts the raw config.
pub fn test_config(state: &TempDir, edit: impl FnOnce(&mut RawConfig)) -> Config {
    let mut raw = RawConfig::default();
    raw.listen.addr = "127.0.0.1:0".into();
    raw.push_api.listen = "127.0.0.1:0".into();
    raw.admin.listen = "127.0.0.1:0".into();
    raw.node.state_dir = state.0.display().to_string();
    raw.node.id = "test-node".into();
    raw.xdp.enabled = false;
    edit(&mut raw);
    match raw.validate(&Overrides::default()) {
        Ok(c) => c,
        Err(e) => panic!("test config invalid: {e:?}"),
    }
}

pub struct TestGateway {
    pub gw: Option<Gateway>,
    pub api: String,
    pub tls: TlsOptions,
    pub secret: Vec<u8>,
    pub http: reqwest::Client,
    _state: TempDir,
}

impl TestGateway {
    pub async fn start(edit: impl FnOnce(&mut RawConfig)) -> TestGateway {
        let state = TempDir::new("gw");
        let config = test_config(&state, edit);
        let gw = gateway::server::start(config.clone()).await.expect("gateway starts");
        let ca = gw.dev_ca_file.clone().expect("dev cert generated");
        let tls = TlsOptions::from_ca_file(&ca, "localhost").expect("client TLS config");
        let secret = gateway::state::resolve_secret(&config.auth, &config.node.state_dir)
            .expect("secret")
            .expect("HS256 secret")
            .0;
        let api = format!("http://{}", gw.push_api_addr);
        TestGateway { gw: Some(gw), api, tls, secret, http: reqwest::Client::new(), _state: state }
    }

    pub fn gw(&self) -> &Gateway {
        self.gw.as_ref().expect("gateway running")
    }

    pub fn token(&self, uid: &str, device: Option<&str>) -> String {
        gateway::auth::mint_hs256(&self.secret, uid, device, Duration::from_secs(600)).expect("mint")
    }

    /// A TLS-connected client, not logged in.
    pub async fn connect(&self) -> Client {
        Client::connect(self.gw().addr, Some(&self.tls)).await.expect("TLS connect")
    }

    pub async fn login(&self, uid: &str, device: Option<&str>) -> (Client, LoginInfo) {
        let mut c = self.connect().await;
        let info = c.login(&self.token(uid, device)).await.unwrap_or_else(|e| panic!("login {uid}: {e}"));
        (c, info)
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let r = self.http.post(format!("{}{path}", self.api)).json(&body).send().await.expect("push API reachable");
        let status = r.status().as_u16();
        let v = r.json().await.unwrap_or(serde_json::Value::Null);
        (status, v)
    }

    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.http.get(format!("{}{path}", self.api)).send().await.expect("GET").json().await.expect("JSON body")
    }

    /// The value of one metrics line, e.g. `gateway_logins_total{result="ok"}`.
    pub async fn metric(&self, series: &str) -> u64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.api))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("text");
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
                    .map(|v| v.trim().parse().expect("number"))
            })
            .unwrap_or_else(|| panic!("metric {series} not found in:\n{text}"))
    }

    /// Wait until `cond` holds for a metric (the server updates some
    /// counters just after the client sees the effect).
    pub async fn wait_metric(&self, series: &str, want: impl Fn(u64) -> bool) -> u64 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.metric(series).await;
            if want(v) {
                return v;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("metric {series} stuck at {v}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(&mut self) {
        if let Some(gw) = self.gw.take() {
            gw.shutdown().await;
        }
    }
}
