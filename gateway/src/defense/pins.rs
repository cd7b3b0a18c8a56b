//! Pinned XDP state in bpffs: the maps and the link live in one folder per
//! node, so the kernel keeps enforcing while the gateway restarts or after it
//! crashes, and a new gateway picks up where the old one left off.
//!
//! Layout of a pin folder (e.g. `/sys/fs/bpf/im-gateway/<node-id>/`):
//!
//! - one file per map, named as in `gateway-common` (`BAN_V4`, `COUNTERS`, ...);
//! - `link_<mode>_<interface>`: the XDP link. Interface and mode are in the
//!   name because bpffs holds only BPF objects, no metadata files; a link for
//!   another interface or mode is stale config and gets removed on start.
//!
//! Removing the link pin (with no process holding the link) detaches the
//! program; removing the map pins frees the maps. [`remove_all`] does both and
//! is what `gateway xdp detach` runs.

use std::path::{Path, PathBuf};

use aya::maps::MapInfo;
use gateway_common::{
    AllowEntry, BanEntry, RuntimeConfig, ALLOW_CAPACITY, BAN_CIDR_CAPACITY, BAN_EXACT_CAPACITY, LISTEN_PORTS_CAPACITY,
    MAP_ALLOW_V4, MAP_ALLOW_V6, MAP_BAN_CIDR_V4, MAP_BAN_CIDR_V6, MAP_BAN_V4, MAP_BAN_V6, MAP_CONFIG, MAP_COUNTERS,
    MAP_LISTEN_PORTS, MAP_SYN_BUCKETS, SYN_BUCKETS_CAPACITY,
};

/// bpffs's `f_type` (linux/magic.h BPF_FS_MAGIC).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The base folder when the operator gives only a node id.
pub const DEFAULT_ROOT: &str = "/sys/fs/bpf/im-gateway";

/// `/sys/fs/bpf/im-gateway/<node_id>`.
pub fn default_dir(node_id: &str) -> PathBuf {
    Path::new(DEFAULT_ROOT).join(node_id)
}

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("{path} is not on a BPF filesystem; mount one with `mount -t bpf bpf /sys/fs/bpf` or choose a pin folder under it")]
    NotBpffs { path: PathBuf },
    #[error("cannot create pin folder {path}: {source}")]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("pinned map {path} does not match this build ({what}: pinned {found}, expected {expected}); run `gateway xdp detach` to drop the old state, then start again")]
    Incompatible { path: PathBuf, what: &'static str, found: u32, expected: u32 },
    #[error("cannot read pinned map {path}: {source}; run `gateway xdp detach` if it is left over from another build")]
    Unreadable { path: PathBuf, source: aya::maps::MapError },
    #[error("cannot remove {path}: {source}")]
    Remove { path: PathBuf, source: std::io::Error },
}

/// Every map with its key size, value size and capacity as this build
/// defines them; a pinned map must match all three to be reused.
pub fn expected_maps() -> [(&'static str, u32, u32, u32); 10] {
    use std::mem::size_of;
    let n = |s: usize| s as u32;
    [
        (MAP_ALLOW_V4, n(4 + 4), n(size_of::<AllowEntry>()), ALLOW_CAPACITY),
        (MAP_ALLOW_V6, n(4 + 16), n(size_of::<AllowEntry>()), ALLOW_CAPACITY),
        (MAP_BAN_V4, 4, n(size_of::<BanEntry>()), BAN_EXACT_CAPACITY),
        (MAP_BAN_V6, 16, n(size_of::<BanEntry>()), BAN_EXACT_CAPACITY),
        (MAP_BAN_CIDR_V4, n(4 + 4), n(size_of::<BanEntry>()), BAN_CIDR_CAPACITY),
        (MAP_BAN_CIDR_V6, n(4 + 16), n(size_of::<BanEntry>()), BAN_CIDR_CAPACITY),
        (MAP_SYN_BUCKETS, 16, n(size_of::<gateway_common::SynBucket>()), SYN_BUCKETS_CAPACITY),
        (MAP_LISTEN_PORTS, 2, 1, LISTEN_PORTS_CAPACITY),
        (MAP_CONFIG, 4, n(size_of::<RuntimeConfig>()), 1),
        (MAP_COUNTERS, 4, 8, gateway_common::Counter::COUNT),
    ]
}

/// Checks that `dir` is (or will be, once created) on bpffs, creates it, and
/// verifies any maps already pinned there. Returns whether state was found.
pub fn prepare(dir: &Path) -> Result<bool, PinError> {
    let mut probe = dir;
    while !probe.exists() {
        match probe.parent() {
            Some(p) => probe = p,
            None => break,
        }
    }
    if !is_bpffs(probe) {
        // Like bpftool: a host where nothing mounted bpffs at its standard
        // place gets it mounted there (it is empty and private to root).
        let std_root = Path::new("/sys/fs/bpf");
        if !(dir.starts_with(std_root) && mount_bpffs(std_root)) {
            return Err(PinError::NotBpffs { path: dir.to_path_buf() });
        }
        tracing::info!("mounted a BPF filesystem at /sys/fs/bpf for pinned XDP state");
    }
    std::fs::create_dir_all(dir).map_err(|source| PinError::CreateDir { path: dir.to_path_buf(), source })?;
    let mut found = false;
    for (name, key, value, max) in expected_maps() {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        found = true;
        let info = MapInfo::from_pin(&path).map_err(|source| PinError::Unreadable { path: path.clone(), source })?;
        for (what, got, want) in [
            ("key size", info.key_size(), key),
            ("value size", info.value_size(), value),
            ("max entries", info.max_entries(), max),
        ] {
            if got != want {
                return Err(PinError::Incompatible { path, what, found: got, expected: want });
            }
        }
    }
    Ok(found)
}

fn mount_bpffs(at: &Path) -> bool {
    // SAFETY: mount with NUL-terminated strings; failure is reported by rc.
    let rc = unsafe {
        libc::mount(c"bpf".as_ptr(), c"/sys/fs/bpf".as_ptr(), c"bpf".as_ptr(), 0, c"mode=0700".as_ptr().cast())
    };
    rc == 0 && is_bpffs(at)
}

/// True when `path` is on a BPF filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return false };
    // SAFETY: statfs writes one struct statfs for a NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return false;
    }
    st.f_type as i64 == BPF_FS_MAGIC
}

