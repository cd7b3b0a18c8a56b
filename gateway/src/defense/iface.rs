//! Which network interface the XDP program goes on when the config names none.
//!
//! - a loopback listen address (127.0.0.0/8, ::1): `lo`;
//! - a specific address: the interface that owns it (getifaddrs);
//! - an unspecified address (0.0.0.0 or ::): the interface of the default
//!   route (IPv4 first, then IPv6), because that is where outside clients
//!   arrive. Other interfaces are then covered only by the accept-time check;
//!   an operator with several uplinks names one with `xdp.interface`.

use std::ffi::CStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IfaceError {
    #[error("no local interface owns {0}; set xdp.interface or listen on an address of this host")]
    NotLocal(IpAddr),
    #[error(
        "listen address is unspecified and this host has no default route to pick an interface from; set xdp.interface"
    )]
    NoDefaultRoute,
    #[error("cannot list interfaces: {0}")]
    Os(String),
}

/// The interface to attach to for a gateway listening on `listen`.
pub fn for_listen_addr(listen: IpAddr) -> Result<String, IfaceError> {
    let listen = super::rules::canonical(listen);
    if listen.is_loopback() {
        return Ok("lo".to_string());
    }
    if listen.is_unspecified() {
        return default_route_v4().or_else(default_route_v6).ok_or(IfaceError::NoDefaultRoute);
    }
    owner_of(listen)?.ok_or(IfaceError::NotLocal(listen))
}

fn owner_of(ip: IpAddr) -> Result<Option<String>, IfaceError> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(IfaceError::Os(std::io::Error::last_os_error().to_string()));
    }
    let mut found = None;
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list returned by getifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points to a sockaddr whose family says its real type.
        let addr = unsafe {
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))))
                }
                libc::AF_INET6 => {
                    let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
                }
                _ => None,
            }
        };
        if addr == Some(ip) {
            // SAFETY: ifa_name is a NUL-terminated string owned by the list.
            found = Some(unsafe { CStr::from_ptr(ifa.ifa_name) }.to_string_lossy().into_owned());
            break;
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(found)
}

/// First interface with a 0.0.0.0/0 route in /proc/net/route.
fn default_route_v4() -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    parse_route_v4(&table)
}

fn parse_route_v4(table: &str) -> Option<String> {
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
        (f.len() > 7 && f[1] == "00000000" && f[7] == "00000000").then(|| f[0].to_string())
    })
}

/// First non-loopback interface with a ::/0 route in /proc/net/ipv6_route.
fn default_route_v6() -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/ipv6_route").ok()?;
    parse_route_v6(&table)
}

fn parse_route_v6(table: &str) -> Option<String> {
    table.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // dest destlen src srclen nexthop metric refcnt use flags iface
        let is_default = f.len() >= 10 && f[0].bytes().all(|b| b == b'0') && f[1] == "00";
        (is_default && f[9] != "lo").then(|| f[9].to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_lo() {
        assert_eq!(for_listen_addr("127.0.0.1".parse().unwrap()).unwrap(), "lo");
        assert_eq!(for_listen_addr("127.3.0.1".parse().unwrap()).unwrap(), "lo");
        assert_eq!(for_listen_addr("::1".parse().unwrap()).unwrap(), "lo");
        assert_eq!(for_listen_addr("::ffff:127.0.0.1".parse().unwrap()).unwrap(), "lo");
    }

    #[test]
    fn default_route_tables() {
        let v4 = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n\
                  eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                  eth1\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(parse_route_v4(v4).as_deref(), Some("eth1"));
        let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003 eth2\n";
        assert_eq!(parse_route_v6(v6).as_deref(), Some("eth2"));
        assert_eq!(parse_route_v4("header\n"), None);
    }

    #[test]
    fn foreign_address_is_not_local() {
        // TEST-NET-3, never configured on a test host.
        let ip: IpAddr = "203.0.113.77".parse().unwrap();
        assert_eq!(for_listen_addr(ip), Err(IfaceError::NotLocal(ip)));
    }
}
