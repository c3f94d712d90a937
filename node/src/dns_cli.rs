//! The `afreg dns …` and `afreg doctor` command lines (the work is in `afreg::deploy::dns`
//! and `afreg::doctor`).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use afreg::deploy::dns::{self, DnsOptions};
use afreg::discovery::NameServer;
use afreg::doctor::{self, DoctorOptions};

#[derive(Subcommand)]
pub enum DnsCmd {
    /// Write pdns.conf, named.conf and <zone>.zone for PowerDNS (with the bind and geoip
    /// backends): the global name routed by continent, health-checked regional names that
    /// fail over, and `_registry._tcp` SRV records.
    Render(RenderArgs),
}

#[derive(Args)]
pub struct RenderArgs {
    /// Directory of region files.
    #[arg(long, default_value = "regions")]
    regions: PathBuf,
    /// Where to write the files.
    #[arg(long)]
    out: PathBuf,
    /// The DNS zone PowerDNS serves, e.g. alternatefutures.ai.
    #[arg(long)]
    zone: String,
    /// REGION=IPv4: a region's public address. Every region needs one. Repeatable.
    #[arg(long = "address", value_name = "REGION=IP")]
    addresses: Vec<String>,
    /// Health-check URL of every region; {scheme}, {host}, {ip}, {port} and {region} are
    /// replaced. PowerDNS checks it on each candidate address.
    #[arg(long, default_value = dns::DEFAULT_HEALTH_URL)]
    health_url_template: String,
    /// REGION=URL: a region's own health-check URL, overriding the template. Repeatable.
    #[arg(long = "health-url", value_name = "REGION=URL")]
    health_urls: Vec<String>,
    /// Seconds between PowerDNS's health checks.
    #[arg(long, default_value_t = 5)]
    health_interval: u32,
    /// Seconds a health check may take.
    #[arg(long, default_value_t = 2)]
    health_timeout: u32,
    /// local-address of the rendered pdns.conf.
    #[arg(long, default_value = "0.0.0.0")]
    local_address: String,
    /// local-port of the rendered pdns.conf.
    #[arg(long, default_value_t = 53)]
    port: u16,
    /// Where the files will be when PowerDNS reads them (default: --out, made absolute).
    #[arg(long)]
    config_root: Option<PathBuf>,
    /// The MaxMind-format GeoIP database (mmdb with continent.code) continent() reads.
    #[arg(long, default_value = "/var/lib/GeoIP/GeoLite2-Country.mmdb")]
    geoip_database: PathBuf,
    /// NAME[=IP]: a name server of the zone (IP needed when NAME is inside the zone). Repeatable.
    #[arg(long = "ns", value_name = "NAME[=IP]")]
    nameservers: Vec<String>,
    /// TTL of every record, at most 30 s.
    #[arg(long, default_value_t = dns::MAX_TTL)]
    ttl: u32,
    /// SOA serial (default: the current Unix time).
    #[arg(long)]
    serial: Option<u32>,
    /// Turn PowerDNS's answer caches off (cache-ttl=0, query-cache-ttl=0, negquery-cache-ttl=0).
    #[arg(long)]
    no_cache: bool,
    /// A zone-file fragment of your own (other records of the zone, ACME TXT records) to
    /// $INCLUDE; relative paths are under --config-root. Repeatable.
    #[arg(long = "include", value_name = "FILE")]
    includes: Vec<PathBuf>,
}

#[derive(Args)]
pub struct DoctorArgs {
    /// Directory of region files.
    #[arg(long, default_value = "regions")]
    regions: PathBuf,
    /// Ask this DNS server (IP:PORT) instead of the system's resolver.
    #[arg(long, value_name = "IP:PORT")]
    nameserver: Option<SocketAddr>,
    /// The zone of the `_registry._tcp` SRV records (default: the global name's parent).
    #[arg(long)]
    zone: Option<String>,
    /// REGION=IP: the region's own address; its regional name must answer it. Repeatable.
    #[arg(long = "address", value_name = "REGION=IP")]
    addresses: Vec<String>,
}

pub fn dns(cmd: DnsCmd) -> anyhow::Result<()> {
    let DnsCmd::Render(a) = cmd;
    let regions = afreg::regions::load_dir(&a.regions).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("create {}", a.out.display()))?;
    let root = match a.config_root {
        Some(r) => r,
        None => a.out.canonicalize().with_context(|| format!("{}", a.out.display()))?,
    };
    let mut o = DnsOptions::new(&a.zone, root);
    for (region, ip) in pairs(&a.addresses, "--address")? {
        let ip: Ipv4Addr = ip.parse().with_context(|| format!("--address {region}={ip}: not an IPv4 address"))?;
        if o.addresses.insert(region.clone(), ip).is_some() {
            bail!("--address {region}: given twice");
        }
    }
    o.health_url_template = a.health_url_template;
    o.health_urls = pairs(&a.health_urls, "--health-url")?.into_iter().collect();
    o.health_interval_secs = a.health_interval;
    o.health_timeout_secs = a.health_timeout;
    o.local_address = a.local_address;
    o.port = a.port;
    o.geoip_database = a.geoip_database;
    for ns in &a.nameservers {
        let (name, ip) = match ns.split_once('=') {
            Some((n, ip)) => (n, Some(ip.parse().with_context(|| format!("--ns {ns}: not an IPv4 address"))?)),
            None => (ns.as_str(), None),
        };
        o.nameservers.push((name.to_string(), ip));
    }
    o.ttl = a.ttl;
    o.serial = a.serial.unwrap_or_else(|| chrono::Utc::now().timestamp() as u32);
    o.no_cache = a.no_cache;
    o.includes = a.includes;
    let rendered = dns::render(&regions, &o)?;
    rendered.write_to(&a.out).with_context(|| format!("write {}", a.out.display()))?;
    for w in &rendered.warnings {
        eprintln!("afreg dns render: warning: {w}");
    }
    for name in rendered.files.keys() {
        println!("{}", a.out.join(name).display());
    }
    Ok(())
}

pub async fn doctor(a: DoctorArgs) -> anyhow::Result<()> {
    let regions = afreg::regions::load_dir(&a.regions).map_err(anyhow::Error::msg)?;
    let zone = a.zone.unwrap_or_else(|| doctor::default_zone(&regions[0].hostnames.global));
    let mut addresses = BTreeMap::new();
    for (region, ip) in pairs(&a.addresses, "--address")? {
        let ip: IpAddr = ip.parse().with_context(|| format!("--address {region}={ip}: not an IP address"))?;
        addresses.insert(region, ip);
    }
    let opts = DoctorOptions {
        regions,
        nameserver: a.nameserver.map_or(NameServer::System, NameServer::At),
        zone,
        addresses,
    };
    let report = doctor::run(&opts).await;
    for l in &report.lines {
        println!("{l}");
    }
    if report.problems > 0 {
        bail!("doctor: {} problem(s)", report.problems);
    }
    println!("doctor: every check passed");
    Ok(())
}

/// `KEY=VALUE` arguments.
fn pairs(args: &[String], flag: &str) -> anyhow::Result<Vec<(String, String)>> {
    args.iter()
        .map(|s| match s.split_once('=') {
            Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("{flag} {s}: want KEY=VALUE"),
        })
        .collect()
}
