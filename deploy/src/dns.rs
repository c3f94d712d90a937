//! GeoDNS for the regions: renders a PowerDNS Authoritative (4.7) configuration from the
//! region files (`afreg dns render`).
//!
//! What the rendered zone answers:
//! - **each regional name** (`registry-eu…`) is a LUA `A` record,
//!   `ifurlup('<health URL>', {{own}, {default}, {others…}}, {timeout=T})`: PowerDNS polls the
//!   health URL (the node's `/readyz`, which is 200 only while its Postgres and Kubo are
//!   reachable) on every candidate address and answers with the first set that has a live
//!   address, so a region that is down fails over to another one. PowerDNS starts polling when
//!   a record is first queried (answers are random until the first poll) and, when every
//!   address is down, answers with a random one;
//! - **the global name** (`registry…`) is a LUA `CNAME` choosing a regional name by the
//!   client's continent (`continent()`, the region files' `placement.continents`; the region
//!   with no continents takes everyone else). It points at the health-checked regional name,
//!   so it only ever leads to a region that answers `/readyz` (or to the regional name's own
//!   failover);
//! - **`_registry._tcp.<zone>`** has one `SRV` record per region (target the regional name,
//!   port `endpoint.port`): clients and tools find the regions through it;
//! - **`_afreg-internal._tcp.<zone>`** has one `SRV` record per region (target the regional
//!   name, port `local.internal`, the internal endpoint the SDL publishes): the regions of a
//!   new cluster find each other through it (`cluster.discovery_zone`, `crate::discovery`);
//! - every TTL, including the SOA minimum (negative answers), is at most 30 s.
//!
//! `continent()` needs PowerDNS's geoip backend: `launch=bind,geoip` with
//! `geoip-database-files=mmdb:<MaxMind-format database>` (GeoLite2-Country/City or any mmdb
//! with `continent.code`). The geoip backend serves no zone of its own (`geoip-zones-file` is
//! left unset); without it every `continent()` is false and everyone gets the default region.
//! With `edns-subnet-processing=yes` the continent is the one of the EDNS client subnet a
//! resolver forwards, else of the querying address.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::regions::RegionFile;

/// The largest TTL the rendered zone may carry: a failover reaches clients within a TTL.
pub const MAX_TTL: u32 = 30;

/// Continent codes as MaxMind databases (and so PowerDNS's `continent()`) spell them.
pub const CONTINENTS: [&str; 7] = ["AF", "AN", "AS", "EU", "NA", "OC", "SA"];

/// Everything `afreg dns render` takes besides the region files.
#[derive(Debug, Clone)]
pub struct DnsOptions {
    /// The zone PowerDNS serves, e.g. `alternatefutures.ai`. Every hostname must be inside it.
    pub zone: String,
    /// Public IPv4 address of each region, by region name. Every region needs one.
    pub addresses: BTreeMap<String, Ipv4Addr>,
    /// Health-check URL for every region, with `{scheme}`, `{host}` (the regional name),
    /// `{ip}`, `{port}` and `{region}` substituted. PowerDNS connects to each candidate address
    /// in turn whatever host the URL names (it pins the URL's host to the candidate).
    pub health_url_template: String,
    /// Per-region health-check URLs (taken literally), overriding the template.
    pub health_urls: BTreeMap<String, String>,
    /// Seconds PowerDNS waits for a health check (`ifurlup`'s `timeout`).
    pub health_timeout_secs: u32,
    /// Seconds between health checks (`lua-health-checks-interval`).
    pub health_interval_secs: u32,
    /// `local-address` / `local-port` of the rendered `pdns.conf`.
    pub local_address: String,
    pub port: u16,
    /// Where the rendered files will live when PowerDNS reads them (absolute).
    pub config_root: PathBuf,
    /// The MaxMind-format (mmdb) GeoIP database `continent()` reads.
    pub geoip_database: PathBuf,
    /// Name servers for the zone's `NS` records, with an address when the name is inside the
    /// zone (it then gets an `A` record). Empty: `ns1.<zone>` without an address (a warning).
    pub nameservers: Vec<(String, Option<Ipv4Addr>)>,
    /// TTL of every record and the SOA minimum; at most [`MAX_TTL`].
    pub ttl: u32,
    /// SOA serial.
    pub serial: u32,
    /// Turn PowerDNS's packet and query caches off (tests: every answer is fresh).
    pub no_cache: bool,
    /// Zone-file fragments kept by the operator (the zone's other records, ACME DNS-01 `TXT`
    /// records), pulled in with `$INCLUDE` (names relative to the zone; relative paths are
    /// under `config_root`). Their TTLs are theirs.
    pub includes: Vec<PathBuf>,
}

