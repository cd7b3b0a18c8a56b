//! The ban list on local disk: one JSON file, replaced atomically (temp file,
//! fsync, rename, fsync of the directory), so a crash leaves the old or the
//! new list, never half of one.
//!
//! Besides the bans it keeps the changes not yet written to etcd, so a ban
//! made while etcd was down still reaches the cluster after a restart.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::model::{Ban, Target};

const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("ban file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("ban file {path} is not a valid ban list ({message}); fix or move it aside (the gateway will not start with an unreadable list, to avoid silently lifting every ban)")]
    Corrupt { path: PathBuf, message: String },
    #[error(transparent)]
    State(#[from] crate::state::StateError),
}

/// The file's content.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub version: u32,
    pub bans: Vec<Ban>,
    /// Targets whose local state has not reached etcd yet (put or delete).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unsynced: Vec<Target>,
    /// Written by a node with etcd configured. A list written without etcd
    /// is published to etcd when etcd is turned on, instead of being
    /// replaced by etcd's (possibly empty) list.
    #[serde(default)]
    pub replicated: bool,
}

impl Snapshot {
    pub fn new(bans: Vec<Ban>, unsynced: Vec<Target>, replicated: bool) -> Snapshot {
        Snapshot { version: VERSION, bans, unsynced, replicated }
    }
}

/// `Ok(None)` when the file does not exist yet (first start).
pub fn load(path: &Path) -> Result<Option<Snapshot>, FileError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(FileError::Io { path: path.to_path_buf(), source }),
    };
    let snap: Snapshot = serde_json::from_str(&text)
        .map_err(|e| FileError::Corrupt { path: path.to_path_buf(), message: e.to_string() })?;
    if snap.version != VERSION {
        return Err(FileError::Corrupt {
            path: path.to_path_buf(),
            message: format!("version {} (this gateway reads {VERSION})", snap.version),
        });
    }
    Ok(Some(snap))
}

/// Blocking; call from `spawn_blocking`.
pub fn save(path: &Path, snap: &Snapshot) -> Result<(), FileError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::state::ensure_dir(dir)?;
    }
    let body = serde_json::to_vec_pretty(snap)
        .map_err(|e| FileError::Corrupt { path: path.to_path_buf(), message: e.to_string() })?;
    crate::state::write_private(path, &body)?;
    // The rename is durable only once the directory entry is.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bans::model::BanMode;
    use std::time::{Duration, SystemTime};

    #[test]
    fn round_trip_missing_and_corrupt() {
        let dir = std::env::temp_dir().join(format!("gw-banfile-{}", std::process::id()));
        let path = dir.join("bans.json");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(load(&path).unwrap(), None);
        let ban = Ban {
            target: Target::parse("192.0.2.0/24", false).unwrap(),
            reason: "scan".into(),
            by: "alice".into(),
            created: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            until: None,
            mode: BanMode::Monitor,
        };
        let snap = Snapshot::new(vec![ban.clone()], vec![ban.target.clone()], true);
        save(&path, &snap).unwrap();
        assert_eq!(load(&path).unwrap(), Some(snap));
        std::fs::write(&path, "{\"version\":1,\"bans\":[{\"target\":\"nope\"}]}").unwrap();
        assert!(matches!(load(&path), Err(FileError::Corrupt { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
