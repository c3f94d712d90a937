//! A local multi-region cluster for tests: each region is a real Postgres, a real Kubo and a
//! real `afreg serve`, all on loopback, joined into one Raft group by `cluster.bootstrap` and
//! one shared cluster secret.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use afreg_config::BootstrapPeer;

use crate::{free_port, Kubo, Node, NodeConfig, Postgres, TestRegion};

/// The cluster secret every test cluster shares (tests only).
pub const TEST_SECRET: &str = "testkit-cluster-secret-0123456789";

/// One region of a [`TestCluster`].
pub struct ClusterMember {
    pub id: u64,
    pub name: String,
    pub region: TestRegion,
    /// The region's other `afreg serve` processes ([`TestCluster::add_process`]), on the same
    /// Postgres, Kubo and internal port.
    pub more: Vec<Node>,
}

impl ClusterMember {
    /// Every process of the region: the first one, then the ones added.
    pub fn processes(&self) -> impl Iterator<Item = &Node> {
        std::iter::once(&self.region.node).chain(self.more.iter())
    }

    /// Process `i` (0 is the first one).
    pub fn process(&self, i: usize) -> &Node {
        self.processes().nth(i).unwrap_or_else(|| panic!("{} has no process {i}", self.name))
    }

    pub fn process_mut(&mut self, i: usize) -> &mut Node {
        if i == 0 {
            &mut self.region.node
        } else {
            &mut self.more[i - 1]
        }
    }

    pub fn node(&self) -> &Node {
        &self.region.node
    }
    pub fn node_mut(&mut self) -> &mut Node {
        &mut self.region.node
    }
    pub fn kubo(&self) -> &Kubo {
        &self.region.kubo
    }
    pub fn pg(&self) -> &Postgres {
        &self.region.pg
    }
    /// `http://127.0.0.1:PORT`, the public registry URL.
    pub fn url(&self) -> String {
        self.region.node.url()
    }
    /// `127.0.0.1:PORT`, the registry host for clients.
    pub fn host(&self) -> String {
        self.region.node.host()
    }

