//! `afreg sdl render`: one Akash SDL (version "2.0") per region file, written deterministically
//! (same region file, same bytes) so the committed `sdl/*.yaml` can be checked for drift.
//!
//! Each region is one deployment of three services:
//! - `postgres` (metadata) and `kubo` (blob bytes), each on a persistent `beta3` volume, reachable
//!   only from `registry`: PostgreSQL's 5432, Kubo's RPC API 5001 and its gateway 8080 are
//!   never global.
//! - `registry`, the afreg node, on a persistent volume holding its token signing key and its
//!   TLS certificate.
//!
//! **Every public port is on the region's leased IP** (endpoint [`IP_ENDPOINT`]); no registry
//! traffic goes through the provider's HTTP ingress (Akash adds it to a global port 80, which
//! carries only ACME's HTTP-01 checks). The ingress caps request bodies at
//! 100 MiB, and a docker client pushes a layer as one request body, so a layer over 100 MiB could
//! never be pushed through it; a hostname resolves to one address, so pushes and pulls cannot
//! be split between the ingress and another route either. The node therefore terminates TLS
//! itself on 443 of the leased IP, where bodies are unbounded, with a certificate from ACME (a
//! region file's `[acme]`: HTTP-01 answered on port 80 of the leased IP, which serves nothing
//! else) or from files an operator copies onto its volume (`server.tls_cert`/`tls_key`),
//! and the same IP carries the internal (raft) port and Kubo's swarm port 4001 (TCP only: a
//! private network has no QUIC, which cannot use its pre-shared key)
//! at stable port numbers. DNS points the regional hostname (and GeoDNS answers for the global
//! one) at that IP.

mod yaml;

use std::path::{Path, PathBuf};

use afreg_config::{Config, ConfigError};

use crate::local::kubo::{private_network_settings, SWARM_KEY_FILE};
use crate::regions::{RegionError, RegionFile, Service};
use crate::swarm_key::{SwarmKey, SwarmKeyError};
pub use yaml::Yaml;

/// Why a region's SDL cannot be rendered.
#[derive(Debug, thiserror::Error)]
pub enum SdlError {
    #[error(transparent)]
    Regions(#[from] RegionError),
    /// A region file's field is out of range for Akash; the message names it.
    #[error("{0}")]
    Region(String),
    #[error("region {region}: the registry's configuration: {source}")]
    Config { region: String, source: ConfigError },
    #[error("{path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("the secrets in {dir}: {reason} (create them with `afreg sdl secrets --out {dir}`)")]
    Secrets { dir: PathBuf, reason: String },
}

/// The file of the cluster secret in an operator's secrets directory.
pub const CLUSTER_SECRET_FILE: &str = "cluster-secret";

/// What a deployable SDL carries that a committed one never does: the cluster secret (for the
/// registry) and the private network's key (for Kubo), read from the operator's own secrets
/// directory when rendering (`afreg sdl render --secrets DIR`).
#[derive(Clone)]
pub struct Secrets {
    pub cluster_secret: String,
    pub swarm_key: SwarmKey,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets(…)")
    }
}

impl Secrets {
    /// `DIR/cluster-secret` and `DIR/swarm.key`.
    pub fn load(dir: &Path) -> Result<Secrets, SdlError> {
        let err = |reason: String| SdlError::Secrets { dir: dir.to_owned(), reason };
        let secret = std::fs::read_to_string(dir.join(CLUSTER_SECRET_FILE))
            .map_err(|e| err(format!("{CLUSTER_SECRET_FILE}: {e}")))?;
        let cluster_secret = secret.trim().to_owned();
        if cluster_secret.len() < 16 {
            return Err(err(format!("{CLUSTER_SECRET_FILE} is shorter than 16 characters")));
        }
        let swarm_key = SwarmKey::read(&dir.join(SWARM_KEY_FILE)).map_err(|e: SwarmKeyError| err(e.to_string()))?;
        Ok(Secrets { cluster_secret, swarm_key })
    }