impl DnsOptions {
    /// Production defaults for `zone`: listen on 0.0.0.0:53, health checks every 5 s with a
    /// 2 s timeout on `{scheme}://{host}:{port}/readyz`, TTL 30, GeoLite2-Country from
    /// geoipupdate's directory, files read from `config_root`.
    pub fn new(zone: &str, config_root: PathBuf) -> DnsOptions {
        DnsOptions {
            zone: normalize(zone),
            addresses: BTreeMap::new(),
            health_url_template: DEFAULT_HEALTH_URL.into(),
            health_urls: BTreeMap::new(),
            health_timeout_secs: 2,
            health_interval_secs: 5,
            local_address: "0.0.0.0".into(),
            port: 53,
            config_root,
            geoip_database: PathBuf::from("/var/lib/GeoIP/GeoLite2-Country.mmdb"),
            nameservers: vec![],
            ttl: MAX_TTL,
            serial: 1,
            no_cache: false,
            includes: vec![],
        }
    }
}

pub const DEFAULT_HEALTH_URL: &str = "{scheme}://{host}:{port}/readyz";

/// Why a configuration cannot be rendered. Each names what to fix.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RenderError {
    #[error("region {0}: no address given (--address {0}=IP)")]
    MissingAddress(String),
    #[error("--address {0}=…: there is no region file for {0}")]
    UnknownRegion(String),
    #[error("{name} is not inside the zone {zone}")]
    NotInZone { name: String, zone: String },
    #[error("{0} is the zone's apex: the global and regional names must be names inside the zone")]
    AtApex(String),
    #[error("{0:?} is not a valid host name (letters, digits, '-' and '.')")]
    BadName(String),
    #[error("{0} is used by two regions or by both the global name and a region")]
    NameTwice(String),
    #[error("region {region}: {code:?} is not a continent code (one of {CONTINENTS:?})")]
    BadContinent { region: String, code: String },
    #[error("continent {code} is claimed by both {first} and {second}")]
    ContinentTwice { code: String, first: String, second: String },
    #[error("region {region}: health-check URL {url:?}: {reason}")]
    BadHealthUrl { region: String, url: String, reason: String },
    #[error("ttl {0}: must be between 1 and {MAX_TTL} seconds")]
    BadTtl(u32),
    #[error("name server {0}: a name inside the zone needs an address (NAME=IP)")]
    NameServerWithoutAddress(String),
    #[error("--include {0:?}: the path must not contain spaces, quotes or control characters")]
    BadInclude(PathBuf),
    /// The region files break a rule (the message of their [`crate::regions::RegionError`]).
    #[error("{0}")]
    Regions(String),
}

impl From<crate::regions::RegionError> for RenderError {
    fn from(e: crate::regions::RegionError) -> Self {
        RenderError::Regions(e.to_string())
    }
}

/// The rendered files (name → contents), plus warnings worth showing the operator.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub files: BTreeMap<String, String>,
    pub warnings: Vec<String>,
}

impl Rendered {
    /// Writes every file into `dir` (created if missing).
    pub fn write_to(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (name, text) in &self.files {
            std::fs::write(dir.join(name), text)?;
        }
        Ok(())
    }
}

/// One region as DNS sees it.
struct Target<'a> {
    region: &'a RegionFile,
    host: String,
    ip: Ipv4Addr,
    health_url: String,
}

