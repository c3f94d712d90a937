//! What the chaos scenarios share: a cluster whose regions reach each other only through
//! [`RegionNet`]s, and plain-HTTP push/pull helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chaos_tests::RegionNet;
use reqwest::blocking::Client;
use serde_json::{json, Value};
use testkit::cluster::{Cluster, ClusterRegion};
use testkit::{random_bytes, random_hex, sha256_digest, NodeConfig};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A cluster plus the network of each region, by name. Fields drop in order: the regions stop
/// before their links go away.
pub struct Chaos {
    pub cluster: Cluster,
    pub nets: BTreeMap<String, RegionNet>,
}

impl Chaos {
    /// Starts `names` as one cluster where every region advertises its inbound link and sends
    /// its own internal requests through its outbound proxy; every inbound link has one-way
    /// `delay` from the start (so the first election already runs over the slow links). `f`
    /// adjusts each node's config further. Anyone may pull, push and delete.
    pub fn start(names: &[&str], delay: Duration, f: impl Fn(&str, &mut NodeConfig)) -> Chaos {
        let nets: Mutex<BTreeMap<String, RegionNet>> = Mutex::default();
        let started = Instant::now();
        let cluster = Cluster::start(&chaos_tests::afreg_bin(), names, |name, cfg| {
            let port = testkit::free_port();
            cfg.internal_port = Some(port);
            let net = RegionNet::start(SocketAddr::from(([127, 0, 0, 1], port)));
            net.inbound.set_delay(delay);
            cfg.anonymous = vec!["pull".into(), "push".into(), "delete".into()];
            cfg.env.extend(net.node_env());
            *cfg = std::mem::take(cfg).set("cluster.advertise_url", net.advertise_url());
            f(name, cfg);
            nets.lock().unwrap().insert(name.to_owned(), net);
        });
        let nets = nets.into_inner().unwrap();
        eprintln!(
            "cluster {names:?} up in {:.1?} (one-way delay {delay:?} on every inbound link)",
            started.elapsed()
        );
        Chaos { cluster, nets }
    }

    pub fn region(&self, name: &str) -> &ClusterRegion {
        self.cluster.region(name)
    }

    pub fn net(&self, name: &str) -> &RegionNet {
        &self.nets[name]
    }

    /// Each region's `(role, term, leader)` from its own `/status?scope=local`.
    pub fn raft_views(&self) -> BTreeMap<String, Option<RaftView>> {
        self.cluster.regions.iter().map(|r| (r.name.clone(), raft_view(r))).collect()
    }

    /// Waits until every region reports the same leader and term; returns (leader name, term).
    pub fn wait_agreed(&self, timeout: Duration) -> (String, u64) {
        let deadline = Instant::now() + timeout;
        loop {
            let views = self.raft_views();
            let all: Vec<&RaftView> = views.values().flatten().collect();
            if all.len() == views.len() {
                let (leader, term) = (all[0].leader, all[0].term);
                if let Some(id) = leader.filter(|_| all.iter().all(|v| v.leader == leader && v.term == term)) {
                    let name = self.cluster.regions.iter().find(|r| r.id == id).expect("leader is a region").name.clone();
                    return (name, term);
                }
            }
            assert!(Instant::now() < deadline, "regions did not agree on a leader within {timeout:?}: {views:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftView {
    pub role: String,
    pub term: u64,
    pub leader: Option<u64>,
    pub last_applied: Option<u64>,
}

pub fn raft_view(r: &ClusterRegion) -> Option<RaftView> {
    raft_view_of(&r.local_status()?)
}

fn raft_view_of(s: &Value) -> Option<RaftView> {
    let raft = &s["raft"];
    Some(RaftView {
        role: raft["role"].as_str()?.to_owned(),
        term: raft["term"].as_u64()?,
        leader: raft["leader"].as_u64(),
        last_applied: raft["last_applied"].as_u64(),
    })
}

pub fn client() -> Client {
    Client::builder().no_proxy().timeout(Duration::from_secs(60)).build().unwrap()
}

/// An image pushed with plain HTTP requests.
#[derive(Clone)]
pub struct Image {
    pub manifest: Vec<u8>,
    pub digest: String,
    pub blobs: Vec<(String, Vec<u8>)>,
}

pub fn new_image(layer_bytes: usize) -> Image {
    let config = format!(r#"{{"architecture":"amd64","os":"linux","id":"{}"}}"#, random_hex(8)).into_bytes();
    let layer = random_bytes(layer_bytes);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256_digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256_digest(&layer), "size": layer.len()}],
    }))
    .unwrap();
    Image {
        digest: sha256_digest(&manifest),
        manifest,
        blobs: vec![(sha256_digest(&config), config), (sha256_digest(&layer), layer)],
    }
}

