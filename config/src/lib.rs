//! The node's configuration: one documented struct per section, read from a TOML file and
//! overridden by `AFREG_SECTION__FIELD` environment variables, validated once at start-up.
//!
//! This is the schema's only definition. `afreg serve` loads it; `afreg up` and the tests build
//! a [`Config`] value and write it with [`Config::to_toml`]; the Akash SDL's environment lines
//! are [`Config::env_overrides`] of a region's `Config`. A renamed field is therefore a compile
//! error wherever a config is built, and [`Config::load_from`] reads back what they write. It is
//! a crate of its own, without the server's dependencies, so that the deployment tools
//! (`afreg-deploy`) can build configs without building the server. `notifications` holds the
//! `[notifications]` section (distribution's endpoint fields), and `mirror` the `[mirror]`
//! section (the upstreams of the pull-through cache), each a file of its own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub mod mirror;
pub mod notifications;
pub use mirror::MirrorConfig;
pub use notifications::NotificationsConfig;

/// The prefix of the environment variables that override the file: `AFREG_SECTION__FIELD`.
pub const ENV_PREFIX: &str = "AFREG_";

/// What is wrong with a configuration, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    #[error("invalid configuration: {0}")]
    Parse(#[from] Box<figment::Error>),
    #[error("{0}")]
    Invalid(String),
    #[error("{field}: invalid URL {value:?}: {reason}")]
    Url { field: &'static str, value: String, reason: url::ParseError },
    #[error("cluster secret file {path}: {source}")]
    SecretFile { path: PathBuf, source: std::io::Error },
    #[error("cannot write the configuration as TOML: {0}")]
    Serialize(#[from] toml::ser::Error),
}

/// An action a grant or anonymous access allows on a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Pull,
    Push,
    Delete,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Pull, Action::Push, Action::Delete];
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }
    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "pull" => Some(Action::Pull),
            "push" => Some(Action::Push),
            "delete" => Some(Action::Delete),
            _ => None,
        }
    }
}

/// Everything `afreg serve` needs. Every field has a default, so an empty file is a valid
/// single-node configuration against a local Postgres and Kubo.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub kubo: KuboConfig,
    pub storage: StorageConfig,
    pub auth: AuthConfig,
    pub log: LogConfig,
    pub cluster: ClusterConfig,
    pub notifications: NotificationsConfig,
    pub usage: UsageConfig,
    pub mirror: MirrorConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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
    /// Instead of `tls_cert`/`tls_key`: the node obtains and renews its certificate itself
    /// through ACME (TLS-ALPN-01 on `listen`, or HTTP-01 on `acme.http_listen`), and serves it
    /// on both listeners.
    pub acme: Option<AcmeConfig>,
    /// Where `/metrics` (Prometheus) is served, on a listener of its own: loopback by
    /// default, so the figures are not public. The public port does not serve it.
    pub metrics_listen: SocketAddr,
    /// Connections each listener (public and internal) holds open at once; more are closed
    /// as soon as they are accepted.
    pub max_connections: usize,
    /// Connections one client may hold open on a listener at once (a trusted proxy's are
    /// bounded only by `max_connections`).
    pub max_connections_per_client: usize,
    /// Every per-client limit (connections, request rates, logins) keys an IPv6 client on this
    /// many leading bits of its address, and an IPv4 client on its address: one subscriber
    /// gets a whole /64, so keying on the exact IPv6 address would give it 2^64 fresh buckets.
    pub ipv6_client_prefix: u8,
    /// Proxies (addresses or CIDR blocks, e.g. `["10.0.0.0/8"]`) whose `X-Forwarded-For` names
    /// the client: the right-most address in it that is not itself listed is the client. Empty
    /// by default, and the header of a peer not listed is never read, so a client cannot
    /// choose its own address.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Cross-origin requests from browser UIs (joxit's docker-registry-ui and the like).
    pub cors: CorsConfig,
    /// A request's line and headers must arrive within this long of the connection's (or the
    /// previous response's) start, or the connection is closed: also the idle keep-alive bound
    /// and the TLS handshake's.
    pub header_read_timeout_secs: u64,
    /// A request body that sends nothing for this long fails (the connection is closed), and
    /// so does a response the client stops reading for this long.
    pub body_idle_timeout_secs: u64,
    /// On SIGTERM, requests in flight get this long to finish before the node stops anyway.
    pub drain_secs: u64,
    /// Costly requests (upload sessions, writes, deletes, `/token`, the catalog, and every
    /// answer of 401 or 403) a client address may make per second (burst: ten times that),
    /// then 429 `TOOMANYREQUESTS`; 0 turns the limit off.
    pub requests_per_second_per_client: u32,
    /// Costly requests per second with one bearer token, from any address (burst: ten times
    /// that); 0 turns the limit off.
    pub requests_per_second_per_token: u32,
    /// Reads (`GET`/`HEAD` of manifests, blobs, tag lists, referrers and `/v2/`) a client
    /// address may make per second (burst: ten times that). The default sits above what a
    /// node serves, so that one heavy client is never throttled below the node's own speed;
    /// 0 turns the limit off.
    pub reads_per_second_per_client: u32,
    /// Reads per second with one bearer token, from any address; 0 turns the limit off.
    pub reads_per_second_per_token: u32,
    /// A 429 is answered after about this long (0.5 to 1.5 times, at random): a client that ignores `Retry-After` cannot loop
    /// refusals at full speed (each costs it this long, and its connections are capped).
    pub refusal_delay_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:5000".parse().unwrap(),
            public_url: "http://127.0.0.1:5000".into(),
            tls_cert: None,
            tls_key: None,
            acme: None,
            metrics_listen: "127.0.0.1:9102".parse().unwrap(),
            max_connections: 4096,
            max_connections_per_client: 256,
            ipv6_client_prefix: 64,
            trusted_proxies: vec![],
            cors: CorsConfig::default(),
            header_read_timeout_secs: 30,
            body_idle_timeout_secs: 60,
            drain_secs: 20,
            requests_per_second_per_client: 500,
            requests_per_second_per_token: 500,
            reads_per_second_per_client: 50_000,
            reads_per_second_per_token: 50_000,
            refusal_delay_ms: 1000,
        }
    }
}

