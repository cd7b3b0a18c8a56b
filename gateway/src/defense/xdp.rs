//! The kernel side: find the object file, load it, fill its maps, attach it.
//!
//! The maps are filled *before* the program is attached, so there is no
//! moment in which a configured ban is not enforced. The `Ebpf` handle owns
//! the program and its link: dropping [`Kernel`] detaches the program.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray};
use aya::programs::{ProgramError, Xdp, XdpMode};
use aya::{TestRun, TestRunOptions};
use aya::{Ebpf, EbpfError};
use gateway_common::{
    AllowEntry, BanEntry, Counter, RuntimeConfig, BAN_FLAG_MONITOR, MAP_ALLOW_V4, MAP_ALLOW_V6,
    MAP_BAN_CIDR_V4, MAP_BAN_CIDR_V6, MAP_BAN_V4, MAP_BAN_V6, MAP_CONFIG, MAP_COUNTERS,
    MAP_LISTEN_PORTS, PROGRAM_NAME,
};

use super::rules::{IpNet, Rule, Table};
use crate::config::AttachMode;

/// Why the kernel side could not be set up. Every message ends in what to do.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error("XDP object {path} not found ({source}); build it with `cargo xtask build`, or point xdp.object / $GATEWAY_XDP_OBJECT at gateway-xdp.o")]
    ObjectMissing { path: PathBuf, source: std::io::Error },
    #[error("cannot load XDP object {path}: {source}; if this is a permission error run as root or grant CAP_BPF+CAP_NET_ADMIN (and CAP_PERFMON on older kernels)")]
    Load { path: PathBuf, source: EbpfError },
    #[error("XDP object {path} has no program named {PROGRAM_NAME}; it was built from another source, rebuild with `cargo xtask build`")]
    ProgramMissing { path: PathBuf },
    #[error("the kernel rejected the XDP program: {0}; the kernel may be too old (5.10+ needed) or lack CONFIG_BPF_SYSCALL/CONFIG_XDP_SOCKETS")]
    Verify(ProgramError),
    #[error("cannot attach XDP to {interface} in {mode} mode: {source}; {hint}")]
    Attach { interface: String, mode: &'static str, source: ProgramError, hint: &'static str },
    #[error("XDP object has no usable map {name}: {source}; rebuild the object so it matches this gateway")]
    Map { name: &'static str, source: MapError },
    #[error("the kernel {table} for IPv{family} is full ({capacity} entries); remove entries or use a CIDR rule")]
    Full { table: &'static str, family: u8, capacity: usize },
    #[error("BPF_PROG_TEST_RUN failed: {0}")]
    TestRun(ProgramError),
    #[error("kernel map update failed: {0}")]
    Update(MapError),
}

/// Where the object file is: the configured path, then `$GATEWAY_XDP_OBJECT`,
/// then `gateway-xdp.o` beside the running executable (`cargo xtask build`
/// puts it there).
pub fn object_path(configured: Option<&Path>) -> PathBuf {
    if let Some(p) = configured {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("GATEWAY_XDP_OBJECT").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    match std::env::current_exe() {
        Ok(exe) => exe.with_file_name("gateway-xdp.o"),
        Err(_) => PathBuf::from("gateway-xdp.o"),
    }
}

/// Knobs of the kernel program beyond the rule maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelPolicy {
    /// Pass every would-drop (counted under `monitor_*`).
    pub monitor: bool,
    /// Drop non-first fragments. Default false: the gateway speaks TCP, which
    /// never fragments in practice, but other services on the host may (UDP),
    /// and a fragment carries no port to tell them apart.
    pub drop_fragments: bool,
    /// Drop packets whose headers are cut short or invalid. Default true: the
    /// kernel's own stack would discard them anyway, so dropping early only
    /// saves work.
    pub drop_malformed: bool,
    /// Per-source SYN token bucket, pure SYNs to `listen_ports` only.
    pub syn_limit: Option<SynLimit>,
    /// The gateway's TCP listening ports (the SYN limiter's scope).
    pub listen_ports: Vec<u16>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynLimit {
    pub rate_per_sec: u32,
    pub burst: u32,
}

impl KernelPolicy {
    /// Defaults for a gateway listening on `port`: no SYN limit (it needs
    /// rates chosen for the deployment), fragments pass, malformed drop.
    pub fn for_port(port: u16) -> KernelPolicy {
        KernelPolicy { monitor: false, drop_fragments: false, drop_malformed: true, syn_limit: None, listen_ports: vec![port] }
    }

    pub fn runtime_config(&self) -> RuntimeConfig {
        let verdict = |drop: bool| if drop { gateway_common::Verdict::Drop as u32 } else { gateway_common::Verdict::Pass as u32 };
        let mut flags = 0;
        if self.monitor {
            flags |= gateway_common::CFG_FLAG_MONITOR;
        }
        if self.syn_limit.is_some() {
            flags |= gateway_common::CFG_FLAG_SYN_LIMIT;
        }
        RuntimeConfig {
            flags,
            fragment_verdict: verdict(self.drop_fragments),
            malformed_verdict: verdict(self.drop_malformed),
            syn_rate_per_sec: self.syn_limit.map_or(0, |s| s.rate_per_sec),
            syn_burst: self.syn_limit.map_or(0, |s| s.burst),
            _pad: 0,
        }
    }
}

/// A loaded, attached program and typed handles on its maps.
pub struct Kernel {
    pub interface: String,
    pub mode: &'static str,
    allow_v4: LpmTrie<MapData, [u8; 4], AllowEntry>,
    allow_v6: LpmTrie<MapData, [u8; 16], AllowEntry>,
    ban_v4: HashMap<MapData, u32, BanEntry>,
    ban_v6: HashMap<MapData, [u8; 16], BanEntry>,
    ban_cidr_v4: LpmTrie<MapData, [u8; 4], BanEntry>,
    ban_cidr_v6: LpmTrie<MapData, [u8; 16], BanEntry>,
    listen_ports: HashMap<MapData, u16, u8>,
    config: Array<MapData, RuntimeConfig>,
    counters: PerCpuArray<MapData, u64>,
    // Last: dropped after the map handles; owns the program and its link.
    ebpf: Ebpf,
}

fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, XdpError> {
    let map = ebpf.take_map(name).ok_or(XdpError::Map { name, source: MapError::InvalidName { name: name.to_string() } })?;
    T::try_from(map).map_err(|source| XdpError::Map { name, source })
}

/// Seconds-to-ns conversion between `Instant` and `bpf_ktime_get_ns()`: both
/// are CLOCK_MONOTONIC on Linux.
fn expiry_ns(rule: &Rule) -> u64 {
    let Some(at) = rule.expires_at else { return 0 };
    let left = at.saturating_duration_since(std::time::Instant::now());
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let now = (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64);
    // Never 0 (0 means "forever").
    now.saturating_add(left.as_nanos().min(u128::from(u64::MAX)) as u64).max(1)
}

fn ban_entry(rule: &Rule) -> BanEntry {
    BanEntry { flags: if rule.monitor { BAN_FLAG_MONITOR } else { 0 }, _pad: 0, expires_at_ns: expiry_ns(rule) }
}

fn v4(net: &IpNet) -> Option<[u8; 4]> {
    match net.addr() {
        IpAddr::V4(a) => Some(a.octets()),
        IpAddr::V6(_) => None,
    }
}
fn v6(net: &IpNet) -> [u8; 16] {
    match net.addr() {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// Maps a full hash map's E2BIG to [`XdpError::Full`].
fn full_or(e: MapError, table: Table, family: u8) -> XdpError {
    if let MapError::SyscallError(ref s) = e {
        if s.io_error.raw_os_error() == Some(libc::E2BIG) || s.io_error.raw_os_error() == Some(libc::ENOSPC) {
            return XdpError::Full { table: table.name(), family, capacity: table.capacity() };
        }
    }
    XdpError::Update(e)
}

impl Kernel {
    /// Loads `object`, writes `policy` and `rules`, then attaches to `interface`.
    pub fn start(object: &Path, interface: &str, mode: AttachMode, policy: &KernelPolicy, rules: &[Rule]) -> Result<Kernel, XdpError> {
        let mut k = Kernel::load(object, policy, rules)?;
        k.mode = k.attach(interface, mode)?;
        k.interface = interface.to_string();
        Ok(k)
    }

    /// Loads and verifies the program and fills its maps, without attaching
    /// it anywhere: for [`Kernel::test_run`] and for checking an object.
    pub fn load(object: &Path, policy: &KernelPolicy, rules: &[Rule]) -> Result<Kernel, XdpError> {
        if let Err(source) = std::fs::metadata(object) {
            return Err(XdpError::ObjectMissing { path: object.to_path_buf(), source });
        }
        let mut ebpf = Ebpf::load_file(object).map_err(|source| XdpError::Load { path: object.to_path_buf(), source })?;
        {
            let prog: &mut Xdp = ebpf
                .program_mut(PROGRAM_NAME)
                .and_then(|p| p.try_into().ok())
                .ok_or_else(|| XdpError::ProgramMissing { path: object.to_path_buf() })?;
            prog.load().map_err(XdpError::Verify)?;
        }
        let mut k = Kernel {
            interface: String::new(),
            mode: "detached",
            allow_v4: take(&mut ebpf, MAP_ALLOW_V4)?,
            allow_v6: take(&mut ebpf, MAP_ALLOW_V6)?,
            ban_v4: take(&mut ebpf, MAP_BAN_V4)?,
            ban_v6: take(&mut ebpf, MAP_BAN_V6)?,
            ban_cidr_v4: take(&mut ebpf, MAP_BAN_CIDR_V4)?,
            ban_cidr_v6: take(&mut ebpf, MAP_BAN_CIDR_V6)?,
            listen_ports: take(&mut ebpf, MAP_LISTEN_PORTS)?,
            config: take(&mut ebpf, MAP_CONFIG)?,
            counters: take(&mut ebpf, MAP_COUNTERS)?,
            ebpf,
        };
        k.set_policy(policy)?;
        for r in rules {
            k.insert(r)?;
        }
        Ok(k)
    }

    fn program(&mut self) -> Result<&mut Xdp, XdpError> {
        self.ebpf
            .program_mut(PROGRAM_NAME)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| XdpError::ProgramMissing { path: PathBuf::from("<loaded object>") })
    }

    /// Runs the program once on `frame` (BPF_PROG_TEST_RUN) and returns the
    /// XDP action (1 = XDP_DROP, 2 = XDP_PASS). Counters and SYN buckets are
    /// updated exactly as for a received frame.
    pub fn test_run(&mut self, frame: &[u8]) -> Result<u32, XdpError> {
        let prog = self.program()?;
        let opts = TestRunOptions { data_in: Some(frame), ..TestRunOptions::new() };
        prog.test_run(opts).map(|r| r.return_value).map_err(XdpError::TestRun)
    }

    fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<&'static str, XdpError> {
        let prog = self.program()?;
        let try_mode = |prog: &mut Xdp, m: XdpMode, name: &'static str, hint: &'static str| {
            prog.attach(interface, m)
                .map(|_| name)
                .map_err(|source| XdpError::Attach { interface: interface.to_string(), mode: name, source, hint })
        };
        const NATIVE_HINT: &str = "the driver may not support native XDP; use xdp.attach_mode = \"skb\" (or \"auto\")";
        const SKB_HINT: &str = "check that the interface exists (`ip link`) and has no other XDP program (`ip link show dev IFACE`)";
        match mode {
            AttachMode::Native => try_mode(prog, XdpMode::Driver, "native", NATIVE_HINT),
            AttachMode::Skb => try_mode(prog, XdpMode::Skb, "skb", SKB_HINT),
            AttachMode::Auto => match try_mode(prog, XdpMode::Driver, "native", NATIVE_HINT) {
                Ok(m) => Ok(m),
                Err(native) => {
                    tracing::debug!(error = %native, "native XDP attach failed, trying SKB mode");
                    try_mode(prog, XdpMode::Skb, "skb", SKB_HINT)
                }
            },
        }
    }

    pub fn set_policy(&mut self, policy: &KernelPolicy) -> Result<(), XdpError> {
        self.config.set(0, policy.runtime_config(), 0).map_err(XdpError::Update)?;
        let old: Vec<u16> = self.listen_ports.keys().filter_map(Result::ok).collect();
        for p in old {
            let _ = self.listen_ports.remove(&p);
        }
        for p in &policy.listen_ports {
            self.listen_ports.insert(p.to_be(), 1, 0).map_err(XdpError::Update)?;
        }
        Ok(())
    }

    /// Writes one rule into its map (insert or replace).
    pub fn insert(&mut self, rule: &Rule) -> Result<(), XdpError> {
        let table = Table::of(rule);
        let prefix = u32::from(rule.net.prefix());
        let r = match (table, v4(&rule.net)) {
            (Table::Allow, Some(a)) => self.allow_v4.insert(&Key::new(prefix, a), AllowEntry::default(), 0),
            (Table::Allow, None) => self.allow_v6.insert(&Key::new(prefix, v6(&rule.net)), AllowEntry::default(), 0),
            (Table::BanExact, Some(a)) => self.ban_v4.insert(u32::from_ne_bytes(a), ban_entry(rule), 0),
            (Table::BanExact, None) => self.ban_v6.insert(v6(&rule.net), ban_entry(rule), 0),
            (Table::BanCidr, Some(a)) => self.ban_cidr_v4.insert(&Key::new(prefix, a), ban_entry(rule), 0),
            (Table::BanCidr, None) => self.ban_cidr_v6.insert(&Key::new(prefix, v6(&rule.net)), ban_entry(rule), 0),
        };
        let family = if rule.net.addr().is_ipv4() { 4 } else { 6 };
        r.map_err(|e| full_or(e, table, family))
    }

    /// Removes one rule's entry; a missing entry is not an error.
    pub fn remove(&mut self, rule: &Rule) -> Result<(), XdpError> {
        let prefix = u32::from(rule.net.prefix());
        let r = match (Table::of(rule), v4(&rule.net)) {
            (Table::Allow, Some(a)) => self.allow_v4.remove(&Key::new(prefix, a)),
            (Table::Allow, None) => self.allow_v6.remove(&Key::new(prefix, v6(&rule.net))),
            (Table::BanExact, Some(a)) => self.ban_v4.remove(&u32::from_ne_bytes(a)),
            (Table::BanExact, None) => self.ban_v6.remove(&v6(&rule.net)),
            (Table::BanCidr, Some(a)) => self.ban_cidr_v4.remove(&Key::new(prefix, a)),
            (Table::BanCidr, None) => self.ban_cidr_v6.remove(&Key::new(prefix, v6(&rule.net))),
        };
        match r {
            Ok(()) | Err(MapError::KeyNotFound) | Err(MapError::ElementNotFound) => Ok(()),
            Err(e) => Err(XdpError::Update(e)),
        }
    }

    /// Per-CPU counters summed, in [`Counter::ALL`] order.
    pub fn counters(&self) -> Vec<(Counter, u64)> {
        Counter::ALL
            .iter()
            .map(|c| {
                let v = match self.counters.get(&(*c as u32), 0) {
                    Ok(per_cpu) => per_cpu.iter().copied().fold(0u64, u64::wrapping_add),
                    Err(_) => 0,
                };
                (*c, v)
            })
            .collect()
    }
}