impl Image {
    pub fn digests(&self) -> Vec<&str> {
        self.blobs.iter().map(|b| b.0.as_str()).collect()
    }
}

/// A refused request: status (0 when no answer came), `Retry-After`, body.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: String,
}

/// Pushes `img` as `repo:tag` (monolithic blob uploads, then the manifest); `Err` carries the
/// first non-201 answer.
pub fn push(c: &Client, url: &str, repo: &str, tag: &str, img: &Image) -> Result<(), Refusal> {
    let fail = |r: reqwest::blocking::Response| Refusal {
        status: r.status().as_u16(),
        retry_after: r.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(String::from),
        body: r.text().unwrap_or_default(),
    };
    let lost = |e: reqwest::Error| Refusal { status: 0, retry_after: None, body: e.to_string() };
    for (digest, data) in &img.blobs {
        let r = c
            .post(format!("{url}/v2/{repo}/blobs/uploads/?digest={digest}"))
            .header("content-type", "application/octet-stream")
            .body(data.clone())
            .send()
            .map_err(lost)?;
        if r.status().as_u16() != 201 {
            return Err(fail(r));
        }
    }
    let r = c
        .put(format!("{url}/v2/{repo}/manifests/{tag}"))
        .header("content-type", OCI_MANIFEST)
        .body(img.manifest.clone())
        .send()
        .map_err(lost)?;
    if r.status().as_u16() != 201 {
        return Err(fail(r));
    }
    Ok(())
}

/// Like [`push`], returning how long each request took (the blobs, then the manifest).
pub fn push_timed(c: &Client, url: &str, repo: &str, tag: &str, img: &Image) -> Result<Vec<Duration>, Refusal> {
    let mut took = Vec::new();
    let one = |r: Result<reqwest::blocking::Response, reqwest::Error>| -> Result<(), Refusal> {
        let r = r.map_err(|e| Refusal { status: 0, retry_after: None, body: e.to_string() })?;
        if r.status().as_u16() == 201 {
            return Ok(());
        }
        Err(Refusal {
            status: r.status().as_u16(),
            retry_after: r.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(String::from),
            body: r.text().unwrap_or_default(),
        })
    };
    for (digest, data) in &img.blobs {
        let started = Instant::now();
        one(c
            .post(format!("{url}/v2/{repo}/blobs/uploads/?digest={digest}"))
            .header("content-type", "application/octet-stream")
            .body(data.clone())
            .send())?;
        took.push(started.elapsed());
    }
    let started = Instant::now();
    one(c.put(format!("{url}/v2/{repo}/manifests/{tag}")).header("content-type", OCI_MANIFEST).body(img.manifest.clone()).send())?;
    took.push(started.elapsed());
    Ok(took)
}

/// GET of a manifest by tag or digest: status and body.
pub fn get_manifest(c: &Client, url: &str, repo: &str, reference: &str, query: &str) -> (u16, Vec<u8>) {
    let r = c
        .get(format!("{url}/v2/{repo}/manifests/{reference}{query}"))
        .header("accept", OCI_MANIFEST)
        .send()
        .unwrap_or_else(|e| panic!("GET {url}/v2/{repo}/manifests/{reference}: {e}"));
    (r.status().as_u16(), r.bytes().unwrap().to_vec())
}

/// Whether `repo:tag` resolves to exactly `img`'s manifest at `url`.
pub fn serves(c: &Client, url: &str, repo: &str, tag: &str, img: &Image) -> bool {
    let (status, body) = get_manifest(c, url, repo, tag, "");
    status == 200 && body == img.manifest
}

/// Pulls every byte of `img` from `url` and checks each against its digest.
pub fn assert_pulls(c: &Client, url: &str, repo: &str, tag: &str, img: &Image) {
    let (status, body) = get_manifest(c, url, repo, tag, "");
    assert_eq!(status, 200, "GET manifest {repo}:{tag} from {url}: {}", String::from_utf8_lossy(&body));
    assert_eq!(sha256_digest(&body), img.digest, "manifest {repo}:{tag} from {url}");
    for (digest, data) in &img.blobs {
        let r = c.get(format!("{url}/v2/{repo}/blobs/{digest}")).send().unwrap();
        assert_eq!(r.status().as_u16(), 200, "GET blob {digest} of {repo}:{tag} from {url}");
        let got = r.bytes().unwrap();
        assert_eq!(got.len(), data.len(), "blob {digest} from {url}");
        assert_eq!(sha256_digest(&got), *digest, "blob bytes from {url} do not hash to their digest");
    }
}