/// Renders `pdns.conf`, `named.conf` (the bind backend's zone list) and `<zone>.zone`.
pub fn render(regions: &[RegionFile], opts: &DnsOptions) -> Result<Rendered, RenderError> {
    crate::regions::validate(regions)?;
    if opts.ttl == 0 || opts.ttl > MAX_TTL {
        return Err(RenderError::BadTtl(opts.ttl));
    }
    let zone = normalize(&opts.zone);
    check_name(&zone)?;
    if let Some(r) = opts.addresses.keys().find(|n| !regions.iter().any(|r| &r.name == *n)) {
        return Err(RenderError::UnknownRegion(r.clone()));
    }
    let global = relative(&regions[0].hostnames.global, &zone)?;
    let mut names = BTreeSet::from([global.clone()]);
    let mut targets = vec![];
    for r in regions {
        let host = normalize(&r.hostnames.regional);
        if !names.insert(relative(&host, &zone)?) {
            return Err(RenderError::NameTwice(host));
        }
        let ip = *opts.addresses.get(&r.name).ok_or_else(|| RenderError::MissingAddress(r.name.clone()))?;
        let health_url = health_url(r, &host, ip, opts)?;
        targets.push(Target { region: r, host, ip, health_url });
    }
    check_continents(regions)?;

    let mut warnings = vec![];
    let zone_text = zone_file(&zone, &global, &targets, opts, &mut warnings)?;
    let root = &opts.config_root;
    let zone_path = root.join(format!("{zone}.zone"));
    let named = format!(
        "// Rendered by `afreg dns render`; re-render rather than edit.\n\
         options {{ directory \"{root}\"; }};\n\
         zone \"{zone}\" {{ type native; file \"{file}\"; }};\n",
        root = root.display(),
        file = zone_path.display(),
    );
    let mut files = BTreeMap::new();
    files.insert("pdns.conf".to_string(), pdns_conf(opts));
    files.insert("named.conf".to_string(), named);
    files.insert(format!("{zone}.zone"), zone_text);
    Ok(Rendered { files, warnings })
}

fn pdns_conf(opts: &DnsOptions) -> String {
    let root = opts.config_root.display();
    let mut s = format!(
        "# Rendered by `afreg dns render`; re-render rather than edit.\n\
         # PowerDNS Authoritative 4.7: the bind backend serves the zone, the geoip backend only\n\
         # gives the LUA records' continent() its MaxMind database (it serves no zone itself).\n\
         launch=bind,geoip\n\
         bind-config={root}/named.conf\n\
         geoip-database-files=mmdb:{geo}\n\
         enable-lua-records=yes\n\
         lua-health-checks-interval={interval}\n\
         edns-subnet-processing=yes\n\
         local-address={addr}\n\
         local-port={port}\n\
         # No outgoing secpoll queries, no zone transfers, no version banner.\n\
         security-poll-suffix=\n\
         disable-axfr=yes\n\
         version-string=anonymous\n",
        geo = opts.geoip_database.display(),
        interval = opts.health_interval_secs.max(1),
        addr = opts.local_address,
        port = opts.port,
    );
    if opts.no_cache {
        s.push_str("# Caches off: every answer reflects the current health checks.\n");
        s.push_str("cache-ttl=0\nquery-cache-ttl=0\nnegquery-cache-ttl=0\n");
    }
    s
}

