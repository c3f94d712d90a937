//! What the chaos scenarios share: a cluster whose regions reach each other only through
//! [`RegionNet`]s; the plain-HTTP push/pull helpers are testkit's (`testkit::oci`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use afreg_config::ClusterConfig;
use chaos_tests::RegionNet;
use reqwest::blocking::Client;
use serde_json::Value;
use testkit::cluster::{ClusterMember, TestCluster};
use testkit::Action;
use testkit::NodeConfig;

/// The product's Raft timings (the WAN defaults of `[cluster]`) instead of testkit's loopback
/// ones: the scenarios run over slow and broken links.
pub fn product_timings(cfg: &mut NodeConfig) {
    let (c, d) = (&mut cfg.config.cluster, ClusterConfig::default());
    (c.heartbeat_ms, c.election_timeout_min_ms, c.election_timeout_max_ms) =
        (d.heartbeat_ms, d.election_timeout_min_ms, d.election_timeout_max_ms);
}

/// Puts a region behind a network of its own: its internal listener on a free port behind
/// the inbound link (one-way `delay`), which it advertises, and its own internal requests
/// through the outbound proxy. Anyone may pull, push and delete.
fn wire(cfg: &mut NodeConfig, delay: Duration) -> RegionNet {
    let port = testkit::free_port();
    cfg.internal_port = Some(port);
    let net = RegionNet::start(SocketAddr::from(([127, 0, 0, 1], port)));
    net.inbound.set_delay(delay);
    cfg.config.auth.anonymous = Action::ALL.to_vec();
    cfg.env.extend(net.node_env());
    cfg.config.cluster.advertise_url = net.advertise_url();
    net
}

/// A cluster plus the network of each region, by name. Fields drop in order: the regions stop
/// before their links go away.
pub struct Chaos {
    pub cluster: TestCluster,
    pub nets: BTreeMap<String, RegionNet>,
}

impl Chaos {
    /// Starts `names` as one cluster where every region advertises its inbound link and sends
    /// its own internal requests through its outbound proxy; every inbound link has one-way
    /// `delay` from the start (so the first election already runs over the slow links). `f`
    /// adjusts each node's config further. Anyone may pull, push and delete.
    pub fn start(names: &[&str], delay: Duration, f: impl Fn(&str, &mut NodeConfig)) -> Chaos {
        Chaos::start_bin(testkit::afreg_bin(), names, delay, f)
    }

    /// [`Chaos::start`] with another afreg binary (the deliberately broken build).
    pub fn start_bin(
        bin: &std::path::Path,
        names: &[&str],
        delay: Duration,
        f: impl Fn(&str, &mut NodeConfig),
    ) -> Chaos {
        let nets: Mutex<BTreeMap<String, RegionNet>> = Mutex::default();
        let started = Instant::now();
        let cluster = TestCluster::start(bin, names, |name, cfg| {
            let net = wire(cfg, delay);
            f(name, cfg);
            nets.lock().unwrap().insert(name.to_owned(), net);
        });
        let nets = nets.into_inner().unwrap();
        eprintln!("cluster {names:?} up in {:.1?} (one-way delay {delay:?} on every inbound link)", started.elapsed());
        Chaos { cluster, nets }
    }

    /// Starts one more region `name` with `id` behind a network of its own, as
    /// [`Chaos::start_bin`] does, and has the operator add it (`afreg region add` on `via`).
    /// Returns once the command has: the region is a voter, caught up to the entry that made
    /// it a learner.
    pub fn add_region(&mut self, via: &str, id: u64, name: &str, delay: Duration, f: impl Fn(&str, &mut NodeConfig)) {
        let mut net = None;
        let member = self.cluster.start_joining_region(id, name, |cfg| {
            net = Some(wire(cfg, delay));
            f(name, cfg);
        });
        let net = net.expect("the joining region was configured");
        let (internal, api) = (net.advertise_url(), member.url());
        self.nets.insert(name.to_owned(), net);
        self.cluster.regions.push(member);
        let id = id.to_string();
        let out = self
            .region(via)
            .node()
            .cli(&["region", "add", "--id", &id, "--name", name, "--internal-url", &internal, "--api-url", &api], None);
        assert!(
            out.status.success(),
            "region add {name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The operator removes region `id` from the cluster (`afreg region remove` on `via`).
    pub fn remove_region(&self, via: &str, id: u64) {
        let out = self.region(via).node().cli(&["region", "remove", "--id", &id.to_string()], None);
        assert!(
            out.status.success(),
            "region remove {id}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Region `name`'s node, Postgres and Kubo are gone for good, as when a provider ends its
    /// lease: killed, their data deleted, and the region leaves [`Chaos::cluster`] (the
    /// cluster still lists it as a member until the operator removes it).
    pub fn vanish(&mut self, name: &str) {
        let i = self.cluster.regions.iter().position(|r| r.name == name).unwrap_or_else(|| panic!("no region {name}"));
        let mut r = self.cluster.regions.remove(i);
        r.node_mut().kill();
        drop(r);
    }

    pub fn region(&self, name: &str) -> &ClusterMember {
        self.cluster.region(name)
    }

    pub fn net(&self, name: &str) -> &RegionNet {
        &self.nets[name]
    }

    /// Each region's `(role, term, leader)` from its own `/status?scope=local`.
    pub fn raft_views(&self) -> BTreeMap<String, Option<RaftView>> {
        self.cluster.regions.iter().map(|r| (r.name.clone(), raft_view(r))).collect()
    }

    /// Waits until every region reports the same leader and term, a region of [`Chaos::cluster`]
    /// (not one that vanished); returns (leader name, term).
    pub fn wait_agreed(&self, timeout: Duration) -> (String, u64) {
        let deadline = Instant::now() + timeout;
        loop {
            let views = self.raft_views();
            let all: Vec<&RaftView> = views.values().flatten().collect();
            if all.len() == views.len() {
                let (leader, term) = (all[0].leader, all[0].term);
                if let Some(id) = leader.filter(|_| all.iter().all(|v| v.leader == leader && v.term == term)) {
                    if let Some(r) = self.cluster.regions.iter().find(|r| r.id == id) {
                        return (r.name.clone(), term);
                    }
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

pub fn raft_view(r: &ClusterMember) -> Option<RaftView> {
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

// Each scenario binary uses some of these.
#[allow(unused_imports)]
pub use testkit::oci::{
    assert_pulls, cids_of, client, get_manifest, new_image, p50_max, pinned_all, push, push_timed, serves, within,
    Image, Refusal, OCI_MANIFEST,
};

/// Lines of a node's log that mention any of `words` (for failure reports), at most `max`.
pub fn log_lines(r: &ClusterMember, words: &[&str], max: usize) -> String {
    let log = r.node().log();
    let hits: Vec<&str> = log.lines().filter(|l| words.iter().any(|w| l.contains(w))).collect();
    hits[hits.len().saturating_sub(max)..].join("\n")
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
        let led = r
            .views
            .iter()
            .any(|(n, v)| regions.contains(&n.as_str()) && v.as_ref().is_some_and(|v| v.role == "leader"));
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