    /// Creates whichever of the two files is missing in `dir` (mode 0600; the directory 0700),
    /// random, and returns the paths created. Existing files are kept: rotating one is
    /// replacing it by hand, then rendering and deploying every region again.
    pub fn create_missing(dir: &Path) -> Result<Vec<PathBuf>, SdlError> {
        use std::os::unix::fs::PermissionsExt;
        let err = |reason: String| SdlError::Secrets { dir: dir.to_owned(), reason };
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| err(e.to_string()))?;
        let mut made = vec![];
        let secret = dir.join(CLUSTER_SECRET_FILE);
        if !secret.exists() {
            afreg_config::write_private(&secret, &afreg_config::random_secret(40)).map_err(|e| err(e.to_string()))?;
            made.push(secret);
        }
        let key = dir.join(SWARM_KEY_FILE);
        if !key.exists() {
            SwarmKey::generate().write_new(&key).map_err(|e| err(e.to_string()))?;
            made.push(key);
        }
        Ok(made)
    }
}

/// The name of the leased-IP endpoint every public port is exposed on.
pub const IP_ENDPOINT: &str = "region-ip";
/// The port the node listens on inside its container (TLS when the certificate is present).
pub const REGISTRY_PORT: u64 = 5000;
/// The public HTTPS port of the registry, on the leased IP.
pub const REGISTRY_PUBLIC_PORT: u64 = 443;
pub const POSTGRES_PORT: u64 = 5432;
pub const KUBO_API_PORT: u64 = 5001;
/// Kubo's HTTP gateway, where the node reads blob bytes; exposed to `registry` only.
pub const KUBO_GATEWAY_PORT: u64 = 8080;
pub const KUBO_SWARM_PORT: u64 = 4001;
pub const POSTGRES_IMAGE: &str = "postgres:15";
pub const KUBO_IMAGE: &str = "ipfs/kubo:v0.39.0";
/// Where the registry's persistent volume is mounted; the signing key and TLS files live there.
pub const REGISTRY_DATA: &str = "/data";
pub const TLS_CERT: &str = "/data/tls/tls.crt";
pub const TLS_KEY: &str = "/data/tls/tls.key";
/// With `[acme]`: the ACME account and certificate, on the volume so a new lease reuses them.
pub const ACME_CACHE: &str = "/data/acme";
/// With `[acme]`: the container port of the node's HTTP-01 responder (unprivileged: the image
/// runs as a user), published as 80 on the leased IP.
pub const ACME_HTTP_PORT: u64 = 8080;
/// Where the CA dials HTTP-01.
pub const ACME_HTTP_PUBLIC_PORT: u64 = 80;
/// Ephemeral (root file system) storage of every container, beside its persistent volume.
const EPHEMERAL_STORAGE: &str = "1Gi";
/// The first line of every rendered file; [`render_dir`] only ever deletes files starting so.
const HEADER: &str = "# Generated by `afreg sdl render`";

