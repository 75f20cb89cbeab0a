//! Which address a connection comes from, for the per-IP limits: the TCP
//! peer, unless that peer is a trusted proxy (`--trusted-proxy CIDR`); then
//! the right-most address in `X-Forwarded-For` that is not itself a trusted
//! proxy. Each proxy appends the address it received the request from, so
//! everything left of that one was written by the client and proves nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An address block, `ADDR/PREFIX` (a bare address is a block of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not an address block like 10.0.0.0/8, 192.0.2.1 or fd00::/8")]
pub struct BadCidr(String);

impl FromStr for Cidr {
    type Err = BadCidr;

    fn from_str(s: &str) -> Result<Cidr, BadCidr> {
        let bad = || BadCidr(s.to_string());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net = canonical(addr.parse::<IpAddr>().map_err(|_| bad())?);
        let bits = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(bad)?,
        };
        Ok(Cidr {
            net: mask(net, prefix),
            prefix,
        })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_ipv4() == self.net.is_ipv4() && mask(ip, self.prefix) == self.net
    }
}

/// An IPv4 address written as IPv6 (`::ffff:a.b.c.d`, as a dual-stack
/// listener reports it) is the IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// The first `prefix` bits of `ip`.
pub fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & m))
        }
        IpAddr::V6(v6) => {
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & m))
        }
    }
}

/// Whether the TCP peer is a proxy whose `X-Forwarded-For` is believed.
pub fn is_trusted(ip: IpAddr, trusted: &[Cidr]) -> bool {
    trusted.iter().any(|c| c.contains(ip))
}

/// The client's address. `forwarded_for` holds the values of every
/// `X-Forwarded-For` header in order; they are read only when `peer` is
/// trusted. Walking from the right, trusted proxies are skipped and the
/// first other address is the client. An entry that is not an address
/// stops the walk at the nearest trusted hop (a trusted proxy wrote
/// nonsense: the client is not known better than that).
pub fn client_ip(peer: IpAddr, forwarded_for: &[&str], trusted: &[Cidr]) -> IpAddr {
    let peer = canonical(peer);
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let mut client = peer;
    for entry in forwarded_for.iter().rev().flat_map(|v| v.rsplit(',')) {
        let Some(ip) = parse_entry(entry) else {
            return client;
        };
        client = ip;
        if !is_trusted(ip, trusted) {
            return ip;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, `a.b.c.d:port` or
/// `[v6]:port` (some proxies add the port), optionally quoted.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let e = entry.trim().trim_matches('"');
    if let Ok(ip) = e.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Some(rest) = e.strip_prefix('[') {
        let (v6, _port) = rest.split_once(']')?;
        return v6
            .parse::<Ipv6Addr>()
            .ok()
            .map(|v| canonical(IpAddr::V6(v)));
    }
    let (v4, port) = e.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    v4.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    #[test]
    fn blocks_parse_and_contain() {
        let c: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains(ip("10.255.0.1")) && !c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.0.0.1")), "v4-mapped");
        let one: Cidr = "192.0.2.1".parse().unwrap();
        assert!(one.contains(ip("192.0.2.1")) && !one.contains(ip("192.0.2.2")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fdab::1")) && !v6.contains(ip("fe80::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")));
        for bad in ["", "10.0.0.0/33", "::/129", "10.0.0/8", "x/8", "10.0.0.0/"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_only_from_a_trusted_peer_right_most_untrusted() {
        let trusted = cidrs(&["127.0.0.0/8", "10.0.0.0/8"]);
        let t = &trusted[..];
        // Not trusted: the header is ignored.
        assert_eq!(
            client_ip(ip("192.0.2.7"), &["198.51.100.1"], t),
            ip("192.0.2.7")
        );
        // Trusted: the right-most untrusted, whatever the client wrote left of it.
        assert_eq!(
            client_ip(ip("127.0.0.1"), &["6.6.6.6, 198.51.100.1, 10.0.0.5"], t),
            ip("198.51.100.1")
        );
        // Several headers are one list, in order.
        assert_eq!(
            client_ip(
                ip("127.0.0.1"),
                &["6.6.6.6", "198.51.100.2:4711", "10.0.0.5"],
                t
            ),
            ip("198.51.100.2")
        );
        assert_eq!(
            client_ip(ip("127.0.0.1"), &["[2001:db8::1]:443"], t),
            ip("2001:db8::1")
        );
        // No header: the proxy itself.
        assert_eq!(client_ip(ip("127.0.0.1"), &[], t), ip("127.0.0.1"));
        // Garbage right of any untrusted entry: the nearest trusted hop.
        assert_eq!(
            client_ip(ip("127.0.0.1"), &["198.51.100.1, unknown, 10.0.0.5"], t),
            ip("10.0.0.5")
        );
        // All trusted: the left-most.
        assert_eq!(
            client_ip(ip("127.0.0.1"), &["10.0.0.9, 10.0.0.5"], t),
            ip("10.0.0.9")
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        /// Whatever the header says, the answer is the peer, an address in
        /// the header, and never an untrusted address the peer did not vouch
        /// for by a trusted chain.
        #[test]
        fn client_ip_never_panics_and_stays_in_the_header(
            header in proptest::collection::vec("[0-9a-f.:\\[\\], \"]{0,40}", 0..4),
            peer in any::<[u8; 4]>(),
            trusted_peer in any::<bool>(),
        ) {
            let peer = IpAddr::V4(Ipv4Addr::from(peer));
            let trusted = if trusted_peer { vec![Cidr { net: peer, prefix: 32 }] } else { vec![] };
            let values: Vec<&str> = header.iter().map(String::as_str).collect();
            let got = client_ip(peer, &values, &trusted);
            if !trusted_peer {
                prop_assert_eq!(got, peer);
            } else if got != peer {
                let listed = values
                    .iter()
                    .flat_map(|v| v.split(','))
                    .any(|e| parse_entry(e) == Some(got));
                prop_assert!(listed, "{got} not in {values:?}");
            }
        }

        #[test]
        fn a_block_contains_exactly_its_prefix(addr in any::<u32>(), other in any::<u32>(), prefix in 0u8..=32) {
            let c = Cidr::from_str(&format!("{}/{prefix}", Ipv4Addr::from(addr))).unwrap();
            prop_assert!(c.contains(IpAddr::V4(Ipv4Addr::from(addr))));
            let shift = 32 - u32::from(prefix);
            let same = addr.checked_shr(shift).unwrap_or(0) == other.checked_shr(shift).unwrap_or(0);
            prop_assert_eq!(c.contains(IpAddr::V4(Ipv4Addr::from(other))), same);
        }
    }
}