fn zone_file(
    zone: &str,
    global: &str,
    targets: &[Target],
    opts: &DnsOptions,
    warnings: &mut Vec<String>,
) -> Result<String, RenderError> {
    let ttl = opts.ttl;
    let mut s = String::new();
    let _ = writeln!(s, "; Rendered by `afreg dns render` from the region files; re-render rather than edit.");
    let _ = writeln!(s, "$ORIGIN {zone}.");
    let _ = writeln!(s, "$TTL {ttl}");

    let mut ns = opts.nameservers.clone();
    if ns.is_empty() {
        warnings.push(format!(
            "no --ns given: NS ns1.{zone} has no address record; pass --ns NAME=IP for the servers running PowerDNS"
        ));
        ns.push((format!("ns1.{zone}"), None));
    }
    let primary = normalize(&ns[0].0);
    let _ = writeln!(s, "@ {ttl} IN SOA {primary}. hostmaster.{zone}. {} 10800 3600 604800 {ttl}", opts.serial);
    for (name, ip) in &ns {
        let name = normalize(name);
        check_name(&name)?;
        let _ = writeln!(s, "@ {ttl} IN NS {name}.");
        let inside = name.ends_with(&format!(".{zone}"));
        match (inside, ip) {
            (true, Some(ip)) => {
                let _ = writeln!(s, "{} {ttl} IN A {ip}", relative(&name, zone)?);
            }
            (true, None) if !opts.nameservers.is_empty() => {
                return Err(RenderError::NameServerWithoutAddress(name));
            }
            _ => {}
        }
    }

    // Regional names: health-checked, failing over to the default region, then the others.
    let default = targets.iter().find(|t| t.region.placement.continents.is_empty()).expect("validated");
    s.push('\n');
    for t in targets {
        let mut order = vec![t];
        if t.region.name != default.region.name {
            order.push(default);
        }
        order.extend(targets.iter().filter(|o| o.region.name != t.region.name && o.region.name != default.region.name));
        let sets: Vec<String> = order.iter().map(|o| format!("{{'{}'}}", o.ip)).collect();
        let _ = writeln!(
            s,
            "{} {ttl} IN LUA A \"ifurlup('{}', {{{}}}, {{timeout={}}})\"",
            relative(&t.host, zone)?,
            t.health_url,
            sets.join(","),
            opts.health_timeout_secs.max(1),
        );
    }

    // The global name: the client's continent picks a regional name.
    let mut lua = String::from(";");
    for t in targets.iter().filter(|t| !t.region.placement.continents.is_empty()) {
        let codes: Vec<String> = t.region.placement.continents.iter().map(|c| format!("'{c}'")).collect();
        let kw = if lua.len() == 1 { "if" } else { " elseif" };
        let _ = write!(lua, "{kw} continent({{{}}}) then return '{}.'", codes.join(","), t.host);
    }
    if lua.len() == 1 {
        let _ = write!(lua, "return '{}.'", default.host);
    } else {
        let _ = write!(lua, " else return '{}.' end", default.host);
    }
    let _ = writeln!(s, "{global} {ttl} IN LUA CNAME \"{lua}\"");

    // Peer discovery.
    s.push('\n');
    for t in targets {
        let _ = writeln!(s, "_registry._tcp {ttl} IN SRV 10 10 {} {}.", t.region.endpoint.port, t.host);
    }
    // The regions' internal endpoints, where a new cluster's regions find each other.
    for t in targets {
        let _ = writeln!(s, "_afreg-internal._tcp {ttl} IN SRV 10 10 {} {}.", t.region.local.internal, t.host);
    }

    // The operator's own records.
    for inc in &opts.includes {
        let path = opts.config_root.join(inc);
        let text = path.to_string_lossy();
        if text.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | ';')) {
            return Err(RenderError::BadInclude(inc.clone()));
        }
        let _ = writeln!(s, "\n$ORIGIN {zone}.\n$INCLUDE {text}");
    }
    Ok(s)
}

fn health_url(r: &RegionFile, host: &str, ip: Ipv4Addr, opts: &DnsOptions) -> Result<String, RenderError> {
    let bad = |url: &str, reason: &str| RenderError::BadHealthUrl {
        region: r.name.clone(),
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let url = match opts.health_urls.get(&r.name) {
        Some(u) => u.clone(),
        None => {
            let mut u = opts.health_url_template.clone();
            for (k, v) in [
                ("{scheme}", r.endpoint.scheme.as_str().to_string()),
                ("{host}", host.to_string()),
                ("{ip}", ip.to_string()),
                ("{port}", r.endpoint.port.to_string()),
                ("{region}", r.name.clone()),
            ] {
                u = u.replace(k, &v);
            }
            if u.contains('{') || u.contains('}') {
                return Err(bad(&u, "unknown placeholder (use {scheme}, {host}, {ip}, {port}, {region})"));
            }
            u
        }
    };
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(bad(&url, "must start with http:// or https://"));
    }
    // The URL goes into a Lua string inside a quoted zone-file string.
    if url.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '\'' | '"' | '\\')) {
        return Err(bad(&url, "must not contain quotes, backslashes or spaces"));
    }
    Ok(url)
}

