//! The gateway's XDP program.
//!
//! One pass over each received frame:
//!
//! 1. L2: Ethernet plus up to two VLAN tags (802.1Q / 802.1ad). Non-IP frames pass.
//! 2. L3: IPv4 or IPv6 header; the source address is known from here on.
//!    An IPv4-mapped IPv6 source (`::ffff:a.b.c.d`) is judged as the IPv4 address.
//! 3. Source policy: allowlist (LPM, wins over everything) -> exact ban (hash)
//!    -> CIDR ban (LPM). A monitor-mode match is remembered and evaluation goes
//!    on, so an enforcing rule further down still drops.
//! 4. Non-first fragments get the configured fragment verdict (no L4 to look at).
//! 5. Pure SYNs (SYN without ACK/RST) to one of the gateway's listening ports
//!    take a token from the source's bucket when the SYN limiter is on.
//!
//! Every packet ends in exactly one reason counter and one verdict counter; any
//! parse failure is a `Malformed*` reason with the configured verdict. Nothing
//! here can fail silently: a missing map slot means "count nothing", never
//! "drop".
//!
//! Optionally (off by default) a drop or monitor would-drop is also written
//! to the `DROP_EVENTS` ring buffer, sampled 1 in N and rate-limited by a
//! global token bucket. That happens after the verdict is fixed and cannot
//! change it: a full buffer is only counted.
#![no_std]
#![no_main]

use core::mem::size_of;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    macros::{map, xdp},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    programs::XdpContext,
};
use gateway_common::{
    AllowEntry, BanEntry, Counter, DropEvent, EventBucket, EventStat, RuntimeConfig, SynBucket, Verdict,
    ALLOW_CAPACITY, BAN_CIDR_CAPACITY, BAN_EXACT_CAPACITY, CFG_FLAG_EVENTS, CFG_FLAG_MONITOR, CFG_FLAG_SYN_LIMIT,
    DROP_EVENTS_BYTES, EVENTS_MAX_PER_SEC, EVENT_TOKEN_SCALE, LISTEN_PORTS_CAPACITY, MAX_IPV6_EXT_HEADERS,
    SYN_BUCKETS_CAPACITY, SYN_TOKEN_SCALE,
};

// Map names equal the statics' names; gateway-common's MAP_* constants spell
// the same strings for userspace. Pinning is decided by the loader (it pins to
// a per-interface bpffs folder), not here, so a bare load never leaves maps
// behind in /sys/fs/bpf.
#[map]
static ALLOW_V4: LpmTrie<[u8; 4], AllowEntry> = LpmTrie::with_max_entries(ALLOW_CAPACITY, 0);
#[map]
static ALLOW_V6: LpmTrie<[u8; 16], AllowEntry> = LpmTrie::with_max_entries(ALLOW_CAPACITY, 0);
// Written only from userspace, so entries are allocated on insert rather
// than preallocated: an empty 64k-entry ban map then costs nothing.
#[map]
static BAN_V4: HashMap<u32, BanEntry> = HashMap::with_max_entries(BAN_EXACT_CAPACITY, BPF_F_NO_PREALLOC);
#[map]
static BAN_V6: HashMap<[u8; 16], BanEntry> = HashMap::with_max_entries(BAN_EXACT_CAPACITY, BPF_F_NO_PREALLOC);
#[map]
static BAN_CIDR_V4: LpmTrie<[u8; 4], BanEntry> = LpmTrie::with_max_entries(BAN_CIDR_CAPACITY, 0);
#[map]
static BAN_CIDR_V6: LpmTrie<[u8; 16], BanEntry> = LpmTrie::with_max_entries(BAN_CIDR_CAPACITY, 0);
#[map]
static SYN_BUCKETS: LruHashMap<[u8; 16], SynBucket> = LruHashMap::with_max_entries(SYN_BUCKETS_CAPACITY, 0);
#[map]
static LISTEN_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(LISTEN_PORTS_CAPACITY, 0);
#[map]
static CONFIG: Array<RuntimeConfig> = Array::with_max_entries(1, 0);
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);
// Drop events. Never pinned: they are a live debugging stream, and a fresh
// load starting with an empty buffer and a full bucket is what we want.
#[map]
static DROP_EVENTS: RingBuf = RingBuf::with_byte_size(DROP_EVENTS_BYTES, 0);
#[map]
static EVENT_BUCKET: Array<EventBucket> = Array::with_max_entries(1, 0);
#[map]
static EVENT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(EventStat::COUNT, 0);
/// The candidate event, handed from the verdict path to `drop_event` through
/// a map rather than the stack: the verifier does not track map contents,
/// so `drop_event` is verified for a handful of states instead of once per
/// path with its own constant reason, family and offsets (on the stack, that
/// made the program's load 1.3 s instead of about 0.3 s, long enough to upset
/// IPv6 neighbour discovery in the restart test).
#[map]
static EVENT_SCRATCH: PerCpuArray<Staged> = PerCpuArray::with_max_entries(1, 0);

