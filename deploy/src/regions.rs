//! The region files in `regions/`: one TOML file per region, holding everything a region needs
//! to be deployed (Akash placement, resources, public hostnames), routed to (GeoDNS continents)
//! and joined to the cluster (raft id, peers). `afreg sdl render`, `afreg dns render`,
//! `afreg up` and `afreg serve` all read the same files.

use std::collections::BTreeMap;
use std::path::Path;

use afreg_config::Config;
use serde::{Deserialize, Serialize};

/// What is wrong with the region files.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error("{path}: {source}")]
    Read { path: std::path::PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse { path: std::path::PathBuf, source: toml::de::Error },
    /// The set of files (or one file's fields) breaks a rule; the message names it.
    #[error("{0}")]
    Invalid(String),
}

/// One region, as `regions/<name>.toml` describes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegionFile {
    /// Short name (`us`, `eu`, `asia`); the file is `regions/<name>.toml`.
    pub name: String,
    /// Raft node id. Never reused, even after the region is removed.
    pub raft_id: u64,
    /// The registry's container image, as `scripts/image.sh --push` publishes it (its tag is
    /// the crate version), e.g. `registry.alternatefutures.ai/afreg/afreg:0.1.0`.
    pub image: String,
    pub hostnames: Hostnames,
    pub placement: Placement,
    pub resources: Resources,
    /// Regions this one joins (by name) when it is added to a running cluster.
    #[serde(default)]
    pub peers: Vec<String>,
    /// `afreg serve` processes of the region (the SDL's `count`; `afreg up`'s default). They
    /// share its Postgres and Kubo; one holds the region's Raft seat, the others serve the API
    /// and take the seat over when it dies.
    #[serde(default = "one_process")]
    pub processes: u32,
    /// Ports used when the region runs on this machine (`afreg up`, tests).
    pub local: LocalPorts,
    /// How clients (and GeoDNS health checks) reach the registry at `hostnames.regional`.
    /// Optional: HTTPS on port 443 when absent.
    #[serde(default)]
    pub endpoint: Endpoint,
    /// The node's certificate from an ACME CA (HTTP-01 on port 80 of the leased IP, where every
    /// region answers every region's challenges, so the global name is certified too). Absent:
    /// the operator copies `tls.crt`/`tls.key` onto the registry's volume.
    #[serde(default)]
    pub acme: Option<RegionAcme>,
}

