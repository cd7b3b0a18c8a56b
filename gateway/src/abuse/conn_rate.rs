//! Connection rate per source: the article's "限制建连速度". Over the limit
//! the source is banned for a while and the current connection closed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::window::Window;
use crate::defense::IpNet;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateVerdict {
    Allow,
    /// Over the limit. `first` is true for the first excess connection of the
    /// window, so the caller bans once but refuses every excess connection.
    Exceeded {
        count: u32,
        first: bool,
    },
    /// The tracking table is full of live windows; the source was not counted
    /// (the global cap and the kernel's SYN limiter still apply).
    Untracked,
}

pub struct ConnRate {
    limit: u32,
    window: Duration,
    /// Bounds memory under a spoofed-source flood that completes handshakes.
    max_sources: usize,
    sources: HashMap<IpNet, Window>,
}

impl ConnRate {
    pub fn new(limit: u32, window: Duration, max_sources: usize) -> ConnRate {
        ConnRate { limit, window, max_sources, sources: HashMap::new() }
    }

    /// Count one accepted connection from `src` at `now`.
    pub fn on_connect(&mut self, src: IpNet, now: Instant) -> RateVerdict {
        if !self.sources.contains_key(&src) && self.sources.len() >= self.max_sources {
            self.sweep(now);
            if self.sources.len() >= self.max_sources {
                return RateVerdict::Untracked;
            }
        }
        let n = self.sources.entry(src).or_insert_with(|| Window::new(now)).hit(now, self.window);
        if n > self.limit {
            RateVerdict::Exceeded { count: n, first: n == self.limit.saturating_add(1) }
        } else {
            RateVerdict::Allow
        }
    }

    /// Drop sources whose window is over: they would start from zero anyway.
    pub fn sweep(&mut self, now: Instant) -> usize {
        let before = self.sources.len();
        let len = self.window;
        self.sources.retain(|_, w| !w.ended(now, len));
        before - self.sources.len()
    }

    pub fn tracked(&self) -> usize {
        self.sources.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn exactly_at_threshold_is_allowed_and_one_more_is_not() {
        let t0 = Instant::now();
        let mut r = ConnRate::new(100, Duration::from_secs(1), 16);
        for i in 0..100 {
            assert_eq!(r.on_connect(src("192.0.2.1"), t0), RateVerdict::Allow, "connection {i} is within the limit");
        }
        assert_eq!(r.on_connect(src("192.0.2.1"), t0), RateVerdict::Exceeded { count: 101, first: true });
        assert_eq!(r.on_connect(src("192.0.2.1"), t0), RateVerdict::Exceeded { count: 102, first: false });
        assert_eq!(r.on_connect(src("192.0.2.2"), t0), RateVerdict::Allow, "other sources are unaffected");
    }

    #[test]
    fn window_boundary_resets_the_count() {
        let t0 = Instant::now();
        let w = Duration::from_secs(1);
        let mut r = ConnRate::new(2, w, 16);
        assert_eq!(r.on_connect(src("192.0.2.1"), t0), RateVerdict::Allow);
        assert_eq!(r.on_connect(src("192.0.2.1"), t0 + Duration::from_millis(999)), RateVerdict::Allow);
        assert!(matches!(
            r.on_connect(src("192.0.2.1"), t0 + Duration::from_millis(999)),
            RateVerdict::Exceeded { .. }
        ));
        assert_eq!(r.on_connect(src("192.0.2.1"), t0 + w), RateVerdict::Allow, "a new window starts at t0+1s");
    }

    #[test]
    fn clock_not_moving_never_resets() {
        let t0 = Instant::now();
        let mut r = ConnRate::new(3, Duration::from_secs(1), 16);
        for _ in 0..3 {
            r.on_connect(src("192.0.2.1"), t0);
        }
        assert!(matches!(r.on_connect(src("192.0.2.1"), t0), RateVerdict::Exceeded { first: true, .. }));
        for _ in 0..10 {
            assert!(
                matches!(r.on_connect(src("192.0.2.1"), t0), RateVerdict::Exceeded { first: false, .. }),
                "banned once per window"
            );
        }
    }

    #[test]
    fn table_is_bounded_and_sweeps_ended_windows_first() {
        let t0 = Instant::now();
        let mut r = ConnRate::new(10, Duration::from_secs(1), 2);
        r.on_connect(src("192.0.2.1"), t0);
        r.on_connect(src("192.0.2.2"), t0);
        assert_eq!(r.on_connect(src("192.0.2.3"), t0), RateVerdict::Untracked);
        assert_eq!(r.tracked(), 2);
        assert_eq!(r.on_connect(src("192.0.2.3"), t0 + Duration::from_secs(1)), RateVerdict::Allow);
        assert_eq!(r.tracked(), 1, "ended windows were swept to make room");
    }
}
