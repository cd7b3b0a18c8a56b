//! `gateway doctor`: the kernel's SYN-flood and accept-queue settings,
//! checked against the `[host]` recommendations, and optionally applied.
//!
//! The decision (what to recommend and whether a reading passes) is plain
//! data; reading and writing `/proc/sys` is the thin shell around it. Every
//! setting checked here is per network namespace, so `--apply` inside a
//! namespace changes nothing outside it.

use std::path::{Path, PathBuf};

use crate::config::Config;

/// What a setting should be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    Exactly(i64),
    AtLeast(i64),
    AtMost(i64),
}

impl Want {
    pub fn accepts(self, v: i64) -> bool {
        match self {
            Want::Exactly(w) => v == w,
            Want::AtLeast(w) => v >= w,
            Want::AtMost(w) => v <= w,
        }
    }

    /// The value `--apply` writes.
    pub fn target(self) -> i64 {
        match self {
            Want::Exactly(w) | Want::AtLeast(w) | Want::AtMost(w) => w,
        }
    }
}

impl std::fmt::Display for Want {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Want::Exactly(w) => write!(f, "= {w}"),
            Want::AtLeast(w) => write!(f, ">= {w}"),
            Want::AtMost(w) => write!(f, "<= {w}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Recommendation {
    /// sysctl name, e.g. `net.ipv4.tcp_syncookies`.
    pub name: &'static str,
    pub want: Want,
    pub why: &'static str,
}

impl Recommendation {
    pub fn path(&self, proc_sys: &Path) -> PathBuf {
        proc_sys.join(self.name.replace('.', "/"))
    }
}

/// The recommendations for this configuration.
pub fn recommendations(cfg: &Config) -> Vec<Recommendation> {
    let h = &cfg.host;
    vec![
        Recommendation {
            name: "net.ipv4.tcp_syncookies",
            want: Want::Exactly(h.tcp_syncookies),
            why: "answer SYNs statelessly once the SYN queue is full, so a spoofed flood cannot lock honest clients out",
        },
        Recommendation {
            name: "net.ipv4.tcp_max_syn_backlog",
            want: Want::AtLeast(h.tcp_max_syn_backlog),
            why: "room for half-open connections of a reconnect storm before syncookies take over",
        },
        Recommendation {
            name: "net.ipv4.tcp_synack_retries",
            want: Want::AtMost(h.tcp_synack_retries),
            why: "a half-open slot from a spoofed SYN is freed after ~7 s instead of ~63 s",
        },
        Recommendation {
            name: "net.ipv4.tcp_abort_on_overflow",
            want: Want::Exactly(h.tcp_abort_on_overflow),
            why: "0: a full accept queue drops the final ACK and the client retries, instead of being reset during a burst",
        },
        Recommendation {
            name: "net.core.somaxconn",
            want: Want::AtLeast(cfg.listen.backlog as i64),
            why: "caps listen.backlog silently: it must be at least the configured backlog",
        },
    ]
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Off {
        found: i64,
    },
    /// Unreadable (no such sysctl in this kernel or namespace, or no permission).
    Unknown(String),
    Applied {
        was: i64,
        now: i64,
    },
    ApplyFailed {
        found: i64,
        error: String,
    },
}

#[derive(Debug, Clone)]
pub struct Finding {
    pub rec: Recommendation,
    pub outcome: Outcome,
}

impl Finding {
    pub fn passed(&self) -> bool {
        matches!(self.outcome, Outcome::Ok | Outcome::Applied { .. })
    }
}

fn read(path: &Path) -> Result<i64, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    text.split_whitespace().next().and_then(|t| t.parse().ok()).ok_or_else(|| format!("unexpected content {text:?}"))
}

