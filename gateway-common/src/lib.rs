//! Types shared between the XDP program (`gateway-ebpf`) and the gateway.
//!
//! Everything here crosses the kernel/user boundary as raw bytes, so every type
//! is `#[repr(C)]`, has no implicit padding (explicit `_pad` fields instead, so
//! the kernel never sees uninitialised bytes in a hash key), and carries a
//! `const` assertion on its size and alignment: a layout change fails the
//! build of both sides instead of silently misreading maps.
//!
//! Map map (names are the ELF map names; userspace looks them up by these):
//!
//! | map                  | kind            | key              | value          |
//! |----------------------|-----------------|------------------|----------------|
//! | [`MAP_ALLOW_V4`]     | LPM trie        | `[u8; 4]`        | [`AllowEntry`] |
//! | [`MAP_ALLOW_V6`]     | LPM trie        | `[u8; 16]`       | [`AllowEntry`] |
//! | [`MAP_BAN_V4`]       | hash            | `u32` (net order)| [`BanEntry`]   |
//! | [`MAP_BAN_V6`]       | hash            | `[u8; 16]`       | [`BanEntry`]   |
//! | [`MAP_BAN_CIDR_V4`]  | LPM trie        | `[u8; 4]`        | [`BanEntry`]   |
//! | [`MAP_BAN_CIDR_V6`]  | LPM trie        | `[u8; 16]`       | [`BanEntry`]   |
//! | [`MAP_SYN_BUCKETS`]  | LRU hash        | `[u8; 16]`       | [`SynBucket`]  |
//! | [`MAP_LISTEN_PORTS`] | hash            | `u16` (net order)| `u8`           |
//! | [`MAP_CONFIG`]       | array, 1 entry  | `u32` (0)        | [`RuntimeConfig`] |
//! | [`MAP_COUNTERS`]     | per-CPU array   | `u32` ([`Counter`]) | `u64`       |
//! | [`MAP_DROP_EVENTS`]  | ring buffer     | -                | [`DropEvent`]  |
//! | [`MAP_EVENT_BUCKET`] | array, 1 entry  | `u32` (0)        | [`EventBucket`] |
//! | [`MAP_EVENT_STATS`]  | per-CPU array   | `u32` ([`EventStat`]) | `u64`     |
//!
//! IPv4 addresses are stored as the four bytes in network order (`u32` read
//! straight from the packet, i.e. `u32::from_ne_bytes(ip.octets())` in
//! userspace). An IPv4-mapped IPv6 source (`::ffff:a.b.c.d`) is looked up in
//! the IPv4 maps, so one entry covers both ways of reaching a dual-stack socket.
#![no_std]

/// Name of the XDP program inside the object file.
pub const PROGRAM_NAME: &str = "gateway_xdp";

pub const MAP_ALLOW_V4: &str = "ALLOW_V4";
pub const MAP_ALLOW_V6: &str = "ALLOW_V6";
pub const MAP_BAN_V4: &str = "BAN_V4";
pub const MAP_BAN_V6: &str = "BAN_V6";
pub const MAP_BAN_CIDR_V4: &str = "BAN_CIDR_V4";
pub const MAP_BAN_CIDR_V6: &str = "BAN_CIDR_V6";
pub const MAP_SYN_BUCKETS: &str = "SYN_BUCKETS";
pub const MAP_LISTEN_PORTS: &str = "LISTEN_PORTS";
pub const MAP_CONFIG: &str = "CONFIG";
pub const MAP_COUNTERS: &str = "COUNTERS";
pub const MAP_DROP_EVENTS: &str = "DROP_EVENTS";
pub const MAP_EVENT_BUCKET: &str = "EVENT_BUCKET";
pub const MAP_EVENT_STATS: &str = "EVENT_STATS";