fn check_continents(regions: &[RegionFile]) -> Result<(), RenderError> {
    let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
    for r in regions {
        for c in &r.placement.continents {
            if !CONTINENTS.contains(&c.as_str()) {
                return Err(RenderError::BadContinent { region: r.name.clone(), code: c.clone() });
            }
            if let Some(first) = owner.insert(c, &r.name) {
                return Err(RenderError::ContinentTwice {
                    code: c.clone(),
                    first: first.to_string(),
                    second: r.name.clone(),
                });
            }
        }
    }
    Ok(())
}

/// Lower case, no trailing dot.
pub fn normalize(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

fn check_name(name: &str) -> Result<(), RenderError> {
    let ok = !name.is_empty()
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(RenderError::BadName(name.to_string()))
    }
}

/// `name` relative to `zone` (`registry-eu.alternatefutures.ai` → `registry-eu`).
fn relative(name: &str, zone: &str) -> Result<String, RenderError> {
    let name = normalize(name);
    check_name(&name)?;
    if name == zone {
        return Err(RenderError::AtApex(name));
    }
    match name.strip_suffix(&format!(".{zone}")) {
        Some(rel) => Ok(rel.to_string()),
        None => Err(RenderError::NotInZone { name, zone: zone.to_string() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regions() -> Vec<RegionFile> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../regions");
        crate::regions::load_dir(&dir).unwrap()
    }

    fn opts() -> DnsOptions {
        let mut o = DnsOptions::new("alternatefutures.ai.", PathBuf::from("/etc/afreg-dns"));
        for (r, ip) in [("us", "192.0.2.1"), ("eu", "192.0.2.2"), ("asia", "192.0.2.3")] {
            o.addresses.insert(r.into(), ip.parse().unwrap());
        }
        o.nameservers = vec![("ns1.alternatefutures.ai".into(), Some("192.0.2.53".parse().unwrap()))];
        o
    }

    #[test]
    fn committed_regions_render_geo_failover_and_srv_records() {
        let out = render(&regions(), &opts()).unwrap();
        let zone = &out.files["alternatefutures.ai.zone"];
        assert!(
            zone.contains(
                "registry-eu 30 IN LUA A \"ifurlup('https://registry-eu.alternatefutures.ai:443/readyz', \
             {{'192.0.2.2'},{'192.0.2.1'},{'192.0.2.3'}}, {timeout=2})\""
            ),
            "{zone}"
        );
        assert!(
            zone.contains(
                "registry-us 30 IN LUA A \"ifurlup('https://registry-us.alternatefutures.ai:443/readyz', \
             {{'192.0.2.1'},{'192.0.2.2'},{'192.0.2.3'}}, {timeout=2})\""
            ),
            "{zone}"
        );
        assert!(
            zone.contains(
                "registry 30 IN LUA CNAME \";if continent({'EU'}) then return 'registry-eu.alternatefutures.ai.' \
             elseif continent({'AS','OC'}) then return 'registry-asia.alternatefutures.ai.' \
             else return 'registry-us.alternatefutures.ai.' end\""
            ),
            "{zone}"
        );
        for r in ["us", "eu", "asia"] {
            assert!(zone.contains(&format!("_registry._tcp 30 IN SRV 10 10 443 registry-{r}.alternatefutures.ai.")));
            assert!(zone.contains(&"_afreg-internal._tcp 30 IN SRV 10 10 510".to_string()), "{zone}");
        }
        assert!(zone.contains("ns1 30 IN A 192.0.2.53"));
        assert!(out.warnings.is_empty());
        let conf = &out.files["pdns.conf"];
        for line in [
            "launch=bind,geoip",
            "bind-config=/etc/afreg-dns/named.conf",
            "geoip-database-files=mmdb:/var/lib/GeoIP/GeoLite2-Country.mmdb",
            "enable-lua-records=yes",
            "local-port=53",
        ] {
            assert!(conf.lines().any(|l| l == line), "{line} missing from\n{conf}");
        }
        assert!(out.files["named.conf"].contains("file \"/etc/afreg-dns/alternatefutures.ai.zone\""));
    }

    #[test]
    fn every_ttl_is_at_most_30_seconds() {
        let out = render(&regions(), &opts()).unwrap();
        let zone = &out.files["alternatefutures.ai.zone"];
        let mut records = 0;
        for line in zone.lines().filter(|l| !l.starts_with(';') && !l.starts_with('$') && !l.trim().is_empty()) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let ttl: u32 = f[1].parse().unwrap_or_else(|_| panic!("no explicit TTL: {line}"));
            assert!(ttl <= MAX_TTL, "{line}");
            if f[3] == "SOA" {
                assert!(f[10].parse::<u32>().unwrap() <= MAX_TTL, "SOA minimum: {line}");
            }
            records += 1;
        }
        // SOA, NS, NS address, three regional names, the global name, two sets of three SRV.
        assert_eq!(records, 1 + 1 + 1 + 3 + 1 + 3 + 3, "{zone}");
        let mut o = opts();
        o.ttl = 31;
        assert_eq!(render(&regions(), &o).unwrap_err(), RenderError::BadTtl(31));
    }

    #[test]
    fn health_url_template_and_overrides() {
        let mut o = opts();
        o.health_url_template = "http://{ip}:{port}/readyz".into();
        o.health_urls.insert("asia".into(), "https://asia.example.net/readyz".into());
        let zone = render(&regions(), &o).unwrap().files["alternatefutures.ai.zone"].clone();
        assert!(zone.contains("ifurlup('http://192.0.2.2:443/readyz'"), "{zone}");
        assert!(zone.contains("ifurlup('https://asia.example.net/readyz'"), "{zone}");
        o.health_url_template = "http://{hots}/readyz".into();
        assert!(matches!(render(&regions(), &o), Err(RenderError::BadHealthUrl { .. })));
        o.health_url_template = "http://{host}/ready'z".into();
        assert!(matches!(render(&regions(), &o), Err(RenderError::BadHealthUrl { .. })));
    }

    #[test]
    fn refuses_what_cannot_be_served() {
        let mut o = opts();
        o.addresses.remove("eu");
        assert_eq!(render(&regions(), &o).unwrap_err(), RenderError::MissingAddress("eu".into()));
        let mut o = opts();
        o.addresses.insert("mars".into(), "192.0.2.9".parse().unwrap());
        assert_eq!(render(&regions(), &o).unwrap_err(), RenderError::UnknownRegion("mars".into()));
        let mut o = opts();
        o.zone = "example.com".into();
        assert!(matches!(render(&regions(), &o), Err(RenderError::NotInZone { .. })));
        let mut rs = regions();
        rs[2].placement.continents.push("EU".into());
        assert!(matches!(render(&rs, &opts()), Err(RenderError::ContinentTwice { .. })));
        let mut rs = regions();
        rs[2].placement.continents.push("Asia".into());
        assert!(matches!(render(&rs, &opts()), Err(RenderError::BadContinent { .. })));
        let mut rs = regions();
        for r in &mut rs {
            r.hostnames.global = "alternatefutures.ai".into();
        }
        assert!(matches!(render(&rs, &opts()), Err(RenderError::AtApex(_))));
        let mut o = opts();
        o.nameservers = vec![("ns1.alternatefutures.ai".into(), None)];
        assert!(matches!(render(&regions(), &o), Err(RenderError::NameServerWithoutAddress(_))));
        let mut o = opts();
        o.nameservers.clear();
        assert_eq!(render(&regions(), &o).unwrap().warnings.len(), 1);
        let mut o = opts();
        o.includes.push("my records.zone".into());
        assert!(matches!(render(&regions(), &o), Err(RenderError::BadInclude(_))));
    }

    #[test]
    fn includes_come_last_relative_to_the_config_root() {
        let mut o = opts();
        o.includes = vec!["site.zone".into(), "/var/lib/acme/registry.zone".into()];
        let zone = render(&regions(), &o).unwrap().files["alternatefutures.ai.zone"].clone();
        assert!(
            zone.ends_with(
                "\n$ORIGIN alternatefutures.ai.\n$INCLUDE /etc/afreg-dns/site.zone\n\
             \n$ORIGIN alternatefutures.ai.\n$INCLUDE /var/lib/acme/registry.zone\n"
            ),
            "{zone}"
        );
    }
}