/// `[server.cors]`: which browser origins may call the registry's API from their pages.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins (`https://ui.example`, scheme, host and port only) whose pages may call the
    /// API, with credentials; `["*"]` lets any origin call it without credentials (anonymous
    /// pulls only). Empty (the default): no cross-origin access.
    pub allowed_origins: Vec<String>,
}

impl CorsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |why: String| Err(ConfigError::Invalid(format!("server.cors.allowed_origins: {why}")));
        if self.allowed_origins.iter().any(|o| o == "*") {
            if self.allowed_origins.len() > 1 {
                return bad("\"*\" allows every origin; list nothing beside it".into());
            }
            return Ok(());
        }
        for o in &self.allowed_origins {
            match url::Url::parse(o) {
                Ok(u)
                    if matches!(u.scheme(), "http" | "https")
                        && u.path() == "/"
                        && !o.ends_with('/')
                        && u.query().is_none()
                        && u.username().is_empty() => {}
                _ => {
                    return bad(format!(
                        "{o:?} is not an origin such as \"https://ui.example\" (scheme, host, port; no path)"
                    ))
                }
            }
        }
        Ok(())
    }
}

/// Automatic TLS through an ACME certificate authority (Let's Encrypt, or any RFC 8555 CA).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AcmeConfig {
    /// The CA's ACME directory.
    pub directory_url: String,
    /// Contact addresses for the account, e.g. `mailto:ops@example.org`.
    pub contact: Vec<String>,
    /// The names the certificate covers: the region's own and the global one.
    pub domains: Vec<String>,
    /// Where the account key and the certificate are kept, so a restart reuses them instead of
    /// asking for a new certificate (on the persistent volume).
    pub cache_dir: PathBuf,
    /// A CA certificate (PEM) trusted for the ACME server's own HTTPS besides the public roots:
    /// a private CA, or a test CA such as Pebble's.
    pub ca_file: Option<PathBuf>,
    /// How the CA checks that the node controls `domains`. `tls-alpn-01` (on `server.listen`)
    /// suits names that resolve to this region only. A global name that GeoDNS answers with
    /// the nearest region needs `http-01`: the CA may be sent to any region, and every region
    /// answers every region's challenges.
    pub challenge: AcmeChallenge,
    /// `http-01` only: where the node answers `/.well-known/acme-challenge/` in plain HTTP.
    pub http_listen: SocketAddr,
    /// `http-01` only: the public port of that listener, where the CA dials every region (80;
    /// `http_listen` may differ behind a port mapping).
    pub http_port: u16,
    /// `http-01` only: other regions' host names (or IPv4 addresses), asked on `http_port` for a
    /// challenge this node did not make. The regions in the replicated region list and those
    /// that `cluster.discovery_zone` lists are asked too; this list is for a new cluster without
    /// discovery, whose region list is not replicated yet.
    pub peers: Vec<String>,
}

/// An ACME challenge type (RFC 8555 section 8.3, RFC 8737).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum AcmeChallenge {
    #[default]
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    #[serde(rename = "http-01")]
    Http01,
}

