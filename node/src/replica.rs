//! The node's side of the cluster: builds this region's [`Cluster`] and Raft seat from the
//! configuration, runs the duties (the seat holder's pinner, announcement, garbage collection
//! and Raft metrics; every process's token keys), and builds the status report of every region
//! (`GET /status`, `afreg status`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use afreg_deploy::discovery::{self, NameServer};
use afreg_replication::pinner::{self, Ipfs, PinnerOptions};
use afreg_replication::seat::{self, SeatStatus};
use afreg_replication::store::pins::{self, PinStats};
use afreg_replication::store::regions;
use afreg_replication::{
    duties, Cluster, ClusterOptions, ClusterSecret, RaftStatus, Region, Role, Seat, SeatOptions, Timings,
};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::auth::Keys;
use crate::blob_files::BlobFiles;
use crate::config::{ClusterConfig, Config};
use crate::kubo::{Kubo, KuboError};

/// The region's Kubo as the pinner sees it, with the blob files that go when a pin goes.
pub struct KuboIpfs(pub Kubo, pub Option<Arc<BlobFiles>>);

impl Ipfs for KuboIpfs {
    type Error = KuboError;
    async fn pin(&self, cid: &str, timeout: Duration) -> Result<(), KuboError> {
        self.0.pin_add_within(cid, timeout).await
    }
    async fn unpin(&self, cid: &str) -> Result<(), KuboError> {
        self.0.pin_rm(cid).await?;
        if let Some(files) = &self.1 {
            files.remove_cid(cid);
        }
        Ok(())
    }
    async fn peer(&self, addrs: &[String]) -> Result<(), KuboError> {
        let mut last = Err(KuboError::NoAddress);
        for a in addrs {
            last = self.0.peer_with(a).await;
            if last.is_ok() {
                break;
            }
        }
        last
    }
    async fn pinned(&self) -> Result<Vec<String>, KuboError> {
        self.0.pinned().await
    }
}

/// The cluster secret from the configuration (created in `secret_file` when `create`).
pub fn cluster_secret(c: &ClusterConfig, create: bool) -> anyhow::Result<ClusterSecret> {
    Ok(ClusterSecret::new(c.read_secret(create)?)?)
}

/// Raft's timings from `[cluster]`.
pub fn timings(c: &ClusterConfig) -> Timings {
    Timings {
        heartbeat_ms: c.heartbeat_ms,
        election_timeout_min_ms: c.election_timeout_min_ms,
        election_timeout_max_ms: c.election_timeout_max_ms,
    }
}

/// This region's record for the region list, with whatever Kubo reports now.
pub async fn this_region(cfg: &Config, kubo: &Kubo, keys: &Keys) -> Region {
    let (peer, announced) = kubo.identity().await.unwrap_or_default();
    let addrs = if cfg.cluster.kubo_swarm_addrs.is_empty() { announced } else { cfg.cluster.kubo_swarm_addrs.clone() };
    Region {
        name: cfg.cluster.region.clone(),
        raft_addr: cfg.cluster.advertise_url.clone(),
        api_url: cfg.server.public_url.clone(),
        kubo_peer_id: peer,
        kubo_swarm_addrs: addrs,
        token_jwk: keys.jwk_json(),
    }
}