/// Capacities. The exact ban maps are plain hash maps (never evicted: a ban
/// must not silently disappear under pressure), so userspace checks these
/// before inserting and reports "full" to the caller instead.
pub const BAN_EXACT_CAPACITY: u32 = 65_536;
pub const BAN_CIDR_CAPACITY: u32 = 16_384;
pub const ALLOW_CAPACITY: u32 = 4_096;
/// LRU: under a spoofed-source flood old buckets are evicted, which at worst
/// hands an evicted source a fresh burst; it never blocks anyone wrongly.
/// LRU maps are always preallocated (about 80 bytes an entry with per-CPU
/// free lists), so this is 5 MiB and part of every program load's time.
pub const SYN_BUCKETS_CAPACITY: u32 = 65_536;
pub const LISTEN_PORTS_CAPACITY: u32 = 64;
/// Bytes of the drop-event ring buffer (a power-of-two multiple of the page
/// size). 256 KiB holds about 5,400 events (40 bytes plus the kernel's 8-byte
/// record header): more than [`EVENTS_MAX_PER_SEC`] allows in a second, so a
/// reader that wakes once a second never loses events to a full buffer. The
/// map exists (and costs this much) even while events are off.
pub const DROP_EVENTS_BYTES: u32 = 256 * 1024;
/// Upper bound for `RuntimeConfig::events_per_sec`; the program clamps to it
/// too, which also keeps its token-bucket arithmetic far from overflow.
pub const EVENTS_MAX_PER_SEC: u32 = 5_000;

/// How many IPv6 extension headers the program walks before giving up and
/// treating the packet as unparseable (bounded loop for the verifier, and a
/// chain longer than this is itself suspicious).
pub const MAX_IPV6_EXT_HEADERS: u32 = 6;

/// A ban (exact or CIDR).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BanEntry {
    /// `BAN_FLAG_*` bits.
    pub flags: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) after which the entry is ignored;
    /// 0 = never expires. Monotonic rather than wall time so a clock step can
    /// neither lift nor extend a ban; pinned maps keep working across gateway
    /// restarts because the clock is per boot, like the maps themselves.
    pub expires_at_ns: u64,
}

/// Count a match as "would drop" and pass the packet: to try a rule on live
/// traffic before enforcing it.
pub const BAN_FLAG_MONITOR: u32 = 1;

impl BanEntry {
    pub const fn enforce() -> BanEntry {
        BanEntry { flags: 0, _pad: 0, expires_at_ns: 0 }
    }
    pub const fn is_monitor(&self) -> bool {
        self.flags & BAN_FLAG_MONITOR != 0
    }
    /// True when the entry applies at `now_ns` (CLOCK_MONOTONIC).
    pub const fn is_live(&self, now_ns: u64) -> bool {
        self.expires_at_ns == 0 || now_ns < self.expires_at_ns
    }
}

/// An allowlist prefix. Allowlisted sources pass before any other check.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllowEntry {
    /// Reserved for future use; keeps the value non-empty and 8-aligned.
    pub flags: u32,
    pub _pad: u32,
}

/// Token bucket state for one source, used only for pure SYNs to the gateway's
/// listening ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynBucket {
    /// Tokens scaled by [`SYN_TOKEN_SCALE`], so sub-token refill is not lost
    /// between closely spaced SYNs.
    pub tokens: u64,
    /// `bpf_ktime_get_ns()` of the last refill.
    pub last_ns: u64,
}

/// One SYN = this many bucket units.
pub const SYN_TOKEN_SCALE: u64 = 1_000;

/// What to do with a packet class whose handling is a policy choice.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass = 0,
    Drop = 1,
}

/// Global runtime knobs, written by userspace into [`MAP_CONFIG`] slot 0.
///
/// All-zero (what the kernel holds before userspace writes it) means: pass
/// fragments and malformed packets, no SYN limit, not in global monitor mode,
/// i.e. only explicit ban entries act. That is the safe state for a program
/// attached a moment before its configuration arrives.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// `CFG_FLAG_*` bits.
    pub flags: u32,
    /// [`Verdict`] for non-first IP fragments (no L4 header to inspect).
    pub fragment_verdict: u32,
    /// [`Verdict`] for packets that cannot be parsed (truncated headers, bad
    /// IHL, too many IPv6 extension headers).
    pub malformed_verdict: u32,
    /// Pure SYNs per second per source refilled into the bucket.
    pub syn_rate_per_sec: u32,
    /// Bucket size in SYNs.
    pub syn_burst: u32,
    /// With [`CFG_FLAG_EVENTS`]: emit one drop event in this many drops,
    /// chosen at random (0 and 1 both mean every drop).
    pub events_one_in: u32,
    /// With [`CFG_FLAG_EVENTS`]: at most this many drop events a second (a
    /// token bucket of one second's worth); 0 emits nothing.
    pub events_per_sec: u32,
}

