//! A test's own Kubo daemon, set up with the recipe `afreg up` uses
//! (`afreg_deploy::local::kubo`: offline, loopback only), plus the RPC calls tests make on it.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use afreg_deploy::local::kubo::{self as recipe, KuboPorts, Network};
use afreg_deploy::local::wait_listening;
use afreg_deploy::swarm_key::SwarmKey;
use serde_json::Value;
use tempfile::TempDir;

use crate::{file_tail, free_port, http_client, off_runtime, open_log, terminate};

/// A private, offline, loopback-only Kubo daemon (`ipfs init --profile=test`, routing none,
/// no MDNS/relay/NAT/AutoConf/AutoTLS/providing), API, gateway and swarm on fixed free ports.
pub struct Kubo {
    pub api_port: u16,
    pub gateway_port: u16,
    pub swarm_port: u16,
    dir: TempDir,
    child: Option<Child>,
    peer_id: String,
    daemon_args: Vec<String>,
    network: Network,
}

/// The private network every testkit Kubo joins (tests only): any two of them can peer, as the
/// regions of a cluster do, and a daemon without it cannot.
pub const TEST_SWARM_KEY: &str = "5ee2b0a1c7f3e9d84a6b21c0f9e7d3a5b8c4e6f0a2d1b3c5e7f9a0b2c4d6e8f0";

/// [`TEST_SWARM_KEY`].
pub fn test_network() -> Network {
    Network::Private(SwarmKey::parse(TEST_SWARM_KEY).expect("a valid key"))
}

impl Kubo {
    /// Initialises and starts a daemon; waits until its API listens.
    pub fn start() -> Kubo {
        Self::start_with(|_| {}, &[])
    }

    /// Like [`Kubo::start`], but `tweak` may edit the JSON config after the local settings
    /// (e.g. `Datastore.StorageMax`, `Peering.Peers`) and `daemon_args` are appended to
    /// `ipfs daemon` (e.g. `--enable-gc`).
    pub fn start_with(tweak: impl FnOnce(&mut Value), daemon_args: &[&str]) -> Kubo {
        Self::start_in(test_network(), tweak, daemon_args)
    }

    /// Like [`Kubo::start_with`] in `network`: [`Network::Public`] is a stranger to the
    /// cluster's private network.
    pub fn start_in(network: Network, tweak: impl FnOnce(&mut Value), daemon_args: &[&str]) -> Kubo {
        let dir = tempfile::Builder::new().prefix("afreg-kubo-").tempdir_in("/tmp").expect("kubo temp dir");
        let ports = KuboPorts { api: free_port(), gateway: free_port(), swarm: free_port() };
        let mut k = Kubo {
            api_port: ports.api,
            gateway_port: ports.gateway,
            swarm_port: ports.swarm,
            dir,
            child: None,
            peer_id: String::new(),
            daemon_args: daemon_args.iter().map(|s| s.to_string()).collect(),
            network,
        };
        recipe::init(&k.repo_path(), ports, &k.network, tweak).unwrap_or_else(|e| panic!("testkit: {e}"));
        k.peer_id = recipe::peer_id(&k.repo_path()).unwrap_or_else(|e| panic!("testkit: {e}"));
        k.start_again();
        k
    }