struct Staged {
    event: DropEvent,
    /// L4 header offset (0: none).
    l4: u32,
}

/// linux/bpf.h; a literal because the bindings module is per host arch.
const BPF_F_NO_PREALLOC: u32 = 1;

const ETH_HLEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const VLAN_HLEN: usize = 4;
const IPV4_MIN_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const TCP_MIN_HLEN: usize = 20;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_RST: u8 = 0x04;
const TCP_FLAG_ACK: u8 = 0x10;

// IPv6 extension headers we walk through.
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;

/// The program's decision plus the one reason counter it is filed under.
#[derive(Clone, Copy)]
struct Outcome {
    drop: bool,
    reason: Counter,
}

impl Outcome {
    const fn pass(reason: Counter) -> Outcome {
        Outcome { drop: false, reason }
    }
    const fn drop(reason: Counter) -> Outcome {
        Outcome { drop: true, reason }
    }
}

/// What the parse learnt about the packet, for a drop event only: the
/// verdict never reads it.
#[derive(Clone, Copy)]
struct Seen {
    /// Source, IPv4 as `::ffff:a.b.c.d`.
    addr: [u8; 16],
    /// 0 until an IP header was parsed.
    family: u8,
    proto: u8,
    /// Offset of the L4 header; 0 when there is none to read (fragment, or
    /// not reached).
    l4: usize,
}

#[xdp]
pub fn gateway_xdp(ctx: XdpContext) -> u32 {
    let cfg = match CONFIG.get(0) {
        Some(c) => *c,
        None => RuntimeConfig::default(),
    };
    let mut seen = Seen { addr: [0; 16], family: 0, proto: 0, l4: 0 };
    let mut out = classify(&ctx, &cfg, &mut seen);
    let would_drop = out.drop;
    if out.drop && cfg.flags & CFG_FLAG_MONITOR != 0 {
        // Global monitor: keep the reason (so the operator sees what would
        // have been dropped) but let the packet through.
        out = Outcome::pass(monitor_reason(out.reason));
    }
    // A monitor-mode ban match passes without being a would-drop here, but
    // its reason says what it would have been; it is worth an event too.
    let monitored = matches!(out.reason, Counter::MonitorBanExact | Counter::MonitorBanCidr | Counter::MonitorSynRate);
    let event = (would_drop || monitored) && cfg.flags & CFG_FLAG_EVENTS != 0;
    // Counted first so that the reason is dead by the time `drop_event` runs
    // (see EVENT_SCRATCH).
    count(out.reason);
    let action = if out.drop {
        count(Counter::VerdictDrop);
        xdp_action::XDP_DROP
    } else {
        count(Counter::VerdictPass);
        xdp_action::XDP_PASS
    };
    if event && stage_event(&seen, out) {
        drop_event(&ctx, &cfg);
    }
    action
}

#[inline(always)]
fn stage_event(seen: &Seen, out: Outcome) -> bool {
    let Some(s) = EVENT_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    let s = unsafe { &mut *s };
    s.event.addr = seen.addr;
    s.event.reason = out.reason as u32;
    s.event.family = seen.family;
    s.event.protocol = seen.proto;
    s.event.dropped = out.drop as u8;
    s.l4 = seen.l4 as u32;
    true
}

