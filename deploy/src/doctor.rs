//! `afreg doctor`: checks the deployed regions the way a client meets them. It resolves the
//! global name and every regional name (system resolver, or one given name server), then for
//! every address DNS answers asks `GET /v2/` (200, or 401 with a Bearer challenge) and
//! `GET /readyz` (200), and reads the `_registry._tcp` SRV records peers discover each other
//! through. Every finding is a line of the report; any problem makes the command fail.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::discovery::{self, NameServer, Peer};
use crate::regions::{Endpoint, RegionFile};

pub struct DoctorOptions {
    pub regions: Vec<RegionFile>,
    pub nameserver: NameServer,
    /// The zone whose `_registry._tcp` SRV records to check.
    pub zone: String,
    /// Expected address of each region (optional): a regional name must answer it.
    pub addresses: BTreeMap<String, IpAddr>,
}

/// The zone of a global name: everything after its first label.
pub fn default_zone(global: &str) -> String {
    let g = global.trim_end_matches('.');
    g.split_once('.').map(|(_, z)| z.to_string()).unwrap_or_else(|| g.to_string())
}

#[derive(Debug, Default)]
pub struct Report {
    pub lines: Vec<String>,
    pub problems: usize,
}

impl Report {
    fn ok(&mut self, s: String) {
        self.lines.push(format!("  ok       {s}"));
    }
    fn problem(&mut self, s: String) {
        self.problems += 1;
        self.lines.push(format!("  PROBLEM  {s}"));
    }
    fn heading(&mut self, s: String) {
        self.lines.push(s);
    }
}

/// Runs every check; never fails itself (a failure is a problem in the report).
pub async fn run(opts: &DoctorOptions) -> Report {
    let mut rep = Report::default();
    let Some(first) = opts.regions.first() else {
        rep.problem("no regions".into());
        return rep;
    };
    rep.heading(match opts.nameserver {
        NameServer::System => "resolver: the system's (/etc/resolv.conf)".into(),
        NameServer::At(a) => format!("resolver: {a}"),
    });
    let resolver = match discovery::resolver(opts.nameserver, None) {
        Ok(r) => r,
        Err(e) => {
            rep.problem(format!("{e}"));
            return rep;
        }
    };

    // The global name: whichever region it routes this client to.
    let global = first.hostnames.global.trim_end_matches('.').to_ascii_lowercase();
    rep.heading(format!("{global} (global)"));
    match discovery::lookup(&resolver, &global).await {
        Err(e) => rep.problem(format!("{e}")),
        Ok(res) => {
            let via = res.cnames.last().cloned();
            let region = via
                .as_ref()
                .and_then(|c| opts.regions.iter().find(|r| r.hostnames.regional.eq_ignore_ascii_case(c)))
                .or_else(|| opts.regions.iter().find(|r| r.placement.continents.is_empty()))
                .unwrap_or(first);
            match &via {
                Some(c) => rep.ok(format!("→ {c} (region {}) → {}", region.name, list(&res.addresses))),
                None => rep.ok(format!("→ {}", list(&res.addresses))),
            }
            for ip in &res.addresses {
                check_http(&mut rep, &global, *ip, &region.endpoint).await;
            }
        }
    }

    // Each regional name.
    let mut answered_by: BTreeMap<IpAddr, Vec<&str>> = BTreeMap::new();
    for r in &opts.regions {
        let host = r.hostnames.regional.trim_end_matches('.').to_ascii_lowercase();
        rep.heading(format!("{host} (region {})", r.name));
        let res = match discovery::lookup(&resolver, &host).await {
            Ok(res) => res,
            Err(e) => {
                rep.problem(format!("{e}"));
                continue;
            }
        };
        match opts.addresses.get(&r.name) {
            Some(want) if !res.addresses.contains(want) => rep.problem(format!(
                "→ {} but region {} is at {want}: DNS has failed it over (its /readyz is not 200 from the DNS server)",
                list(&res.addresses),
                r.name
            )),
            _ => rep.ok(format!("→ {}", list(&res.addresses))),
        }
        for ip in &res.addresses {
            answered_by.entry(*ip).or_default().push(&r.name);
            check_http(&mut rep, &host, *ip, &r.endpoint).await;
        }
    }
    if opts.addresses.is_empty() {
        let shared: Vec<String> = answered_by
            .iter()
            .filter(|(_, rs)| rs.len() > 1)
            .map(|(ip, rs)| format!("regions {} all answer {ip}", rs.join(", ")))
            .collect();
        if !shared.is_empty() {
            rep.heading("regions".into());
            for s in shared {
                rep.problem(format!("{s}: all but one of them have failed over (down or not ready)"));
            }
        }
    }

    // Peer discovery.
    let srv = discovery::srv_name(&opts.zone);
    rep.heading(format!("{srv} (SRV, peer discovery)"));
    let want: BTreeSet<Peer> = opts
        .regions
        .iter()
        .map(|r| Peer { host: r.hostnames.regional.trim_end_matches('.').to_ascii_lowercase(), port: r.endpoint.port })
        .collect();
    match discovery::discover_peers(&resolver, &opts.zone).await {
        Err(e) => rep.problem(format!("{e}")),
        Ok(peers) => {
            let got: BTreeSet<Peer> = peers.into_iter().collect();
            let show =
                |s: &BTreeSet<Peer>| s.iter().map(|p| format!("{}:{}", p.host, p.port)).collect::<Vec<_>>().join(", ");
            if got == want {
                rep.ok(format!("→ {}", show(&got)));
            } else {
                rep.problem(format!("→ {}; the region files say {}", show(&got), show(&want)));
            }
        }
    }
    rep
}

