//! Who a request comes from, for every per-client limit (connections, request rates, logins),
//! in one place so that the limits agree:
//! - the client's address is the TCP peer's, unless the peer is one of
//!   `server.trusted_proxies`: then the right-most address of `X-Forwarded-For` that is not
//!   itself a trusted proxy. A peer not listed cannot name another address;
//! - the limits key an IPv4 client on its address, and an IPv6 client on its first
//!   `server.ipv6_client_prefix` bits (a /64 by default): a subscriber is given a whole /64, and
//!   keying on the exact address would hand it a fresh bucket per address. IPv4-mapped IPv6
//!   addresses count as the IPv4 address they carry.
//!
//! Clients behind one NAT share one address, and so share its limits: the defaults are set for
//! a CI fleet behind one address (see `http::limits` and `auth::login`).

use std::net::{IpAddr, Ipv6Addr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// A client as the limits see it: an IPv4 address, or an IPv6 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey {
    network: IpAddr,
    bits: u8,
}

impl std::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.network {
            IpAddr::V4(a) => write!(f, "{a}"),
            IpAddr::V6(a) => write!(f, "{a}/{}", self.bits),
        }
    }
}

/// How a node tells its clients apart (`server.ipv6_client_prefix`, `server.trusted_proxies`).
#[derive(Debug, Clone)]
pub struct ClientAddresses {
    ipv6_prefix: u8,
    trusted: Vec<IpNet>,
}

impl Default for ClientAddresses {
    fn default() -> Self {
        ClientAddresses::new(&afreg_config::ServerConfig::default())
    }
}

impl ClientAddresses {
    pub fn new(cfg: &afreg_config::ServerConfig) -> ClientAddresses {
        ClientAddresses { ipv6_prefix: cfg.ipv6_client_prefix.clamp(1, 128), trusted: cfg.trusted_proxies.clone() }
    }

    /// Whether `peer` is a trusted proxy (its connections are many clients').
    pub fn is_trusted_proxy(&self, peer: IpAddr) -> bool {
        let peer = unmapped(peer);
        self.trusted.iter().any(|n| n.contains(&peer))
    }

    /// The client's address: `peer`, or, from a trusted proxy, the right-most address of
    /// `X-Forwarded-For` (over every such header, in order) that is not a trusted proxy. A
    /// header that cannot be read leaves the peer's address.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.is_trusted_proxy(peer) {
            return unmapped(peer);
        }
        let mut hops = vec![];
        for value in headers.get_all("x-forwarded-for") {
            let Ok(text) = value.to_str() else { return unmapped(peer) };
            for hop in text.split(',') {
                match hop.trim().parse::<IpAddr>() {
                    Ok(ip) => hops.push(unmapped(ip)),
                    Err(_) => return unmapped(peer),
                }
            }
        }
        hops.into_iter().rev().find(|ip| !self.is_trusted_proxy(*ip)).unwrap_or(unmapped(peer))
    }

    /// The key of the limits for a client at `ip`.
    pub fn key(&self, ip: IpAddr) -> ClientKey {
        match unmapped(ip) {
            v4 @ IpAddr::V4(_) => ClientKey { network: v4, bits: 32 },
            IpAddr::V6(a) => {
                let bits = self.ipv6_prefix;
                let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
                ClientKey { network: IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask)), bits }
            }
        }
    }
}

fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses(prefix: u8, trusted: &[&str]) -> ClientAddresses {
        ClientAddresses::new(&afreg_config::ServerConfig {
            ipv6_client_prefix: prefix,
            trusted_proxies: trusted.iter().map(|t| t.parse().unwrap()).collect(),
            ..Default::default()
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_ipv6_client_is_its_prefix_and_an_ipv4_one_its_address() {
        let a = addresses(64, &[]);
        assert_eq!(a.key(ip("2001:db8:1:2::1")), a.key(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")));
        assert_ne!(a.key(ip("2001:db8:1:2::1")), a.key(ip("2001:db8:1:3::1")));
        assert_eq!(a.key(ip("2001:db8:1:2::1")).to_string(), "2001:db8:1:2::/64");
        assert_ne!(a.key(ip("10.0.0.1")), a.key(ip("10.0.0.2")));
        assert_eq!(a.key(ip("::ffff:10.0.0.1")), a.key(ip("10.0.0.1")));
        assert_eq!(a.key(ip("10.0.0.1")).to_string(), "10.0.0.1");
        let exact = addresses(128, &[]);
        assert_ne!(exact.key(ip("2001:db8::1")), exact.key(ip("2001:db8::2")));
        let wide = addresses(48, &[]);
        assert_eq!(wide.key(ip("2001:db8:1:2::1")), wide.key(ip("2001:db8:1:9::1")));
    }

    #[test]
    fn forwarded_for_is_read_only_from_a_trusted_proxy() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.7, 10.0.0.5".parse().unwrap());
        let none = addresses(64, &[]);
        assert_eq!(none.client_ip(ip("10.0.0.9"), &h), ip("10.0.0.9"), "no proxy is trusted by default");
        let proxies = addresses(64, &["10.0.0.0/24"]);
        // The right-most hop that is not a trusted proxy: 10.0.0.5 is one, so the client is
        // 203.0.113.7 (anything left of it the client could have written itself).
        assert_eq!(proxies.client_ip(ip("10.0.0.9"), &h), ip("203.0.113.7"));
        assert_eq!(proxies.client_ip(ip("192.0.2.1"), &h), ip("192.0.2.1"), "a peer not listed names no one");
        h.insert("x-forwarded-for", "junk".parse().unwrap());
        assert_eq!(proxies.client_ip(ip("10.0.0.9"), &h), ip("10.0.0.9"));
        assert!(proxies.is_trusted_proxy(ip("::ffff:10.0.0.3")));
    }
}
