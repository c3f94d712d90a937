//! The registries a run measures, each started on loopback in a directory of its own and
//! stopped when dropped: afreg with one region and the local three-region cluster (through
//! testkit, on real Postgres and Kubo), both tuned for throughput, the same one-region afreg with
//! its defaults (private, request-rate limits and request log on, as a user runs it), two A/B
//! variants of the one-region afreg (notifications delivered to a real receiver; pull counting
//! off),
//! distribution v3 (`registry` in the tools directory), Debian's distribution 2.8
//! (`docker-registry`), and zot where the Go module proxy served it. Every peer runs on its
//! filesystem storage with its access log off.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use testkit::cluster::TestCluster;
use testkit::{Action, TestRegion};

use crate::report::TargetInfo;

/// One HTTP endpoint the workloads run against.
#[derive(Clone, Debug)]
pub struct Target {
    pub id: &'static str,
    pub url: String,
    /// A bearer token sent with every request to this target: `afreg-token`'s one for its
    /// manifest requests, or a private registry's for the workload at hand (see `login`).
    pub token: Option<String>,
    /// The bench user's name and password on a private registry (`afreg-defaults`): every
    /// workload first takes a fresh token from its `/token` ([`crate::http::authorized`]), and
    /// crane logs in with them.
    pub login: Option<(String, String)>,
    /// Whether the registry limits request rates (`afreg-defaults`): the request-rate workload
    /// counts its 429s (from any other registry a 429 is an error there).
    pub rate_limited: bool,
    /// The process whose memory is measured.
    pub pid: Option<u32>,
    /// Whether the registry takes a whole blob in one `POST ?digest=` (afreg does).
    pub single_post: bool,
    /// A peer's blob directory (`…/blobs/sha256`): the bench removes the blobs it pushed
    /// there once measured, so a full run fits the disk. afreg's are deleted through its API
    /// instead ([`Target::forget_blobs`]).
    pub blob_dir: Option<PathBuf>,
    /// An afreg target's Kubo RPC URLs (every region's, for the cluster): after its blobs are
    /// deleted, the bench runs their `repo/gc` so the blocks leave the disk before the next
    /// workload, not at afreg's own next GC (`kubo.gc_interval_secs`, 10 minutes).
    pub kubos: Vec<String>,
    /// An A/B variant of `afreg` (one setting changed): it runs the blob, many-clients and
    /// crane workloads only, beside `afreg` in the same round, so that the setting's cost is a
    /// ratio of two figures taken minutes apart.
    pub variant: bool,
}

impl Target {
    /// An anonymous afreg at `url` with nothing else known; the fields left are set by
    /// struct update where they matter.
    pub fn at(id: &'static str, url: String) -> Target {
        Target {
            id,
            url,
            token: None,
            login: None,
            rate_limited: false,
            pid: None,
            single_post: true,
            blob_dir: None,
            kubos: vec![],
            variant: false,
        }
    }

    /// Frees the space of blobs the bench pushed to `repo` and will not read again: a peer's
    /// files are removed; afreg is sent `DELETE` for each, which unpins them and removes their
    /// blob files at once (Kubo's blocks go at its next GC), so that a run of several rounds
    /// fits the disk. Best effort: a failure only leaves the bytes.
    pub async fn forget_blobs(&self, c: &reqwest::Client, repo: &str, digests: &[String]) {
        if let Some(dir) = &self.blob_dir {
            for hex in digests.iter().filter_map(|d| d.strip_prefix("sha256:")).filter(|h| h.len() > 2) {
                let _ = std::fs::remove_dir_all(dir.join(&hex[..2]).join(hex));
            }
            return;
        }
        let Ok(t) = crate::http::authorized(c, self, &[crate::http::repository_scope(repo)]).await else { return };
        for d in digests {
            if let Err(e) = crate::http::delete_blob(c, &t, repo, d).await {
                crate::progress(&format!("{}: could not delete {d} ({e:#}); its bytes stay", self.id));
            }
        }
        for api in &self.kubos {
            if let Err(e) = crate::physical::collect_garbage(c, api).await {
                crate::progress(&format!("{}: Kubo repo/gc at {api}: {e:#}", self.id));
            }
        }
    }
}

/// Throughput, not the request-rate limits: the peers have none, and the bench is one client.
fn unlimited(c: &mut testkit::NodeConfig) {
    c.config.auth.anonymous = Action::ALL.to_vec();
    c.config.log.level = "warn".into();
    c.config.server.requests_per_second_per_client = 0;
    c.config.server.requests_per_second_per_token = 0;
    c.config.server.reads_per_second_per_client = 0;
    c.config.server.reads_per_second_per_token = 0;
}

pub const AFREG_CONFIG: &str = "one region: afreg serve over its own PostgreSQL and Kubo (CIDv1, raw leaves, 1 MiB chunks; \
    blobs served from verified files on its volume, else through Kubo's gateway); anonymous pull/push/delete; request-rate limits off; log level warn (no access log); \
    manifest cache on (64 MiB)";