impl Default for AcmeConfig {
    fn default() -> Self {
        AcmeConfig {
            directory_url: "https://acme-v02.api.letsencrypt.org/directory".into(),
            contact: vec![],
            domains: vec![],
            cache_dir: PathBuf::from("acme"),
            ca_file: None,
            challenge: AcmeChallenge::TlsAlpn01,
            http_listen: "0.0.0.0:80".parse().unwrap(),
            http_port: 80,
            peers: vec![],
        }
    }
}

impl ServerConfig {
    /// `(certificate, key)` when TLS is configured with files.
    pub fn tls(&self) -> Option<(&std::path::Path, &std::path::Path)> {
        Some((self.tls_cert.as_deref()?, self.tls_key.as_deref()?))
    }

    /// Whether the listeners serve HTTPS (from files or through ACME).
    pub fn https(&self) -> bool {
        self.tls().is_some() || self.acme.is_some()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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
    /// Where the Raft seat's session connects, when not `url`. The seat holds a session-level
    /// advisory lock, so this must reach PostgreSQL directly: set it when `url` goes through
    /// a transaction-pooling proxy (PgBouncer in `transaction` mode), which cannot keep one.
    pub seat_url: Option<String>,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/afreg".into(),
            max_connections: 16,
            acquire_timeout_secs: 5,
            raft_max_connections: 6,
            seat_url: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KuboConfig {
    /// Kubo's RPC API. It must never be reachable from outside the region.
    pub api_url: String,
    /// Kubo's HTTP gateway (`Addresses.Gateway`), where blob bytes are read: it streams in
    /// 32 KiB writes where the RPC `cat` flushes every 4 KiB, two to three times faster. It
    /// must be on loopback or the region's internal network, never public. Use an IP, not
    /// `localhost` (Kubo answers a `localhost` host with a redirect to a subdomain URL). Empty:
    /// read through the RPC `cat`.
    pub gateway_url: String,
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
            gateway_url: "http://127.0.0.1:8080".into(),
            timeout_secs: 30,
            pin_timeout_secs: 120,
            chunker: "size-1048576".into(),
            gc_interval_secs: 600,
            gc_timeout_secs: 600,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Bytes of manifests the seat-holding process keeps in memory for GET and HEAD, so that
    /// a pull's manifest requests need no Postgres round trip. Any applied write empties it
    /// (read-your-writes and linearizable reads stay exact). 0 turns it off.
    pub manifest_cache_bytes: u64,
    /// Largest manifest accepted, in bytes (inclusive); larger ones get 413.
    pub max_manifest_bytes: usize,
    /// Upload sessions untouched for this long are removed, with whatever they staged.
    pub upload_ttl_secs: u64,
    /// How often the stale-upload sweeper runs.
    pub upload_sweep_interval_secs: u64,
    /// Most entries in one page of the tag list, the catalog or a referrers index: the page size when the client
    /// gives no `n`, and the cap on a larger one (the rest follows the `Link` header).
    pub max_page_entries: u32,
    /// Largest blob accepted, in bytes, whether pushed in one request or in chunks; a larger
    /// one gets 413 `SIZE_INVALID` and nothing of it is kept.
    pub max_blob_bytes: u64,
    /// Upload sessions one user (or, without auth, one client address) may have open at once;
    /// another gets 429 `TOOMANYREQUESTS` until one finishes, is cancelled or expires.
    pub max_uploads_per_user: u32,
    /// Bytes one user's (or client address's) open upload sessions may hold at once, staged
    /// chunk by chunk; a chunk past it gets 429 `TOOMANYREQUESTS` and is not kept.
    pub max_staged_bytes_per_user: u64,
    /// Where verified copies of blobs are kept as plain files, so that pulls are served from
    /// the page cache rather than through Kubo (on the node's persistent volume; every
    /// `afreg serve` of the region on that volume may share it).
    pub blob_cache_dir: PathBuf,
    /// Bytes of blob files kept; the least recently used go first. 0 turns the files off
    /// (every pull through Kubo).
    pub blob_cache_bytes: u64,
    /// The scrub re-reads every blob file once per this many seconds and removes any whose
    /// bytes no longer match their digest. 0 turns it off.
    pub blob_cache_scrub_interval_secs: u64,
    /// The scrub reads at most this many bytes a second.
    pub blob_cache_scrub_bytes_per_second: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            max_manifest_bytes: 4 * 1024 * 1024,
            manifest_cache_bytes: 64 * 1024 * 1024,
            upload_ttl_secs: 24 * 3600,
            upload_sweep_interval_secs: 600,
            max_page_entries: 1000,
            max_blob_bytes: 16 * 1024 * 1024 * 1024,
            max_uploads_per_user: 256,
            max_staged_bytes_per_user: 32 << 30,
            blob_cache_dir: PathBuf::from("blob-files"),
            blob_cache_bytes: 8 << 30,
            blob_cache_scrub_interval_secs: 24 * 3600,
            blob_cache_scrub_bytes_per_second: 32 << 20,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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
    /// Password checks (argon2, about 19 MiB each) run at once; 0: the number of cores. More
    /// wait up to 3 s for a turn, then get 429.
    pub login_concurrency: usize,
    /// Wrong passwords one client (an IPv4 address or an IPv6 prefix) may send for one user
    /// name before its unrecognised logins as that user are refused (429 with Retry-After) for
    /// a lockout that doubles with each further failure. Right passwords never count.
    pub login_failures_per_client_and_user: u32,
    /// Wrong passwords one client may send, for any user names, before its logins are refused
    /// (except as users it logged in as within `login_known_client_secs`).
    pub login_failures_per_client: u32,
    /// Wrong passwords for one user name, from every client, before logins as it are refused
    /// from clients that have not logged in as it within `login_known_client_secs`.
    pub login_failures_per_user: u32,
    /// The longest lockout; failures are forgotten after this long without one.
    pub login_lockout_max_secs: u64,
    /// How long a client that logged in as a user stays exempt from that user name's lockout
    /// (and its own client's).
    pub login_known_client_secs: u64,
    /// How long verified credentials are recognised (by a keyed hash) without another password
    /// check or counting against the limits; 0 checks every time.
    pub verified_cache_secs: u64,
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
            login_concurrency: 0,
            login_failures_per_client_and_user: 10,
            login_failures_per_client: 60,
            login_failures_per_user: 100,
            login_lockout_max_secs: 900,
            login_known_client_secs: 7 * 24 * 3600,
            verified_cache_secs: 60,
        }
    }
}

