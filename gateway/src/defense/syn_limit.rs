//! The SYN limiter's token bucket in userspace, for when XDP is unavailable:
//! each accepted connection stands for one SYN. Same arithmetic as the kernel
//! program (`take_syn_token` in gateway-ebpf), so a source gets the same
//! budget either way. Sans-IO: time comes in as an argument.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use gateway_common::SYN_TOKEN_SCALE;

use super::rules::canonical;
use super::xdp::SynLimit;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: u64,
    last: Instant,
}

/// Per-source buckets, bounded by `capacity` like the kernel's LRU map.
#[derive(Debug)]
pub struct SourceBuckets {
    limit: SynLimit,
    capacity: usize,
    buckets: HashMap<IpAddr, Bucket>,
}

impl SourceBuckets {
    pub fn new(limit: SynLimit, capacity: usize) -> SourceBuckets {
        SourceBuckets { limit, capacity: capacity.max(1), buckets: HashMap::new() }
    }

    pub fn limit(&self) -> SynLimit {
        self.limit
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    fn cap(&self) -> u64 {
        u64::from(self.limit.burst) * SYN_TOKEN_SCALE
    }

    /// Takes one token for a new connection from `ip`; false = over the limit.
    pub fn take(&mut self, ip: IpAddr, now: Instant) -> bool {
        let ip = canonical(ip);
        let cap = self.cap();
        let rate = u64::from(self.limit.rate_per_sec.min(100_000));
        if let Some(b) = self.buckets.get_mut(&ip) {
            let elapsed = now.saturating_duration_since(b.last).as_nanos().min(60_000_000_000) as u64;
            let tokens = (b.tokens + elapsed * rate / 1_000_000).min(cap);
            b.last = now;
            if tokens >= SYN_TOKEN_SCALE {
                b.tokens = tokens - SYN_TOKEN_SCALE;
                return true;
            }
            b.tokens = tokens;
            return false;
        }
        if cap < SYN_TOKEN_SCALE {
            return false;
        }
        if self.buckets.len() >= self.capacity {
            self.evict(now);
        }
        if self.buckets.len() < self.capacity {
            self.buckets.insert(ip, Bucket { tokens: cap - SYN_TOKEN_SCALE, last: now });
        }
        // Untracked because the table is full of busy sources: pass, as the
        // kernel's LRU would after evicting (it never wrongly drops).
        true
    }

    /// Drops buckets that have refilled completely: they are equivalent to
    /// no bucket at all, so forgetting them changes no decision.
    fn evict(&mut self, now: Instant) {
        let cap = self.cap();
        let rate = u64::from(self.limit.rate_per_sec.min(100_000)).max(1);
        self.buckets.retain(|_, b| {
            let elapsed = now.saturating_duration_since(b.last).as_nanos().min(60_000_000_000) as u64;
            b.tokens + elapsed * rate / 1_000_000 < cap
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill_per_source() {
        let mut b = SourceBuckets::new(SynLimit { rate_per_sec: 2, burst: 3 }, 16);
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(b.take(a, t0) && b.take(a, t0) && b.take(a, t0));
        assert!(!b.take(a, t0), "burst of 3 used up");
        assert!(b.take("192.0.2.2".parse().unwrap(), t0), "other sources have their own bucket");
        assert!(!b.take(a, t0 + Duration::from_millis(400)), "0.8 tokens is not enough");
        assert!(b.take(a, t0 + Duration::from_millis(500)), "refilled to 1 token at 2/s");
        assert!(
            !b.take("::ffff:192.0.2.1".parse().unwrap(), t0 + Duration::from_millis(500)),
            "v4-mapped shares the bucket"
        );
    }

    #[test]
    fn full_table_forgets_refilled_sources_and_never_drops_new_ones() {
        let mut b = SourceBuckets::new(SynLimit { rate_per_sec: 1, burst: 1 }, 2);
        let t0 = Instant::now();
        assert!(b.take("10.0.0.1".parse().unwrap(), t0));
        assert!(b.take("10.0.0.2".parse().unwrap(), t0));
        assert!(b.take("10.0.0.3".parse().unwrap(), t0), "untracked new source passes");
        assert_eq!(b.len(), 2);
        assert!(b.take("10.0.0.4".parse().unwrap(), t0 + Duration::from_secs(2)));
        assert!(b.len() <= 2);
    }
}