/// This process's name in its region: `cluster.process_name`, else the host name and pid.
pub fn process_name(cfg: &Config) -> String {
    if !cfg.cluster.process_name.is_empty() {
        return cfg.cluster.process_name.clone();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
    format!("{}-{}", if host.is_empty() { "afreg" } else { &host }, std::process::id())
}

/// Where the region's other processes reach this one's own internal listener (bound at
/// `bound`): `cluster.process_url`, else `advertise_url`'s scheme with this host's address.
/// Over HTTPS the URL keeps `advertise_url`'s host name (the certificate's) and the address
/// is given beside it, so the relaying process checks the region's certificate.
pub fn process_url(cfg: &Config, bound: std::net::SocketAddr) -> (String, Option<std::net::SocketAddr>) {
    if let Some(u) = &cfg.cluster.process_url {
        return (u.clone(), None);
    }
    let ip = if bound.ip().is_unspecified() { local_ip().unwrap_or(bound.ip()) } else { bound.ip() };
    let addr = std::net::SocketAddr::new(ip, bound.port());
    let advertised = reqwest::Url::parse(&cfg.cluster.advertise_url).ok();
    match advertised.as_ref().filter(|u| u.scheme() == "https").and_then(|u| u.host_str().map(str::to_owned)) {
        Some(host) => (format!("https://{host}:{}", bound.port()), Some(addr)),
        None => (format!("http://{addr}"), None),
    }
}

/// This host's address on the network its default route leads to (no packet is sent: a UDP
/// socket's `connect` only picks the source address).
fn local_ip() -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("10.255.255.255:9").ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

/// The region's Raft seat as this process takes part in it.
pub fn seat(cfg: &Config, url: String, addr: Option<std::net::SocketAddr>) -> anyhow::Result<Seat> {
    let opts = SeatOptions {
        process: process_name(cfg),
        url,
        addr,
        public_url: cfg.server.public_url.clone(),
        lease: Duration::from_millis(cfg.cluster.seat_lease_ms),
    };
    let url = cfg.database.seat_url.as_deref().unwrap_or(&cfg.database.url);
    let db = url.parse().map_err(|e| anyhow::anyhow!("database.seat_url: {e}"))?;
    Ok(Seat::new(opts, db))
}

/// The CA certificates of `cluster.ca_file`, if set.
pub fn internal_roots(c: &ClusterConfig) -> anyhow::Result<Vec<reqwest::Certificate>> {
    let Some(p) = &c.ca_file else { return Ok(Vec::new()) };
    let pem = std::fs::read(p).map_err(|e| anyhow::anyhow!("cluster.ca_file {}: {e}", p.display()))?;
    reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| anyhow::anyhow!("cluster.ca_file {}: {e}", p.display()))
}

/// This region's cluster handle; its Raft member runs (initializing a new cluster when
/// configured to) whenever this process holds `seat` ([`Cluster::run`]).
pub fn cluster(cfg: &Config, pool: PgPool, me: Region, seat: Arc<Seat>) -> anyhow::Result<Arc<Cluster>> {
    let c = &cfg.cluster;
    let bootstrap: Option<BTreeMap<u64, Region>> = if c.join || c.discovery_zone.is_some() {
        None
    } else if c.bootstrap.is_empty() {
        Some(BTreeMap::from([(c.id, me.clone())]))
    } else {
        Some(
            c.bootstrap
                .iter()
                .map(|p| {
                    let region = if p.id == c.id {
                        me.clone()
                    } else {
                        Region {
                            name: p.name.clone(),
                            raft_addr: p.url.clone(),
                            api_url: p.api_url.clone(),
                            ..Default::default()
                        }
                    };
                    (p.id, region)
                })
                .collect(),
        )
    };
    let opts = ClusterOptions {
        id: c.id,
        me,
        bootstrap,
        secret: cluster_secret(c, true)?,
        timings: timings(c),
        write_timeout: Duration::from_millis(c.write_timeout_ms),
        snapshot_every: c.snapshot_every,
        snapshot_keep_logs: c.snapshot_keep_logs,
        roots: internal_roots(c)?,
    };
    Cluster::new(pool, opts, seat)
}

/// Who a region is, as its internal endpoint tells a region that discovered it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    pub id: u64,
    pub name: String,
    /// Its internal URL (`cluster.advertise_url`).
    pub url: String,
    pub api_url: String,
}

pub fn identity(cfg: &Config) -> Identity {
    Identity {
        id: cfg.cluster.id,
        name: cfg.cluster.region.clone(),
        url: cfg.cluster.advertise_url.clone(),
        api_url: cfg.server.public_url.clone(),
    }
}