/// Under global monitor, a ban or rate drop is filed under its monitor twin;
/// fragment and malformed reasons have no twin and keep their own name.
#[inline(always)]
fn monitor_reason(reason: Counter) -> Counter {
    match reason {
        Counter::DropBanExact => Counter::MonitorBanExact,
        Counter::DropBanCidr => Counter::MonitorBanCidr,
        Counter::DropSynRate => Counter::MonitorSynRate,
        other => other,
    }
}

/// Sample, rate-limit and emit one drop event. Has no say in the verdict.
#[inline(always)]
fn drop_event(ctx: &XdpContext, cfg: &RuntimeConfig) {
    if cfg.events_one_in > 1 && unsafe { bpf_get_prandom_u32() } % cfg.events_one_in != 0 {
        return;
    }
    let now = now_ns();
    if !take_event_token(cfg, now) {
        stat(EventStat::RateLimited);
        return;
    }
    let Some(s) = EVENT_SCRATCH.get_ptr(0) else {
        return;
    };
    let s = unsafe { &*s };
    let mut event = s.event;
    event.ts_ns = now;
    event.src_port = 0;
    event.dst_port = 0;
    // The offset comes back from a map, unknown to the verifier: a mask
    // (not a comparison, which the compiler may apply to a copy) bounds it.
    // Headers reach at most 14 + 8 + 60 bytes, or IPv6's bounded walk.
    let l4 = (s.l4 & 0x3fff) as usize;
    if s.l4 < 0x4000 && l4 != 0 && (event.protocol == IPPROTO_TCP || event.protocol == IPPROTO_UDP) {
        if let Some(p) = bytes_at::<4>(ctx, l4) {
            let p = unsafe { &*p };
            event.src_port = be16(p, 0);
            event.dst_port = be16(p, 2);
        }
    }
    let Some(mut entry) = DROP_EVENTS.reserve::<DropEvent>(0) else {
        stat(EventStat::Lost);
        return;
    };
    entry.write(event);
    entry.submit(0);
    stat(EventStat::Emitted);
}

/// The global event bucket: one second's worth of burst. Races between CPUs
/// can let a few extra events through (see `EventBucket`).
#[inline(always)]
fn take_event_token(cfg: &RuntimeConfig, now: u64) -> bool {
    let rate = if cfg.events_per_sec > EVENTS_MAX_PER_SEC { EVENTS_MAX_PER_SEC } else { cfg.events_per_sec } as u64;
    let cap = rate * EVENT_TOKEN_SCALE;
    let Some(b) = EVENT_BUCKET.get_ptr_mut(0) else {
        return false;
    };
    let b = unsafe { &mut *b };
    let mut elapsed = now.saturating_sub(b.last_ns);
    // A second refills the whole bucket; clamping also bounds the product.
    if elapsed > 1_000_000_000 {
        elapsed = 1_000_000_000;
    }
    // units/ns = rate * SCALE / 1e9; SCALE = 1e3 so this is rate / 1e6.
    let mut tokens = b.tokens + elapsed * rate / 1_000_000;
    if tokens > cap {
        tokens = cap;
    }
    b.last_ns = now;
    if tokens >= EVENT_TOKEN_SCALE {
        b.tokens = tokens - EVENT_TOKEN_SCALE;
        true
    } else {
        b.tokens = tokens;
        false
    }
}