/// The SDL of one region, as a tree (see [`render`] for the text).
pub fn sdl(r: &RegionFile, secrets: Option<&Secrets>) -> Result<Yaml, SdlError> {
    for (svc, res) in
        [("registry", &r.resources.registry), ("postgres", &r.resources.postgres), ("kubo", &r.resources.kubo)]
    {
        check_resources(&r.name, svc, res)?;
    }
    let internal = u64::from(r.local.internal);
    if internal == REGISTRY_PORT || internal == REGISTRY_PUBLIC_PORT {
        return Err(SdlError::Region(format!(
            "region {}: local.internal = {internal} collides with the registry's ports",
            r.name
        )));
    }
    let price = |svc: &str| -> Result<Yaml, SdlError> {
        let amount =
            r.placement.price.get(svc).ok_or_else(|| {
                SdlError::Region(format!("region {}: placement.price has no entry for {svc}", r.name))
            })?;
        Ok(Yaml::map([("denom", Yaml::str(&r.placement.denom)), ("amount", Yaml::Int(*amount))]))
    };
    let services = Yaml::map([("postgres", postgres()), ("kubo", kubo(secrets)), ("registry", registry(r, secrets)?)]);
    let compute = Yaml::map([
        ("postgres", compute_profile(&r.resources.postgres, "postgres-data")),
        ("kubo", compute_profile(&r.resources.kubo, "kubo-data")),
        ("registry", compute_profile(&r.resources.registry, "registry-data")),
    ]);
    let placement = Yaml::map([(
        r.name.as_str(),
        Yaml::map([
            ("attributes", Yaml::map(r.placement.attributes.iter().map(|(k, v)| (k.as_str(), Yaml::str(v))))),
            (
                "pricing",
                Yaml::map([
                    ("postgres", price("postgres")?),
                    ("kubo", price("kubo")?),
                    ("registry", price("registry")?),
                ]),
            ),
        ]),
    )]);
    // Postgres and Kubo are one each; the registry runs `processes` replicas over them.
    let deployment = Yaml::map(["postgres", "kubo", "registry"].map(|svc| {
        let count = if svc == "registry" { u64::from(r.processes) } else { 1 };
        (svc, Yaml::map([(r.name.as_str(), Yaml::map([("profile", Yaml::str(svc)), ("count", Yaml::Int(count))]))]))
    }));
    Ok(Yaml::map([
        ("version", Yaml::str("2.0")),
        ("services", services),
        ("profiles", Yaml::map([("compute", compute), ("placement", placement)])),
        ("deployment", deployment),
        ("endpoints", Yaml::map([(IP_ENDPOINT, Yaml::map([("kind", Yaml::str("ip"))]))])),
    ]))
}

/// The SDL file of one region: a header naming its source, then the document.
pub fn render(r: &RegionFile, secrets: Option<&Secrets>) -> Result<String, SdlError> {
    let doc = sdl(r, secrets)?;
    let secrets_line = match secrets {
        Some(_) => "# It carries the cluster secret and the swarm key: deploy it, never commit or share it.",
        None => "# It carries no secret, so it does not start as it is: deploy the one `afreg sdl render --secrets DIR` writes.",
    };
    Ok(format!(
        "{HEADER} from regions/{name}.toml: edit that file and re-run the command, not this one.\n\
         # Deploy: see docs/deploy-akash.md. Public ports are on the leased IP \"{IP_ENDPOINT}\".\n{secrets_line}\n{}",
        doc.to_yaml(),
        name = r.name
    ))
}

/// Renders every region file of `regions` into `out/<name>.yaml` and removes generated files of
/// regions that no longer exist. Returns the paths written, in raft-id order.
pub fn render_dir(regions: &Path, out: &Path, secrets: Option<&Secrets>) -> Result<Vec<PathBuf>, SdlError> {
    let all = crate::regions::load_dir(regions)?;
    let texts = all.iter().map(|r| Ok((r.name.clone(), render(r, secrets)?))).collect::<Result<Vec<_>, SdlError>>()?;
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| SdlError::Write { path, source }
    };
    std::fs::create_dir_all(out).map_err(write_err(out))?;
    let mut written = vec![];
    for (name, text) in texts {
        let p = out.join(format!("{name}.yaml"));
        std::fs::write(&p, text).map_err(write_err(&p))?;
        written.push(p);
    }
    for e in std::fs::read_dir(out).map_err(write_err(out))?.flatten() {
        let p = e.path();
        let generated = std::fs::read_to_string(&p).is_ok_and(|t| t.starts_with(HEADER));
        if p.extension().is_some_and(|x| x == "yaml") && generated && !written.contains(&p) {
            std::fs::remove_file(&p).map_err(write_err(&p))?;
        }
    }
    Ok(written)
}

fn expose(port: u64, as_port: u64, proto: Option<&str>, to: Yaml) -> Yaml {
    let mut m = vec![("port".to_owned(), Yaml::Int(port)), ("as".to_owned(), Yaml::Int(as_port))];
    if let Some(p) = proto {
        m.push(("proto".into(), Yaml::str(p)));
    }
    m.push(("to".into(), Yaml::seq([to])));
    Yaml::Map(m)
}

/// Reachable only by the `registry` service of the same deployment.
fn to_registry() -> Yaml {
    Yaml::map([("service", Yaml::str("registry"))])
}