    /// A client of this region that sends `user`'s token for every action on `repo`.
    pub fn client_as(&self, user: &str, password: &str, repo: &str) -> reqwest::blocking::Client {
        let credentials = Some((user.to_owned(), password.to_owned()));
        let e = crate::oci::Endpoint { name: self.name.clone(), url: self.url(), credentials };
        e.client(repo, std::time::Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// This region's own `/status?scope=local`, or `None` if it does not answer.
    pub fn local_status(&self) -> Option<Value> {
        self.region.node.local_status()
    }

    /// Runs a query against this region's Postgres and returns the first column of the first row.
    pub fn sql(&self, q: &str) -> String {
        self.region.pg.psql(q).trim().to_owned()
    }
}

/// Regions `names` with ids 1, 2, 3, … in one cluster.
pub struct TestCluster {
    bin: PathBuf,
    pub regions: Vec<ClusterMember>,
}

impl TestCluster {
    /// Starts every region (Postgres and Kubo first, then the nodes) and waits until the
    /// cluster has a leader and every region has announced itself. `f` adjusts each region's
    /// node config (the cluster keys are already set).
    pub fn start(bin: &Path, names: &[&str], f: impl Fn(&str, &mut NodeConfig)) -> TestCluster {
        let backends: Vec<(Postgres, Kubo)> = names.iter().map(|_| (Postgres::start(), Kubo::start())).collect();
        // Every config first: the bootstrap list needs each region's internal address, which
        // `f` may change (listen_ip, internal_port, or an `advertise_url` through a proxy).
        let cfgs: Vec<NodeConfig> = names
            .iter()
            .zip(&backends)
            .enumerate()
            .map(|(i, (name, (pg, kubo)))| {
                let mut cfg = NodeConfig::for_kubo(pg.url(), kubo);
                cfg.internal_port = Some(free_port());
                let mut cfg = region_config(cfg, i as u64 + 1, name, kubo);
                f(name, &mut cfg);
                if cfg.internal_port.is_none() {
                    cfg.internal_port = Some(free_port());
                }
                cfg
            })
            .collect();
        let bootstrap: Vec<BootstrapPeer> = names
            .iter()
            .zip(&cfgs)
            .enumerate()
            .map(|(i, (n, cfg))| BootstrapPeer {
                id: i as u64 + 1,
                name: n.to_string(),
                url: cfg.advertised_url(),
                api_url: String::new(),
            })
            .collect();
        let mut regions = Vec::new();
        for (i, ((name, (pg, kubo)), mut cfg)) in names.iter().zip(backends).zip(cfgs).enumerate() {
            // Regions that discover each other through DNS get no static peer list.
            if cfg.config.cluster.discovery_zone.is_none() {
                cfg.config.cluster.bootstrap = bootstrap.clone();
            }
            let node = Node::start(bin, cfg);
            regions.push(ClusterMember {
                id: i as u64 + 1,
                name: name.to_string(),
                region: TestRegion { node, kubo, pg },
                more: Vec::new(),
            });
        }
        let c = TestCluster { bin: bin.to_path_buf(), regions };
        c.wait_converged(Duration::from_secs(60));
        c
    }

    /// Every region's Raft term, as a running process of it reports it.
    pub fn terms(&self) -> Vec<(String, u64)> {
        self.regions
            .iter()
            .map(|r| {
                let s = r
                    .processes()
                    .find_map(Node::local_status)
                    .unwrap_or_else(|| panic!("no process of {} answers", r.name));
                (r.name.clone(), s["raft"]["term"].as_u64().unwrap())
            })
            .collect()
    }

    pub fn region(&self, name: &str) -> &ClusterMember {
        self.regions.iter().find(|r| r.name == name).unwrap_or_else(|| panic!("no region {name}"))
    }

    pub fn region_mut(&mut self, name: &str) -> &mut ClusterMember {
        self.regions.iter_mut().find(|r| r.name == name).unwrap_or_else(|| panic!("no region {name}"))
    }

    /// The leader's region id as the running regions report it (a majority must agree).
    pub fn leader(&self) -> Option<u64> {
        let views: Vec<u64> = self
            .regions
            .iter()
            .filter_map(|r| r.local_status())
            .filter(|s| s["raft"]["role"] == "leader")
            .filter_map(|s| s["raft"]["id"].as_u64())
            .collect();
        views.first().copied()
    }

    /// Waits for a leader, then returns its region name.
    pub fn wait_leader(&self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(id) = self.leader() {
                return self.regions.iter().find(|r| r.id == id).expect("leader is a region").name.clone();
            }
            assert!(Instant::now() < deadline, "no leader within {timeout:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until there is a leader and every running region lists every region with its
    /// Kubo peer id (each announced itself).
    pub fn wait_converged(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let n = self.regions.len();
        loop {
            let leader = self.leader();
            let announced = self.regions.iter().filter(|r| r.node().is_running()).all(|r| {
                r.sql("SELECT count(*) FROM regions WHERE NOT removed AND kubo_peer_id <> ''") == n.to_string()
            });
            if leader.is_some() && announced {
                return;
            }
            if Instant::now() > deadline {
                let logs: String =
                    self.regions.iter().map(|r| format!("--- {}:\n{}\n", r.name, r.node().log_tail(30))).collect();
                panic!(
                    "cluster did not converge within {timeout:?} (leader {leader:?}, announced {announced});\n{logs}"
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Starts one more region (Postgres, Kubo, node with `cluster.join`), not yet a member:
    /// the caller joins it with `afreg region add`.
    pub fn start_joining_region(&self, id: u64, name: &str, f: impl FnOnce(&mut NodeConfig)) -> ClusterMember {
        let (pg, kubo) = (Postgres::start(), Kubo::start());
        let mut cfg = NodeConfig::for_kubo(pg.url(), &kubo);
        cfg = region_config(cfg, id, name, &kubo);
        cfg.config.cluster.join = true;
        f(&mut cfg);
        let node = Node::start(&self.bin, cfg);
        ClusterMember { id, name: name.to_owned(), region: TestRegion { node, kubo, pg }, more: Vec::new() }
    }

    /// The config of one more process of region `name`, named `process`: the first process's
    /// config on its own public and metrics ports, sharing the region's Postgres, Kubo and
    /// internal port. The region must have been started with `cluster.shared_listeners`.
    pub fn process_config(&self, name: &str, process: &str) -> NodeConfig {
        let first = self.region(name).node();
        assert!(
            first.config().config.cluster.shared_listeners,
            "start {name} with cluster.shared_listeners to add processes"
        );
        let mut cfg = first.config().clone();
        cfg.port = None;
        cfg.internal_port = Some(first.internal_port());
        cfg.config.cluster.process_name = process.to_owned();
        cfg
    }

    /// Starts one more process of region `name` ([`TestCluster::process_config`]) and waits
    /// until it is healthy.
    pub fn add_process(&mut self, name: &str, process: &str) -> &Node {
        let node = Node::start(&self.bin, self.process_config(name, process));
        let r = self.region_mut(name);
        r.more.push(node);
        r.more.last().unwrap()
    }

    /// The binary the regions run.
    pub fn bin(&self) -> &Path {
        &self.bin
    }
}

/// The cluster keys every region of a test cluster shares, plus its own id and name.
fn region_config(mut cfg: NodeConfig, id: u64, name: &str, kubo: &Kubo) -> NodeConfig {
    let c = &mut cfg.config.cluster;
    c.id = id;
    c.region = name.to_owned();
    c.secret = Some(TEST_SECRET.to_owned());
    c.kubo_swarm_addrs = vec![kubo.swarm_multiaddr()];
    cfg
}
