//! The node's configuration: one documented struct per section, read from a TOML file and
//! overridden by `AFREG_SECTION__FIELD` environment variables, validated once at start-up.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::oci::Action;

/// Everything `afreg serve` needs. Every field has a default, so an empty file is a valid
/// single-node configuration against a local Postgres and Kubo.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub kubo: KuboConfig,
    pub storage: StorageConfig,
    pub auth: AuthConfig,
    pub log: LogConfig,
    pub cluster: ClusterConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the public OCI API listens on.
    pub listen: SocketAddr,
    /// The URL clients use to reach this node; the token realm is `{public_url}/token`.
    pub public_url: String,
    /// TLS certificate chain (PEM, leaf first). With `tls_key`, `listen` serves HTTPS: the node
    /// terminates TLS itself where no proxy can (Akash's HTTP ingress caps bodies at 100 MiB).
    /// SIGHUP re-reads both files, so a renewed certificate needs no restart.
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1) of `tls_cert`. Set both or neither.
    pub tls_key: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:5000".parse().unwrap(),
            public_url: "http://127.0.0.1:5000".into(),
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl ServerConfig {
    /// `(certificate, key)` when TLS is configured.
    pub fn tls(&self) -> Option<(&std::path::Path, &std::path::Path)> {
        Some((self.tls_cert.as_deref()?, self.tls_key.as_deref()?))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// PostgreSQL connection URL. Migrations are applied at start-up.
    pub url: String,
    /// Size of the connection pool of the request path, the pinner and the other duties.
    pub max_connections: u32,
    /// How long a request waits for a pooled connection before answering 503.
    pub acquire_timeout_secs: u64,
    /// Connections reserved for this region's Raft log and state machine, in a pool of their
    /// own that the request path never takes from: a burst of pushes cannot starve Raft.
    pub raft_max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/afreg".into(),
            max_connections: 16,
            acquire_timeout_secs: 5,
            raft_max_connections: 6,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KuboConfig {
    /// Kubo's RPC API. It must never be reachable from outside the region.
    pub api_url: String,
    /// Timeout for short RPC calls (`id`, `pin/rm`, `block/stat`), and the longest a blob
    /// stream to or from Kubo may go without a byte before it is ended with an error.
    pub timeout_secs: u64,
    /// Timeout passed to Kubo's `pin/add`, which otherwise hangs when no peer has the content.
    pub pin_timeout_secs: u64,
    /// Chunker passed to `add`; a blob no larger than one chunk gets a CID equal to its sha256.
    pub chunker: String,
    /// Kubo's repository GC (`repo/gc`) runs at most this often, and only after something was
    /// unpinned or an upload was rejected, so that rejected, cancelled, deleted and collected
    /// blobs leave the disk. 0 turns it off. Kubo pauses pins and adds while its GC runs.
    pub gc_interval_secs: u64,
    /// The longest one `repo/gc` may run before the node gives up waiting for it.
    pub gc_timeout_secs: u64,
}

impl Default for KuboConfig {
    fn default() -> Self {
        Self {
            api_url: "http://127.0.0.1:5001".into(),
            timeout_secs: 30,
            pin_timeout_secs: 120,
            chunker: "size-1048576".into(),
            gc_interval_secs: 600,
            gc_timeout_secs: 600,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Largest manifest accepted, in bytes (inclusive); larger ones get 413.
    pub max_manifest_bytes: usize,
    /// Upload sessions untouched for this long are removed, with whatever they staged.
    pub upload_ttl_secs: u64,
    /// How often the stale-upload sweeper runs.
    pub upload_sweep_interval_secs: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            max_manifest_bytes: 4 * 1024 * 1024,
            upload_ttl_secs: 24 * 3600,
            upload_sweep_interval_secs: 600,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// When false, every request is allowed and no token is needed (for a private network).
    pub enabled: bool,
    /// The token `service` and JWT audience.
    pub service: String,
    /// The JWT issuer.
    pub issuer: String,
    /// RSA private key (PKCS#8 or PKCS#1 PEM) that signs tokens; created if missing.
    pub signing_key: PathBuf,
    /// Lifetime of issued tokens.
    pub token_ttl_secs: u64,
    /// Actions granted on every repository to clients without credentials:
    /// `[]` for a private registry, `["pull"]` for anonymous pull.
    pub anonymous: Vec<Action>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            service: "afreg".into(),
            issuer: "afreg".into(),
            signing_key: PathBuf::from("afreg-signing-key.pem"),
            token_ttl_secs: 300,
            anonymous: vec![],
        }
    }
}

/// This region's place in the cluster. Without a `[cluster]` section the node is a cluster of
/// one region (id 1), which still commits every write through its Raft log.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// This region's Raft id. Never reused: a removed region's id is retired.
    pub id: u64,
    /// This region's name, e.g. `eu`.
    pub region: String,
    /// The internal listener (Raft, forwarded writes, pin status, membership). Keep it off the
    /// public internet or behind a private link; every request needs the cluster secret.
    pub listen: SocketAddr,
    /// The URL other regions use to reach `listen` (a proxy or tunnel in front of it is fine).
    pub advertise_url: String,
    /// The shared cluster secret (at least 16 characters). Prefer `secret_file` or the
    /// `AFREG_CLUSTER__SECRET` variable over writing it in the file.
    pub secret: Option<String>,
    /// A file holding the secret; created with a random secret if missing and `secret` is unset.
    pub secret_file: PathBuf,
    /// The voters of a brand-new cluster, this region included: `[{id, name, url}]` where
    /// `url` is the region's internal URL. Used once, by the lowest id, to initialize.
    pub bootstrap: Vec<BootstrapPeer>,
    /// Instead of `bootstrap`: find the regions of a new cluster through the SRV records
    /// `_afreg-internal._tcp.<zone>` (what `afreg dns render` publishes) and ask each who it
    /// is; the lowest id initializes once every listed region answered.
    pub discovery_zone: Option<String>,
    /// The DNS server for `discovery_zone` (`IP:PORT`); unset means the system resolver.
    pub dns_server: Option<SocketAddr>,
    /// Set on a region that an operator adds with `afreg region add`: it waits to be joined
    /// and never initializes a cluster of its own.
    pub join: bool,
    /// Kubo swarm addresses the other regions dial; empty means those Kubo announces.
    pub kubo_swarm_addrs: Vec<String>,
    /// Raft timings (defaults hold over 100–300 ms WAN round trips).
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// How long a write may wait for quorum and local apply before it is answered 503.
    pub write_timeout_ms: u64,
    /// Log entries between snapshots.
    pub snapshot_every: u64,
    /// Pins in flight at once, and the longest wait between retries of a failing pin.
    pub pin_concurrency: usize,
    pub pin_max_backoff_secs: u64,
    /// How often Kubo's pins are reconciled with what the region needs: stray pins removed,
    /// records of pins Kubo lost dropped (and pinned again).
    pub pin_reconcile_secs: u64,
    /// Blobs no manifest references are unlinked this long after they were linked.
    pub gc_grace_secs: u64,
    pub gc_interval_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BootstrapPeer {
    pub id: u64,
    pub name: String,
    /// The region's internal URL (its `advertise_url`).
    pub url: String,
    /// Its public registry URL, if known; the region announces it itself anyway.
    #[serde(default)]
    pub api_url: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        let t = afreg_replication::Timings::default();
        Self {
            id: 1,
            region: "local".into(),
            listen: "127.0.0.1:5100".parse().unwrap(),
            advertise_url: "http://127.0.0.1:5100".into(),
            secret: None,
            secret_file: PathBuf::from("afreg-cluster-secret"),
            bootstrap: vec![],
            discovery_zone: None,
            dns_server: None,
            join: false,
            kubo_swarm_addrs: vec![],
            heartbeat_ms: t.heartbeat_ms,
            election_timeout_min_ms: t.election_timeout_min_ms,
            election_timeout_max_ms: t.election_timeout_max_ms,
            write_timeout_ms: 10_000,
            snapshot_every: 5000,
            pin_concurrency: 4,
            pin_max_backoff_secs: 300,
            pin_reconcile_secs: 300,
            gc_grace_secs: 24 * 3600,
            gc_interval_secs: 3600,
        }
    }
}

impl ClusterConfig {
    pub fn timings(&self) -> afreg_replication::Timings {
        afreg_replication::Timings {
            heartbeat_ms: self.heartbeat_ms,
            election_timeout_min_ms: self.election_timeout_min_ms,
            election_timeout_max_ms: self.election_timeout_max_ms,
        }
    }

    /// The secret from `secret`, else from `secret_file` (created if `create` and missing).
    pub fn load_secret(&self, create: bool) -> anyhow::Result<afreg_replication::ClusterSecret> {
        let s = match &self.secret {
            Some(s) => s.clone(),
            None => {
                let p = &self.secret_file;
                if !p.exists() && create {
                    use rand::Rng;
                    let s: String = rand::thread_rng().sample_iter(&rand::distributions::Alphanumeric).take(40).map(char::from).collect();
                    write_private(p, &s)?;
                    tracing::info!(event = "cluster_secret_created", path = %p.display(), "created a new cluster secret");
                }
                std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("cluster secret file {}: {e}", p.display()))?
            }
        };
        afreg_replication::ClusterSecret::new(s).map_err(anyhow::Error::msg)
    }
}