/// For a new cluster configured with `discovery_zone`: finds every region's internal endpoint
/// through `_afreg-internal._tcp.<zone>`, asks each who it is (with the cluster secret), and
/// once every listed region answered with a distinct id, initializes the cluster if this
/// region has the lowest id. Retries every 2 s until this region is part of a cluster.
async fn discover_and_initialize(cfg: Config, cluster: Arc<Cluster>, me: Region, stop: CancellationToken) {
    let Some(zone) = cfg.cluster.discovery_zone.clone() else { return };
    let ns = cfg.cluster.dns_server.map(NameServer::At).unwrap_or(NameServer::System);
    let scheme = if cfg.server.https() { "https" } else { "http" };
    loop {
        if cluster.is_initialized().await {
            return;
        }
        match discover_members(&zone, ns, scheme, cfg.cluster.allow_insecure_discovery, cluster.secret()).await {
            Ok(mut members) if members.contains_key(&cluster.id) => {
                members.insert(cluster.id, me.clone());
                match cluster.initialize(members).await {
                    Ok(true) => return,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(event = "discovery_failed", error = %e, "could not initialize the discovered cluster")
                    }
                }
            }
            Ok(members) => tracing::info!(event = "discovery_wait", found = ?members.keys().collect::<Vec<_>>(),
                "this region is not among the discovered ones yet"),
            Err(e) => {
                tracing::info!(event = "discovery_wait", reason = %e, "waiting for every region to be discoverable")
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// Why the regions of a new cluster are not all known yet.
#[derive(Debug, thiserror::Error)]
enum MembersError {
    #[error(transparent)]
    Dns(#[from] discovery::DiscoveryError),
    #[error("{0} has no address")]
    NoAddress(String),
    #[error("{url}: {source}")]
    Ask { url: String, source: reqwest::Error },
    #[error("{targets} SRV targets answered as {regions} distinct regions (health checks settling?)")]
    Duplicates { targets: usize, regions: usize },
    /// Discovery will not send the cluster secret there.
    #[error(transparent)]
    Untrusted(#[from] Untrusted),
}

/// Why discovery will not send the cluster secret to an SRV target.
#[derive(Debug, thiserror::Error)]
enum Untrusted {
    #[error("SRV target {host} is outside the discovery zone {zone}: not sending it the cluster secret")]
    OutsideZone { host: String, zone: String },
    #[error(
        "{host} ({addr}) would get the cluster secret over plain HTTP: enable TLS, or set cluster.allow_insecure_discovery"
    )]
    PlainHttp { host: String, addr: std::net::IpAddr },
}

/// Whether discovery may send the cluster secret to `host` (an SRV target of `zone`) at `addr`
/// over `scheme`: the target must lie inside the zone (a spoofed or misconfigured record must
/// not collect the secret), and plain HTTP only reaches loopback unless `allow_insecure`.
fn may_send_secret(
    host: &str,
    zone: &str,
    scheme: &str,
    addr: std::net::IpAddr,
    allow_insecure: bool,
) -> Result<(), Untrusted> {
    let (host, zone) =
        (host.trim_end_matches('.').to_ascii_lowercase(), zone.trim_end_matches('.').to_ascii_lowercase());
    if host != zone && !host.ends_with(&format!(".{zone}")) {
        return Err(Untrusted::OutsideZone { host, zone });
    }
    if scheme == "http" && !addr.is_loopback() {
        if !allow_insecure {
            return Err(Untrusted::PlainHttp { host, addr });
        }
        tracing::warn!(event = "insecure_discovery", host = %host, addr = %addr, "sending the cluster secret over plain HTTP (cluster.allow_insecure_discovery)");
    }
    Ok(())
}

async fn discover_members(
    zone: &str,
    ns: NameServer,
    scheme: &str,
    allow_insecure: bool,
    secret: &ClusterSecret,
) -> Result<BTreeMap<u64, Region>, MembersError> {
    let resolver = discovery::resolver(ns, None)?;
    let peers = discovery::discover_internal(&resolver, zone).await?;
    let mut members = BTreeMap::new();
    for p in &peers {
        // Resolve through the same DNS (the regional names may exist only there), but connect
        // by name so that TLS checks the certificate against it.
        let addr = discovery::lookup(&resolver, &p.host)
            .await?
            .addresses
            .first()
            .copied()
            .ok_or_else(|| MembersError::NoAddress(p.host.clone()))?;
        may_send_secret(&p.host, zone, scheme, addr, allow_insecure).map_err(MembersError::Untrusted)?;
        let url = format!("{scheme}://{}:{}/internal/identity", p.host, p.port);
        let ask = |source| MembersError::Ask { url: url.clone(), source };
        let http = reqwest::Client::builder()
            .resolve(&p.host, std::net::SocketAddr::new(addr, p.port))
            .timeout(Duration::from_secs(3))
            .build()
            .map_err(ask)?;
        let who: Identity = http
            .get(&url)
            .bearer_auth(secret.expose())
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(ask)?
            .json()
            .await
            .map_err(ask)?;
        members
            .insert(who.id, Region { name: who.name, raft_addr: who.url, api_url: who.api_url, ..Default::default() });
    }
    if members.len() != peers.len() {
        return Err(MembersError::Duplicates { targets: peers.len(), regions: members.len() });
    }
    Ok(members)
}

/// Spawns the region's background duties; they end when `stop` is cancelled. The pinner,
/// the announcement, GC, discovery and the Raft metrics run only while this process runs the
/// region's Raft member (they would otherwise run once per process); the token keys are
/// followed by every process.
pub fn spawn_duties(
    cfg: &Config,
    pool: PgPool,
    cluster: Arc<Cluster>,
    kubo: Kubo,
    files: Option<Arc<BlobFiles>>,
    keys: Arc<Keys>,
    stop: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let holder = {
        let (cfg, pool, cluster, kubo, keys, stop) =
            (cfg.clone(), pool.clone(), cluster.clone(), kubo, keys.clone(), stop.clone());
        let files = files.clone();
        tokio::spawn(async move {
            let mut serving = cluster.serving();
            loop {
                let epoch = *serving.borrow_and_update();
                let session = stop.child_token();
                let tasks = match epoch {
                    Some(_) => {
                        let (kubo, files) = (kubo.clone(), files.clone());
                        holder_duties(&cfg, pool.clone(), cluster.clone(), kubo, files, keys.clone(), session.clone())
                    }
                    None => Vec::new(),
                };
                tokio::select! {
                    _ = stop.cancelled() => {}
                    r = serving.changed() => { let _ = r; }
                }
                session.cancel();
                for t in tasks {
                    let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
                }
                if stop.is_cancelled() {
                    return;
                }
            }
        })
    };
    vec![holder, tokio::spawn(follow_token_keys(pool, cluster, keys, stop))]
}

/// The duties of the process that runs the region's Raft member.
fn holder_duties(
    cfg: &Config,
    pool: PgPool,
    cluster: Arc<Cluster>,
    kubo: Kubo,
    files: Option<Arc<BlobFiles>>,
    keys: Arc<Keys>,
    stop: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let c = &cfg.cluster;
    let mut tasks = Vec::new();
    let opts = PinnerOptions {
        pin_timeout: Duration::from_secs(cfg.kubo.pin_timeout_secs),
        max_backoff: Duration::from_secs(c.pin_max_backoff_secs),
        concurrency: c.pin_concurrency,
        reconcile_every: Duration::from_secs(c.pin_reconcile_secs.max(1)),
    };
    tasks.push(tokio::spawn(pinner::run(
        pool.clone(),
        cluster.id,
        Arc::new(KuboIpfs(kubo.clone(), files.clone())),
        cluster.subscribe(),
        opts,
        stop.clone(),
    )));
    let (cfg2, kubo2, keys2) = (cfg.clone(), kubo.clone(), keys.clone());
    let me = move || {
        let (cfg, kubo, keys) = (cfg2.clone(), kubo2.clone(), keys2.clone());
        async move { this_region(&cfg, &kubo, &keys).await }
    };
    tasks.push(tokio::spawn(duties::announce(pool.clone(), cluster.clone(), me, stop.clone())));
    tasks.push(tokio::spawn(duties::collect_garbage(
        pool.clone(),
        cluster.clone(),
        Duration::from_secs(c.gc_grace_secs),
        Duration::from_secs(c.gc_interval_secs.max(1)),
        stop.clone(),
    )));
    if c.discovery_zone.is_some() && !c.join {
        let (cfg, cluster, kubo, keys, stop) = (cfg.clone(), cluster.clone(), kubo.clone(), keys.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let me = this_region(&cfg, &kubo, &keys).await;
            discover_and_initialize(cfg, cluster, me, stop).await
        }));
    }
    tasks.push(tokio::spawn(raft_metrics(cluster, stop)));
    tasks
}

/// Keeps the other regions' token keys current from the region list.
async fn follow_token_keys(pool: PgPool, cluster: Arc<Cluster>, keys: Arc<Keys>, stop: CancellationToken) {
    let mut changed = cluster.subscribe();
    loop {
        if let Ok(regions) = regions::live_regions(&pool).await {
            keys.set_peer_keys(regions.iter().map(|r| r.token_jwk.as_str()).filter(|j| !j.is_empty()));
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            r = changed.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
    }
}

/// Publishes the Raft figures as Prometheus gauges, once a second.
async fn raft_metrics(cluster: Arc<Cluster>, stop: CancellationToken) {
    loop {
        let Some(s) = cluster.status() else { return };
        metrics::gauge!("afreg_raft_term").set(s.term as f64);
        metrics::gauge!("afreg_raft_is_leader").set(if s.role == Role::Leader { 1.0 } else { 0.0 });
        metrics::gauge!("afreg_raft_last_log_index").set(s.last_log_index.unwrap_or(0) as f64);
        metrics::gauge!("afreg_raft_last_applied").set(s.last_applied.unwrap_or(0) as f64);
        if let Some(matched) = &s.matched {
            for (id, m) in matched {
                let lag = s.last_log_index.unwrap_or(0).saturating_sub(m.unwrap_or(0));
                metrics::gauge!("afreg_raft_replication_lag_entries", "region_id" => id.to_string()).set(lag as f64);
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// One region's own figures (`GET /status?scope=local`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalStatus {
    pub name: String,
    /// The Raft member's view, from the process that runs it.
    pub raft: RaftStatus,
    pub pins: PinStats,
    /// Who holds the region's Raft seat, at which epoch, and the region's processes.
    #[serde(default)]
    pub seat: SeatStatus,
}

/// The path of a process's own figures on its internal listener.
pub const LOCAL_STATUS_PATH: &str = "/internal/local-status";

/// Why this region's figures could not be gathered; `GET /status?scope=local` and the internal
/// local-status answer it as 503 with this text.
#[derive(Debug, thiserror::Error)]
pub enum LocalStatusError {
    /// The seat's row could not be read.
    #[error("postgres: {0}")]
    Postgres(#[source] sqlx::Error),
    /// This process does not run the Raft member, and no other process of the region does.
    #[error("no process of this region holds its Raft seat")]
    NoSeatHolder,
    /// The process that runs the Raft member did not answer with its figures.
    #[error("seat holder {holder}: {source}")]
    SeatHolder { holder: String, source: reqwest::Error },
}

/// This region's figures. A process that does not run the Raft member asks the one that
/// does (its own internal listener, with the cluster secret, 2 s).
pub async fn local_status(cfg: &Config, pool: &PgPool, cluster: &Cluster) -> Result<LocalStatus, LocalStatusError> {
    let me = process_name(cfg);
    let seat = seat::status(pool, &me).await.map_err(LocalStatusError::Postgres)?;
    let Some(raft) = cluster.status() else {
        let holder = cluster.seat().holder().filter(|h| h.name != me).ok_or(LocalStatusError::NoSeatHolder)?;
        let mut s = holder_status(cluster, &holder)
            .await
            .map_err(|source| LocalStatusError::SeatHolder { holder: holder.name.clone(), source })?;
        s.seat = seat;
        return Ok(s);
    };
    Ok(LocalStatus { name: cfg.cluster.region.clone(), raft, pins: pins::stats(pool).await.unwrap_or_default(), seat })
}

async fn holder_status(cluster: &Cluster, h: &seat::Holder) -> Result<LocalStatus, reqwest::Error> {
    cluster
        .client_for(h)
        .get(format!("{}{LOCAL_STATUS_PATH}", h.url.trim_end_matches('/')))
        .timeout(Duration::from_secs(2))
        .bearer_auth(cluster.secret().expose())
        .send()
        .await?
        .error_for_status()?
        .json()
        .await
}

/// One row of the cluster report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegionStatus {
    pub id: u64,
    pub name: String,
    pub url: String,
    pub reachable: bool,
    pub role: Option<Role>,
    pub term: Option<u64>,
    pub leader: Option<u64>,
    pub last_applied: Option<u64>,
    /// Entries the leader has that this region has not applied yet.
    pub replication_lag: Option<u64>,
    pub pin_backlog: Option<i64>,
    pub pins_failing: Option<i64>,
    /// Bytes this region fetched from the others to pin blobs.
    pub replicated_bytes: Option<i64>,
    /// The process that runs the region's Raft member, its seat epoch, and every process.
    pub seat_holder: Option<String>,
    pub seat_epoch: Option<u64>,
    pub processes: Vec<String>,
    pub error: Option<String>,
}

/// Every live region's figures: this region's own, the others' asked over their public
/// `/status?scope=local` (2 s each, in parallel; an unreachable region is reported so).
/// `http` is shared by every call (its requests time out after 2 s).
pub async fn cluster_status(
    cfg: &Config,
    pool: &PgPool,
    cluster: &Cluster,
    http: &reqwest::Client,
) -> Vec<RegionStatus> {
    // Shared by every region's future below, so as text: it ends up in `RegionStatus::error`.
    let me = local_status(cfg, pool, cluster).await.map_err(|e| e.to_string());
    let regions = regions::live_regions(pool).await.unwrap_or_default();
    let fetches = regions.iter().map(|r| {
        let (http, me) = (http.clone(), me.clone());
        let (id, name, url) = (r.id as u64, r.name.clone(), r.api_url.clone());
        let this = id == cluster.id;
        async move {
            let got: Result<LocalStatus, String> = if this {
                me
            } else {
                match http.get(format!("{}/status?scope=local", url.trim_end_matches('/'))).send().await {
                    Ok(r) if r.status().is_success() => r.json().await.map_err(|e| e.to_string()),
                    Ok(r) => Err(format!("HTTP {}", r.status())),
                    Err(e) => Err(e.to_string()),
                }
            };
            (id, name, url, got)
        }
    });
    let got = futures::future::join_all(fetches).await;
    let leader_log = got
        .iter()
        .filter_map(|(_, _, _, r)| r.as_ref().ok())
        .filter(|s| s.raft.role == Role::Leader)
        .filter_map(|s| s.raft.last_log_index)
        .max();
    got.into_iter()
        .map(|(id, name, url, r)| match r {
            Ok(s) => RegionStatus {
                id,
                name,
                url,
                reachable: true,
                role: Some(s.raft.role),
                term: Some(s.raft.term),
                leader: s.raft.leader,
                last_applied: s.raft.last_applied,
                replication_lag: leader_log.map(|l| l.saturating_sub(s.raft.last_applied.unwrap_or(0))),
                pin_backlog: Some(s.pins.backlog),
                pins_failing: Some(s.pins.failing),
                replicated_bytes: Some(s.pins.replicated_bytes),
                seat_holder: s.seat.holder.clone(),
                seat_epoch: Some(s.seat.epoch),
                processes: s.seat.processes.iter().map(|p| p.name.clone()).collect(),
                error: None,
            },
            Err(e) => RegionStatus {
                id,
                name,
                url,
                reachable: false,
                role: None,
                term: None,
                leader: None,
                last_applied: None,
                replication_lag: None,
                pin_backlog: None,
                pins_failing: None,
                replicated_bytes: None,
                seat_holder: None,
                seat_epoch: None,
                processes: Vec::new(),
                error: Some(e),
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{may_send_secret, Untrusted};
    use std::net::IpAddr;

    #[test]
    fn the_secret_goes_only_inside_the_zone_and_never_in_clear_text_beyond_loopback() {
        let lo: IpAddr = "127.0.0.11".parse().unwrap();
        let far: IpAddr = "203.0.113.7".parse().unwrap();
        assert!(may_send_secret("registry-eu.example.org", "example.org", "https", far, false).is_ok());
        assert!(may_send_secret("Registry-EU.Example.org.", "example.org", "https", far, false).is_ok());
        assert!(may_send_secret("registry-eu.example.org", "example.org", "http", lo, false).is_ok());
        for outside in ["evil.org", "example.org.evil.org", "badexample.org"] {
            let e = may_send_secret(outside, "example.org", "https", far, false).unwrap_err();
            assert!(matches!(e, Untrusted::OutsideZone { .. }) && e.to_string().contains("outside"), "{outside}");
        }
        let e = may_send_secret("registry-eu.example.org", "example.org", "http", far, false).unwrap_err();
        assert!(matches!(e, Untrusted::PlainHttp { .. }) && e.to_string().contains("plain HTTP"), "{e}");
        assert!(may_send_secret("registry-eu.example.org", "example.org", "http", far, true).is_ok());
    }
}
