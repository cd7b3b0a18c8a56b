//! The XDP program's whole per-frame decision in plain Rust: the reference
//! the kernel program is tested against (random and mutated frames must get
//! the same verdict and reason from both), and a parser that can be fuzzed.
//!
//! Mirrors `gateway-ebpf/src/main.rs` step for step; a change to one is a
//! change to both, and `tests/xdp_test_run.rs` fails until they agree.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use gateway_common::{Counter, MAX_IPV6_EXT_HEADERS};

use super::rules::{Judgement, RuleSet};
use super::syn_limit::SourceBuckets;
use super::xdp::KernelPolicy;

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const IPV4_MIN_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const TCP_MIN_HLEN: usize = 20;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

fn be16(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

/// Frame classifier with the kernel program's state: rules, policy and SYN
/// buckets (only used when `policy.syn_limit` is set).
pub struct Classifier<'a> {
    pub rules: &'a RuleSet,
    pub policy: &'a KernelPolicy,
    pub syn: Option<&'a mut SourceBuckets>,
}

impl Classifier<'_> {
    /// Verdict and reason for one received frame at `now`.
    pub fn classify(&mut self, frame: &[u8], now: Instant) -> Judgement {
        let j = self.classify_inner(frame, now);
        if j.drop && self.policy.monitor {
            let reason = match j.reason {
                Counter::DropBanExact => Counter::MonitorBanExact,
                Counter::DropBanCidr => Counter::MonitorBanCidr,
                Counter::DropSynRate => Counter::MonitorSynRate,
                other => other,
            };
            return Judgement { drop: false, reason };
        }
        j
    }

    fn policy_verdict(drop: bool, reason: Counter) -> Judgement {
        Judgement { drop, reason }
    }

    fn malformed(&self, reason: Counter) -> Judgement {
        Self::policy_verdict(self.policy.drop_malformed, reason)
    }

    fn classify_inner(&mut self, f: &[u8], now: Instant) -> Judgement {
        if f.len() < ETH_HLEN {
            return self.malformed(Counter::MalformedL2);
        }
        let is_vlan = |t: u16| t == 0x8100 || t == 0x88a8;
        let mut ethertype = be16(f, 12);
        let mut off = ETH_HLEN;
        for _ in 0..2 {
            if !is_vlan(ethertype) {
                break;
            }
            if f.len() < off + VLAN_HLEN {
                return self.malformed(Counter::MalformedL2);
            }
            ethertype = be16(f, off + 2);
            off += VLAN_HLEN;
        }
        if is_vlan(ethertype) {
            return self.malformed(Counter::MalformedVlanDepth);
        }
        match ethertype {
            0x0800 => self.ipv4(f, off, now),
            0x86dd => self.ipv6(f, off, now),
            _ => Judgement { drop: false, reason: Counter::PassNonIp },
        }
    }

    /// The source stage: Err(final decision) for an allowlisted or banned
    /// source, else Ok(first monitor-entry reason, if any) to carry on with.
    fn source(&self, ip: IpAddr, now: Instant) -> Result<Option<Counter>, Judgement> {
        let j = self.rules.judge_source(ip, now);
        match j.reason {
            _ if j.drop => Err(j),
            Counter::PassAllowlist => Err(j),
            Counter::PassNoMatch => Ok(None),
            monitor => Ok(Some(monitor)),
        }
    }

    fn ipv4(&mut self, f: &[u8], off: usize, now: Instant) -> Judgement {
        if f.len() < off + IPV4_MIN_HLEN || f[off] >> 4 != 4 {
            return self.malformed(Counter::MalformedIpv4);
        }
        let ihl = usize::from(f[off] & 0x0f) * 4;
        if ihl < IPV4_MIN_HLEN || f.len() < off + ihl {
            return self.malformed(Counter::MalformedIpv4);
        }
        let src = Ipv4Addr::new(f[off + 12], f[off + 13], f[off + 14], f[off + 15]);
        let non_first_fragment = be16(f, off + 6) & 0x1fff != 0;
        let proto = f[off + 9];
        let monitor = match self.source(IpAddr::V4(src), now) {
            Ok(m) => m,
            Err(j) => return j,
        };
        if non_first_fragment {
            return Self::policy_verdict(self.policy.drop_fragments, Counter::Fragment);
        }
        self.finish(f, proto, off + ihl, IpAddr::V4(src), monitor, now)
    }

    fn ipv6(&mut self, f: &[u8], off: usize, now: Instant) -> Judgement {
        if f.len() < off + IPV6_HLEN || f[off] >> 4 != 6 {
            return self.malformed(Counter::MalformedIpv6);
        }
        let mut src = [0u8; 16];
        src.copy_from_slice(&f[off + 8..off + 24]);
        let src = Ipv6Addr::from(src);
        // judge() canonicalises ::ffff:a.b.c.d to the IPv4 address.
        let monitor = match self.source(IpAddr::V6(src), now) {
            Ok(m) => m,
            Err(j) => return j,
        };
        let mut next = f[off + 6];
        let mut l4 = off + IPV6_HLEN;
        for n in 0..=MAX_IPV6_EXT_HEADERS {
            let is_ext = matches!(next, 0 | 43 | 60 | 51 | 44);
            if is_ext && n == MAX_IPV6_EXT_HEADERS {
                break;
            }
            match next {
                0 | 43 | 60 => {
                    if f.len() < l4 + 2 {
                        return self.malformed(Counter::MalformedIpv6);
                    }
                    next = f[l4];
                    l4 += (usize::from(f[l4 + 1]) + 1) * 8;
                }
                51 => {
                    if f.len() < l4 + 2 {
                        return self.malformed(Counter::MalformedIpv6);
                    }
                    next = f[l4];
                    l4 += (usize::from(f[l4 + 1]) + 2) * 4;
                }
                44 => {
                    if f.len() < l4 + 8 {
                        return self.malformed(Counter::MalformedIpv6);
                    }
                    if be16(f, l4 + 2) & 0xfff8 != 0 {
                        return Self::policy_verdict(self.policy.drop_fragments, Counter::Fragment);
                    }
                    next = f[l4];
                    l4 += 8;
                }
                _ => return self.finish(f, next, l4, IpAddr::V6(src), monitor, now),
            }
        }
        self.malformed(Counter::MalformedIpv6ExtChain)
    }

    fn finish(
        &mut self,
        f: &[u8],
        proto: u8,
        l4: usize,
        src: IpAddr,
        monitor: Option<Counter>,
        now: Instant,
    ) -> Judgement {
        let default = Judgement { drop: false, reason: monitor.unwrap_or(Counter::PassNoMatch) };
        if proto != 6 || self.policy.syn_limit.is_none() {
            return default;
        }
        if f.len() < l4 + TCP_MIN_HLEN {
            return self.malformed(Counter::MalformedTcp);
        }
        let flags = f[l4 + 13];
        if flags & (TCP_SYN | TCP_ACK | TCP_RST) != TCP_SYN {
            return default;
        }
        let dport = be16(f, l4 + 2);
        if !self.policy.listen_ports.contains(&dport) {
            return default;
        }
        let allowed = match self.syn.as_deref_mut() {
            Some(b) => b.take(src, now),
            None => true,
        };
        if allowed {
            default
        } else {
            Judgement { drop: true, reason: Counter::DropSynRate }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::defense::rules::{IpNet, Rule};

    fn frame_v4(src: [u8; 4], proto: u8) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[12] = 0x08;
        f[14] = 0x45;
        f[14 + 9] = proto;
        f[14 + 12..14 + 16].copy_from_slice(&src);
        f
    }

    #[test]
    fn classifies_like_the_kernel_on_basics() {
        let mut rules = RuleSet::default();
        rules.insert(Rule::ban(IpNet::host("192.0.2.1".parse().unwrap())));
        let policy = KernelPolicy::for_port(443);
        let mut c = Classifier { rules: &rules, policy: &policy, syn: None };
        let now = Instant::now();
        assert_eq!(
            c.classify(&frame_v4([192, 0, 2, 1], 6), now),
            Judgement { drop: true, reason: Counter::DropBanExact }
        );
        assert_eq!(c.classify(&frame_v4([192, 0, 2, 2], 6), now).reason, Counter::PassNoMatch);
        assert_eq!(c.classify(&frame_v4([192, 0, 2, 2], 6)[..20], now).reason, Counter::MalformedIpv4);
        assert_eq!(c.classify(&[0u8; 10], now).reason, Counter::MalformedL2);
    }
}