/// This region's place in the cluster. Without a `[cluster]` section the node is a cluster of
/// one region (id 1), which still commits every write through its Raft log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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
    /// Let discovery send the cluster secret over plain HTTP to a non-loopback address (a
    /// private network without TLS); logged as a warning each time. Off: only over HTTPS, or
    /// to loopback.
    pub allow_insecure_discovery: bool,
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
    /// Entries kept in the log behind a snapshot, so a region that trails by fewer catches up
    /// from the log; one further behind (a new region) is sent the snapshot.
    pub snapshot_keep_logs: u64,
    /// Pins in flight at once, and the longest wait between retries of a failing pin.
    pub pin_concurrency: usize,
    pub pin_max_backoff_secs: u64,
    /// How often Kubo's pins are reconciled with what the region needs: stray pins removed,
    /// records of pins Kubo lost dropped (and pinned again).
    pub pin_reconcile_secs: u64,
    /// Blobs no manifest references are unlinked this long after they were linked.
    pub gc_grace_secs: u64,
    pub gc_interval_secs: u64,
    /// This process's name among the region's processes (unique in the region); empty means
    /// the host name and process id.
    pub process_name: String,
    /// This process's own internal listener, where the region's other processes reach it
    /// when it holds the Raft seat. Unset: `listen`'s address on a free port.
    pub process_listen: Option<SocketAddr>,
    /// The URL of `process_listen` for the region's other processes. Unset: `listen`'s
    /// scheme, with this host's address (over HTTPS: `advertise_url`'s host name, resolved to
    /// this host's address, so the region's certificate is checked).
    pub process_url: Option<String>,
    /// The seat holder's lease: a holder that has not renewed it for this long (paused, cut
    /// off from Postgres) is taken over. A killed holder is taken over within about a sixth
    /// of it plus the rest of its lease.
    pub seat_lease_ms: u64,
    /// CA certificates (PEM) trusted, besides the public roots, by Raft, forwarded writes and
    /// the relays between this region's processes: for internal certificates from a private CA.
    pub ca_file: Option<PathBuf>,
    /// Bind `server.listen` and `listen` with SO_REUSEPORT, so that several processes of the
    /// region on one host share them (`afreg up --processes N`). Leave off where each process
    /// has its own address (a container each).
    pub shared_listeners: bool,
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
            allow_insecure_discovery: false,
            join: false,
            kubo_swarm_addrs: vec![],
            // They hold over 100–300 ms WAN round trips (a heartbeat is also the AppendEntries
            // RPC's timeout). openraft 0.9 gives the leader a lease of election_timeout_max, and
            // a follower of a live leader calls an election only lease + its own election
            // timeout after the last heartbeat: with these, a lost leader is replaced 3.8–4.6 s
            // after its last heartbeat (plus a vote round trip), inside the drills' 6 s
            // failover bound (2–4 s gave 6–8 s).
            heartbeat_ms: 500,
            election_timeout_min_ms: 1500,
            election_timeout_max_ms: 2300,
            write_timeout_ms: 10_000,
            snapshot_every: 5000,
            snapshot_keep_logs: 1000,
            pin_concurrency: 4,
            pin_max_backoff_secs: 300,
            pin_reconcile_secs: 300,
            gc_grace_secs: 24 * 3600,
            gc_interval_secs: 3600,
            process_name: String::new(),
            process_listen: None,
            process_url: None,
            seat_lease_ms: 3000,
            ca_file: None,
            shared_listeners: false,
        }
    }
}