fn list(ips: &[IpAddr]) -> String {
    ips.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}

/// `GET /v2/` and `GET /readyz` on `scheme://host:port` connected to `ip` (so the Host
/// header and TLS name are the DNS name a client used).
async fn check_http(rep: &mut Report, host: &str, ip: IpAddr, ep: &Endpoint) {
    // One client per address: reqwest pins a host name to an address per client.
    let client = match reqwest::Client::builder()
        .no_proxy()
        .resolve(host, SocketAddr::new(ip, ep.port))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => return rep.problem(format!("{ip}: http client: {e}")),
    };
    let base = format!("{}://{host}:{}", ep.scheme.as_str(), ep.port);
    match client.get(format!("{base}/v2/")).send().await {
        Err(e) => rep.problem(format!("{ip}: GET {base}/v2/: {}", error_chain(&e))),
        Ok(resp) => {
            let status = resp.status().as_u16();
            let challenge = resp
                .headers()
                .get(reqwest::header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let bearer =
                challenge.len() > 7 && challenge[..7].eq_ignore_ascii_case("bearer ") && challenge.contains("realm=");
            match status {
                200 => rep.ok(format!("{ip}: GET /v2/ → 200")),
                401 if bearer => rep.ok(format!("{ip}: GET /v2/ → 401 with a Bearer challenge")),
                401 => rep.problem(format!("{ip}: GET /v2/ → 401 without a Bearer challenge ({challenge:?})")),
                s => rep.problem(format!("{ip}: GET /v2/ → {s} (want 200 or 401)")),
            }
        }
    }
    match client.get(format!("{base}/readyz")).send().await {
        Err(e) => rep.problem(format!("{ip}: GET {base}/readyz: {}", error_chain(&e))),
        Ok(resp) if resp.status().as_u16() == 200 => rep.ok(format!("{ip}: GET /readyz → 200")),
        Ok(resp) => {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            let body: String = body.chars().take(200).collect();
            rep.problem(format!("{ip}: GET /readyz → {status}: {}", body.trim()));
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_of_the_global_name() {
        assert_eq!(default_zone("registry.alternatefutures.ai."), "alternatefutures.ai");
        assert_eq!(default_zone("registry"), "registry");
    }
}
