//! A region's Kubo on loopback: the `test` profile, then an offline, loopback-only
//! configuration (no bootstrap peers, routing, MDNS, relays, NAT traversal, AutoConf, AutoTLS,
//! announcements or providing). The regions' pinners peer the daemons with each other.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use super::{build_then_rename, run, tool, ProcessError};

/// The ports of one daemon, all on 127.0.0.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KuboPorts {
    pub api: u16,
    pub gateway: u16,
    pub swarm: u16,
}

/// `http://127.0.0.1:PORT`, the RPC API (calls are `POST {url}/api/v0/<cmd>`).
pub fn api_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// An `ipfs` command bound to `repo` (`IPFS_PATH`; telemetry off; no input).
pub fn ipfs(repo: &Path) -> Command {
    let mut c = Command::new(tool("ipfs"));
    c.env("IPFS_PATH", repo).env("IPFS_TELEMETRY", "off").stdin(Stdio::null());
    c
}

/// `ipfs daemon` of `repo` with `args` (e.g. `--enable-gc`), for the caller to spawn.
pub fn daemon(repo: &Path, args: &[String]) -> Command {
    let mut c = ipfs(repo);
    c.arg("daemon").args(args);
    c
}

/// The settings every local daemon gets over the `test` profile.
pub fn local_settings(ports: KuboPorts) -> [(&'static str, Value); 16] {
    [
        ("Addresses.API", json!(format!("/ip4/127.0.0.1/tcp/{}", ports.api))),
        ("Addresses.Gateway", json!(format!("/ip4/127.0.0.1/tcp/{}", ports.gateway))),
        ("Addresses.Swarm", json!([format!("/ip4/127.0.0.1/tcp/{}", ports.swarm)])),
        ("Addresses.Announce", json!([])),
        ("Addresses.NoAnnounce", json!([])),
        ("Bootstrap", json!([])),
        ("Routing.Type", json!("none")),
        ("Discovery.MDNS.Enabled", json!(false)),
        ("AutoNAT.ServiceMode", json!("disabled")),
        ("Swarm.RelayClient.Enabled", json!(false)),
        ("Swarm.RelayService.Enabled", json!(false)),
        ("Swarm.Transports.Network.Relay", json!(false)),
        ("Swarm.DisableNatPortMap", json!(true)),
        ("Provide.Enabled", json!(false)),
        ("AutoConf.Enabled", json!(false)),
        ("AutoTLS.Enabled", json!(false)),
    ]
}

/// A new repository in `repo` (which must not exist) with [`local_settings`], then `tweak` over
/// the JSON config (e.g. `Datastore.StorageMax`); built as `repo.init` and renamed once
/// configured, so an interrupted first run is never left with Kubo's public defaults.
pub fn init(repo: &Path, ports: KuboPorts, tweak: impl FnOnce(&mut Value)) -> Result<(), ProcessError> {
    build_then_rename(repo, |partial| {
        run(ipfs(partial).args(["init", "--profile=test", "--empty-repo"]), "ipfs init")?;
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

/// The repository's JSON config.
pub fn read_config(repo: &Path) -> Result<Value, ProcessError> {
    let path = repo.join("config");
    let what = || format!("reading {}", path.display());
    let bytes = fs::read(&path).map_err(ProcessError::io(what()))?;
    serde_json::from_slice(&bytes).map_err(|e| ProcessError::Io { what: what(), source: e.into() })
}

/// The daemon's peer id (`Identity.PeerID` of its config).
pub fn peer_id(repo: &Path) -> Result<String, ProcessError> {
    let cfg = read_config(repo)?;
    cfg["Identity"]["PeerID"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| ProcessError::Io { what: format!("{}: no Identity.PeerID", repo.display()), source: std::io::ErrorKind::InvalidData.into() })
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
