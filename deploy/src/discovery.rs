//! DNS as a client sees it, through hickory-resolver: the resolver `afreg doctor` and the
//! cluster use, and peer discovery through the SRV records that `afreg dns render` publishes:
//! `_registry._tcp.<zone>` (the registry of each region) and `_afreg-internal._tcp.<zone>`
//! (each region's internal endpoint, how a new cluster's regions find each other).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;

/// Where queries go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameServer {
    /// The system's resolver configuration (`/etc/resolv.conf`).
    System,
    /// One server, over UDP with TCP fallback.
    At(SocketAddr),
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("resolver configuration: {0}")]
    Config(NetError),
    #[error("{name}: no such name (NXDOMAIN)")]
    NoSuchName { name: String },
    #[error("{name}: no {kind} records")]
    NoRecords { name: String, kind: &'static str },
    #[error("{name}: {source}")]
    Lookup { name: String, source: NetError },
}

/// A resolver that does not cache answers (every lookup asks the server, so failovers are
/// seen as soon as DNS makes them), with a 2 s timeout and 2 attempts per query.
/// `bind` sets the source address of queries to an explicit server (tests use it to look
/// like clients from different places).
pub fn resolver(ns: NameServer, bind: Option<IpAddr>) -> Result<TokioResolver, DiscoveryError> {
    let mut builder = match ns {
        NameServer::System => TokioResolver::builder_tokio().map_err(DiscoveryError::Config)?,
        NameServer::At(addr) => {
            let conn = |mut c: ConnectionConfig| {
                c.port = addr.port();
                c.bind_addr = bind.map(|ip| SocketAddr::new(ip, 0));
                c
            };
            let server = NameServerConfig::new(
                addr.ip(),
                true,
                vec![conn(ConnectionConfig::udp()), conn(ConnectionConfig::tcp())],
            );
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], vec![server]),
                TokioRuntimeProvider::default(),
            )
        }
    };
    let o = builder.options_mut();
    o.cache_size = 0;
    o.positive_max_ttl = Some(Duration::ZERO);
    o.negative_max_ttl = Some(Duration::ZERO);
    o.timeout = Duration::from_secs(2);
    o.attempts = 2;
    builder.build().map_err(DiscoveryError::Config)
}

/// What a name resolved to: the addresses, and the names followed on the way (CNAMEs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub addresses: Vec<IpAddr>,
    pub cnames: Vec<String>,
}

/// Resolves `host` (absolute; a trailing dot is added) to its addresses, as a client would.
pub async fn lookup(resolver: &TokioResolver, host: &str) -> Result<Resolved, DiscoveryError> {
    let name = fqdn(host);
    let answer = resolver.lookup_ip(name.as_str()).await.map_err(|e| classify(&name, e, "address"))?;
    let addresses: Vec<IpAddr> = answer.iter().collect();
    let cnames = answer
        .as_lookup()
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::CNAME(c) => Some(c.0.to_string().trim_end_matches('.').to_string()),
            _ => None,
        })
        .collect();
    if addresses.is_empty() {
        return Err(DiscoveryError::NoRecords { name, kind: "address" });
    }
    Ok(Resolved { addresses, cnames })
}

/// A peer region's registry endpoint, from an SRV record.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Peer {
    /// The regional host name (no trailing dot).
    pub host: String,
    pub port: u16,
}

/// The name of the SRV record set listing the regions of `zone`.
pub fn srv_name(zone: &str) -> String {
    format!("_registry._tcp.{}", zone.trim_end_matches('.'))
}

/// The name of the SRV record set listing the regions' internal endpoints.
pub fn internal_srv_name(zone: &str) -> String {
    format!("_afreg-internal._tcp.{}", zone.trim_end_matches('.'))
}

/// Every region of the cluster, from `_registry._tcp.<zone>`: ordered by SRV priority, then
/// heavier weight first, then host name; duplicates removed. Targets are not resolved (connect
/// to `host:port`; the host name is health-checked DNS of its own).
pub async fn discover_peers(resolver: &TokioResolver, zone: &str) -> Result<Vec<Peer>, DiscoveryError> {
    discover(resolver, &srv_name(zone)).await
}

/// Every region's internal endpoint, from `_afreg-internal._tcp.<zone>` (same ordering).
pub async fn discover_internal(resolver: &TokioResolver, zone: &str) -> Result<Vec<Peer>, DiscoveryError> {
    discover(resolver, &internal_srv_name(zone)).await
}

async fn discover(resolver: &TokioResolver, srv: &str) -> Result<Vec<Peer>, DiscoveryError> {
    let name = fqdn(srv);
    let answer = resolver.srv_lookup(name.as_str()).await.map_err(|e| classify(&name, e, "SRV"))?;
    let mut found: Vec<(u16, std::cmp::Reverse<u16>, Peer)> = answer
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) if !srv.target.is_root() => Some((
                srv.priority,
                std::cmp::Reverse(srv.weight),
                Peer { host: srv.target.to_string().trim_end_matches('.').to_ascii_lowercase(), port: srv.port },
            )),
            _ => None,
        })
        .collect();
    found.sort();
    let mut peers: Vec<Peer> = vec![];
    for (_, _, p) in found {
        if !peers.contains(&p) {
            peers.push(p);
        }
    }
    if peers.is_empty() {
        return Err(DiscoveryError::NoRecords { name, kind: "SRV" });
    }
    Ok(peers)
}

fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

fn classify(name: &str, e: NetError, kind: &'static str) -> DiscoveryError {
    if e.is_nx_domain() {
        DiscoveryError::NoSuchName { name: name.to_string() }
    } else if e.is_no_records_found() {
        DiscoveryError::NoRecords { name: name.to_string(), kind }
    } else {
        DiscoveryError::Lookup { name: name.to_string(), source: e }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn srv_name_is_under_the_zone() {
        assert_eq!(srv_name("alternatefutures.ai."), "_registry._tcp.alternatefutures.ai");
        assert_eq!(fqdn("registry.example.test"), "registry.example.test.");
    }
}
