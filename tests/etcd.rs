//! A real etcd for tests: its own process on free loopback ports with a temp
//! data directory, killed (by pid) and cleaned up on drop.
//!
//! Needs `/usr/bin/etcd` (Debian: `apt-get install -y etcd-server`), or set
//! `ETCD_BIN`. Tests panic with that hint rather than skip, so a CI box
//! without etcd fails loudly instead of passing untested.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::TempDir;

pub struct Etcd {
    child: Option<Child>,
    pub endpoint: String,
    client_port: u16,
    peer_port: u16,
    _data: TempDir,
}

/// A free port never handed out before in this process: tests run in
/// parallel, and the kernel may give a just-released port 0 again, which
/// would make two etcds fight over one port.
fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let p = TcpListener::bind("127.0.0.1:0").expect("bind port 0").local_addr().expect("addr").port();
        if !given.contains(&p) {
            given.push(p);
            return p;
        }
    }
}

fn etcd_bin() -> PathBuf {
    let p = std::env::var_os("ETCD_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"));
    assert!(
        p.exists(),
        "{} not found: install etcd (Debian: apt-get install -y etcd-server) or set ETCD_BIN",
        p.display()
    );
    p
}

impl Etcd {
    pub async fn start() -> Etcd {
        let data = TempDir::new("etcd");
        let (client_port, peer_port) = (free_port(), free_port());
        let mut e = Etcd {
            child: None,
            endpoint: format!("http://127.0.0.1:{client_port}"),
            client_port,
            peer_port,
            _data: data,
        };
        e.spawn();
        e.wait_ready().await;
        e
    }

    fn spawn(&mut self) {
        let (c, p) = (self.client_port, self.peer_port);
        let child = Command::new(etcd_bin())
            .args(["--name", "test", "--data-dir"])
            .arg(self._data.0.join("data"))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{c}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{c}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{p}"))
            .arg(format!("--initial-advertise-peer-urls=http://127.0.0.1:{p}"))
            .arg(format!("--initial-cluster=test=http://127.0.0.1:{p}"))
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.log())
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
    }

    fn log(&self) -> PathBuf {
        self._data.0.join("etcd.log")
    }

    async fn wait_ready(&mut self) {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = http
                .post(format!("{}/v3/kv/range", self.endpoint))
                .json(&serde_json::json!({ "key": "eA==" }))
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ok {
                return;
            }
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if Instant::now() > deadline || exited.is_some() {
                let log = std::fs::read_to_string(self.log()).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                panic!(
                    "etcd on {} did not become ready ({exited:?}); its log ends:\n{}",
                    self.endpoint,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stop the process (data kept), to test an outage.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same ports and data.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_ready().await;
    }

    /// Keys under `prefix`, via the JSON gateway.
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut end = prefix.as_bytes().to_vec();
        if let Some(l) = end.last_mut() {
            *l += 1;
        }
        let r: serde_json::Value = reqwest::Client::new()
            .post(format!("{}/v3/kv/range", self.endpoint))
            .json(&serde_json::json!({ "key": b64.encode(prefix), "range_end": b64.encode(&end), "keys_only": true }))
            .send()
            .await
            .expect("etcd range")
            .json()
            .await
            .expect("etcd JSON");
        r["kvs"]
            .as_array()
            .map(|kvs| {
                kvs.iter()
                    .filter_map(|kv| b64.decode(kv["key"].as_str()?).ok())
                    .map(|k| String::from_utf8_lossy(&k).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
