//! Gateway benchmarks: memory per idle session, login rate, push throughput
//! and latency. Everything runs on loopback with the release build:
//! one `gateway serve` process, several `gateway load` processes holding
//! sessions (one process can hold at most `ulimit -n` sockets), and
//! `gateway push-bench` driving the push API. Every run is bounded.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

pub struct Plan {
    /// Load processes, and sessions per process.
    pub procs: u64,
    pub per_proc: u64,
    pub push_requests: u64,
}

impl Plan {
    pub fn full() -> Plan {
        Plan { procs: 2, per_proc: 7_500, push_requests: 20_000 }
    }
    pub fn quick() -> Plan {
        Plan { procs: 2, per_proc: 1_000, push_requests: 2_000 }
    }
}

const TLS_ADDR: &str = "127.0.0.1:7300";
const PLAIN_ADDR: &str = "127.0.0.1:7301";
const API: &str = "127.0.0.1:7380";
const ADMIN: &str = "127.0.0.1:7390";

/// Kills the child when dropped, so a failed bench leaves nothing running.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_config(dir: &Path, engine: &str) -> Result<PathBuf> {
    let state = dir.join("state");
    let cfg = format!(
        r#"# Written by `cargo xtask bench gateway`.
[node]
id = "bench"
state_dir = "{state}"
[tls]
engine = "{engine}"
[listen]
addr = "{TLS_ADDR}"
plaintext_addr = "{PLAIN_ADDR}"
max_connections = 100000
[push_api]
listen = "{API}"
[admin]
listen = "{ADMIN}"
[xdp]
enabled = false
# Every session comes from one address: the per-source SYN limit would apply.
syn_rate = 0
[abuse]
# One source (loopback) opens every session: the per-source detectors would
# (correctly) ban it.
enabled = false
[log]
level = "warn"
"#,
        state = state.display()
    );
    let path = dir.join(format!("gateway-{engine}.toml"));
    std::fs::write(&path, cfg).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading /proc/<pid>/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS missing")
}

