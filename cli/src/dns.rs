//! `afreg dns render`: the PowerDNS GeoDNS configuration for the regions (the work is in
//! `afreg_deploy::dns`).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use afreg_deploy::dns::{self, DnsOptions};

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

pub fn run(cmd: DnsCmd) -> anyhow::Result<()> {
    let DnsCmd::Render(a) = cmd;
    let regions = afreg_deploy::regions::load_dir(&a.regions)?;
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

/// `KEY=VALUE` arguments.
pub fn pairs(args: &[String], flag: &str) -> anyhow::Result<Vec<(String, String)>> {
    args.iter()
        .map(|s| match s.split_once('=') {
            Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("{flag} {s}: want KEY=VALUE"),
        })
        .collect()
}
