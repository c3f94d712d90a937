//! A region's Kubo on loopback: the `test` profile, then an offline, loopback-only
//! configuration (no bootstrap peers, routing, MDNS, relays, NAT traversal, AutoConf, AutoTLS,
//! announcements or providing) in the cluster's private network ([`SwarmKey`]), as production
//! runs. The regions' pinners peer the daemons with each other.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use super::{build_then_rename, run, tool, ProcessError};
use crate::swarm_key::SwarmKey;

/// The file a private network's key lives in, in the repository's root.
pub const SWARM_KEY_FILE: &str = "swarm.key";

/// Which network a daemon joins.
#[derive(Debug, Clone)]
pub enum Network {
    /// The cluster's private network: the key in the repository, and the daemon refuses to
    /// start without it (`LIBP2P_FORCE_PNET=1`). Every region runs this way.
    Private(SwarmKey),
    /// The public IPFS network's protocol, with no key: only for tests of what a stranger can
    /// reach.
    Public,
}

/// The ports of one daemon, all on 127.0.0.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KuboPorts {
    pub api: u16,
    pub gateway: u16,
    pub swarm: u16,
}

/// `http://127.0.0.1:PORT`: the RPC API (calls are `POST {url}/api/v0/<cmd>`) on its port, the
/// gateway on its own.
pub fn api_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// An `ipfs` command bound to `repo` (`IPFS_PATH`; telemetry off; no input).
pub fn ipfs(repo: &Path) -> Command {
    let mut c = Command::new(tool("ipfs"));
    c.env("IPFS_PATH", repo).env("IPFS_TELEMETRY", "off").stdin(Stdio::null());
    c
}

/// `ipfs daemon` of `repo` with `args` (e.g. `--enable-gc`), for the caller to spawn. In a
/// private network it refuses to start without the key.
pub fn daemon(repo: &Path, network: &Network, args: &[String]) -> Command {
    let mut c = ipfs(repo);
    c.arg("daemon").args(args);
    if let Network::Private(_) = network {
        c.env("LIBP2P_FORCE_PNET", "1");
    }
    c
}

/// The settings of a private network, in every region and every local daemon: no public
/// bootstrap peers, no DHT or other routing, no content announcing, no local discovery, no
/// relays, no NAT traversal; the websocket transport off (it shares the TCP listener, which a
/// private network cannot). The regions dial each other themselves (the pinner peers them from
/// the replicated region list).
pub fn private_network_settings() -> [(&'static str, Value); 12] {
    [
        ("Bootstrap", json!([])),
        ("Routing.Type", json!("none")),
        ("Provide.Enabled", json!(false)),
        ("Discovery.MDNS.Enabled", json!(false)),
        ("AutoNAT.ServiceMode", json!("disabled")),
        ("Swarm.RelayClient.Enabled", json!(false)),
        ("Swarm.RelayService.Enabled", json!(false)),
        ("Swarm.Transports.Network.Relay", json!(false)),
        ("Swarm.Transports.Network.Websocket", json!(false)),
        ("Swarm.DisableNatPortMap", json!(true)),
        ("AutoConf.Enabled", json!(false)),
        ("AutoTLS.Enabled", json!(false)),
    ]
}

/// The settings every local daemon gets over the `test` profile: loopback addresses on its
/// ports, nothing announced, and the private network's settings.
pub fn local_settings(ports: KuboPorts) -> Vec<(&'static str, Value)> {
    let mut s = vec![
        ("Addresses.API", json!(format!("/ip4/127.0.0.1/tcp/{}", ports.api))),
        ("Addresses.Gateway", json!(format!("/ip4/127.0.0.1/tcp/{}", ports.gateway))),
        ("Addresses.Swarm", json!([format!("/ip4/127.0.0.1/tcp/{}", ports.swarm)])),
        ("Addresses.Announce", json!([])),
        ("Addresses.NoAnnounce", json!([])),
    ];
    s.extend(private_network_settings());
    s
}

/// A new repository in `repo` (which must not exist) with [`local_settings`] and the network's
/// key, then `tweak` over the JSON config (e.g. `Datastore.StorageMax`); built as `repo.init`
/// and renamed once configured, so an interrupted first run is never left with Kubo's public
/// defaults.
pub fn init(
    repo: &Path,
    ports: KuboPorts,
    network: &Network,
    tweak: impl FnOnce(&mut Value),
) -> Result<(), ProcessError> {
    build_then_rename(repo, |partial| {
        run(ipfs(partial).args(["init", "--profile=test", "--empty-repo"]), "ipfs init")?;
        if let Network::Private(key) = network {
            install_swarm_key(partial, key)?;
        }
        let path = partial.join("config");
        let mut cfg = read_config(partial)?;
        for (key, value) in local_settings(ports) {
            json_set(&mut cfg, key, value);
        }
        tweak(&mut cfg);
        let text = serde_json::to_vec_pretty(&cfg).expect("a JSON value serializes");
        fs::write(&path, text).map_err(ProcessError::io(format!("writing {}", path.display())))
    })
}

/// Puts the network's key into `repo` (mode 0600), replacing any other.
pub fn install_swarm_key(repo: &Path, key: &SwarmKey) -> Result<(), ProcessError> {
    let path = repo.join(SWARM_KEY_FILE);
    let what = || format!("writing {}", path.display());
    if path.exists() {
        fs::remove_file(&path).map_err(ProcessError::io(what()))?;
    }
    Ok(key.write_new(&path)?)
}

/// The repository's JSON config.
pub fn read_config(repo: &Path) -> Result<Value, ProcessError> {
    let path = repo.join("config");
    let what = || format!("reading {}", path.display());
    let bytes = fs::read(&path).map_err(ProcessError::io(what()))?;
    serde_json::from_slice(&bytes).map_err(|e| ProcessError::Invalid(format!("{}: {e}", path.display())))
}

/// The daemon's peer id (`Identity.PeerID` of its config).
pub fn peer_id(repo: &Path) -> Result<String, ProcessError> {
    let cfg = read_config(repo)?;
    cfg["Identity"]["PeerID"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| ProcessError::Invalid(format!("{}: no Identity.PeerID", repo.join("config").display())))
}

/// Sets `a.b.c` in a JSON object, creating intermediate objects.
pub fn json_set(root: &mut Value, path: &str, v: Value) {
    let mut cur = root;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, p) in parts.iter().enumerate() {
        if !cur.is_object() {
            *cur = Value::Object(Default::default());
        }
        let obj = cur.as_object_mut().expect("just made an object");
        if i == parts.len() - 1 {
            obj.insert(p.to_string(), v);
            return;
        }
        cur = obj.entry(p.to_string()).or_insert_with(|| Value::Object(Default::default()));
    }
}