/// Check every recommendation under `proc_sys` (normally `/proc/sys`), and
/// write the recommended value where one is off when `apply` is set.
pub fn run(recs: Vec<Recommendation>, proc_sys: &Path, apply: bool) -> Vec<Finding> {
    recs.into_iter()
        .map(|rec| {
            let path = rec.path(proc_sys);
            let outcome = match read(&path) {
                Err(e) => Outcome::Unknown(e),
                Ok(v) if rec.want.accepts(v) => Outcome::Ok,
                Ok(v) if !apply => Outcome::Off { found: v },
                Ok(v) => match std::fs::write(&path, rec.want.target().to_string()) {
                    Ok(()) => match read(&path) {
                        Ok(now) if rec.want.accepts(now) => Outcome::Applied { was: v, now },
                        Ok(now) => Outcome::ApplyFailed { found: now, error: "the kernel kept another value".into() },
                        Err(e) => Outcome::ApplyFailed { found: v, error: e },
                    },
                    Err(e) => Outcome::ApplyFailed { found: v, error: e.to_string() },
                },
            };
            Finding { rec, outcome }
        })
        .collect()
}

/// One line per finding, for a terminal.
pub fn render(findings: &[Finding]) -> String {
    let mut out = String::new();
    for f in findings {
        let (mark, detail) = match &f.outcome {
            Outcome::Ok => ("ok  ", "".to_string()),
            Outcome::Off { found } => (
                "FIX ",
                format!(
                    "is {found}; run `gateway doctor --apply` or `sysctl -w {}={}`",
                    f.rec.name,
                    f.rec.want.target()
                ),
            ),
            Outcome::Unknown(e) => ("??  ", format!("cannot read: {e}")),
            Outcome::Applied { was, now } => ("set ", format!("was {was}, now {now}")),
            Outcome::ApplyFailed { found, error } => ("FAIL", format!("is {found}; could not set it: {error}")),
        };
        out.push_str(&format!("{mark} {:<32} want {:<8} {detail}\n", f.rec.name, f.rec.want.to_string()));
        if !f.passed() {
            out.push_str(&format!("     why: {}\n", f.rec.why));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_proc(values: &[(&str, &str)]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gw-doctor-{}-{}", std::process::id(), values.len()));
        let _ = std::fs::remove_dir_all(&dir);
        for (name, v) in values {
            let p = dir.join(name.replace('.', "/"));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, format!("{v}\n")).unwrap();
        }
        dir
    }

    #[test]
    fn wants_compare_at_their_edges() {
        assert!(Want::AtLeast(4096).accepts(4096) && !Want::AtLeast(4096).accepts(4095));
        assert!(Want::AtMost(2).accepts(2) && !Want::AtMost(2).accepts(3));
        assert!(Want::Exactly(1).accepts(1) && !Want::Exactly(1).accepts(2));
    }

    #[test]
    fn reports_then_applies_only_what_is_off() {
        let cfg = Config::defaults();
        let dir = fake_proc(&[
            ("net.ipv4.tcp_syncookies", "1"),
            ("net.ipv4.tcp_max_syn_backlog", "128"),
            ("net.ipv4.tcp_synack_retries", "5"),
            ("net.ipv4.tcp_abort_on_overflow", "0"),
        ]);
        let f = run(recommendations(&cfg), &dir, false);
        let by = |n: &str| f.iter().find(|x| x.rec.name == n).unwrap().outcome.clone();
        assert_eq!(by("net.ipv4.tcp_syncookies"), Outcome::Ok);
        assert_eq!(by("net.ipv4.tcp_max_syn_backlog"), Outcome::Off { found: 128 });
        assert_eq!(by("net.ipv4.tcp_synack_retries"), Outcome::Off { found: 5 });
        assert!(matches!(by("net.core.somaxconn"), Outcome::Unknown(_)), "missing file is reported, not guessed");
        assert!(render(&f).contains("why:"));

        let f = run(recommendations(&cfg), &dir, true);
        let by = |n: &str| f.iter().find(|x| x.rec.name == n).unwrap().outcome.clone();
        assert_eq!(by("net.ipv4.tcp_synack_retries"), Outcome::Applied { was: 5, now: 2 });
        assert_eq!(read(&dir.join("net/ipv4/tcp_max_syn_backlog")).unwrap(), cfg.host.tcp_max_syn_backlog);
        assert_eq!(by("net.ipv4.tcp_syncookies"), Outcome::Ok, "a passing value is left alone");
    }
}