/// Reachable from anywhere, at a stable port of the region's leased IP.
fn to_leased_ip() -> Yaml {
    Yaml::map([("global", Yaml::Bool(true)), ("ip", Yaml::str(IP_ENDPOINT))])
}

fn mount(volume: &str, path: &str) -> Yaml {
    Yaml::map([("storage", Yaml::map([(volume, Yaml::map([("mount", Yaml::str(path))]))]))])
}

/// PostgreSQL's environment. Only `registry` can reach 5432 (Akash isolates a deployment's
/// services from everything else, as a Compose network does), and the provider could read a
/// password from the manifest anyway, so it trusts its network. PGDATA is a subdirectory: the
/// volume's root holds lost+found, which initdb refuses.
pub(crate) const POSTGRES_ENV: [&str; 3] =
    ["POSTGRES_DB=afreg", "POSTGRES_HOST_AUTH_METHOD=trust", "PGDATA=/var/lib/postgresql/data/pgdata"];

fn postgres() -> Yaml {
    Yaml::map([
        ("image", Yaml::str(POSTGRES_IMAGE)),
        ("env", Yaml::seq(POSTGRES_ENV.map(Yaml::str))),
        ("expose", Yaml::seq([expose(POSTGRES_PORT, POSTGRES_PORT, None, to_registry())])),
        ("params", mount("postgres-data", "/var/lib/postgresql/data")),
    ])
}

/// The environment variable that carries the swarm key's hex into the Kubo container.
pub const SWARM_KEY_ENV: &str = "AFREG_SWARM_KEY";

/// Kubo's start in the lease: the first start makes a repository (`server` profile: no
/// local-network discovery); every start writes the swarm key from the environment, applies
/// the private network's settings (the same as every local daemon's), binds the RPC API to
/// 0.0.0.0 inside the pod (only `registry` can reach it), and runs the daemon, which refuses
/// to start without the key. No loop: a missing key is an exit with its reason.
pub(crate) fn kubo_start_script() -> String {
    let mut s = format!(
        "set -e; \
         if [ -z \"${SWARM_KEY_ENV}\" ]; then echo 'kubo: {SWARM_KEY_ENV} is empty: deploy the SDL that afreg sdl render --secrets writes (docs/deploy-akash.md)' >&2; exit 1; fi; \
         [ -f \"$IPFS_PATH/config\" ] || ipfs init --profile=server --empty-repo; \
         printf '/key/swarm/psk/1.0.0/\\n/base16/\\n%s\\n' \"${SWARM_KEY_ENV}\" > \"$IPFS_PATH/{SWARM_KEY_FILE}\"; "
    );
    for (key, value) in private_network_settings() {
        s.push_str(&format!("ipfs config --json {key} '{value}'; "));
    }
    s.push_str(&format!(
        "ipfs config Addresses.API /ip4/0.0.0.0/tcp/{KUBO_API_PORT}; \
         ipfs config Addresses.Gateway /ip4/0.0.0.0/tcp/{KUBO_GATEWAY_PORT}; exec ipfs daemon --migrate=true"
    ));
    s
}

/// Kubo's environment, with the swarm key's hex as given.
pub(crate) fn kubo_env(key_hex: &str) -> [String; 3] {
    [format!("{SWARM_KEY_ENV}={key_hex}"), "LIBP2P_FORCE_PNET=1".into(), "IPFS_TELEMETRY=off".into()]
}

fn kubo(secrets: Option<&Secrets>) -> Yaml {
    let key = secrets.map(|s| s.swarm_key.hex()).unwrap_or_default();
    Yaml::map([
        ("image", Yaml::str(KUBO_IMAGE)),
        ("command", Yaml::seq([Yaml::str("/bin/sh"), Yaml::str("-c")])),
        ("args", Yaml::seq([Yaml::str(kubo_start_script())])),
        ("env", Yaml::seq(kubo_env(&key).map(Yaml::Str))),
        (
            "expose",
            Yaml::seq([
                expose(KUBO_SWARM_PORT, KUBO_SWARM_PORT, Some("tcp"), to_leased_ip()),
                expose(KUBO_API_PORT, KUBO_API_PORT, None, to_registry()),
                expose(KUBO_GATEWAY_PORT, KUBO_GATEWAY_PORT, None, to_registry()),
            ]),
        ),
        ("params", mount("kubo-data", "/data/ipfs")),
    ])
}