fn one_process() -> u32 {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegionAcme {
    /// The account's contacts, e.g. `mailto:ops@example.org`.
    pub contact: Vec<String>,
    /// The CA's ACME directory; absent: Let's Encrypt's production CA.
    #[serde(default)]
    pub directory_url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Hostnames {
    /// This region's own name, e.g. `registry-eu.alternatefutures.ai`.
    pub regional: String,
    /// The GeoDNS name shared by every region, e.g. `registry.alternatefutures.ai`.
    pub global: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// Akash provider attributes the deployment must match, e.g. `{ region = "eu-west" }`.
    pub attributes: BTreeMap<String, String>,
    /// GeoDNS continent codes (`EU`, `AS`, `OC`, `NA`, …) whose clients this region serves.
    /// Exactly one region leaves this empty: it is the default for every other continent.
    #[serde(default)]
    pub continents: Vec<String>,
    /// Akash pricing per service per block, in `denom`.
    pub denom: String,
    pub price: BTreeMap<String, u64>,
}

/// CPU (units), memory and storage sizes (Kubernetes quantities) per service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    pub registry: Service,
    pub postgres: Service,
    pub kubo: Service,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub cpu: f64,
    pub memory: String,
    /// Persistent storage (class beta3) for this service's data.
    pub storage: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LocalPorts {
    pub registry: u16,
    /// Internal endpoint (raft RPC, forwarded writes, pin coordination).
    pub internal: u16,
    pub postgres: u16,
    pub kubo_api: u16,
    pub kubo_swarm: u16,
    pub kubo_gateway: u16,
    /// The node's Prometheus `/metrics` listener (loopback).
    pub metrics: u16,
}

/// The public registry endpoint of a region: `{scheme}://{hostnames.regional}:{port}`. The SRV
/// records `_registry._tcp.<zone>` carry `port`; `afreg doctor` and the PowerDNS health checks
/// (`ifurlup`) use both.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Endpoint {
    pub scheme: Scheme,
    pub port: u16,
}

impl Default for Endpoint {
    fn default() -> Self {
        Endpoint { scheme: Scheme::Https, port: 443 }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

impl RegionFile {
    /// Takes this region's identity into `cfg` (`afreg serve --region`): the raft id and name.
    /// A configuration that already names another id or region is refused rather than
    /// silently overridden.
    pub fn apply_identity(&self, cfg: &mut Config) -> Result<(), RegionError> {
        let d = afreg_config::ClusterConfig::default();
        if cfg.cluster.id != d.id && cfg.cluster.id != self.raft_id {
            return invalid(format!(
                "cluster.id is {} but {}'s region file says raft_id {}",
                cfg.cluster.id, self.name, self.raft_id
            ));
        }
        if cfg.cluster.region != d.region && cfg.cluster.region != self.name {
            return invalid(format!(
                "cluster.region is {:?} but the region file is {:?}",
                cfg.cluster.region, self.name
            ));
        }
        cfg.cluster.id = self.raft_id;
        cfg.cluster.region = self.name.clone();
        Ok(())
    }
}

fn invalid<T>(m: String) -> Result<T, RegionError> {
    Err(RegionError::Invalid(m))
}

/// Reads every `*.toml` in `dir`, sorted by raft id, and checks them as a set.
pub fn load_dir(dir: &Path) -> Result<Vec<RegionFile>, RegionError> {
    let mut out = vec![];
    let read = |source| RegionError::Read { path: dir.to_owned(), source };
    for e in std::fs::read_dir(dir).map_err(read)? {
        let p = e.map_err(read)?.path();
        if p.extension().is_some_and(|x| x == "toml") {
            out.push(load_file(&p)?);
        }
    }
    out.sort_by_key(|r| r.raft_id);
    validate(&out)?;
    Ok(out)
}

pub fn load_file(p: &Path) -> Result<RegionFile, RegionError> {
    let text = std::fs::read_to_string(p).map_err(|source| RegionError::Read { path: p.to_owned(), source })?;
    let r: RegionFile = toml::from_str(&text).map_err(|source| RegionError::Parse { path: p.to_owned(), source })?;
    if p.file_stem().and_then(|s| s.to_str()) != Some(r.name.as_str()) {
        return invalid(format!("{}: name {:?} must match the file name", p.display(), r.name));
    }
    Ok(r)
}

pub fn validate(regions: &[RegionFile]) -> Result<(), RegionError> {
    if regions.is_empty() {
        return invalid("no region files".into());
    }
    let mut ids = std::collections::HashSet::new();
    let mut names = std::collections::HashSet::new();
    for r in regions {
        if !ids.insert(r.raft_id) {
            return invalid(format!("raft_id {} is used twice", r.raft_id));
        }
        if !names.insert(r.name.as_str()) {
            return invalid(format!("region {} is defined twice", r.name));
        }
        if r.image.rsplit_once(':').is_none_or(|(repo, tag)| repo.is_empty() || tag.is_empty() || tag.contains('/')) {
            return invalid(format!("region {}: image {:?} needs a repository and a tag", r.name, r.image));
        }
        if !r.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return invalid(format!("region name {:?}: use lower-case letters, digits and '-'", r.name));
        }
        if r.hostnames.global != regions[0].hostnames.global {
            return invalid(format!("region {}: every region must share one global hostname", r.name));
        }
        if r.processes == 0 {
            return invalid(format!("region {}: processes must be at least 1", r.name));
        }
        if r.processes > 1 && r.acme.is_some() {
            return invalid(format!(
                "region {}: processes = {} needs certificate files (remove [acme]): each process would order its own \
                 certificate from its own volume, and the CA's check can reach a process that did not make the challenge",
                r.name, r.processes
            ));
        }
        for svc in ["registry", "postgres", "kubo"] {
            if !r.placement.price.contains_key(svc) {
                return invalid(format!("region {}: placement.price has no entry for {svc}", r.name));
            }
        }
    }
    for r in regions {
        if let Some(p) = r.peers.iter().find(|p| !names.contains(p.as_str())) {
            return invalid(format!("region {}: peer {p:?} has no region file", r.name));
        }
    }
    let defaults = regions.iter().filter(|r| r.placement.continents.is_empty()).count();
    if defaults != 1 {
        return invalid(format!("exactly one region must have no continents (the default); found {defaults}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_region_files_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../regions");
        let regions = load_dir(&dir).unwrap();
        let names: Vec<&str> = regions.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["us", "eu", "asia"]);
    }

    #[test]
    fn endpoint_defaults_to_https_443_and_can_be_set() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../regions");
        let mut text = std::fs::read_to_string(dir.join("eu.toml")).unwrap();
        let r: RegionFile = toml::from_str(&text).unwrap();
        assert_eq!(r.endpoint, Endpoint { scheme: Scheme::Https, port: 443 });
        text.push_str("\n[endpoint]\nscheme = \"http\"\nport = 5001\n");
        let r: RegionFile = toml::from_str(&text).unwrap();
        assert_eq!(r.endpoint, Endpoint { scheme: Scheme::Http, port: 5001 });
    }

    #[test]
    fn duplicate_ids_and_unknown_peers_are_refused() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../regions");
        let mut regions = load_dir(&dir).unwrap();
        regions[1].raft_id = regions[0].raft_id;
        assert!(validate(&regions).unwrap_err().to_string().contains("used twice"));
        let mut regions = load_dir(&dir).unwrap();
        regions[0].peers.push("mars".into());
        assert!(validate(&regions).unwrap_err().to_string().contains("mars"));
    }

    #[test]
    fn a_region_file_sets_the_identity_and_conflicts_are_refused() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../regions");
        let eu = load_file(&dir.join("eu.toml")).unwrap();
        let mut c = Config::default();
        eu.apply_identity(&mut c).unwrap();
        assert_eq!((c.cluster.id, c.cluster.region.as_str()), (eu.raft_id, "eu"));
        let mut c = Config::default();
        c.cluster.id = eu.raft_id + 10;
        assert!(eu.apply_identity(&mut c).unwrap_err().to_string().contains("raft_id"));
        let mut c = Config::default();
        c.cluster.region = "us".into();
        assert!(eu.apply_identity(&mut c).unwrap_err().to_string().contains("region"));
    }
}