impl ClusterConfig {
    /// The secret from `secret`, else from `secret_file` (created with a random secret if
    /// `create` and missing).
    pub fn read_secret(&self, create: bool) -> Result<String, ConfigError> {
        if let Some(s) = &self.secret {
            return Ok(s.clone());
        }
        let p = &self.secret_file;
        let err = |source| ConfigError::SecretFile { path: p.clone(), source };
        if !p.exists() && create {
            write_private(p, &random_secret(40)).map_err(err)?;
            tracing::info!(event = "cluster_secret_created", path = %p.display(), "created a new cluster secret");
        }
        std::fs::read_to_string(p).map_err(err)
    }
}

/// `n` random alphanumeric characters (cluster secrets, generated passwords).
pub fn random_secret(n: usize) -> String {
    use rand::Rng;
    rand::thread_rng().sample_iter(&rand::distributions::Alphanumeric).take(n).map(char::from).collect()
}

/// Creates a file only its owner can read; fails if it exists.
pub fn write_private(p: &Path, content: &str) -> std::io::Result<()> {
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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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

/// `[usage]`: the region's own pull figures (`/v2/_afreg/usage`, the console).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UsageConfig {
    /// Whether this region counts the pulls it serves (per repository, tag and digest, per
    /// day). Off, its figures stay as they were and pulls queue nothing for them; pull events
    /// (`notifications.endpoints[].pulls`) are sent either way.
    pub count_pulls: bool,
}

impl Default for UsageConfig {
    fn default() -> Self {
        Self { count_pulls: true }
    }
}

