//! `afreg doctor`: checks the deployed regions as a client sees them (DNS answers, `/v2/`,
//! `/readyz`, SRV records); the work is in `afreg_deploy::doctor`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;

use afreg_deploy::discovery::NameServer;
use afreg_deploy::doctor::{self, DoctorOptions};

use crate::dns::pairs;

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

pub async fn run(a: DoctorArgs) -> anyhow::Result<()> {
    let regions = afreg_deploy::regions::load_dir(&a.regions)?;
    let zone = a.zone.unwrap_or_else(|| doctor::default_zone(&regions[0].hostnames.global));
    let mut addresses = BTreeMap::new();
    for (region, ip) in pairs(&a.addresses, "--address")? {
        let ip: IpAddr = ip.parse().with_context(|| format!("--address {region}={ip}: not an IP address"))?;
        addresses.insert(region, ip);
    }
    let opts =
        DoctorOptions { regions, nameserver: a.nameserver.map_or(NameServer::System, NameServer::At), zone, addresses };
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