/// The DNS zone of a host name: everything after its first label.
fn zone_of(host: &str) -> &str {
    host.split_once('.').map(|(_, z)| z).unwrap_or(host)
}

/// The registry's configuration in the lease: its listeners, its backends by service name,
/// its files on the volume, and its place in the cluster (this region's id and name, its
/// internal endpoint on the leased IP with TLS from the node's certificate, the secret on the
/// volume, the peers found through the zone's `_afreg-internal._tcp` SRV records, and the Kubo
/// swarm address the other regions dial). The SDL carries it as environment variables.
///
/// The cluster secret is the operator's (`secrets`); without it the variable is present and
/// empty, so a registry deployed from a committed file refuses to start instead of inventing a
/// secret of its own.
pub fn registry_config(r: &RegionFile, secrets: Option<&Secrets>) -> Config {
    let internal = r.local.internal;
    let mut c = Config::default();
    c.server.listen = ([0, 0, 0, 0], REGISTRY_PORT as u16).into();
    c.server.public_url = format!("https://{}", r.hostnames.regional);
    match &r.acme {
        Some(a) => {
            let mut acme = afreg_config::AcmeConfig {
                contact: a.contact.clone(),
                domains: vec![r.hostnames.regional.clone(), r.hostnames.global.clone()],
                cache_dir: ACME_CACHE.into(),
                challenge: afreg_config::AcmeChallenge::Http01,
                http_listen: ([0, 0, 0, 0], ACME_HTTP_PORT as u16).into(),
                http_port: ACME_HTTP_PUBLIC_PORT as u16,
                ..Default::default()
            };
            if let Some(d) = &a.directory_url {
                acme.directory_url = d.clone();
            }
            c.server.acme = Some(acme);
        }
        None => {
            c.server.tls_cert = Some(TLS_CERT.into());
            c.server.tls_key = Some(TLS_KEY.into());
        }
    }
    c.database.url = format!("postgres://postgres@postgres:{POSTGRES_PORT}/afreg");
    c.kubo.api_url = format!("http://kubo:{KUBO_API_PORT}");
    c.kubo.gateway_url = format!("http://kubo:{KUBO_GATEWAY_PORT}");
    c.auth.signing_key = format!("{REGISTRY_DATA}/afreg-signing-key.pem").into();
    // Pulls are served from verified blob files on the registry's own volume: three quarters of
    // it, the rest for the certificate cache, the key and room for fills in progress.
    c.storage.blob_cache_dir = format!("{REGISTRY_DATA}/blob-files").into();
    if let Some(bytes) = quantity_bytes(&r.resources.registry.storage) {
        c.storage.blob_cache_bytes = bytes / 4 * 3;
    }
    c.cluster.id = r.raft_id;
    c.cluster.region = r.name.clone();
    c.cluster.listen = ([0, 0, 0, 0], internal).into();
    c.cluster.advertise_url = format!("https://{}:{internal}", r.hostnames.regional);
    c.cluster.secret = Some(secrets.map(|s| s.cluster_secret.clone()).unwrap_or_default());
    c.cluster.discovery_zone = Some(zone_of(&r.hostnames.global).to_owned());
    c.cluster.kubo_swarm_addrs = vec![format!("/dns4/{}/tcp/{KUBO_SWARM_PORT}", r.hostnames.regional)];
    if r.processes > 1 {
        // Each replica's own internal listener, where the others relay to the seat holder (at
        // its pod address, checked against the regional certificate).
        c.cluster.process_listen = Some(([0, 0, 0, 0], process_port(r)).into());
    }
    c
}

/// The port of each registry replica's own internal listener (the internal port + 1).
fn process_port(r: &RegionFile) -> u16 {
    r.local.internal + 1
}

/// The registry's environment: [`registry_config`] as `AFREG_SECTION__FIELD` variables.
pub(crate) fn registry_env(r: &RegionFile, secrets: Option<&Secrets>) -> Result<Vec<(String, String)>, SdlError> {
    registry_config(r, secrets).env_overrides().map_err(|source| SdlError::Config { region: r.name.clone(), source })
}

