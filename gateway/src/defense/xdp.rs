//! The kernel side: find the object file, load it, fill its maps, attach it.
//!
//! The maps are filled *before* the program is attached, so there is no
//! moment in which a configured ban is not enforced. Without a pin folder the
//! `Ebpf` handle owns the program and its link and dropping [`Kernel`]
//! detaches the program; with one (see [`super::pins`]) maps and link are
//! pinned, reused by the next start, and the kernel keeps enforcing meanwhile.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray, RingBuf};
use aya::programs::links::{FdLink, LinkError, PinnedLink};
use aya::programs::xdp::{XdpLink, XdpLinkId};
use aya::programs::{ProgramError, Xdp, XdpMode};
use aya::{Ebpf, EbpfError, EbpfLoader};
use aya::{TestRun, TestRunOptions};
use gateway_common::{
    AllowEntry, BanEntry, Counter, EventStat, RuntimeConfig, BAN_FLAG_MONITOR, EVENTS_MAX_PER_SEC, MAP_ALLOW_V4,
    MAP_ALLOW_V6, MAP_BAN_CIDR_V4, MAP_BAN_CIDR_V6, MAP_BAN_V4, MAP_BAN_V6, MAP_CONFIG, MAP_COUNTERS, MAP_DROP_EVENTS,
    MAP_EVENT_STATS, MAP_LISTEN_PORTS, PROGRAM_NAME,
};
use std::time::{Duration, Instant};

use super::events::EventSampling;
use super::pins::{self, PinError};
use super::rules::{IpNet, Rule, RuleKind, Table};
use crate::config::AttachMode;