    /// `http://127.0.0.1:APIPORT` (the RPC API; calls are `POST {api_url}/api/v0/<cmd>`).
    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    /// `http://127.0.0.1:GATEWAYPORT`
    pub fn gateway_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.gateway_port)
    }

    /// `/ip4/127.0.0.1/tcp/SWARMPORT/p2p/PEERID`
    pub fn swarm_multiaddr(&self) -> String {
        format!("/ip4/127.0.0.1/tcp/{}/p2p/{}", self.swarm_port, self.peer_id)
    }

    pub fn peer_id(&self) -> &str {
        &self.peer_id
    }

    /// The `IPFS_PATH` repository.
    pub fn repo_path(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// An `ipfs` command bound to this repository (`IPFS_PATH`, `IPFS_TELEMETRY=off`).
    pub fn ipfs(&self) -> Command {
        recipe::ipfs(&self.repo_path())
    }

    /// Stops the daemon (SIGTERM, SIGKILL after 10 s). The repository is kept.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, Duration::from_secs(10));
        }
    }

    /// Kills the daemon with SIGKILL. The repository is kept.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the daemon again on the same ports and repository; waits until it answers.
    pub fn start_again(&mut self) {
        if self.child.is_some() {
            return;
        }
        let log = open_log(&self.log_path());
        let mut cmd = recipe::daemon(&self.repo_path(), &self.network, &self.daemon_args);
        cmd.stdout(log.try_clone().unwrap()).stderr(log);
        let mut child = cmd.spawn().expect("spawn ipfs daemon");
        let r = wait_listening(&mut child, self.api_port, Duration::from_secs(60), "ipfs daemon", &self.log_path());
        self.child = Some(child);
        if let Err(e) = r {
            self.kill();
            panic!("testkit: {e}");
        }
    }

    /// `POST /api/v0/<cmd>?<query>`; Ok(body) on HTTP 200, Err("status: body") otherwise.
    pub fn rpc(&self, cmd: &str, query: &[(&str, &str)]) -> Result<Vec<u8>, String> {
        let url = format!("{}/api/v0/{cmd}", self.api_url());
        off_runtime(|| {
            let resp = http_client(Duration::from_secs(120))
                .post(&url)
                .query(query)
                .send()
                .map_err(|e| format!("{url}: {e}"))?;
            let status = resp.status();
            let body = resp.bytes().map_err(|e| format!("{url}: {e}"))?.to_vec();
            if status.is_success() {
                Ok(body)
            } else {
                Err(format!("{url}: {status}: {}", String::from_utf8_lossy(&body)))
            }
        })
    }

    /// [`Kubo::rpc`] parsed as one JSON value; panics on error.
    pub fn rpc_json(&self, cmd: &str, query: &[(&str, &str)]) -> Value {
        let body = self.rpc(cmd, query).unwrap_or_else(|e| panic!("kubo rpc {cmd}: {e}"));
        serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("kubo rpc {cmd}: bad JSON ({e}): {}", String::from_utf8_lossy(&body)))
    }

    /// CIDs of every recursive pin (`pin/ls?type=recursive`), sorted.
    pub fn pin_ls_recursive(&self) -> Vec<String> {
        let v = self.rpc_json("pin/ls", &[("type", "recursive")]);
        let mut keys: Vec<String> = v["Keys"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
        keys.sort();
        keys
    }

    /// Whether `cid` is pinned recursively.
    pub fn is_pinned(&self, cid: &str) -> bool {
        match self.rpc("pin/ls", &[("type", "recursive"), ("arg", cid)]) {
            Ok(_) => true,
            Err(e) if e.contains("not pinned") => false,
            Err(e) => panic!("kubo pin/ls {cid}: {e}"),
        }
    }

    /// The bytes of `cid` (`cat`); panics on error.
    pub fn cat(&self, cid: &str) -> Vec<u8> {
        self.rpc("cat", &[("arg", cid)]).unwrap_or_else(|e| panic!("kubo cat {cid}: {e}"))
    }

    /// Adds bytes with `cid-version=1&raw-leaves=true&pin=true` and the default chunker;
    /// returns the root CID.
    pub fn add_bytes(&self, data: &[u8]) -> String {
        self.add_bytes_with(data, &[("cid-version", "1"), ("raw-leaves", "true"), ("pin", "true")])
    }

    /// Adds bytes with the given `add` options; returns the root CID (last NDJSON line's Hash).
    pub fn add_bytes_with(&self, data: &[u8], query: &[(&str, &str)]) -> String {
        let url = format!("{}/api/v0/add", self.api_url());
        let data = data.to_vec();
        let body = off_runtime(move || {
            let part = reqwest::blocking::multipart::Part::bytes(data).file_name("blob");
            let form = reqwest::blocking::multipart::Form::new().part("file", part);
            let resp = http_client(Duration::from_secs(600))
                .post(&url)
                .query(query)
                .multipart(form)
                .send()
                .unwrap_or_else(|e| panic!("kubo add: {e}"));
            let status = resp.status();
            let body = resp.text().unwrap_or_else(|e| panic!("kubo add: {e}"));
            if !status.is_success() {
                panic!("kubo add: {status}: {body}");
            }
            body
        });
        let last = body.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
        let v: Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("kubo add: bad JSON ({e}): {body}"));
        v["Hash"].as_str().unwrap_or_else(|| panic!("kubo add: no Hash in {body}")).to_string()
    }

    /// Connects this daemon's swarm to `other`'s (bitswap then fetches from it).
    pub fn connect(&self, other: &Kubo) {
        let addr = other.swarm_multiaddr();
        self.rpc("swarm/connect", &[("arg", &addr)]).unwrap_or_else(|e| panic!("kubo swarm/connect {addr}: {e}"));
    }

    /// Peer IDs this daemon is connected to.
    pub fn swarm_peers(&self) -> Vec<String> {
        let v = self.rpc_json("swarm/peers", &[]);
        v["Peers"]
            .as_array()
            .map(|a| a.iter().filter_map(|p| p["Peer"].as_str().map(String::from)).collect())
            .unwrap_or_default()
    }

    /// The repository's size on disk as Kubo reports it (`repo/stat` RepoSize), in bytes.
    pub fn repo_size(&self) -> u64 {
        self.rpc_json("repo/stat", &[])["RepoSize"].as_u64().expect("repo/stat RepoSize")
    }

    /// The raw bytes of one block (`block/get`).
    pub fn block_get(&self, cid: &str) -> Vec<u8> {
        self.rpc("block/get", &[("arg", cid)]).unwrap_or_else(|e| panic!("kubo block/get {cid}: {e}"))
    }

    /// Stores one block (`block/put` with this codec, sha2-256) and returns its CID.
    pub fn block_put(&self, data: &[u8], codec: &str) -> String {
        let url = format!("{}/api/v0/block/put", self.api_url());
        let (data, codec) = (data.to_vec(), codec.to_owned());
        let v: Value = off_runtime(move || {
            let part = reqwest::blocking::multipart::Part::bytes(data).file_name("block");
            let form = reqwest::blocking::multipart::Form::new().part("file", part);
            let resp = http_client(Duration::from_secs(60))
                .post(&url)
                .query(&[("cid-codec", codec.as_str()), ("mhtype", "sha2-256")])
                .multipart(form)
                .send()
                .unwrap_or_else(|e| panic!("kubo block/put: {e}"));
            resp.json().unwrap_or_else(|e| panic!("kubo block/put: {e}"))
        });
        v["Key"].as_str().unwrap_or_else(|| panic!("kubo block/put: {v}")).to_owned()
    }

    /// Runs `repo/gc` and returns its raw NDJSON output.
    pub fn repo_gc(&self) -> String {
        String::from_utf8_lossy(&self.rpc("repo/gc", &[]).unwrap_or_else(|e| panic!("kubo repo/gc: {e}"))).into()
    }
}

impl Drop for Kubo {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            eprintln!(
                "--- testkit: kubo (api {}) log tail ({}) ---\n{}",
                self.api_port,
                self.log_path().display(),
                file_tail(&self.log_path(), 20)
            );
        }
        self.kill();
    }
}

pub use afreg_deploy::local::kubo::json_set;
