//! Liveness: which logged-in connections have gone silent.
//!
//! A heartbeat only stores the current coarse time into the session's atomic
//! `last_seen` (no lock, no timer). This module keeps an ordered set of
//! *check times*: each session is checked once when its deadline could first
//! have passed, and if it was heard from meanwhile it is simply re-filed at
//! `last_seen + timeout`. So the sweep costs O(expiring) per tick and a busy
//! connection costs one re-file per timeout period, not one per beat.
//!
//! Time is milliseconds on a monotonic clock whose origin the caller owns
//! ([`Clock`]); nothing here reads a clock, so tests drive it by hand.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Monotonic milliseconds since the gateway started.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Clock { origin: Instant::now() }
    }
}

impl Clock {
    pub fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }
}

/// The decision for one session whose check time came due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Silent for longer than the timeout: close it.
    Expired,
    /// Heard from recently: check again at this time.
    RecheckAt(u64),
}

/// Decide about a session last heard from at `last_seen_ms`.
pub fn check(last_seen_ms: u64, now_ms: u64, timeout_ms: u64) -> Liveness {
    let deadline = last_seen_ms.saturating_add(timeout_ms);
    if now_ms >= deadline {
        Liveness::Expired
    } else {
        Liveness::RecheckAt(deadline)
    }
}

/// Check times, ordered. `K` is whatever identifies a session to the caller
/// (the gateway uses a `Weak` handle, so a closed session costs nothing more
/// than being skipped once).
pub struct Wheel<K> {
    due: BTreeMap<u64, Vec<K>>,
    len: usize,
    /// Check times are rounded up to this granularity so entries share buckets.
    resolution_ms: u64,
}

impl<K> Wheel<K> {
    pub fn new(resolution: Duration) -> Wheel<K> {
        Wheel { due: BTreeMap::new(), len: 0, resolution_ms: resolution.as_millis().max(1) as u64 }
    }

    /// File `key` to be checked at (or just after) `at_ms`.
    pub fn schedule(&mut self, at_ms: u64, key: K) {
        let r = self.resolution_ms;
        let bucket = at_ms.div_ceil(r).saturating_mul(r);
        self.due.entry(bucket).or_default().push(key);
        self.len += 1;
    }

    /// Remove and return every key whose check time is `<= now_ms`.
    pub fn pop_due(&mut self, now_ms: u64) -> Vec<K> {
        let mut out = Vec::new();
        while let Some(entry) = self.due.first_entry() {
            if *entry.key() > now_ms {
                break;
            }
            out.extend(entry.remove());
        }
        self.len -= out.len();
        out
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// When the next check is due, to sleep until then.
    pub fn next_due(&self) -> Option<u64> {
        self.due.keys().next().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_is_exact_at_the_deadline() {
        assert_eq!(check(1000, 1999, 1000), Liveness::RecheckAt(2000));
        assert_eq!(check(1000, 2000, 1000), Liveness::Expired);
        assert_eq!(check(1000, 1000, 1000), Liveness::RecheckAt(2000), "clock not moving");
        assert_eq!(check(u64::MAX - 1, 5, 1000), Liveness::RecheckAt(u64::MAX), "no overflow");
    }

    #[test]
    fn pop_due_returns_only_due_entries_in_order() {
        let mut w = Wheel::new(Duration::from_millis(1));
        w.schedule(30, "c");
        w.schedule(10, "a");
        w.schedule(20, "b");
        assert!(w.pop_due(9).is_empty());
        assert_eq!(w.pop_due(20), vec!["a", "b"]);
        assert_eq!(w.len(), 1);
        assert_eq!(w.next_due(), Some(30));
        assert_eq!(w.pop_due(1000), vec!["c"]);
        assert!(w.is_empty());
    }

    #[test]
    fn resolution_rounds_up_never_down() {
        let mut w = Wheel::new(Duration::from_millis(500));
        w.schedule(1001, 1);
        assert!(w.pop_due(1001).is_empty(), "must not fire before its time");
        assert_eq!(w.pop_due(1500), vec![1]);
    }

    /// The loop the gateway runs: beats move `last_seen`, the wheel re-files,
    /// and only the silent session expires.
    #[test]
    fn beating_sessions_survive_and_silent_ones_expire() {
        let timeout = 1000;
        let mut last_seen = [0u64, 0u64]; // session 0 beats, session 1 is silent
        let mut w = Wheel::new(Duration::from_millis(100));
        w.schedule(timeout, 0usize);
        w.schedule(timeout, 1usize);
        let mut expired = Vec::new();
        for now in (0..=5000).step_by(100) {
            last_seen[0] = now; // beats every 100 ms
            for k in w.pop_due(now) {
                match check(last_seen[k], now, timeout) {
                    Liveness::Expired => expired.push((k, now)),
                    Liveness::RecheckAt(t) => w.schedule(t, k),
                }
            }
        }
        assert_eq!(expired, vec![(1, 1000)]);
        assert_eq!(w.len(), 1, "the live session stays filed exactly once");
    }
}
