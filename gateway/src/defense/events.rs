//! Drop events: the XDP program's optional, sampled stream of what it dropped,
//! for debugging ("why can't this client connect?").
//!
//! The kernel side is off unless [`KernelPolicy::events`](super::KernelPolicy)
//! is set: then one drop (or monitor-mode would-drop) in `one_in` is written to
//! the `DROP_EVENTS` ring buffer, at most `per_sec` a second (a global token
//! bucket). A full buffer never affects the verdict; it counts `events_lost`.
//!
//! Here: [`decode`] turns a ring-buffer record into an [`Event`], [`LogLimit`]
//! is the userspace bound on log lines (sans-IO, takes `now`), [`drain`] reads
//! whatever is queued (tests), and [`Reader`] is the task that waits on the
//! ring buffer's fd and logs each event at `info` under [`LOG_TARGET`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aya::maps::{MapData, RingBuf};
use gateway_common::{Counter, DropEvent};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// The `tracing` target of event lines, so they can be filtered on their own
/// (e.g. `RUST_LOG=info,gateway::defense::events=off`).
pub const LOG_TARGET: &str = "gateway::defense::events";

/// How drop events are thinned out (config `xdp.drop_events_sample` and
/// `xdp.drop_events_per_sec`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventSampling {
    /// Emit one drop in this many, chosen at random; 1 = every drop.
    pub one_in: u32,
    /// At most this many events a second, in the kernel and in the log.
    pub per_sec: u32,
}

/// One decoded drop event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds (the kernel's `bpf_ktime_get_ns`).
    pub at_ns: u64,
    /// None when the frame was dropped before its IP header was parsed.
    pub source: Option<IpAddr>,
    /// The reason counter; None if the program is newer than this gateway.
    pub reason: Option<Counter>,
    /// IP protocol; 0 when not parsed.
    pub protocol: u8,
    /// (source, destination) for TCP/UDP with a readable L4 header.
    pub ports: Option<(u16, u16)>,
    /// False: monitor mode let the packet through.
    pub dropped: bool,
}

/// Decodes one ring-buffer record; None for a record of the wrong size (an
/// object built from other sources).
pub fn decode(bytes: &[u8]) -> Option<Event> {
    if bytes.len() != std::mem::size_of::<DropEvent>() {
        return None;
    }
    // SAFETY: the length is checked, DropEvent is plain integers (any bit
    // pattern is valid), and read_unaligned needs no alignment.
    let e: DropEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let source = match e.family {
        4 => Some(IpAddr::V4(Ipv4Addr::new(e.addr[12], e.addr[13], e.addr[14], e.addr[15]))),
        6 => Some(IpAddr::V6(Ipv6Addr::from(e.addr))),
        _ => None,
    };
    Some(Event {
        at_ns: e.ts_ns,
        source,
        reason: Counter::ALL.get(e.reason as usize).copied(),
        protocol: e.protocol,
        ports: (e.src_port != 0 || e.dst_port != 0).then_some((e.src_port, e.dst_port)),
        dropped: e.dropped != 0,
    })
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reason = self.reason.map_or("unknown", Counter::name);
        let action = if self.dropped { "drop" } else { "would drop (monitor)" };
        match self.source {
            Some(ip) => write!(f, "{action} {reason} from {ip}")?,
            None => write!(f, "{action} {reason} (source not parsed)")?,
        }
        if let Some((s, d)) = self.ports {
            write!(f, " proto {} port {s} -> {d}", self.protocol)?;
        } else if self.protocol != 0 {
            write!(f, " proto {}", self.protocol)?;
        }
        Ok(())
    }
}