fn wait_listening(addr: &str, limit: Duration) -> Result<()> {
    let started = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        if started.elapsed() > limit {
            bail!("gateway did not listen on {addr} within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Read JSON lines from a child's stdout until one has `"event": event`.
fn wait_event(child: &mut Child, event: &str) -> Result<Value> {
    let out = child.stdout.take().context("child stdout")?;
    let mut lines = BufReader::new(out).lines();
    for line in lines.by_ref() {
        let line = line?;
        if let Ok(v) = serde_json::from_str::<Value>(&line) {
            if v["event"] == event {
                // Keep draining in the background so the child never blocks on a full pipe.
                std::thread::spawn(move || for _ in lines {});
                return Ok(v);
            }
        }
    }
    bail!("child exited before reporting {event}")
}

pub struct MemoryResult {
    pub transport: &'static str,
    pub sessions: u64,
    pub bytes_per_session: f64,
    pub logins_per_sec: f64,
}

pub struct PushResult {
    pub label: String,
    pub requests: u64,
    pub complete: u64,
    pub per_sec: f64,
    pub deliveries_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

pub struct Report {
    pub memory: Vec<MemoryResult>,
    pub push: Vec<PushResult>,
}

pub fn run(gateway: &Path, work: &Path, plan: &Plan) -> Result<Report> {
    std::fs::create_dir_all(work)?;
    let mut report = Report { memory: Vec::new(), push: Vec::new() };
    for (transport, addr, engine) in [
        ("TLS 1.3, lean engine (default)", TLS_ADDR, "lean"),
        ("TLS 1.3, tokio-rustls engine", TLS_ADDR, "buffered"),
        ("plaintext (internal listener)", PLAIN_ADDR, "lean"),
    ] {
        let config = write_config(work, engine)?;
        let server = Command::new(gateway)
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting gateway serve")?;
        let server = Guard(server);
        wait_listening(API, Duration::from_secs(20))?;
        wait_listening(addr, Duration::from_secs(5))?;
        std::thread::sleep(Duration::from_millis(300));
        let rss0 = rss_kib(server.0.id())?;
        let mut loads = Vec::new();
        for p in 0..plan.procs {
            let mut c = Command::new(gateway);
            c.args(["load", "--config"]).arg(&config).args([
                "--addr",
                addr,
                "--conns",
                &plan.per_proc.to_string(),
                "--first",
                &(p * plan.per_proc).to_string(),
                "--concurrency",
                "128",
                "--hold",
                "10m",
            ]);
            if addr == PLAIN_ADDR {
                c.arg("--plaintext");
            }
            loads.push(Guard(c.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().context("starting gateway load")?));
        }
        let mut logged_in = 0u64;
        let mut slowest = 0f64;
        for l in &mut loads {
            let ready = wait_event(&mut l.0, "ready")?;
            logged_in += ready["logged_in"].as_u64().unwrap_or(0);
            slowest = slowest.max(ready["login_secs"].as_f64().unwrap_or(0.0));
        }
        // Let transient handshake allocations settle before sampling.
        std::thread::sleep(Duration::from_secs(2));
        let rss1 = rss_kib(server.0.id())?;
        let sessions = logged_in.max(1);
        report.memory.push(MemoryResult {
            transport,
            sessions: logged_in,
            bytes_per_session: (rss1.saturating_sub(rss0) * 1024) as f64 / sessions as f64,
            logins_per_sec: logged_in as f64 / slowest.max(1e-9),
        });
        if transport.starts_with("TLS 1.3, lean") {
            let uids = (plan.procs * plan.per_proc).to_string();
            for (label, per_push, wait_ack) in [
                ("1 uid per push", 1usize, false),
                ("1 uid per push, wait_ack", 1, true),
                ("100 uids per push", 100, false),
            ] {
                let requests = if per_push > 1 { plan.push_requests / 20 } else { plan.push_requests };
                let out = Command::new(gateway)
                    .args(["push-bench", "--api", &format!("http://{API}"), "--uids", &uids])
                    .args([
                        "--uids-per-push",
                        &per_push.to_string(),
                        "--requests",
                        &requests.to_string(),
                        "--concurrency",
                        "32",
                    ])
                    .args(if wait_ack { vec!["--wait-ack"] } else { vec![] })
                    .output()
                    .context("running gateway push-bench")?;
                let text = String::from_utf8_lossy(&out.stdout);
                let v: Value = text
                    .lines()
                    .find_map(|l| serde_json::from_str(l).ok())
                    .with_context(|| format!("push-bench printed no result: {text}"))?;
                report.push.push(PushResult {
                    label: label.to_string(),
                    requests: v["requests"].as_u64().unwrap_or(0),
                    complete: v["complete"].as_u64().unwrap_or(0),
                    per_sec: v["per_sec"].as_f64().unwrap_or(0.0),
                    deliveries_per_sec: v["deliveries_per_sec"].as_f64().unwrap_or(0.0),
                    p50_ms: v["p50_ms"].as_f64().unwrap_or(0.0),
                    p99_ms: v["p99_ms"].as_f64().unwrap_or(0.0),
                });
            }
        }
        drop(loads);
        drop(server);
    }
    Ok(report)
}

pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    s.push_str("| transport | idle sessions | userspace bytes per idle session | logins/s (handshake + JWT) |\n|---|---:|---:|---:|\n");
    for m in &r.memory {
        s.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} |\n",
            m.transport, m.sessions, m.bytes_per_session, m.logins_per_sec
        ));
    }
    s.push_str("\n| push API load (TLS sessions, lean engine) | requests | all delivered | requests/s | deliveries/s | p50 ms | p99 ms |\n|---|---:|---:|---:|---:|---:|---:|\n");
    for p in &r.push {
        s.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.2} | {:.2} |\n",
            p.label, p.requests, p.complete, p.per_sec, p.deliveries_per_sec, p.p50_ms, p.p99_ms
        ));
    }
    s
}