pub const TOKEN_CONFIG: &str = "the same one-region node, every manifest request with a bearer token from its /token \
    (verified on each request; the verified-token cache on)";
pub const CLUSTER_CONFIG: &str =
    "three regions us, eu, asia on loopback, one Raft group; each region its own PostgreSQL, \
    Kubo (private swarm) and node, configured as the one-region node; the workloads push to and pull from us";
pub const DIST_CONFIG: &str =
    "distribution v3 (`registry serve`), filesystem storage, access log disabled, log level error, anonymous";
pub const DIST28_CONFIG: &str =
    "Debian's docker-registry (distribution 2.8, `docker-registry serve`), filesystem storage, \
    access log disabled, log level error, anonymous";

/// The grants of the bench user on `afreg-defaults`: everything on the bench's repositories,
/// and pull on every repository, which the catalog asks for.
pub const DEFAULTS_GRANTS: &[&str] = &["bench/*:pull,push,delete", "*:pull"];

/// What `afreg-defaults` runs with: the configuration `afreg up` writes for a region on
/// testkit's ports and paths, private as the configuration's default and production are.
/// testkit's one other departure from the defaults, anonymous pull, is put back.
fn as_afreg_up(c: &mut testkit::NodeConfig) {
    c.config.auth.anonymous = testkit::Config::default().auth.anonymous;
}

/// The configuration text of `afreg-defaults`, from the defaults themselves so that it stays
/// true when they change.
pub fn defaults_config() -> String {
    let d = testkit::Config::default();
    let anonymous = if d.auth.anonymous.is_empty() {
        "private (auth.anonymous = [], the default and production's)".to_owned()
    } else {
        format!("anonymous {:?}", d.auth.anonymous)
    };
    format!(
        "one region as `afreg up` configures it: afreg serve over its own PostgreSQL and Kubo (the same Kubo recipe), \
         one process; {anonymous}; request-rate limits on ({} costly requests/s per client address and {} per token, \
         {} reads/s per client address and {} per token, bursts of ten seconds' worth, 429 answered after about {} ms); \
         blob files on ({} GiB); log level {} with its request log; tokens last {} s. \
         Differs from `afreg up` only in its loopback ports, temp-dir paths and anonymous access (`afreg up` grants \
         anonymous pull); the bench user has {}. Every request carries a bearer token from its /token, a fresh one \
         for each workload; crane logs in with the user's password",
        d.server.requests_per_second_per_client,
        d.server.requests_per_second_per_token,
        d.server.reads_per_second_per_client,
        d.server.reads_per_second_per_token,
        d.server.refusal_delay_ms,
        d.storage.blob_cache_bytes >> 30,
        d.log.level,
        d.auth.token_ttl_secs,
        DEFAULTS_GRANTS.join(" and ")
    )
}

/// The one-region afreg.
pub fn afreg_region(bin: &Path) -> TestRegion {
    TestRegion::start_with(bin, unlimited)
}

pub const NOTIFY_CONFIG: &str = "the one-region node with one notification endpoint (distribution's envelope, \
    every event: manifest and blob pushes, mounts, deletes, and pull events) to testkit/receivers/distribution_receiver.py \
    on loopback, answering 200";
pub const NO_USAGE_CONFIG: &str =
    "the one-region node with usage.count_pulls = false: no pull counted for the usage figures";

/// `afreg-notify`: the one-region afreg delivering every event, pulls too, to `receiver_url`.
pub fn afreg_notify_region(bin: &Path, receiver_url: &str) -> TestRegion {
    let url = receiver_url.to_owned();
    TestRegion::start_with(bin, move |c| {
        unlimited(c);
        c.config.notifications.endpoints = vec![afreg_config::notifications::Endpoint {
            name: "bench".into(),
            url: url.clone(),
            pulls: true,
            ..Default::default()
        }];
    })
}

pub const MIRROR_CONFIG: &str = "the one-region node as `afreg` runs, with distribution v3 (the peer) as the upstream \
    of its pull-through cache under `mirror/` (anonymous; tag_ttl, cache_ttl and max_bytes at their defaults)";

/// `afreg-mirror`: the one-region afreg as a pull-through cache of `upstream_url` under `mirror/`.
pub fn afreg_mirror_region(bin: &Path, upstream_url: &str) -> TestRegion {
    let url = upstream_url.to_owned();
    TestRegion::start_with(bin, move |c| {
        unlimited(c);
        c.config.mirror.upstreams = vec![afreg_config::mirror::Upstream {
            name: "distribution-v3".into(),
            url: url.clone(),
            destination: "mirror".into(),
            ..Default::default()
        }];
    })
}

/// `afreg-no-usage`: the one-region afreg counting no pulls.
pub fn afreg_no_usage_region(bin: &Path) -> TestRegion {
    TestRegion::start_with(bin, |c| {
        unlimited(c);
        c.config.usage.count_pulls = false;
    })
}