impl Config {
    /// Defaults, then the TOML file (if given), then the process's `AFREG_SECTION__FIELD`
    /// variables (other `AFREG_` variables, such as `AFREG_CONFIG` or `AFREG_TOOLS`, are not
    /// configuration).
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(path, std::env::vars())
    }

    /// [`Config::load`] with these variables in place of the process's environment.
    pub fn load_from(
        path: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(p) = path {
            if !p.exists() {
                return Err(ConfigError::Missing(p.to_owned()));
            }
            fig = fig.merge(Toml::file(p));
        }
        for var in vars.into_iter().filter_map(|(k, v)| EnvVar::of(&k, v)) {
            fig = fig.merge(var);
        }
        let cfg: Config = fig.extract().map_err(Box::new)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The configuration as a TOML document, which [`Config::load`] reads back as it is.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        Ok(toml::to_string(self)?)
    }

    /// Every field that differs from its default, as the `AFREG_SECTION__FIELD=value`
    /// variables that set it (in the order of the fields): a configuration carried in an environment, as a
    /// container's. Strings are written as they are; other values as JSON, which the loader
    /// reads back (`[\"a\"]` is an array, `true` a bool).
    pub fn env_overrides(&self) -> Result<Vec<(String, String)>, ConfigError> {
        let ours = toml::Value::try_from(self)?;
        let defaults = toml::Value::try_from(Config::default())?;
        let mut out = vec![];
        flatten(&[], &ours, Some(&defaults), &mut out)?;
        Ok(out)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.notifications.validate()?;
        self.mirror.validate()?;
        if let Some(i) = self.mirror.upstreams.iter().position(|u| u.cache_ttl().is_some()) {
            if !self.usage.count_pulls {
                return Err(ConfigError::Invalid(format!(
                    "mirror.upstreams[{i}].cache_ttl: eviction goes by the last pull, which usage.count_pulls = false \
                     leaves uncounted; set cache_ttl = \"0s\" or count pulls"
                )));
            }
        }
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if !self.kubo.chunker.starts_with("size-") {
            return bad("kubo.chunker must be of the form size-N");
        }
        if self.storage.max_page_entries == 0 {
            return bad("storage.max_page_entries must be positive");
        }
        let sv = &self.server;
        if sv.max_connections == 0 || sv.max_connections_per_client == 0 {
            return bad("server.max_connections and max_connections_per_client must be positive");
        }
        if !(1..=128).contains(&sv.ipv6_client_prefix) {
            return bad("server.ipv6_client_prefix must be between 1 and 128");
        }
        if sv.header_read_timeout_secs == 0 || sv.body_idle_timeout_secs == 0 {
            return bad("server.header_read_timeout_secs and body_idle_timeout_secs must be positive");
        }
        sv.cors.validate()?;
        if sv.metrics_listen == sv.listen || sv.metrics_listen == self.cluster.listen {
            return bad("server.metrics_listen must differ from server.listen and cluster.listen");
        }
        if self.storage.max_blob_bytes == 0 || self.storage.max_uploads_per_user == 0 {
            return bad("storage.max_blob_bytes and max_uploads_per_user must be positive");
        }
        if self.storage.max_staged_bytes_per_user == 0 {
            return bad("storage.max_staged_bytes_per_user must be positive");
        }
        if self.storage.blob_cache_bytes > 0
            && self.storage.blob_cache_scrub_interval_secs > 0
            && self.storage.blob_cache_scrub_bytes_per_second == 0
        {
            return bad("storage.blob_cache_scrub_bytes_per_second must be positive while the scrub runs");
        }
        if self.storage.max_manifest_bytes == 0 {
            return bad("storage.max_manifest_bytes must be positive");
        }
        if self.auth.token_ttl_secs < 60 {
            return bad("auth.token_ttl_secs must be at least 60");
        }
        if self.server.tls_cert.is_some() != self.server.tls_key.is_some() {
            return bad("server.tls_cert and server.tls_key must be set together");
        }
        if let Some(acme) = &self.server.acme {
            if self.server.tls_cert.is_some() {
                return bad("server.acme and server.tls_cert/tls_key are alternatives: set one");
            }
            if acme.domains.is_empty() {
                return bad("server.acme.domains must name the certificate's host names");
            }
            url_ok("server.acme.directory_url", &acme.directory_url)?;
            if let Some(p) = acme.peers.iter().find(|p| p.is_empty() || p.contains(['/', ':', '@', ' '])) {
                return Err(ConfigError::Invalid(format!(
                    "server.acme.peers: {p:?} is not a host name or IPv4 address (no scheme, port or path)"
                )));
            }
        }
        url_ok("server.public_url", &self.server.public_url)?;
        url_ok("kubo.api_url", &self.kubo.api_url)?;
        if !self.kubo.gateway_url.is_empty() {
            url_ok("kubo.gateway_url", &self.kubo.gateway_url)?;
        }
        url_ok("cluster.advertise_url", &self.cluster.advertise_url)?;
        let c = &self.cluster;
        if c.seat_lease_ms < 600 {
            return bad("cluster.seat_lease_ms must be at least 600");
        }
        // With no grace, GC may take a blob between its upload and the manifest naming it.
        if c.gc_grace_secs == 0 {
            return bad("cluster.gc_grace_secs must be at least 1");
        }
        if let Some(u) = &c.process_url {
            url_ok("cluster.process_url", u)?;
        }
        if c.process_listen.is_some_and(|p| p.port() != 0 && (p == c.listen || p == sv.listen)) {
            return bad("cluster.process_listen must differ from cluster.listen and server.listen");
        }
        if c.election_timeout_min_ms < 3 * c.heartbeat_ms || c.election_timeout_max_ms <= c.election_timeout_min_ms {
            return bad("cluster: election_timeout_min_ms must be at least 3 x heartbeat_ms, and max > min");
        }
        if !c.bootstrap.is_empty() && c.discovery_zone.is_some() {
            return bad("cluster: set bootstrap or discovery_zone, not both");
        }
        if !c.bootstrap.is_empty() && !c.bootstrap.iter().any(|p| p.id == c.id) {
            return bad(&format!("cluster.bootstrap must list this region (id {})", c.id));
        }
        for p in &c.bootstrap {
            url_ok("cluster.bootstrap url", &p.url)?;
        }
        if c.listen.port() == self.server.listen.port() && c.listen.ip() == self.server.listen.ip() {
            return bad("cluster.listen must differ from server.listen: internal endpoints stay off the public API");
        }
        Ok(())
    }

    pub fn kubo_timeout(&self) -> Duration {
        Duration::from_secs(self.kubo.timeout_secs)
    }
}