/// Every would-drop is counted and passed instead (a dry run of the rules).
pub const CFG_FLAG_MONITOR: u32 = 1;
/// Enforce the per-source SYN token bucket.
pub const CFG_FLAG_SYN_LIMIT: u32 = 2;
/// Emit sampled, rate-limited [`DropEvent`]s into [`MAP_DROP_EVENTS`].
pub const CFG_FLAG_EVENTS: u32 = 4;

/// One sampled drop (or monitor-mode would-drop), as written into
/// [`MAP_DROP_EVENTS`]. Fields the program did not get to parse are zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropEvent {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at the decision.
    pub ts_ns: u64,
    /// Source address; IPv4 as `::ffff:a.b.c.d`. All zero when the frame was
    /// dropped before its source was known (malformed L2/L3).
    pub addr: [u8; 16],
    /// The [`Counter`] the packet was filed under.
    pub reason: u32,
    /// 4 or 6 (the IP version on the wire); 0 when not parsed.
    pub family: u8,
    /// IP protocol (6 TCP, 17 UDP, ...); 0 when not parsed.
    pub protocol: u8,
    /// 1: the packet was dropped; 0: monitor mode let it through.
    pub dropped: u8,
    pub _pad: u8,
    /// TCP/UDP ports in host order; 0 when not parsed (fragments, other
    /// protocols, headers cut short).
    pub src_port: u16,
    pub dst_port: u16,
    pub _pad2: u32,
}

/// Global token bucket for drop events, in [`MAP_EVENT_BUCKET`] slot 0.
/// Global rather than per CPU so the bound is `events_per_sec` for the whole
/// host; CPUs racing on it may let a few extra events through, which the
/// userspace reader's own limit absorbs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventBucket {
    /// Events scaled by [`EVENT_TOKEN_SCALE`].
    pub tokens: u64,
    /// `bpf_ktime_get_ns()` of the last refill.
    pub last_ns: u64,
}

/// One event = this many bucket units.
pub const EVENT_TOKEN_SCALE: u64 = 1_000;

/// Per-CPU drop-event bookkeeping in [`MAP_EVENT_STATS`]. Kept apart from
/// [`Counter`] because those count packets (one reason each); these count events.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventStat {
    /// Written to the ring buffer.
    Emitted = 0,
    /// Sampled and within the rate, but the ring buffer was full.
    Lost,
    /// Sampled, but over `events_per_sec`.
    RateLimited,
}

impl EventStat {
    pub const COUNT: u32 = EventStat::RateLimited as u32 + 1;
    pub const ALL: [EventStat; EventStat::COUNT as usize] =
        [EventStat::Emitted, EventStat::Lost, EventStat::RateLimited];

    /// Stable snake_case name, used as a Prometheus label value.
    pub const fn name(self) -> &'static str {
        match self {
            EventStat::Emitted => "events_emitted",
            EventStat::Lost => "events_lost",
            EventStat::RateLimited => "events_rate_limited",
        }
    }
}

/// Per-CPU counters. Each packet increments exactly one *reason* counter and
/// exactly one of [`Counter::VerdictPass`] / [`Counter::VerdictDrop`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    VerdictPass = 0,
    VerdictDrop,
    /// IP packet that matched no rule.
    PassNoMatch,
    /// Not IPv4/IPv6 (ARP, LLDP, ...): not ours to judge.
    PassNonIp,
    PassAllowlist,
    DropBanExact,
    DropBanCidr,
    DropSynRate,
    MonitorBanExact,
    MonitorBanCidr,
    MonitorSynRate,
    /// Non-first fragment (verdict from config).
    Fragment,
    /// Ethernet header or VLAN tag cut short.
    MalformedL2,
    /// IPv4 header cut short or IHL < 5.
    MalformedIpv4,
    /// IPv6 header or an extension header cut short.
    MalformedIpv6,
    /// More IPv6 extension headers than [`MAX_IPV6_EXT_HEADERS`].
    MalformedIpv6ExtChain,
    /// TCP header cut short (only looked at when the SYN limiter needs it).
    MalformedTcp,
    /// More than two VLAN tags.
    MalformedVlanDepth,
}