/// The one-region afreg with its defaults (`afreg-defaults`).
pub fn afreg_defaults_region(bin: &Path) -> TestRegion {
    TestRegion::start_with(bin, as_afreg_up)
}

/// The local three-region cluster (us, eu, asia).
pub fn afreg_cluster(bin: &Path) -> TestCluster {
    TestCluster::start(bin, &["us", "eu", "asia"], |_, c| unlimited(c))
}

/// A registry process of the distribution family (or zot) on a free port, in its own
/// directory; killed when dropped.
pub struct Peer {
    child: Child,
    pub url: String,
    distribution: bool,
    dir: tempfile::TempDir,
}

impl Peer {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where distribution's filesystem driver keeps blob data (zot keeps them elsewhere:
    /// None).
    pub fn blob_dir(&self) -> Option<PathBuf> {
        let d = self.dir.path().join("data/docker/registry/v2/blobs/sha256");
        self.distribution.then_some(d)
    }

    /// distribution (v3 or 2.8): `BIN serve CONFIG` with a filesystem root and no access log.
    pub fn distribution(bin: &Path) -> Result<Peer> {
        let dir = tempfile::tempdir()?;
        let port = testkit::free_port();
        let cfg = dir.path().join("config.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )?;
        let mut cmd = Command::new(bin);
        cmd.arg("serve").arg(&cfg);
        Peer::spawn(cmd, dir, port, bin, true)
    }

    /// zot with its filesystem storage, no access log (zot logs requests only at debug).
    pub fn zot(bin: &Path) -> Result<Peer> {
        let dir = tempfile::tempdir()?;
        let port = testkit::free_port();
        let cfg = dir.path().join("config.json");
        let json = serde_json::json!({
            "distSpecVersion": "1.1.0",
            "storage": {"rootDirectory": dir.path().join("data"), "dedupe": false, "gc": false},
            "http": {"address": "127.0.0.1", "port": port.to_string()},
            "log": {"level": "error"},
        });
        std::fs::write(&cfg, serde_json::to_vec_pretty(&json)?)?;
        let mut cmd = Command::new(bin);
        cmd.arg("serve").arg(&cfg);
        Peer::spawn(cmd, dir, port, bin, false)
    }

    fn spawn(mut cmd: Command, dir: tempfile::TempDir, port: u16, bin: &Path, distribution: bool) -> Result<Peer> {
        let log = std::fs::File::create(dir.path().join("log"))?;
        let child =
            cmd.stdout(Stdio::null()).stderr(log).spawn().with_context(|| format!("start {}", bin.display()))?;
        let url = format!("http://127.0.0.1:{port}");
        let mut peer = Peer { child, url, distribution, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = peer.child.try_wait() {
                let log = std::fs::read_to_string(peer.dir.path().join("log")).unwrap_or_default();
                bail!("{} exited at start ({status}): {}", bin.display(), log.trim());
            }
            let up = std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
                .is_ok();
            if up {
                return Ok(peer);
            }
            if Instant::now() > deadline {
                bail!("{} did not listen on {port} within 20 s", bin.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Debian's distribution 2.8, where setup.sh installed it.
pub fn docker_registry_bin() -> Option<PathBuf> {
    ["/usr/bin/docker-registry", "/usr/sbin/docker-registry"].iter().map(PathBuf::from).find(|p| p.is_file())
}

/// zot's binary, or why there is none (the refusal setup.sh recorded).
pub fn zot_bin() -> std::result::Result<PathBuf, String> {
    let dir = testkit::tools_dir();
    let bin = dir.join("zot");
    if bin.is_file() {
        return Ok(bin);
    }
    let why = std::fs::read_to_string(dir.join("zot.unavailable")).unwrap_or_default();
    let why = why.trim();
    Err(if why.is_empty() {
        format!("not installed in {} (scripts/setup.sh tries `go install zotregistry.dev/zot/v2/cmd/zot@latest` once a day)", dir.display())
    } else {
        format!("the Go module proxy refused `go install zotregistry.dev/zot/v2/cmd/zot@latest`: {why}")
    })
}

pub fn info(id: &str, label: &str, role: &str, available: bool, configuration: impl Into<String>) -> TargetInfo {
    TargetInfo { id: id.into(), label: label.into(), role: role.into(), available, configuration: configuration.into() }
}

/// The label a table shows for a target id.
pub fn label(id: &str) -> &'static str {
    match id {
        "afreg" => "afreg",
        "afreg-token" => "afreg (token)",
        "afreg-defaults" => "afreg with its defaults",
        "afreg-cluster" => "afreg cluster (us)",
        "afreg-notify" => "afreg with notifications",
        "afreg-no-usage" => "afreg counting no pulls",
        "afreg-mirror" => "afreg as a mirror of distribution v3",
        "distribution-v3" => "distribution v3",
        "distribution-2.8" => "distribution 2.8",
        "zot" => "zot",
        _ => "reference",
    }
}