fn registry(r: &RegionFile, secrets: Option<&Secrets>) -> Result<Yaml, SdlError> {
    let internal = u64::from(r.local.internal);
    let env = registry_env(r, secrets)?.into_iter().map(|(k, v)| Yaml::Str(format!("{k}={v}")));
    let mut ports = vec![
        expose(REGISTRY_PORT, REGISTRY_PUBLIC_PORT, Some("tcp"), to_leased_ip()),
        // The internal endpoint (raft RPC, forwarded writes) that the other regions dial.
        expose(internal, internal, Some("tcp"), to_leased_ip()),
    ];
    if r.processes > 1 {
        // The replicas reach each other's own internal listener; nothing else does.
        let p = u64::from(process_port(r));
        ports.push(expose(p, p, Some("tcp"), to_registry()));
    }
    if r.acme.is_some() {
        // The CA's HTTP-01 checks, answered for every region. Only challenges are served there;
        // the registry API stays on 443.
        ports.push(expose(ACME_HTTP_PORT, ACME_HTTP_PUBLIC_PORT, Some("tcp"), to_leased_ip()));
    }
    Ok(Yaml::map([
        // The image runs `afreg serve`; with certificate files the node waits for them itself,
        // saying so; with ACME it obtains them.
        ("image", Yaml::str(&r.image)),
        ("env", Yaml::seq(env)),
        ("expose", Yaml::seq(ports)),
        ("params", mount("registry-data", REGISTRY_DATA)),
    ]))
}

fn compute_profile(res: &Service, volume: &str) -> Yaml {
    Yaml::map([(
        "resources",
        Yaml::map([
            ("cpu", Yaml::map([("units", Yaml::Num(res.cpu.to_string()))])),
            ("memory", Yaml::map([("size", Yaml::str(&res.memory))])),
            (
                "storage",
                Yaml::seq([
                    Yaml::map([("size", Yaml::str(EPHEMERAL_STORAGE))]),
                    Yaml::map([
                        ("name", Yaml::str(volume)),
                        ("size", Yaml::str(&res.storage)),
                        ("attributes", Yaml::map([("persistent", Yaml::Bool(true)), ("class", Yaml::str("beta3"))])),
                    ]),
                ]),
            ),
        ]),
    )])
}

/// CPU a positive number of (milli)units; memory and storage Kubernetes quantities (`4Gi`).
fn check_resources(region: &str, svc: &str, res: &Service) -> Result<(), SdlError> {
    if !(res.cpu.is_finite() && res.cpu >= 0.001 && (res.cpu * 1000.0).fract() == 0.0) {
        return Err(SdlError::Region(format!(
            "region {region}: resources.{svc}.cpu = {} is not a positive multiple of 0.001",
            res.cpu
        )));
    }
    for (field, q) in [("memory", &res.memory), ("storage", &res.storage)] {
        if !is_quantity(q) {
            return Err(SdlError::Region(format!(
                "region {region}: resources.{svc}.{field} = {q:?} is not a size such as 512Mi or 20Gi"
            )));
        }
    }
    Ok(())
}

/// The bytes of a Kubernetes quantity (`10Gi`, `500M`); None if it is not one.
fn quantity_bytes(q: &str) -> Option<u64> {
    const UNITS: [(&str, u64); 12] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("Pi", 1 << 50),
        ("Ei", 1 << 60),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("P", 1_000_000_000_000_000),
        ("E", 1_000_000_000_000_000_000),
    ];
    let (digits, unit) = UNITS.iter().find_map(|(s, u)| Some((q.strip_suffix(s)?, *u))).unwrap_or((q, 1));
    digits.parse::<u64>().ok()?.checked_mul(unit)
}

fn is_quantity(q: &str) -> bool {
    const SUFFIXES: [&str; 12] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "T", "P", "E"];
    let digits = SUFFIXES.iter().find_map(|s| q.strip_suffix(s)).unwrap_or(q);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && digits.bytes().any(|b| b != b'0')
}

#[cfg(test)]
mod tests;