#[inline(always)]
fn stat(s: EventStat) {
    if let Some(p) = EVENT_STATS.get_ptr_mut(s as u32) {
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn count(c: Counter) {
    if let Some(p) = COUNTERS.get_ptr_mut(c as u32) {
        // Per-CPU slot: no other writer, a plain increment is exact.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn policy_verdict(v: u32, reason: Counter) -> Outcome {
    if v == Verdict::Drop as u32 {
        Outcome::drop(reason)
    } else {
        Outcome::pass(reason)
    }
}

/// Pointer to `N` bytes at `off`, or None when the packet is shorter.
#[inline(always)]
fn bytes_at<const N: usize>(ctx: &XdpContext, off: usize) -> Option<*const [u8; N]> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + N > end {
        return None;
    }
    Some((start + off) as *const [u8; N])
}

#[inline(always)]
fn be16(b: &[u8], i: usize) -> u16 {
    ((b[i] as u16) << 8) | b[i + 1] as u16
}

#[inline(always)]
fn classify(ctx: &XdpContext, cfg: &RuntimeConfig, seen: &mut Seen) -> Outcome {
    let malformed = |reason| policy_verdict(cfg.malformed_verdict, reason);

    // --- L2 ---
    let Some(eth) = bytes_at::<ETH_HLEN>(ctx, 0) else {
        return malformed(Counter::MalformedL2);
    };
    let eth = unsafe { &*eth };
    let mut ethertype = be16(eth, 12);
    let mut off = ETH_HLEN;
    // Two tags cover 802.1Q and QinQ; unrolled by hand for the verifier.
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let Some(tag) = bytes_at::<VLAN_HLEN>(ctx, off) else {
            return malformed(Counter::MalformedL2);
        };
        ethertype = be16(unsafe { &*tag }, 2);
        off += VLAN_HLEN;
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            let Some(tag) = bytes_at::<VLAN_HLEN>(ctx, off) else {
                return malformed(Counter::MalformedL2);
            };
            ethertype = be16(unsafe { &*tag }, 2);
            off += VLAN_HLEN;
            if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
                return malformed(Counter::MalformedVlanDepth);
            }
        }
    }

    match ethertype {
        ETH_P_IPV4 => ipv4(ctx, cfg, off, seen),
        ETH_P_IPV6 => ipv6(ctx, cfg, off, seen),
        _ => Outcome::pass(Counter::PassNonIp),
    }
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, cfg: &RuntimeConfig, off: usize, seen: &mut Seen) -> Outcome {
    let malformed = policy_verdict(cfg.malformed_verdict, Counter::MalformedIpv4);
    let Some(h) = bytes_at::<IPV4_MIN_HLEN>(ctx, off) else {
        return malformed;
    };
    let h = unsafe { &*h };
    if h[0] >> 4 != 4 {
        return malformed;
    }
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    if ihl < IPV4_MIN_HLEN {
        return malformed;
    }
    // The options must be there too, or the L4 offset below is a lie.
    if ctx.data() + off + ihl > ctx.data_end() {
        return malformed;
    }
    let src = [h[12], h[13], h[14], h[15]];
    let non_first_fragment = be16(h, 6) & 0x1fff != 0;
    let proto = h[9];
    seen.addr[10] = 0xff;
    seen.addr[11] = 0xff;
    seen.addr[12] = src[0];
    seen.addr[13] = src[1];
    seen.addr[14] = src[2];
    seen.addr[15] = src[3];
    seen.family = 4;
    seen.proto = proto;
    if !non_first_fragment {
        seen.l4 = off + ihl;
    }

    let monitor = match source_v4(src) {
        Source::Decided(o) => return o,
        Source::Continue(m) => m,
    };
    if non_first_fragment {
        return policy_verdict(cfg.fragment_verdict, Counter::Fragment);
    }
    let mut key = [0u8; 16];
    key[10] = 0xff;
    key[11] = 0xff;
    key[12] = src[0];
    key[13] = src[1];
    key[14] = src[2];
    key[15] = src[3];
    finish(ctx, cfg, proto, off + ihl, &key, monitor)
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, cfg: &RuntimeConfig, off: usize, seen: &mut Seen) -> Outcome {
    let Some(h) = bytes_at::<IPV6_HLEN>(ctx, off) else {
        return policy_verdict(cfg.malformed_verdict, Counter::MalformedIpv6);
    };
    let h = unsafe { &*h };
    if h[0] >> 4 != 6 {
        return policy_verdict(cfg.malformed_verdict, Counter::MalformedIpv6);
    }
    let mut src = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        src[i] = h[8 + i];
        i += 1;
    }
    seen.addr = src;
    seen.family = 6;
    // For a drop decided by the source alone: ports are readable when no
    // extension header comes first (the walk below refines both otherwise).
    seen.proto = h[6];
    seen.l4 = off + IPV6_HLEN;
    let mapped = src[..10].iter().all(|b| *b == 0) && src[10] == 0xff && src[11] == 0xff;
    let decided = if mapped { source_v4([src[12], src[13], src[14], src[15]]) } else { source_v6(&src) };
    let monitor = match decided {
        Source::Decided(o) => return o,
        Source::Continue(m) => m,
    };

    // Walk the extension headers to the upper-layer protocol (bounded).
    let mut next = h[6];
    let mut l4 = off + IPV6_HLEN;
    // MAX headers may be walked; the iteration after them must find the
    // upper-layer protocol, or the chain is too long.
    let mut n = 0;
    while n <= MAX_IPV6_EXT_HEADERS {
        let is_ext = matches!(next, NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_AUTH | NEXTHDR_FRAGMENT);
        if is_ext && n == MAX_IPV6_EXT_HEADERS {
            break;
        }
        match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                let Some(e) = bytes_at::<2>(ctx, l4) else {
                    return policy_verdict(cfg.malformed_verdict, Counter::MalformedIpv6);
                };
                let e = unsafe { &*e };
                next = e[0];
                l4 += (e[1] as usize + 1) * 8;
            }
            NEXTHDR_AUTH => {
                let Some(e) = bytes_at::<2>(ctx, l4) else {
                    return policy_verdict(cfg.malformed_verdict, Counter::MalformedIpv6);
                };
                let e = unsafe { &*e };
                next = e[0];
                l4 += (e[1] as usize + 2) * 4;
            }
            NEXTHDR_FRAGMENT => {
                let Some(e) = bytes_at::<8>(ctx, l4) else {
                    return policy_verdict(cfg.malformed_verdict, Counter::MalformedIpv6);
                };
                let e = unsafe { &*e };
                if be16(e, 2) & 0xfff8 != 0 {
                    return policy_verdict(cfg.fragment_verdict, Counter::Fragment);
                }
                next = e[0];
                l4 += 8;
            }
            _ => {
                seen.proto = next;
                seen.l4 = l4;
                return finish(ctx, cfg, next, l4, &src, monitor);
            }
        }
        n += 1;
    }
    policy_verdict(cfg.malformed_verdict, Counter::MalformedIpv6ExtChain)
}