/// One `AFREG_SECTION__FIELD` variable as a figment provider, read as figment's own `Env` reads
/// it (`SECTION__FIELD` is `section.field`; the value is parsed as a bool, a number, an array
/// such as `["a","b"]`, or else a string) but from any list of variables, not only the
/// process's, so that a container's environment can be checked before it is deployed. Each
/// variable is merged on its own, so figment merges their tables; errors name the variable.
struct EnvVar {
    path: String,
    value: String,
}

impl EnvVar {
    /// The variable, if it is configuration (`AFREG_` and a `__`).
    fn of(key: &str, value: String) -> Option<EnvVar> {
        let rest = key.strip_prefix(ENV_PREFIX).filter(|r| r.contains("__"))?;
        Some(EnvVar { path: rest.to_lowercase().replace("__", "."), value })
    }
}

impl figment::Provider for EnvVar {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("environment variable").interpolater(|_, keys| {
            format!("{ENV_PREFIX}{}", keys.iter().map(|k| k.to_uppercase()).collect::<Vec<_>>().join("__"))
        })
    }

    fn data(&self) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        // JSON first, for what figment's own syntax cannot say (a list of tables, such as
        // `notifications.endpoints`); anything else as figment reads it.
        let json = (self.value.starts_with('[') || self.value.starts_with('{'))
            .then(|| serde_json::from_str::<figment::value::Value>(&self.value).ok())
            .flatten();
        let value: figment::value::Value =
            json.unwrap_or_else(|| self.value.parse().expect("parsing a figment value is infallible"));
        let dict = figment::util::nest(&self.path, value).into_dict().expect("nest makes a dict");
        Ok(figment::Profile::Default.collect(dict))
    }
}

/// The variables of every value under `path` that differs from `default` (tables recurse:
/// `server.acme.domains` is `AFREG_SERVER__ACME__DOMAINS`).
fn flatten(
    path: &[&str],
    value: &toml::Value,
    default: Option<&toml::Value>,
    out: &mut Vec<(String, String)>,
) -> Result<(), ConfigError> {
    if default == Some(value) {
        return Ok(());
    }
    let text = match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let mut p = path.to_vec();
                p.push(k);
                flatten(&p, v, default.and_then(|d| d.get(k)), out)?;
            }
            return Ok(());
        }
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Array(a) if is_string_array(value) => {
            let items: Vec<String> = a.iter().map(|v| format!("{:?}", v.as_str().unwrap_or(""))).collect();
            format!("[{}]", items.join(","))
        }
        // A list of tables (`notifications.endpoints`) as JSON, which the loader reads back.
        toml::Value::Array(_) => {
            serde_json::to_string(value).map_err(|e| ConfigError::Invalid(format!("{}: {e}", path.join("."))))?
        }
        other => {
            return Err(ConfigError::Invalid(format!(
                "{} = {other} cannot be carried in an environment variable; set it in the file",
                path.join(".")
            )))
        }
    };
    let key = path.iter().map(|p| p.to_uppercase()).collect::<Vec<_>>().join("__");
    out.push((format!("{ENV_PREFIX}{key}"), text));
    Ok(())
}

fn is_string_array(v: &toml::Value) -> bool {
    v.as_array().is_some_and(|a| a.iter().all(|x| x.is_str()))
}