/// At most `per_sec` log lines in each one-second window; the rest are
/// counted and reported on the next line that is logged. The kernel already
/// limits events, but its bucket is raced by CPUs and is refilled from the
/// moment of each event, so this is the bound the log can rely on.
#[derive(Debug)]
pub struct LogLimit {
    window_start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl LogLimit {
    pub fn new() -> LogLimit {
        LogLimit { window_start: None, used: 0, suppressed: 0 }
    }

    /// Some(lines suppressed since the last admitted one) when a line may be
    /// logged at `now`; None when this window is used up (counted).
    pub fn admit(&mut self, now: Instant, per_sec: u32) -> Option<u64> {
        let fresh = match self.window_start {
            Some(start) => now.saturating_duration_since(start) >= Duration::from_secs(1),
            None => true,
        };
        if fresh {
            self.window_start = Some(now);
            self.used = 0;
        }
        if self.used < per_sec {
            self.used += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

impl Default for LogLimit {
    fn default() -> Self {
        LogLimit::new()
    }
}

/// Reads up to `max` queued events without waiting. Records that do not
/// decode are skipped.
pub fn drain(ring: &mut RingBuf<MapData>, max: usize) -> Vec<Event> {
    let mut out = Vec::new();
    while out.len() < max {
        let Some(item) = ring.next() else { break };
        if let Some(e) = decode(&item) {
            out.push(e);
        }
    }
    out
}

/// The reader task: waits for the ring buffer to become readable, drains it
/// and logs each event through a [`LogLimit`].
pub struct Reader {
    ring: AsyncFd<RingBuf<MapData>>,
    /// Shared with `Defense::set_policy`, so a policy change takes effect
    /// without restarting the reader; 0 (events off) logs nothing.
    per_sec: Arc<AtomicU32>,
    limit: LogLimit,
}

impl Reader {
    /// Must be called inside a tokio runtime (registers the fd).
    pub fn new(ring: RingBuf<MapData>, per_sec: Arc<AtomicU32>) -> std::io::Result<Reader> {
        // SAFETY: the RingBuf owns its map fd (an OwnedFd in MapData) for as
        // long as it lives, i.e. as long as this AsyncFd, and `as_raw_fd`
        // always returns that same fd.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }?;
        Ok(Reader { ring, per_sec, limit: LogLimit::new() })
    }

    /// Runs until the fd fails (never, in practice); aborted at shutdown.
    pub async fn run(mut self) {
        loop {
            let mut guard = match self.ring.readable_mut().await {
                Ok(g) => g,
                Err(e) => {
                    tracing::warn!(target: LOG_TARGET, error = %e, "drop-event reader stopped: waiting on the ring buffer failed");
                    return;
                }
            };
            // The kernel writes at most about per_sec events a second into a
            // buffer of bounded size, so one drain is bounded too.
            while let Some(item) = guard.get_inner_mut().next() {
                let event = decode(&item);
                drop(item);
                let Some(event) = event else { continue };
                let per_sec = self.per_sec.load(Ordering::Relaxed);
                if let Some(suppressed) = self.limit.admit(Instant::now(), per_sec) {
                    tracing::info!(
                        target: LOG_TARGET,
                        source = ?event.source,
                        reason = event.reason.map_or("unknown", Counter::name),
                        protocol = event.protocol,
                        ports = ?event.ports,
                        dropped = event.dropped,
                        at_ns = event.at_ns,
                        suppressed,
                        "{event}"
                    );
                }
            }
            guard.clear_ready();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(e: DropEvent) -> Vec<u8> {
        // SAFETY: DropEvent is repr(C) integers without implicit padding.
        unsafe { std::slice::from_raw_parts((&e as *const DropEvent).cast::<u8>(), std::mem::size_of::<DropEvent>()) }
            .to_vec()
    }

    #[test]
    fn decodes_v4_mapped_v6_and_unparsed_sources() {
        let mut addr = [0u8; 16];
        addr[10] = 0xff;
        addr[11] = 0xff;
        addr[12..].copy_from_slice(&[192, 0, 2, 66]);
        let base = DropEvent {
            ts_ns: 7,
            addr,
            reason: Counter::DropBanExact as u32,
            family: 4,
            protocol: 6,
            dropped: 1,
            src_port: 40000,
            dst_port: 443,
            ..Default::default()
        };
        let e = decode(&raw(base)).unwrap();
        assert_eq!(e.source, Some("192.0.2.66".parse().unwrap()));
        assert_eq!((e.reason, e.ports, e.dropped, e.at_ns), (Some(Counter::DropBanExact), Some((40000, 443)), true, 7));
        assert_eq!(e.to_string(), "drop drop_ban_exact from 192.0.2.66 proto 6 port 40000 -> 443");

        let v6 = decode(&raw(DropEvent {
            family: 6,
            src_port: 0,
            dst_port: 0,
            dropped: 0,
            reason: Counter::MonitorBanCidr as u32,
            ..base
        }))
        .unwrap();
        assert_eq!(v6.source, Some("::ffff:192.0.2.66".parse().unwrap()), "a mapped source on the wire stays IPv6");
        assert_eq!(v6.to_string(), "would drop (monitor) monitor_ban_cidr from ::ffff:192.0.2.66 proto 6");

        let l2 = decode(&raw(DropEvent { reason: Counter::MalformedL2 as u32, ..Default::default() })).unwrap();
        assert_eq!((l2.source, l2.ports), (None, None));
        assert_eq!(decode(&raw(DropEvent { reason: 999, ..base })).unwrap().reason, None);
        assert_eq!(decode(&[0u8; 12]), None, "a record of another size is not an event");
    }

    #[test]
    fn log_limit_caps_each_window_and_reports_what_it_suppressed() {
        let t0 = Instant::now();
        let mut l = LogLimit::new();
        assert_eq!(l.admit(t0, 2), Some(0));
        assert_eq!(l.admit(t0, 2), Some(0));
        assert_eq!(l.admit(t0 + Duration::from_millis(500), 2), None);
        assert_eq!(l.admit(t0 + Duration::from_millis(999), 2), None);
        assert_eq!(
            l.admit(t0 + Duration::from_secs(1), 2),
            Some(2),
            "the next window reports the two suppressed lines"
        );
        assert_eq!(l.admit(t0 + Duration::from_secs(1), 2), Some(0));
        assert_eq!(l.admit(t0 + Duration::from_secs(1), 2), None);
        assert_eq!(LogLimit::new().admit(t0, 0), None, "events off: nothing is logged");
    }
}
