//! Kernel-level defense: the XDP program's maps seen from userspace, and the
//! accept-time fallback that applies the same rules when XDP cannot be loaded.
//!
//! OWNED BY THE KERNEL-SIDE WORK. The core only relies on this interface:
//! `Defense::start(&XdpConfig, listen)` never fails (it falls back and says why),
//! `enforcement()` says which mode is active, `is_blocked(ip)` is the accept-time check.

use std::net::{IpAddr, SocketAddr};

use crate::config::XdpConfig;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enforcement {
    /// The XDP program is attached; the kernel drops blacklisted sources.
    Xdp { interface: String, mode: String },
    /// XDP is unavailable; the same list is checked at accept.
    Userspace { reason: String },
}

pub struct Defense {
    enforcement: Enforcement,
    blacklist: std::collections::HashSet<IpAddr>,
}

impl Defense {
    pub fn start(cfg: &XdpConfig, _listen: SocketAddr) -> Defense {
        Defense {
            enforcement: Enforcement::Userspace { reason: "XDP loader not built yet".into() },
            blacklist: cfg.blacklist.iter().copied().collect(),
        }
    }

    pub fn enforcement(&self) -> &Enforcement {
        &self.enforcement
    }

    /// Accept-time check. Cheap; safe to call for every accepted socket.
    pub fn is_blocked(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        self.blacklist.contains(&ip)
    }
}