/// Result of the source-address checks.
enum Source {
    /// Allowlisted or banned: nothing else matters.
    Decided(Outcome),
    /// Go on; carries the first monitor-mode match, if any.
    Continue(Option<Counter>),
}

#[inline(always)]
fn now_ns() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn ban_hit(e: &BanEntry, monitor: Counter, first_monitor: &mut Option<Counter>) -> bool {
    // The clock only for entries that can expire: most bans never do, and
    // this runs for every banned frame (bpf_ktime_get_ns was ~45 ns of a
    // 118 ns run on our VMs; `cargo xtask bench xdp`).
    if e.expires_at_ns != 0 && now_ns() >= e.expires_at_ns {
        return false;
    }
    if e.is_monitor() {
        if first_monitor.is_none() {
            *first_monitor = Some(monitor);
        }
        return false;
    }
    true
}

#[inline(always)]
fn source_v4(src: [u8; 4]) -> Source {
    if ALLOW_V4.get(Key::new(32, src)).is_some() {
        return Source::Decided(Outcome::pass(Counter::PassAllowlist));
    }
    let mut monitor = None;
    if let Some(e) = unsafe { BAN_V4.get(u32::from_ne_bytes(src)) } {
        if ban_hit(e, Counter::MonitorBanExact, &mut monitor) {
            return Source::Decided(Outcome::drop(Counter::DropBanExact));
        }
    }
    if let Some(e) = BAN_CIDR_V4.get(Key::new(32, src)) {
        if ban_hit(e, Counter::MonitorBanCidr, &mut monitor) {
            return Source::Decided(Outcome::drop(Counter::DropBanCidr));
        }
    }
    Source::Continue(monitor)
}

