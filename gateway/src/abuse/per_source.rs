//! Concurrent connections per source, and how many of them have not logged
//! in yet. Unauthenticated sockets cost a TLS handshake and a read buffer
//! while proving nothing, so they get the tighter limit.

use std::collections::HashMap;

use crate::defense::IpNet;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Ok,
    TooManyOpen,
    TooManyPrelogin,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    open: u32,
    prelogin: u32,
}

/// Bounded by construction: a source has an entry only while it has an open
/// connection, so the map never outgrows `listen.max_connections`.
#[derive(Debug)]
pub struct PerSource {
    max_open: u32,
    max_prelogin: u32,
    by_source: HashMap<IpNet, Counts>,
}

impl PerSource {
    pub fn new(max_open: u32, max_prelogin: u32) -> PerSource {
        PerSource { max_open, max_prelogin, by_source: HashMap::new() }
    }

    /// A new (pre-login) connection from `src`; counted only when `Ok`.
    pub fn try_open(&mut self, src: IpNet) -> Admission {
        let c = self.by_source.get(&src).copied().unwrap_or_default();
        if c.open >= self.max_open {
            return Admission::TooManyOpen;
        }
        if c.prelogin >= self.max_prelogin {
            return Admission::TooManyPrelogin;
        }
        let e = self.by_source.entry(src).or_default();
        e.open += 1;
        e.prelogin += 1;
        Admission::Ok
    }

    pub fn logged_in(&mut self, src: IpNet) {
        if let Some(c) = self.by_source.get_mut(&src) {
            c.prelogin = c.prelogin.saturating_sub(1);
        }
    }

    pub fn closed(&mut self, src: IpNet, was_prelogin: bool) {
        let Some(c) = self.by_source.get_mut(&src) else { return };
        c.open = c.open.saturating_sub(1);
        if was_prelogin {
            c.prelogin = c.prelogin.saturating_sub(1);
        }
        if c.open == 0 {
            self.by_source.remove(&src);
        }
    }

    pub fn open(&self, src: IpNet) -> u32 {
        self.by_source.get(&src).map_or(0, |c| c.open)
    }

    pub fn sources(&self) -> usize {
        self.by_source.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn open_limit_exactly_at_threshold() {
        let mut p = PerSource::new(2, 10);
        let a = src("192.0.2.1");
        assert_eq!(p.try_open(a), Admission::Ok);
        p.logged_in(a);
        assert_eq!(p.try_open(a), Admission::Ok);
        p.logged_in(a);
        assert_eq!(p.try_open(a), Admission::TooManyOpen);
        assert_eq!(p.try_open(src("192.0.2.2")), Admission::Ok, "other sources are unaffected");
        p.closed(a, false);
        assert_eq!(p.try_open(a), Admission::Ok, "a closed connection frees its slot");
    }

    #[test]
    fn prelogin_limit_is_separate_and_released_by_login() {
        let mut p = PerSource::new(10, 1);
        let a = src("192.0.2.1");
        assert_eq!(p.try_open(a), Admission::Ok);
        assert_eq!(p.try_open(a), Admission::TooManyPrelogin);
        p.logged_in(a);
        assert_eq!(p.try_open(a), Admission::Ok);
        assert_eq!(p.open(a), 2);
    }

    #[test]
    fn entries_vanish_at_zero() {
        let mut p = PerSource::new(10, 10);
        let a = src("2001:db8::/64");
        p.try_open(a);
        p.closed(a, true);
        assert_eq!(p.sources(), 0);
        p.closed(a, true); // a double close must not underflow or panic
        assert_eq!(p.open(a), 0);
    }
}
