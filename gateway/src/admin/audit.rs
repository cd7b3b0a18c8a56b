//! The audit log: who changed what, when, and why — one JSON object per line.
//!
//! Recording never blocks the caller (the accept loop records auto-bans): an
//! entry goes into a bounded queue that one task writes and fsyncs. At the
//! bound, entries are dropped and counted (`dropped`), never the caller held
//! up. The file is rotated once at `admin.audit_max_bytes` (to `.1`), so disk
//! use is bounded at twice that. The last [`RECENT`] entries are also kept in
//! memory for `GET /v1/audit`.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// Entries kept in memory for the API.
pub const RECENT: usize = 1000;
const QUEUE: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// RFC 3339, UTC.
    pub at: String,
    /// A token name, `detector:<name>`, or `system`.
    pub who: String,
    /// `ban.add`, `ban.remove`, `ban.expire`, `kick`, ...
    pub action: String,
    pub target: String,
    pub reason: String,
    /// The node that made the change.
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

pub struct AuditLog {
    node: String,
    tx: mpsc::Sender<AuditEntry>,
    rx: Mutex<Option<mpsc::Receiver<AuditEntry>>>,
    recent: Mutex<VecDeque<AuditEntry>>,
    pub dropped: AtomicU64,
}

impl AuditLog {
    pub fn new(node: &str) -> AuditLog {
        let (tx, rx) = mpsc::channel(QUEUE);
        AuditLog {
            node: node.to_string(),
            tx,
            rx: Mutex::new(Some(rx)),
            recent: Mutex::new(VecDeque::new()),
            dropped: AtomicU64::new(0),
        }
    }

    pub fn record(&self, who: &str, action: &str, target: &str, reason: &str, detail: Option<serde_json::Value>) {
        let e = AuditEntry {
            at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            who: who.to_string(),
            action: action.to_string(),
            target: target.to_string(),
            reason: reason.to_string(),
            node: self.node.clone(),
            detail,
        };
        tracing::info!(target: "audit", who = %e.who, action = %e.action, target = %e.target, reason = %e.reason, "audit");
        {
            let mut r = self.recent.lock();
            if r.len() >= RECENT {
                r.pop_front();
            }
            r.push_back(e.clone());
        }
        if self.tx.try_send(e).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The newest `limit` entries, oldest first.
    pub fn recent(&self, limit: usize) -> Vec<AuditEntry> {
        let r = self.recent.lock();
        r.iter().skip(r.len().saturating_sub(limit)).cloned().collect()
    }

    /// Start the writer (once); entries recorded before are written too.
    pub fn spawn_writer(&self, path: PathBuf, max_bytes: u64) -> Option<tokio::task::JoinHandle<()>> {
        let mut rx = self.rx.lock().take()?;
        Some(tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < 256 {
                    match rx.try_recv() {
                        Ok(e) => batch.push(e),
                        Err(_) => break,
                    }
                }
                let p = path.clone();
                let r = tokio::task::spawn_blocking(move || append(&p, &batch, max_bytes)).await;
                if let Ok(Err(e)) | Err(e) = r.map_err(std::io::Error::other) {
                    tracing::error!(file = %path.display(), error = %e, "cannot write the audit log");
                }
            }
        }))
    }
}

fn append(path: &Path, batch: &[AuditEntry], max_bytes: u64) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    if std::fs::metadata(path).map(|m| m.len() >= max_bytes).unwrap_or(false) {
        let mut old = path.as_os_str().to_owned();
        old.push(".1");
        std::fs::rename(path, PathBuf::from(old))?;
    }
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    let mut buf = Vec::new();
    for e in batch {
        serde_json::to_writer(&mut buf, e).map_err(std::io::Error::other)?;
        buf.push(b'\n');
    }
    f.write_all(&buf)?;
    f.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_is_bounded_and_ordered() {
        let a = AuditLog::new("n1");
        for i in 0..(RECENT + 5) {
            a.record("alice", "ban.add", &format!("192.0.2.{}", i % 250), "test", None);
        }
        let r = a.recent(3);
        assert_eq!(r.len(), 3);
        assert_eq!(a.recent(usize::MAX).len(), RECENT);
        assert_eq!(r[2].target, format!("192.0.2.{}", (RECENT + 4) % 250));
    }

    #[test]
    fn append_rotates_at_the_bound() {
        let dir = std::env::temp_dir().join(format!("gw-audit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("audit.log");
        let a = AuditLog::new("n1");
        a.record("alice", "ban.add", "uid:x", "r", None);
        let e = a.recent(1);
        append(&path, &e, 10).unwrap();
        append(&path, &e, 10).unwrap();
        assert!(dir.join("audit.log.1").exists(), "rotated once over the bound");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