/// Writes a file only its owner can read.
fn write_private(p: &std::path::Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(p)?;
    f.write_all(content.as_bytes())
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter directive, e.g. `info` or `afreg=debug,info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Json, level: "info".into() }
    }
}

impl Config {
    /// Defaults, then the TOML file (if given), then `AFREG_SECTION__FIELD` variables.
    pub fn load(path: Option<&std::path::Path>) -> Result<Self, String> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(p) = path {
            if !p.exists() {
                return Err(format!("config file {} does not exist", p.display()));
            }
            fig = fig.merge(Toml::file(p));
        }
        // Only SECTION__FIELD keys: other AFREG_ variables (AFREG_CONFIG, AFREG_TOOLS) are not config.
        fig = fig.merge(Env::prefixed("AFREG_").filter(|k| k.as_str().contains("__")).split("__").lowercase(true));
        let cfg: Config = fig.extract().map_err(|e| format!("invalid configuration: {e}"))?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        if !self.kubo.chunker.starts_with("size-") {
            return Err("kubo.chunker must be of the form size-N".into());
        }
        if self.storage.max_manifest_bytes == 0 {
            return Err("storage.max_manifest_bytes must be positive".into());
        }
        if self.auth.token_ttl_secs < 60 {
            return Err("auth.token_ttl_secs must be at least 60".into());
        }
        if self.server.tls_cert.is_some() != self.server.tls_key.is_some() {
            return Err("server.tls_cert and server.tls_key must be set together".into());
        }
        url_ok("server.public_url", &self.server.public_url)?;
        url_ok("kubo.api_url", &self.kubo.api_url)?;
        url_ok("cluster.advertise_url", &self.cluster.advertise_url)?;
        let c = &self.cluster;
        if c.election_timeout_min_ms < 3 * c.heartbeat_ms || c.election_timeout_max_ms <= c.election_timeout_min_ms {
            return Err("cluster: election_timeout_min_ms must be at least 3 x heartbeat_ms, and max > min".into());
        }
        if !c.bootstrap.is_empty() && c.discovery_zone.is_some() {
            return Err("cluster: set bootstrap or discovery_zone, not both".into());
        }
        if !c.bootstrap.is_empty() && !c.bootstrap.iter().any(|p| p.id == c.id) {
            return Err(format!("cluster.bootstrap must list this region (id {})", c.id));
        }
        for p in &c.bootstrap {
            url_ok("cluster.bootstrap url", &p.url)?;
        }
        if c.listen.port() == self.server.listen.port() && c.listen.ip() == self.server.listen.ip() {
            return Err("cluster.listen must differ from server.listen: internal endpoints stay off the public API".into());
        }
        Ok(())
    }

    /// Takes this region's identity from its region file (`afreg serve --region`): the raft id
    /// and name. A configuration that already names another id or region is refused rather
    /// than silently overridden.
    pub fn apply_region_file(&mut self, r: &crate::regions::RegionFile) -> Result<(), String> {
        let d = ClusterConfig::default();
        if self.cluster.id != d.id && self.cluster.id != r.raft_id {
            return Err(format!("cluster.id is {} but {}'s region file says raft_id {}", self.cluster.id, r.name, r.raft_id));
        }
        if self.cluster.region != d.region && self.cluster.region != r.name {
            return Err(format!("cluster.region is {:?} but the region file is {:?}", self.cluster.region, r.name));
        }
        self.cluster.id = r.raft_id;
        self.cluster.region = r.name.clone();
        Ok(())
    }

    pub fn kubo_timeout(&self) -> Duration {
        Duration::from_secs(self.kubo.timeout_secs)
    }
}

fn url_ok(field: &str, v: &str) -> Result<(), String> {
    reqwest::Url::parse(v).map(|_| ()).map_err(|e| format!("{field}: invalid URL {v:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn empty_file_is_valid_and_env_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[auth]\nanonymous = [\"pull\"]\n").unwrap();
        std::env::set_var("AFREG_TOOLS", "/not/config");
        std::env::set_var("AFREG_STORAGE__UPLOAD_TTL_SECS", "42");
        let c = Config::load(Some(&p)).unwrap();
        std::env::remove_var("AFREG_STORAGE__UPLOAD_TTL_SECS");
        assert_eq!(c.storage.upload_ttl_secs, 42);
        assert_eq!(c.auth.anonymous, vec![Action::Pull]);
        assert_eq!(c.storage.max_manifest_bytes, 4 * 1024 * 1024);
    }

    #[test]
    fn tls_is_off_by_default_and_needs_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "").unwrap();
        assert!(Config::load(Some(&p)).unwrap().server.tls().is_none());
        std::fs::write(&p, "[server]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n").unwrap();
        let c = Config::load(Some(&p)).unwrap();
        assert_eq!(c.server.tls(), Some((std::path::Path::new("c.pem"), std::path::Path::new("k.pem"))));
        std::fs::write(&p, "[server]\ntls_cert = \"c.pem\"\n").unwrap();
        let e = Config::load(Some(&p)).unwrap_err();
        assert!(e.contains("server.tls_key"), "{e}");
    }

    #[test]
    fn a_region_file_sets_the_identity_and_conflicts_are_refused() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../regions");
        let eu = crate::regions::load_file(&dir.join("eu.toml")).unwrap();
        let mut c = Config::default();
        c.apply_region_file(&eu).unwrap();
        assert_eq!((c.cluster.id, c.cluster.region.as_str()), (eu.raft_id, "eu"));
        let mut c = Config::default();
        c.cluster.id = eu.raft_id + 10;
        assert!(c.apply_region_file(&eu).unwrap_err().contains("raft_id"));
        let mut c = Config::default();
        c.cluster.region = "us".into();
        assert!(c.apply_region_file(&eu).unwrap_err().contains("region"));
    }

    #[test]
    fn unknown_field_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[server]\nlistn = \"x\"\n").unwrap();
        let e = Config::load(Some(&p)).unwrap_err();
        assert!(e.contains("listn"), "{e}");
    }
}
