//! A load generator: many logged-in clients from one process.
//!
//! Used by `gateway load` and the benchmarks. One process holds at most
//! `ulimit -n` sockets (20,000 on our machines), so large runs start several
//! processes, each with its own uid range. Every run is bounded by a count
//! and a duration, and it only connects where it is told (loopback or a test
//! namespace).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::client::{Client, TlsOptions};
use crate::protocol::Message;

#[derive(Clone)]
pub struct LoadPlan {
    pub addr: SocketAddr,
    pub tls: Option<TlsOptions>,
    pub secret: Vec<u8>,
    /// Clients log in as `{uid_prefix}{i}` for i in `first..first+conns`.
    pub uid_prefix: String,
    pub first: u64,
    pub conns: u64,
    /// Logins in flight at once.
    pub concurrency: usize,
    /// Keep the connections open (heartbeating) this long after the last login.
    pub hold: Duration,
    pub heartbeat: Option<Duration>,
}

#[derive(Debug, Default)]
pub struct LoadStats {
    pub logged_in: AtomicU64,
    pub failed: AtomicU64,
    pub pushes: AtomicU64,
}

#[derive(Debug, Clone)]
pub struct LoadReport {
    pub logged_in: u64,
    pub failed: u64,
    pub pushes_received: u64,
    pub login_elapsed: Duration,
}

impl LoadReport {
    pub fn logins_per_sec(&self) -> f64 {
        self.logged_in as f64 / self.login_elapsed.as_secs_f64().max(1e-9)
    }
}

/// Open `plan.conns` sessions, hold them, then close them all.
/// `on_ready` runs once every login has finished (before the hold).
pub async fn run(plan: LoadPlan, on_ready: impl FnOnce(&LoadReport)) -> LoadReport {
    let stats = Arc::new(LoadStats::default());
    let gate = Arc::new(Semaphore::new(plan.concurrency.max(1)));
    let (ready_tx, _) = tokio::sync::watch::channel(false);
    let (stop_tx, _) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(plan.conns as usize);
    let (logins_done_tx, mut logins_done_rx) = tokio::sync::mpsc::channel::<()>(1024);
    for i in plan.first..plan.first + plan.conns {
        let uid = format!("{}{i}", plan.uid_prefix);
        let token = match crate::auth::mint_hs256(&plan.secret, &uid, None, Duration::from_secs(24 * 3600)) {
            Ok(t) => t,
            Err(_) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let (plan2, stats2, gate2, done) = (plan.clone(), stats.clone(), gate.clone(), logins_done_tx.clone());
        let mut stop = stop_tx.subscribe();
        tasks.push(tokio::spawn(async move {
            let permit = gate2.acquire_owned().await;
            let client = async {
                let mut c = Client::connect(plan2.addr, plan2.tls.as_ref()).await.ok()?;
                c.login(&token).await.ok()?;
                Some(c)
            }
            .await;
            drop(permit);
            // Report once and let go of the sender, or the collector below
            // would wait for the whole hold.
            let _ = done.send(()).await;
            drop(done);
            let Some(mut c) = client else {
                stats2.failed.fetch_add(1, Ordering::Relaxed);
                return;
            };
            stats2.logged_in.fetch_add(1, Ordering::Relaxed);
            let beat = plan2.heartbeat.unwrap_or(Duration::from_secs(3600));
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + beat, beat);
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tick.tick() => { if c.heartbeat().await.is_err() { break; } }
                    m = c.recv() => match m {
                        Ok((_, Message::Push { push_id, .. })) => {
                            stats2.pushes.fetch_add(1, Ordering::Relaxed);
                            let _ = c.send(Message::PushAck { push_id }).await;
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            }
        }));
    }
    drop(logins_done_tx);
    for _ in 0..tasks.len() {
        if logins_done_rx.recv().await.is_none() {
            break;
        }
    }
    let login_elapsed = started.elapsed();
    let report = |stats: &LoadStats| LoadReport {
        logged_in: stats.logged_in.load(Ordering::Relaxed),
        failed: stats.failed.load(Ordering::Relaxed),
        pushes_received: stats.pushes.load(Ordering::Relaxed),
        login_elapsed,
    };
    let _ = ready_tx.send(true);
    on_ready(&report(&stats));
    tokio::time::sleep(plan.hold).await;
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    report(&stats)
}

/// Result of [`push_bench`].
#[derive(Debug, Clone)]
pub struct PushBenchReport {
    pub requests: u64,
    /// Requests whose every uid came back `delivered` (or `acked` with `wait_ack`).
    pub complete: u64,
    pub elapsed: Duration,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl PushBenchReport {
    pub fn per_sec(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Drive the push API: `requests` pushes, each to `uids_per_push` uids drawn
/// round-robin from `uids`, `concurrency` in flight; latency is the HTTP
/// round trip, which includes the write to every target socket (and the
/// PUSH_ACK with `wait_ack`).
pub async fn push_bench(
    api: &str,
    uids: &[String],
    uids_per_push: usize,
    requests: u64,
    concurrency: usize,
    wait_ack: bool,
) -> Result<PushBenchReport, reqwest::Error> {
    let http = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build()?;
    let url = format!("{api}/v1/push");
    let next = Arc::new(AtomicU64::new(0));
    let complete = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (http, url, next, complete) = (http.clone(), url.clone(), next.clone(), complete.clone());
        let uids = uids.to_vec();
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    break;
                }
                let targets: Vec<&String> =
                    (0..uids_per_push).map(|k| &uids[(i as usize * uids_per_push + k) % uids.len()]).collect();
                let body = serde_json::json!({"uids": targets, "payload": format!("bench {i}"), "wait_ack": wait_ack});
                let t = Instant::now();
                let ok = match http.post(&url).json(&body).send().await {
                    Ok(r) => match r.json::<serde_json::Value>().await {
                        Ok(v) => v["results"].as_array().is_some_and(|rs| {
                            rs.iter().all(|r| r["status"] == if wait_ack { "acked" } else { "delivered" })
                        }),
                        Err(_) => false,
                    },
                    Err(_) => false,
                };
                lat.push(t.elapsed());
                if ok {
                    complete.fetch_add(1, Ordering::Relaxed);
                }
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for w in workers {
        if let Ok(l) = w.await {
            lat.extend(l);
        }
    }
    let elapsed = started.elapsed();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or_default()
    };
    Ok(PushBenchReport {
        requests: lat.len() as u64,
        complete: complete.load(Ordering::Relaxed),
        elapsed,
        p50: pct(0.50),
        p99: pct(0.99),
        max: lat.last().copied().unwrap_or_default(),
    })
}