/// Polls every `every` until `f` holds or `bound` passes; returns how long it took.
pub fn within(bound: Duration, every: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    loop {
        if f() {
            return started.elapsed();
        }
        assert!(started.elapsed() < bound, "{what}: not within {bound:?}");
        std::thread::sleep(every);
    }
}

/// The CIDs `region` records for these blob digests.
pub fn cids_of(region: &ClusterRegion, digests: &[&str]) -> Vec<String> {
    digests
        .iter()
        .map(|d| {
            let cid = region.sql(&format!("SELECT cid FROM blobs WHERE digest = '{d}'"));
            assert!(!cid.is_empty(), "no blob row for {d} in {}", region.name);
            cid
        })
        .collect()
}

pub fn pinned_all(region: &ClusterRegion, cids: &[String]) -> bool {
    let pinned = region.kubo().pin_ls_recursive();
    cids.iter().all(|c| pinned.contains(c))
}

/// p50 and max of some durations.
pub fn p50_max(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    if v.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    (v[v.len() / 2], *v.last().unwrap())
}

/// Lines of a node's log that mention any of `words` (for failure reports), at most `max`.
pub fn log_lines(r: &ClusterRegion, words: &[&str], max: usize) -> String {
    let log = r.node().log();
    let hits: Vec<&str> = log.lines().filter(|l| words.iter().any(|w| l.contains(w))).collect();
    hits[hits.len().saturating_sub(max)..].join("\n")
}

pub fn status_json(r: &ClusterRegion) -> Value {
    r.local_status().unwrap_or(Value::Null)
}

/// One round of a [`Monitor`]: when, and each region's view (`None`: it did not answer).
pub struct Round {
    pub at: Instant,
    pub views: Vec<(String, Option<RaftView>)>,
}

/// Samples every region's `/status?scope=local` every 100 ms on a background thread.
pub struct Monitor {
    stop: Arc<AtomicBool>,
    rounds: Arc<Mutex<Vec<Round>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Monitor {
    pub fn start(chaos: &Chaos) -> Monitor {
        let regions: Vec<(String, String)> = chaos.cluster.regions.iter().map(|r| (r.name.clone(), r.url())).collect();
        let (stop, rounds) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
        let thread = {
            let (stop, rounds) = (stop.clone(), rounds.clone());
            std::thread::spawn(move || {
                let c = Client::builder().no_proxy().timeout(Duration::from_secs(2)).build().unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let at = Instant::now();
                    let views = regions
                        .iter()
                        .map(|(name, url)| {
                            let v = c
                                .get(format!("{url}/status?scope=local"))
                                .send()
                                .ok()
                                .and_then(|r| r.json::<Value>().ok())
                                .and_then(|s| raft_view_of(&s));
                            (name.clone(), v)
                        })
                        .collect();
                    rounds.lock().unwrap().push(Round { at, views });
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        Monitor { stop, rounds, thread: Some(thread) }
    }

    /// Stops sampling and returns every round.
    pub fn stop(mut self) -> Vec<Round> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.rounds.lock().unwrap())
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The longest stretch (from `from` on) during which none of `regions` reported itself
/// leader: (start, length), measured between samples.
pub fn longest_leaderless(rounds: &[Round], regions: &[&str], from: Instant) -> Option<(Instant, Duration)> {
    let mut best: Option<(Instant, Duration)> = None;
    let mut open: Option<Instant> = None;
    for r in rounds.iter().filter(|r| r.at >= from) {
        let led = r.views.iter().any(|(n, v)| regions.contains(&n.as_str()) && v.as_ref().is_some_and(|v| v.role == "leader"));
        match (led, open) {
            (false, None) => open = Some(r.at),
            (true, Some(s)) => {
                let len = r.at - s;
                if best.is_none_or(|(_, b)| len > b) {
                    best = Some((s, len));
                }
                open = None;
            }
            _ => {}
        }
    }
    if let (Some(s), Some(last)) = (open, rounds.last()) {
        let len = last.at - s;
        if best.is_none_or(|(_, b)| len > b) {
            best = Some((s, len));
        }
    }
    best
}

/// Wall-clock time of day (UTC, `HH:MM:SS.mmm`), to line test events up with node logs.
pub fn utc_now() -> String {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let (s, ms) = (d.as_secs() % 86_400, d.subsec_millis());
    format!("{:02}:{:02}:{:02}.{ms:03}Z", s / 3600, s / 60 % 60, s % 60)
}