#[inline(always)]
fn source_v6(src: &[u8; 16]) -> Source {
    if ALLOW_V6.get(Key::new(128, *src)).is_some() {
        return Source::Decided(Outcome::pass(Counter::PassAllowlist));
    }
    let mut monitor = None;
    if let Some(e) = unsafe { BAN_V6.get(src) } {
        if ban_hit(e, Counter::MonitorBanExact, &mut monitor) {
            return Source::Decided(Outcome::drop(Counter::DropBanExact));
        }
    }
    if let Some(e) = BAN_CIDR_V6.get(Key::new(128, *src)) {
        if ban_hit(e, Counter::MonitorBanCidr, &mut monitor) {
            return Source::Decided(Outcome::drop(Counter::DropBanCidr));
        }
    }
    Source::Continue(monitor)
}

/// L4 stage: the SYN limiter, then the default pass.
#[inline(always)]
fn finish(
    ctx: &XdpContext,
    cfg: &RuntimeConfig,
    proto: u8,
    l4: usize,
    bucket_key: &[u8; 16],
    monitor: Option<Counter>,
) -> Outcome {
    let default = Outcome::pass(match monitor {
        Some(m) => m,
        None => Counter::PassNoMatch,
    });
    if proto != IPPROTO_TCP || cfg.flags & CFG_FLAG_SYN_LIMIT == 0 {
        return default;
    }
    let Some(t) = bytes_at::<TCP_MIN_HLEN>(ctx, l4) else {
        return policy_verdict(cfg.malformed_verdict, Counter::MalformedTcp);
    };
    let t = unsafe { &*t };
    let flags = t[13];
    if flags & (TCP_FLAG_SYN | TCP_FLAG_ACK | TCP_FLAG_RST) != TCP_FLAG_SYN {
        return default;
    }
    let dport_be = u16::from_ne_bytes([t[2], t[3]]);
    if unsafe { LISTEN_PORTS.get(dport_be) }.is_none() {
        return default;
    }
    if take_syn_token(cfg, bucket_key) {
        default
    } else {
        Outcome::drop(Counter::DropSynRate)
    }
}

/// Token bucket per source. Races between CPUs on the same bucket can let a
/// few extra SYNs through; they never wrongly drop, which is the side to err on.
#[inline(always)]
fn take_syn_token(cfg: &RuntimeConfig, key: &[u8; 16]) -> bool {
    // Clamp so the refill product cannot overflow (userspace validates too).
    let rate = if cfg.syn_rate_per_sec > 100_000 { 100_000 } else { cfg.syn_rate_per_sec } as u64;
    let cap = cfg.syn_burst as u64 * SYN_TOKEN_SCALE;
    let now = now_ns();
    match SYN_BUCKETS.get_ptr_mut(key) {
        Some(b) => {
            let b = unsafe { &mut *b };
            let mut elapsed = now.saturating_sub(b.last_ns);
            if elapsed > 60_000_000_000 {
                elapsed = 60_000_000_000;
            }
            // tokens/ns = rate * SCALE / 1e9; SCALE = 1e3 so this is rate / 1e6.
            let refill = elapsed * rate / 1_000_000;
            let mut tokens = b.tokens + refill;
            if tokens > cap {
                tokens = cap;
            }
            b.last_ns = now;
            if tokens >= SYN_TOKEN_SCALE {
                b.tokens = tokens - SYN_TOKEN_SCALE;
                true
            } else {
                b.tokens = tokens;
                false
            }
        }
        None => {
            if cap < SYN_TOKEN_SCALE {
                return false;
            }
            let fresh = SynBucket { tokens: cap - SYN_TOKEN_SCALE, last_ns: now };
            // If the insert fails (a racing CPU inserted first) the SYN still
            // passes: at most one extra.
            let _ = SYN_BUCKETS.insert(key, &fresh, 0);
            true
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects any path to it.
    loop {}
}

const _: () = assert!(size_of::<Key<[u8; 4]>>() == 8);
