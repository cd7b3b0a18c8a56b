//! Packet rate per connection: the article's "限制发包速度". Every inbound
//! frame counts, heartbeats included (a heartbeat flood costs us the same).

use std::time::{Duration, Instant};

use super::window::Window;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketLimits {
    pub per_window: u32,
    pub window: Duration,
    /// Windows with excess frames tolerated before the connection is closed.
    pub max_strikes: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameVerdict {
    Pass,
    /// Drop the frame. `notify` is set for the first excess frame of a window
    /// only: answering every dropped frame with an ERROR would let a flood
    /// make us write as fast as it reads.
    Drop {
        notify: bool,
    },
    /// Strikes exhausted: close the connection.
    Disconnect,
}

/// One connection's counter; lives in the connection task, so no lock.
#[derive(Debug, Clone)]
pub struct PacketRate {
    limits: PacketLimits,
    window: Window,
    /// This window already exceeded (and took a strike).
    struck: bool,
    strikes: u32,
}

impl PacketRate {
    pub fn new(limits: PacketLimits, now: Instant) -> PacketRate {
        PacketRate { limits, window: Window::new(now), struck: false, strikes: 0 }
    }

    pub fn on_frame(&mut self, now: Instant) -> FrameVerdict {
        let passed = self.window.roll(now, self.limits.window);
        if passed > 0 {
            // Every clean window forgives one strike, so a client that burst
            // once long ago is not one burst away from disconnection.
            let clean = passed - u32::from(self.struck);
            self.strikes = self.strikes.saturating_sub(clean);
            self.struck = false;
        }
        let n = self.window.hit(now, self.limits.window);
        if n <= self.limits.per_window {
            return FrameVerdict::Pass;
        }
        if self.struck {
            return FrameVerdict::Drop { notify: false };
        }
        self.struck = true;
        self.strikes += 1;
        if self.strikes >= self.limits.max_strikes {
            FrameVerdict::Disconnect
        } else {
            FrameVerdict::Drop { notify: true }
        }
    }

    pub fn strikes(&self) -> u32 {
        self.strikes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn limits(per_window: u32, max_strikes: u32) -> PacketLimits {
        PacketLimits { per_window, window: S, max_strikes }
    }

    #[test]
    fn exactly_at_threshold_passes_then_drops_with_one_notice() {
        let t0 = Instant::now();
        let mut p = PacketRate::new(limits(100, 3), t0);
        for i in 0..100 {
            assert_eq!(p.on_frame(t0), FrameVerdict::Pass, "frame {i} is within the limit");
        }
        assert_eq!(p.on_frame(t0), FrameVerdict::Drop { notify: true });
        assert_eq!(p.on_frame(t0), FrameVerdict::Drop { notify: false });
        assert_eq!(p.strikes(), 1);
    }

    #[test]
    fn window_boundary_restores_the_budget() {
        let t0 = Instant::now();
        let mut p = PacketRate::new(limits(1, 3), t0);
        assert_eq!(p.on_frame(t0), FrameVerdict::Pass);
        assert_eq!(p.on_frame(t0 + Duration::from_millis(999)), FrameVerdict::Drop { notify: true });
        assert_eq!(p.on_frame(t0 + S), FrameVerdict::Pass);
    }

    #[test]
    fn keeps_exceeding_means_disconnect_after_n_strikes() {
        let t0 = Instant::now();
        let mut p = PacketRate::new(limits(1, 3), t0);
        for w in 0..3u32 {
            let t = t0 + S * w;
            assert_eq!(p.on_frame(t), FrameVerdict::Pass);
            let v = p.on_frame(t);
            if w < 2 {
                assert_eq!(v, FrameVerdict::Drop { notify: true }, "window {w}");
            } else {
                assert_eq!(v, FrameVerdict::Disconnect, "third struck window disconnects");
            }
        }
    }

    #[test]
    fn clean_windows_forgive_strikes() {
        let t0 = Instant::now();
        let mut p = PacketRate::new(limits(1, 3), t0);
        p.on_frame(t0);
        p.on_frame(t0);
        p.on_frame(t0 + S);
        p.on_frame(t0 + S);
        assert_eq!(p.strikes(), 2);
        // Three seconds of silence: the struck window plus two clean ones.
        assert_eq!(p.on_frame(t0 + S * 4), FrameVerdict::Pass);
        assert_eq!(p.strikes(), 0);
    }

    #[test]
    fn clock_not_moving_drops_silently_after_the_first_notice() {
        let t0 = Instant::now();
        let mut p = PacketRate::new(limits(2, 2), t0);
        p.on_frame(t0);
        p.on_frame(t0);
        assert_eq!(p.on_frame(t0), FrameVerdict::Drop { notify: true });
        for _ in 0..1000 {
            assert_eq!(p.on_frame(t0), FrameVerdict::Drop { notify: false });
        }
        assert_eq!(p.strikes(), 1, "one window, one strike, however many frames");
    }
}