impl Counter {
    /// Number of counters: the length of [`MAP_COUNTERS`].
    pub const COUNT: u32 = Counter::MalformedVlanDepth as u32 + 1;

    pub const ALL: [Counter; Counter::COUNT as usize] = [
        Counter::VerdictPass,
        Counter::VerdictDrop,
        Counter::PassNoMatch,
        Counter::PassNonIp,
        Counter::PassAllowlist,
        Counter::DropBanExact,
        Counter::DropBanCidr,
        Counter::DropSynRate,
        Counter::MonitorBanExact,
        Counter::MonitorBanCidr,
        Counter::MonitorSynRate,
        Counter::Fragment,
        Counter::MalformedL2,
        Counter::MalformedIpv4,
        Counter::MalformedIpv6,
        Counter::MalformedIpv6ExtChain,
        Counter::MalformedTcp,
        Counter::MalformedVlanDepth,
    ];

    /// Stable snake_case name, used as a Prometheus label value.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::VerdictPass => "verdict_pass",
            Counter::VerdictDrop => "verdict_drop",
            Counter::PassNoMatch => "pass_no_match",
            Counter::PassNonIp => "pass_non_ip",
            Counter::PassAllowlist => "pass_allowlist",
            Counter::DropBanExact => "drop_ban_exact",
            Counter::DropBanCidr => "drop_ban_cidr",
            Counter::DropSynRate => "drop_syn_rate",
            Counter::MonitorBanExact => "monitor_ban_exact",
            Counter::MonitorBanCidr => "monitor_ban_cidr",
            Counter::MonitorSynRate => "monitor_syn_rate",
            Counter::Fragment => "fragment",
            Counter::MalformedL2 => "malformed_l2",
            Counter::MalformedIpv4 => "malformed_ipv4",
            Counter::MalformedIpv6 => "malformed_ipv6",
            Counter::MalformedIpv6ExtChain => "malformed_ipv6_ext_chain",
            Counter::MalformedTcp => "malformed_tcp",
            Counter::MalformedVlanDepth => "malformed_vlan_depth",
        }
    }
}

// Layout guards: both sides compile these, so a drift fails the build.
const _: () = assert!(core::mem::size_of::<BanEntry>() == 16 && core::mem::align_of::<BanEntry>() == 8);
const _: () = assert!(core::mem::size_of::<AllowEntry>() == 8 && core::mem::align_of::<AllowEntry>() == 4);
const _: () = assert!(core::mem::size_of::<SynBucket>() == 16 && core::mem::align_of::<SynBucket>() == 8);
const _: () = assert!(core::mem::size_of::<RuntimeConfig>() == 28 && core::mem::align_of::<RuntimeConfig>() == 4);
const _: () = assert!(core::mem::size_of::<DropEvent>() == 40 && core::mem::align_of::<DropEvent>() == 8);
const _: () = assert!(core::mem::size_of::<EventBucket>() == 16 && core::mem::align_of::<EventBucket>() == 8);
const _: () = assert!(Counter::ALL.len() == Counter::COUNT as usize);
const _: () = {
    // ALL must be in index order, so `ALL[i] as u32 == i`.
    let mut i = 0;
    while i < Counter::ALL.len() {
        assert!(Counter::ALL[i] as u32 == i as u32);
        i += 1;
    }
};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], Copy, contain only integers, and
    // have no implicit padding (checked by the size assertions above).
    unsafe impl aya::Pod for super::BanEntry {}
    unsafe impl aya::Pod for super::AllowEntry {}
    unsafe impl aya::Pod for super::SynBucket {}
    unsafe impl aya::Pod for super::RuntimeConfig {}
    unsafe impl aya::Pod for super::DropEvent {}
    unsafe impl aya::Pod for super::EventBucket {}
}