fn url_ok(field: &'static str, v: &str) -> Result<(), ConfigError> {
    url::Url::parse(v).map(|_| ()).map_err(|reason| ConfigError::Url { field, value: v.to_owned(), reason })
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn cors_origins_come_from_the_environment_and_a_bad_one_is_refused_by_name() {
        let var = |v: &str| vec![("AFREG_SERVER__CORS__ALLOWED_ORIGINS".to_owned(), v.to_owned())];
        assert!(Config::default().server.cors.allowed_origins.is_empty(), "off by default");
        let c = Config::load_from(None, var(r#"["https://ui.example","http://127.0.0.1:8080"]"#)).unwrap();
        assert_eq!(c.server.cors.allowed_origins, vec!["https://ui.example", "http://127.0.0.1:8080"]);
        assert!(Config::load_from(None, var(r#"["*"]"#)).is_ok());
        for bad in [r#"["https://ui.example/path"]"#, r#"["ui.example"]"#, r#"["*","https://a.example"]"#] {
            let e = Config::load_from(None, var(bad)).unwrap_err().to_string();
            assert!(e.contains("server.cors.allowed_origins"), "{bad}: {e}");
        }
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
        let e = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("server.tls_key"), "{e}");
    }

    #[test]
    fn acme_http01_reads_from_the_environment_and_refuses_a_peer_that_is_not_a_host() {
        let vars = |peers: &str| {
            vec![
                (
                    "AFREG_SERVER__ACME__DOMAINS".to_owned(),
                    r#"["registry-eu.example.org","registry.example.org"]"#.to_owned(),
                ),
                ("AFREG_SERVER__ACME__CHALLENGE".to_owned(), "http-01".to_owned()),
                ("AFREG_SERVER__ACME__PEERS".to_owned(), peers.to_owned()),
            ]
        };
        let c = Config::load_from(None, vars(r#"["registry-us.example.org","192.0.2.1"]"#)).unwrap();
        let acme = c.server.acme.unwrap();
        assert_eq!(acme.challenge, AcmeChallenge::Http01);
        assert_eq!((acme.http_listen.port(), acme.http_port), (80, 80));
        assert_eq!(acme.peers, ["registry-us.example.org", "192.0.2.1"]);
        for bad in [r#"["http://registry-us.example.org"]"#, r#"["registry-us.example.org:80"]"#, r#"[""]"#] {
            let e = Config::load_from(None, vars(bad)).unwrap_err().to_string();
            assert!(e.contains("server.acme.peers"), "{bad}: {e}");
        }
        let e = Config::load_from(
            None,
            vec![
                ("AFREG_SERVER__ACME__DOMAINS".to_owned(), r#"["a.example.org"]"#.to_owned()),
                ("AFREG_SERVER__ACME__CHALLENGE".to_owned(), "dns-01".to_owned()),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("AFREG_SERVER__ACME__CHALLENGE"), "{e}");
    }

    #[test]
    fn a_gc_grace_of_zero_is_refused() {
        let var = |v: &str| vec![("AFREG_CLUSTER__GC_GRACE_SECS".to_owned(), v.to_owned())];
        assert_eq!(Config::load_from(None, var("1")).unwrap().cluster.gc_grace_secs, 1);
        let e = Config::load_from(None, var("0")).unwrap_err().to_string();
        assert!(e.contains("cluster.gc_grace_secs must be at least 1"), "{e}");
    }

    #[test]
    fn unknown_field_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[server]\nlistn = \"x\"\n").unwrap();
        let e = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("listn"), "{e}");
    }

    #[test]
    fn a_written_config_and_its_env_overrides_read_back_the_same() {
        let mut c = Config::default();
        c.server.public_url = "https://registry-eu.example.org".into();
        c.server.tls_cert = Some("/data/tls/tls.crt".into());
        c.server.tls_key = Some("/data/tls/tls.key".into());
        c.auth.anonymous = vec![Action::Pull];
        c.cluster.id = 7;
        c.cluster.heartbeat_ms = 250;
        c.cluster.election_timeout_min_ms = 1000;
        c.cluster.election_timeout_max_ms = 2000;
        c.cluster.kubo_swarm_addrs = vec!["/dns4/registry-eu.example.org/tcp/4001".into()];
        c.cluster.bootstrap = vec![BootstrapPeer {
            id: 7,
            name: "eu".into(),
            url: "http://127.0.0.1:5100".into(),
            api_url: String::new(),
        }];
        let acme = AcmeConfig {
            domains: vec!["registry-eu.example.org".into(), "registry.example.org".into()],
            contact: vec!["mailto:ops@example.org".into()],
            cache_dir: "/data/acme".into(),
            ..AcmeConfig::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, c.to_toml().unwrap()).unwrap();
        assert_eq!(Config::load_from(Some(&p), []).unwrap(), c);
        c.server.tls_cert = None;
        c.server.tls_key = None;
        c.server.acme = Some(acme);
        std::fs::write(&p, c.to_toml().unwrap()).unwrap();
        assert_eq!(Config::load_from(Some(&p), []).unwrap(), c);

        // The bootstrap list, an array of tables, travels as JSON and reads back.
        let with_bootstrap = c.env_overrides().unwrap();
        let (_, json) =
            with_bootstrap.iter().find(|(k, _)| k == "AFREG_CLUSTER__BOOTSTRAP").expect("the bootstrap list");
        assert!(json.starts_with("[{"), "{json}");
        assert_eq!(Config::load_from(None, with_bootstrap).unwrap(), c);
        c.cluster.bootstrap.clear();
        let env = c.env_overrides().unwrap();
        assert!(env.contains(&("AFREG_CLUSTER__ID".into(), "7".into())), "{env:?}");
        assert!(env.contains(&("AFREG_AUTH__ANONYMOUS".into(), "[\"pull\"]".into())), "{env:?}");
        assert!(!env.iter().any(|(k, _)| k == "AFREG_KUBO__CHUNKER"), "defaults are left out: {env:?}");
        assert!(env.contains(&("AFREG_SERVER__ACME__CACHE_DIR".into(), "/data/acme".into())), "{env:?}");
        assert_eq!(Config::load_from(None, env).unwrap(), c);
    }
}