/// The link pin's file name for `interface` in `mode`: `link_<mode>_<iface>`.
/// bpffs refuses names containing '.', which interface names may have
/// (`eth0.100`), so '.' is written as '%'.
pub fn link_name(interface: &str, mode: &str) -> String {
    format!("link_{mode}_{}", interface.replace('.', "%"))
}

/// Link pins in `dir`: (path, interface, mode).
pub fn links(dir: &Path) -> Vec<(PathBuf, String, String)> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let rest = name.strip_prefix("link_")?;
            let (mode, iface) = rest.split_once('_')?;
            Some((e.path(), iface.replace('%', "."), mode.to_string()))
        })
        .collect()
}

/// What a pin folder holds, read without loading anything: for checking that
/// the kernel still enforces while no gateway runs (`gateway xdp status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// (interface, mode) of each pinned link.
    pub links: Vec<(String, String)>,
    /// Exact bans (IPv4 + IPv6 entries) currently in the kernel.
    pub exact_bans: usize,
    /// Counters by [`gateway_common::Counter::name`], summed over CPUs.
    pub counters: Vec<(&'static str, u64)>,
}

/// Reads [`Status`] from `dir`.
pub fn status(dir: &Path) -> Result<Status, PinError> {
    use aya::maps::{HashMap, Map, MapData, PerCpuArray};
    let open = |name: &str| {
        let path = dir.join(name);
        MapData::from_pin(&path).map_err(|source| PinError::Unreadable { path, source })
    };
    let unreadable = |name: &str, source| PinError::Unreadable { path: dir.join(name), source };
    let counters: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(open(MAP_COUNTERS)?)).map_err(|e| unreadable(MAP_COUNTERS, e))?;
    let counters = gateway_common::Counter::ALL
        .iter()
        .map(|c| {
            (
                c.name(),
                counters.get(&(*c as u32), 0).map(|v| v.iter().copied().fold(0u64, u64::wrapping_add)).unwrap_or(0),
            )
        })
        .collect();
    let v4: HashMap<MapData, u32, BanEntry> =
        HashMap::try_from(Map::HashMap(open(MAP_BAN_V4)?)).map_err(|e| unreadable(MAP_BAN_V4, e))?;
    let v6: HashMap<MapData, [u8; 16], BanEntry> =
        HashMap::try_from(Map::HashMap(open(MAP_BAN_V6)?)).map_err(|e| unreadable(MAP_BAN_V6, e))?;
    let exact_bans = v4.keys().filter(Result::is_ok).count() + v6.keys().filter(Result::is_ok).count();
    let links = links(dir).into_iter().map(|(_, iface, mode)| (iface, mode)).collect();
    Ok(Status { links, exact_bans, counters })
}

/// Detaches (by unpinning the links) and frees everything pinned in `dir`,
/// then removes the folder. Returns what was removed; a missing folder is
/// not an error (nothing to do).
pub fn remove_all(dir: &Path) -> Result<Vec<PathBuf>, PinError> {
    let mut removed = Vec::new();
    if !dir.exists() {
        return Ok(removed);
    }
    // Links first, so the program stops before its maps disappear.
    let mut entries: Vec<PathBuf> = links(dir).into_iter().map(|(p, _, _)| p).collect();
    entries.extend(expected_maps().iter().map(|(name, ..)| dir.join(name)).filter(|p| p.exists()));
    for p in entries {
        std::fs::remove_file(&p).map_err(|source| PinError::Remove { path: p.clone(), source })?;
        removed.push(p);
    }
    // Only removes an empty folder: anything we do not know stays, visibly.
    std::fs::remove_dir(dir).map_err(|source| PinError::Remove { path: dir.to_path_buf(), source })?;
    Ok(removed)
}

#[cfg(test)]
mod tests {
    #[test]
    fn link_names_round_trip_and_avoid_dots() {
        let dir = std::env::temp_dir().join(format!("gw-pins-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let name = super::link_name("eth0.100", "native");
        assert!(!name.contains('.'), "{name}");
        std::fs::write(dir.join(&name), b"").unwrap();
        let found = super::links(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].1.as_str(), found[0].2.as_str()), ("eth0.100", "native"));
    }
}