/// Why the kernel side could not be set up. Every message ends in what to do.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error("XDP object {path} not found ({source}); build it with `cargo xtask build`, or point xdp.object / $GATEWAY_XDP_OBJECT at gateway-xdp.o")]
    ObjectMissing { path: PathBuf, source: std::io::Error },
    #[error("cannot load XDP object {path}: {source}; if this is a permission error run as root or grant CAP_BPF+CAP_NET_ADMIN (and CAP_PERFMON on older kernels)")]
    Load { path: PathBuf, source: Box<EbpfError> },
    #[error("XDP object {path} has no program named {PROGRAM_NAME}; it was built from another source, rebuild with `cargo xtask build`")]
    ProgramMissing { path: PathBuf },
    #[error("the kernel rejected the XDP program: {0}; the kernel may be too old (5.10+ needed) or lack CONFIG_BPF_SYSCALL/CONFIG_XDP_SOCKETS")]
    Verify(Box<ProgramError>),
    #[error("cannot attach XDP to {interface} in {mode} mode: {source}; {hint}")]
    Attach { interface: String, mode: &'static str, source: Box<ProgramError>, hint: &'static str },
    #[error("XDP object has no usable map {name}: {source}; rebuild the object so it matches this gateway")]
    Map { name: &'static str, source: MapError },
    #[error("the kernel {table} for IPv{family} is full ({capacity} entries); remove entries or use a CIDR rule")]
    Full { table: &'static str, family: u8, capacity: usize },
    #[error("BPF_PROG_TEST_RUN failed: {0}")]
    TestRun(Box<ProgramError>),
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error(
        "cannot pin or reuse the XDP link {path}: {message}; run `gateway xdp detach` to start from a clean state"
    )]
    Link { path: PathBuf, message: String },
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
    /// Sampled drop events for debugging (see [`super::events`]); None: off.
    pub events: Option<EventSampling>,
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
        KernelPolicy {
            monitor: false,
            drop_fragments: false,
            drop_malformed: true,
            syn_limit: None,
            listen_ports: vec![port],
            events: None,
        }
    }

    /// Everything wrong with this policy as an operator setting, for config
    /// validation (the caller reports them all at once): a limiter that would
    /// drop everything or do nothing, or values past the kernel's clamps.
    /// Not enforced by `set_policy`, so tests may use e.g. a zero rate.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Some(s) = self.syn_limit {
            if s.burst == 0 {
                p.push("SYN limit burst must be at least 1 (0 would drop every new connection)".to_string());
            }
            if s.rate_per_sec == 0 || s.rate_per_sec > 100_000 {
                p.push(format!("SYN limit rate {} per second is outside 1..=100000", s.rate_per_sec));
            }
            if s.burst > 1_000_000 {
                p.push(format!("SYN limit burst {} is over 1000000", s.burst));
            }
            if self.listen_ports.is_empty() {
                p.push("SYN limit set but no listening port to apply it to".to_string());
            }
        }
        if let Some(e) = self.events {
            if e.one_in == 0 {
                p.push("drop-event sampling must be 1 in at least 1 (1 = every drop)".to_string());
            }
            if e.per_sec == 0 || e.per_sec > EVENTS_MAX_PER_SEC {
                p.push(format!("drop-event rate {} per second is outside 1..={EVENTS_MAX_PER_SEC}", e.per_sec));
            }
        }
        if self.listen_ports.len() > gateway_common::LISTEN_PORTS_CAPACITY as usize {
            p.push(format!(
                "{} listening ports, at most {} fit the kernel map",
                self.listen_ports.len(),
                gateway_common::LISTEN_PORTS_CAPACITY
            ));
        }
        p
    }

    pub fn runtime_config(&self) -> RuntimeConfig {
        let verdict =
            |drop: bool| if drop { gateway_common::Verdict::Drop as u32 } else { gateway_common::Verdict::Pass as u32 };
        let mut flags = 0;
        if self.monitor {
            flags |= gateway_common::CFG_FLAG_MONITOR;
        }
        if self.syn_limit.is_some() {
            flags |= gateway_common::CFG_FLAG_SYN_LIMIT;
        }
        if self.events.is_some() {
            flags |= gateway_common::CFG_FLAG_EVENTS;
        }
        RuntimeConfig {
            flags,
            fragment_verdict: verdict(self.drop_fragments),
            malformed_verdict: verdict(self.drop_malformed),
            syn_rate_per_sec: self.syn_limit.map_or(0, |s| s.rate_per_sec),
            syn_burst: self.syn_limit.map_or(0, |s| s.burst),
            events_one_in: self.events.map_or(0, |e| e.one_in),
            events_per_sec: self.events.map_or(0, |e| e.per_sec),
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
    event_stats: PerCpuArray<MapData, u64>,
    /// The drop-event ring buffer until [`Kernel::take_events`] hands it to
    /// a reader (it has one consumer position, so one owner).
    events: Option<RingBuf<MapData>>,
    /// Entries found in reused pinned maps (state of the previous run).
    pub adopted: Vec<Rule>,
    /// True when an existing pinned link was taken over (no re-attach).
    pub link_reused: bool,
    pin_dir: Option<PathBuf>,
    /// Holding the fd is not what keeps it alive (the pin is); kept so the
    /// link is visibly ours for the lifetime of this value.
    _pinned_link: Option<PinnedLink>,
    // Last: dropped after the map handles; owns the program and its link.
    ebpf: Ebpf,
}

fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, XdpError> {
    let map =
        ebpf.take_map(name).ok_or(XdpError::Map { name, source: MapError::InvalidName { name: name.to_string() } })?;
    T::try_from(map).map_err(|source| XdpError::Map { name, source })
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns()` (and of
/// `Instant` on Linux), so expiries convert by offset from "now".
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

fn expiry_ns(rule: &Rule) -> u64 {
    let Some(at) = rule.expires_at else { return 0 };
    let left = at.saturating_duration_since(Instant::now());
    // Never 0 (0 means "forever").
    monotonic_ns().saturating_add(left.as_nanos().min(u128::from(u64::MAX)) as u64).max(1)
}

/// A kernel expiry back to an `Instant`: `Some(None)` never expires, `None`
/// already expired.
fn expiry_instant(expires_at_ns: u64, now: Instant, now_ns: u64) -> Option<Option<Instant>> {
    match expires_at_ns {
        0 => Some(None),
        t if t <= now_ns => None,
        t => Some(Some(now + Duration::from_nanos(t - now_ns))),
    }
}

/// An error and its sources, "outer: inner: innermost" (aya's syscall
/// errors keep the errno in the source).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

fn static_mode(m: &str) -> &'static str {
    if m == "native" {
        "native"
    } else {
        "skb"
    }
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
    /// Loads `object`, writes `policy` and `rules`, then attaches to
    /// `interface`. With `pins`, maps and link are pinned there (and reused).
    pub fn start(
        object: &Path,
        interface: &str,
        mode: AttachMode,
        policy: &KernelPolicy,
        rules: &[Rule],
        pins: Option<&Path>,
    ) -> Result<Kernel, XdpError> {
        let mut k = match (Kernel::load(object, policy, rules, pins), pins) {
            // Migration: the pins come from a build with another map layout or
            // capacity. Their entries cannot be carried over field by field,
            // and need not be: the ban store and the config re-apply every ban
            // at start. Replace them (the old link goes with them, so the
            // kernel is unprotected for the few ms until the new one attaches)
            // instead of refusing XDP until someone runs `gateway xdp detach`.
            (Err(XdpError::Pin(pins::PinError::Incompatible { path, what, found, expected })), Some(dir)) => {
                tracing::warn!(
                    pin = %path.display(), what, found, expected,
                    "pinned XDP maps have another layout or capacity: replacing them (bans are re-applied from the ban store and config)"
                );
                pins::remove_all(dir)?;
                Kernel::load(object, policy, rules, pins)?
            }
            (r, _) => r?,
        };
        k.mode = match pins {
            Some(dir) => k.attach_pinned(interface, mode, dir)?,
            None => k.attach(interface, mode)?.0,
        };
        k.interface = interface.to_string();
        Ok(k)
    }

    /// Loads and verifies the program and fills its maps, without attaching
    /// it anywhere: for [`Kernel::test_run`] and for checking an object.
    /// With `pins`, existing pinned maps are reused and their entries (other
    /// than expired ones) reported in [`Kernel::adopted`].
    pub fn load(object: &Path, policy: &KernelPolicy, rules: &[Rule], pins: Option<&Path>) -> Result<Kernel, XdpError> {
        if let Err(source) = std::fs::metadata(object) {
            return Err(XdpError::ObjectMissing { path: object.to_path_buf(), source });
        }
        let reused = match pins {
            Some(dir) => pins::prepare(dir)?,
            None => false,
        };
        let map_paths: Vec<(&'static str, PathBuf)> = match pins {
            Some(dir) => pins::expected_maps().iter().map(|(n, ..)| (*n, dir.join(n))).collect(),
            None => Vec::new(),
        };
        let mut loader = EbpfLoader::new();
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader
            .load_file(object)
            .map_err(|source| XdpError::Load { path: object.to_path_buf(), source: Box::new(source) })?;
        {
            let prog: &mut Xdp = ebpf
                .program_mut(PROGRAM_NAME)
                .and_then(|p| p.try_into().ok())
                .ok_or_else(|| XdpError::ProgramMissing { path: object.to_path_buf() })?;
            prog.load().map_err(|e| XdpError::Verify(Box::new(e)))?;
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
            event_stats: take(&mut ebpf, MAP_EVENT_STATS)?,
            events: Some(take(&mut ebpf, MAP_DROP_EVENTS)?),
            adopted: Vec::new(),
            link_reused: false,
            pin_dir: pins.map(Path::to_path_buf),
            _pinned_link: None,
            ebpf,
        };
        if reused {
            k.adopted = k.read_rules()?;
        }
        k.set_policy(policy)?;
        for r in rules {
            k.insert(r)?;
        }
        Ok(k)
    }

    /// Every live rule in the maps; expired entries are deleted on the way.
    pub fn read_rules(&mut self) -> Result<Vec<Rule>, XdpError> {
        let now = Instant::now();
        let now_ns = monotonic_ns();
        let mut live = Vec::new();
        let mut dead = Vec::new();
        let mut ban = |net: IpNet, e: BanEntry| match expiry_instant(e.expires_at_ns, now, now_ns) {
            Some(expires_at) => live.push(Rule { net, kind: RuleKind::Ban, monitor: e.is_monitor(), expires_at }),
            None => dead.push(Rule::ban(net)),
        };
        for (k, e) in self.ban_v4.iter().filter_map(Result::ok) {
            ban(IpNet::host(IpAddr::from(k.to_ne_bytes())), e);
        }
        for (k, e) in self.ban_v6.iter().filter_map(Result::ok) {
            ban(IpNet::host(IpAddr::from(k)), e);
        }
        for (k, e) in self.ban_cidr_v4.iter().filter_map(Result::ok) {
            if let Ok(net) = IpNet::new(IpAddr::from(k.data()), k.prefix_len() as u8) {
                ban(net, e);
            }
        }
        for (k, e) in self.ban_cidr_v6.iter().filter_map(Result::ok) {
            if let Ok(net) = IpNet::new(IpAddr::from(k.data()), k.prefix_len() as u8) {
                ban(net, e);
            }
        }
        for (k, _) in self.allow_v4.iter().filter_map(Result::ok) {
            if let Ok(net) = IpNet::new(IpAddr::from(k.data()), k.prefix_len() as u8) {
                live.push(Rule::allow(net));
            }
        }
        for (k, _) in self.allow_v6.iter().filter_map(Result::ok) {
            if let Ok(net) = IpNet::new(IpAddr::from(k.data()), k.prefix_len() as u8) {
                live.push(Rule::allow(net));
            }
        }
        for r in &dead {
            self.remove(r)?;
        }
        Ok(live)
    }

    /// Attaches with the link pinned in `dir`, taking over a pinned link on
    /// the same interface (and an acceptable mode) by swapping the program
    /// in place, so enforcement never lapses across a restart.
    fn attach_pinned(&mut self, interface: &str, mode: AttachMode, dir: &Path) -> Result<&'static str, XdpError> {
        let mut reuse = None;
        for (path, iface, m) in pins::links(dir) {
            let acceptable = iface == interface
                && match mode {
                    AttachMode::Auto => true,
                    AttachMode::Native => m == "native",
                    AttachMode::Skb => m == "skb",
                };
            if acceptable && reuse.is_none() {
                reuse = Some((path, m));
            } else {
                tracing::info!(pin = %path.display(), "removing an XDP link pinned for another interface or mode (config changed)");
                std::fs::remove_file(&path)
                    .map_err(|e| XdpError::Link { path: path.clone(), message: e.to_string() })?;
            }
        }
        if let Some((path, m)) = reuse {
            match self.take_over_link(&path) {
                Ok(()) => {
                    self.link_reused = true;
                    return Ok(static_mode(&m));
                }
                Err(e) => {
                    // E.g. the interface was deleted and re-created: the old
                    // link is defunct. Drop it and attach afresh.
                    tracing::warn!(pin = %path.display(), error = %e, "cannot reuse the pinned XDP link; attaching a new one");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let (mode_name, id) = self.attach(interface, mode)?;
        let path = dir.join(pins::link_name(interface, mode_name));
        let link_err = |message: String| XdpError::Link { path: path.clone(), message };
        let link = self.program()?.take_link(id).map_err(|e| link_err(chain(&e)))?;
        match FdLink::try_from(link) {
            Ok(fd_link) => {
                let pinned = fd_link.pin(&path).map_err(|e| link_err(chain(&e)))?;
                self._pinned_link = Some(pinned);
            }
            Err(_) => {
                // Netlink-attached (kernel without bpf_link for XDP): there is
                // no link object to pin. Converting dropped, i.e. detached, it.
                tracing::warn!("this kernel attaches XDP through netlink; the program cannot be pinned and stops when the gateway exits");
                self.attach(interface, if mode_name == "native" { AttachMode::Native } else { AttachMode::Skb })?;
            }
        }
        Ok(mode_name)
    }

    fn take_over_link(&mut self, path: &Path) -> Result<(), XdpError> {
        let err = |message: String| XdpError::Link { path: path.to_path_buf(), message };
        let pinned = PinnedLink::from_pin(path).map_err(|e| err(chain(&e)))?;
        let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e: LinkError| err(chain(&e)))?;
        self.program()?.attach_to_link(link).map_err(|e| err(chain(&e)))?;
        Ok(())
    }

    /// The pin folder, when state is pinned.
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pin_dir.as_deref()
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
        prog.test_run(opts).map(|r| r.return_value).map_err(|e| XdpError::TestRun(Box::new(e)))
    }

    fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<(&'static str, XdpLinkId), XdpError> {
        let prog = self.program()?;
        let try_mode = |prog: &mut Xdp, m: XdpMode, name: &'static str, hint: &'static str| {
            prog.attach(interface, m).map(|id| (name, id)).map_err(|source| XdpError::Attach {
                interface: interface.to_string(),
                mode: name,
                source: Box::new(source),
                hint,
            })
        };
        const NATIVE_HINT: &str = "the driver may not support native XDP; use xdp.attach_mode = \"skb\" (or \"auto\")";
        const SKB_HINT: &str =
            "check that the interface exists (`ip link`) and has no other XDP program (`ip link show dev IFACE`)";
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

    /// The drop-event ring buffer, once: for [`super::events::drain`] or
    /// [`super::events::Reader`].
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// Drop-event bookkeeping summed over CPUs, in [`EventStat::ALL`] order.
    pub fn event_stats(&self) -> Vec<(EventStat, u64)> {
        EventStat::ALL
            .iter()
            .map(|s| {
                let v = match self.event_stats.get(&(*s as u32), 0) {
                    Ok(per_cpu) => per_cpu.iter().copied().fold(0u64, u64::wrapping_add),
                    Err(_) => 0,
                };
                (*s, v)
            })
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_problems_are_all_reported() {
        assert!(KernelPolicy::for_port(443).problems().is_empty());
        let bad = KernelPolicy {
            syn_limit: Some(SynLimit { rate_per_sec: 0, burst: 0 }),
            listen_ports: vec![],
            ..KernelPolicy::for_port(1)
        };
        let p = bad.problems();
        assert_eq!(p.len(), 3, "{p:?}");
        let bad_events = KernelPolicy {
            events: Some(EventSampling { one_in: 0, per_sec: EVENTS_MAX_PER_SEC + 1 }),
            ..KernelPolicy::for_port(1)
        };
        assert_eq!(bad_events.problems().len(), 2, "{:?}", bad_events.problems());
        let events =
            KernelPolicy { events: Some(EventSampling { one_in: 10, per_sec: 100 }), ..KernelPolicy::for_port(1) };
        assert!(events.problems().is_empty());
        let rc = events.runtime_config();
        assert_eq!((rc.flags, rc.events_one_in, rc.events_per_sec), (gateway_common::CFG_FLAG_EVENTS, 10, 100));
        assert_eq!(
            KernelPolicy::for_port(1).runtime_config().flags & gateway_common::CFG_FLAG_EVENTS,
            0,
            "events are off by default"
        );
        let ok =
            KernelPolicy { syn_limit: Some(SynLimit { rate_per_sec: 50, burst: 100 }), ..KernelPolicy::for_port(443) };
        assert!(ok.problems().is_empty());
        assert_eq!(ok.runtime_config().flags, gateway_common::CFG_FLAG_SYN_LIMIT);
        assert_eq!((ok.runtime_config().syn_rate_per_sec, ok.runtime_config().syn_burst), (50, 100));
    }

    #[test]
    fn kernel_expiry_round_trips_through_instants() {
        let now = Instant::now();
        let now_ns = monotonic_ns();
        assert_eq!(expiry_instant(0, now, now_ns), Some(None));
        assert_eq!(expiry_instant(now_ns, now, now_ns), None);
        let later = expiry_instant(now_ns + 5_000_000_000, now, now_ns).flatten().unwrap();
        assert_eq!(later - now, Duration::from_secs(5));
        let rule = Rule {
            expires_at: Some(Instant::now() + Duration::from_secs(10)),
            ..Rule::ban(IpNet::host("192.0.2.1".parse().unwrap()))
        };
        let ns = expiry_ns(&rule);
        let back = ns - monotonic_ns();
        assert!((9_000_000_000..=10_000_000_000).contains(&back), "{back}");
    }
}
