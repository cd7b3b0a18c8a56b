//! The fixed-window counter the design article describes ("startTime" plus a
//! count that is reset once a period has passed), as plain data.

use std::time::{Duration, Instant};

/// Counts events since `start`; the first event at or after `start + len`
/// opens a new window starting at that event.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    start: Instant,
    count: u32,
}

impl Window {
    pub fn new(now: Instant) -> Window {
        Window { start: now, count: 0 }
    }

    /// Counts one event at `now` and returns the count in the current window,
    /// this event included.
    pub fn hit(&mut self, now: Instant, len: Duration) -> u32 {
        self.roll(now, len);
        self.count = self.count.saturating_add(1);
        self.count
    }

    /// Starts a new window if the current one is over. Returns how many whole
    /// windows passed (0 while still inside the current one).
    pub fn roll(&mut self, now: Instant, len: Duration) -> u32 {
        // saturating: an `Instant` never goes back, but a caller passing an
        // older `now` (a test, a stale timestamp) must not panic.
        let elapsed = now.saturating_duration_since(self.start);
        if elapsed < len {
            return 0;
        }
        let windows = (elapsed.as_nanos() / len.as_nanos().max(1)).min(u128::from(u32::MAX)) as u32;
        self.start = now;
        self.count = 0;
        windows
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    /// True when the window that started at `start` is over at `now`.
    pub fn ended(&self, now: Instant, len: Duration) -> bool {
        now.saturating_duration_since(self.start) >= len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundary_starts_a_new_window_exactly_at_len() {
        let t0 = Instant::now();
        let len = Duration::from_secs(1);
        let mut w = Window::new(t0);
        assert_eq!(w.hit(t0, len), 1);
        assert_eq!(w.hit(t0 + Duration::from_millis(999), len), 2);
        assert_eq!(w.hit(t0 + len, len), 1, "an event exactly at start+len belongs to the next window");
    }

    #[test]
    fn clock_not_moving_keeps_counting() {
        let t0 = Instant::now();
        let mut w = Window::new(t0);
        for i in 1..=1000 {
            assert_eq!(w.hit(t0, Duration::from_secs(1)), i);
        }
    }

    #[test]
    fn stale_now_does_not_panic_or_reset() {
        let t0 = Instant::now() + Duration::from_secs(5);
        let mut w = Window::new(t0);
        w.hit(t0, Duration::from_secs(1));
        assert_eq!(w.hit(t0 - Duration::from_secs(3), Duration::from_secs(1)), 2);
    }

    #[test]
    fn roll_reports_whole_windows_passed() {
        let t0 = Instant::now();
        let mut w = Window::new(t0);
        assert_eq!(w.roll(t0 + Duration::from_millis(3500), Duration::from_secs(1)), 3);
    }
}
