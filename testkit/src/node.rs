//! A running `afreg serve` with its own directory, configuration file, signing key and log.

use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use afreg_config::{Action, ClusterConfig, Config, LogFormat};
use tempfile::TempDir;

use crate::{file_tail, free_port, http_client, off_runtime, open_log, terminate};

/// How testkit runs a node: where it listens, extra environment variables, and its
/// configuration, an [`afreg_config::Config`] value that tests change field by field.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Fixed listen port; `None` picks a free one.
    pub port: Option<u16>,
    /// Fixed port of the internal (cluster) listener; `None` picks a free one.
    pub internal_port: Option<u16>,
    /// The loopback address the node listens on (`server.listen`, `cluster.listen`, the health
    /// probe, [`Node::url`], [`Node::host`]); `None` is 127.0.0.1. Nodes on distinct addresses
    /// (127.0.0.11, 127.0.0.12, …) look like hosts at different IPs, e.g. to DNS.
    pub listen_ip: Option<Ipv4Addr>,
    /// Extra environment variables for the node process (e.g. `AFREG_SECTION__FIELD`).
    pub env: Vec<(String, String)>,
    /// The node's configuration. testkit sets the listeners from the fields above, and
    /// `server.public_url`, `cluster.advertise_url`, `auth.signing_key` and
    /// `cluster.secret_file` (in the node's directory) where the test left them at their
    /// defaults.
    pub config: Config,
}

impl Default for NodeConfig {
    /// Auth on, anonymous pull, JSON logs, and loopback Raft timings: round trips are
    /// sub-millisecond, and a loaded 2-core machine still needs room.
    fn default() -> Self {
        let mut config = Config::default();
        config.auth.anonymous = vec![Action::Pull];
        config.log.format = LogFormat::Json;
        config.cluster.heartbeat_ms = 250;
        config.cluster.election_timeout_min_ms = 1000;
        config.cluster.election_timeout_max_ms = 2000;
        NodeConfig { port: None, internal_port: None, listen_ip: None, env: Vec::new(), config }
    }
}

impl NodeConfig {
    /// Defaults (auth on, anonymous pull) against this database and Kubo.
    pub fn new(database_url: impl Into<String>, kubo_api_url: impl Into<String>) -> Self {
        let mut c = NodeConfig::default();
        c.config.database.url = database_url.into();
        c.config.kubo.api_url = kubo_api_url.into();
        // No gateway unless the test has one (`for_kubo`): reads go through the RPC `cat`.
        c.config.kubo.gateway_url = String::new();
        c
    }

    /// Defaults (auth on, anonymous pull) against this database and this test Kubo: its RPC
    /// API, and its gateway for reading blobs.
    pub fn for_kubo(database_url: impl Into<String>, kubo: &crate::kubo::Kubo) -> Self {
        let mut c = Self::new(database_url, kubo.api_url());
        c.config.kubo.gateway_url = kubo.gateway_url();
        c
    }

    /// Starts the process with its wall clock `secs` off (negative: slow), through libfaketime
    /// (Debian's `faketime`, installed by scripts/setup.sh). Only the time of day moves:
    /// monotonic clocks, and so every timer, timeout and Raft election, run true.
    pub fn clock_offset(&mut self, secs: i64) {
        let lib = [
            "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
            "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .expect("libfaketime is not installed: run scripts/setup.sh (Debian package faketime)");
        self.env.retain(|(k, _)| !k.starts_with("FAKETIME") && k != "LD_PRELOAD");
        self.env.extend([
            ("LD_PRELOAD".to_owned(), lib.to_owned()),
            ("FAKETIME".to_owned(), format!("{secs:+}")),
            ("FAKETIME_DONT_FAKE_MONOTONIC".to_owned(), "1".to_owned()),
        ]);
    }

    /// The loopback address the node listens on.
    pub fn ip(&self) -> Ipv4Addr {
        self.listen_ip.unwrap_or(Ipv4Addr::LOCALHOST)
    }

    /// The internal URL other regions use: `cluster.advertise_url` if the test set it, else
    /// the internal listener.
    pub fn advertised_url(&self) -> String {
        if self.config.cluster.advertise_url != ClusterConfig::default().advertise_url {
            return self.config.cluster.advertise_url.clone();
        }
        format!("http://{}:{}", self.ip(), self.internal_port.expect("internal port chosen"))
    }

    /// The configuration of a node listening on `port` (public) and `internal_port`
    /// (cluster), with its files in `dir`.
    pub fn to_config(&self, port: u16, internal_port: u16, metrics_port: u16, dir: &Path) -> Config {
        let mut c = self.config.clone();
        let d = Config::default();
        let ip = self.ip();
        c.server.listen = (ip, port).into();
        if c.server.public_url == d.server.public_url {
            c.server.public_url = format!("http://{ip}:{port}");
        }
        c.cluster.listen = (ip, internal_port).into();
        if c.server.metrics_listen == d.server.metrics_listen {
            c.server.metrics_listen = (ip, metrics_port).into();
        }
        if c.cluster.advertise_url == d.cluster.advertise_url {
            c.cluster.advertise_url = format!("http://{ip}:{internal_port}");
        }
        if c.auth.signing_key == d.auth.signing_key {
            c.auth.signing_key = dir.join("key.pem");
        }
        if c.cluster.secret_file == d.cluster.secret_file {
            c.cluster.secret_file = dir.join("cluster-secret");
        }
        if c.storage.blob_cache_dir == d.storage.blob_cache_dir {
            c.storage.blob_cache_dir = dir.join("blob-files");
        }
        c
    }
}

/// A running `afreg serve` process with its own config file, signing key and log file.
pub struct Node {
    bin: PathBuf,
    cfg: NodeConfig,
    dir: TempDir,
    port: u16,
    internal_port: u16,
    metrics_port: u16,
    child: Option<Child>,
}

impl Node {
    /// Writes the config, runs `afreg serve --config FILE` and waits until `GET /healthz`
    /// answers 200 (30 s). Panics with the node's log tail on failure.
    pub fn start(bin: &Path, cfg: NodeConfig) -> Node {
        Self::try_start(bin, cfg).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Node::start`] but returns an error (including the log tail) instead of panicking,
    /// for tests that expect the node to refuse to start.
    pub fn try_start(bin: &Path, cfg: NodeConfig) -> Result<Node, String> {
        let mut node = Self::start_unready(bin, cfg);
        node.wait_healthy(Duration::from_secs(30))?;
        Ok(node)
    }

    /// Writes the config and spawns `afreg serve` without waiting for it (for a node whose
    /// health the test checks itself, e.g. over HTTPS).
    pub fn start_unready(bin: &Path, cfg: NodeConfig) -> Node {
        let dir = tempfile::Builder::new().prefix("afreg-node-").tempdir_in("/tmp").expect("node temp dir");
        let port = cfg.port.unwrap_or_else(free_port);
        let internal_port = cfg.internal_port.unwrap_or_else(free_port);
        let metrics_port = free_port();
        let mut node = Node { bin: bin.to_path_buf(), cfg, dir, port, internal_port, metrics_port, child: None };
        node.write_config();
        node.spawn();
        node
    }

    /// Spawns a stopped node again with the same config, without waiting for it.
    pub fn spawn_again(&mut self) {
        self.spawn();
    }

    fn write_config(&self) {
        let cfg = self.cfg.to_config(self.port, self.internal_port, self.metrics_port, self.dir.path());
        fs::write(self.config_path(), cfg.to_toml().expect("serialise config")).expect("write node config");
    }

    /// Spawns `afreg serve` without waiting for health.
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "node already running");
        assert!(self.bin.is_file(), "afreg binary not found at {}", self.bin.display());
        let log = open_log(&self.log_path());
        let _ = writeln!(
            &log,
            "=== testkit: starting {} serve --config {} ===",
            self.bin.display(),
            self.config_path().display()
        );
        let mut cmd = Command::new(&self.bin);
        strip_inherited_afreg_env(&mut cmd);
        cmd.arg("serve")
            .arg("--config")
            .arg(self.config_path())
            .current_dir(self.dir.path())
            .env("RUST_BACKTRACE", "1")
            .envs(self.cfg.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(cmd.spawn().unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin.display())));
    }

    /// Polls `GET /healthz` until 200; Err (with the log tail) on timeout or early exit.
    pub fn wait_healthy(&mut self, timeout: Duration) -> Result<(), String> {
        let url = format!("{}/healthz", self.url());
        let deadline = Instant::now() + timeout;
        let client = off_runtime(|| http_client(Duration::from_secs(2)));
        let mut last;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!(
                        "afreg exited during start-up ({status}); log {}:\n{}",
                        self.log_path().display(),
                        self.log_tail(60)
                    ));
                }
            } else {
                return Err("afreg is not running".into());
            }
            let r = off_runtime(|| client.get(&url).send().map(|r| r.status()));
            match r {
                Ok(s) if s.as_u16() == 200 => {
                    off_runtime(move || drop(client));
                    return Ok(());
                }
                Ok(s) => last = format!("GET /healthz -> {s}"),
                Err(e) => last = format!("GET /healthz: {e}"),
            }
            if Instant::now() > deadline {
                off_runtime(move || drop(client));
                return Err(format!(
                    "afreg did not become healthy within {timeout:?} (last: {last}); log {}:\n{}",
                    self.log_path().display(),
                    self.log_tail(60)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `http://127.0.0.1:PORT` (or the configured [`NodeConfig::listen_ip`])
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// `127.0.0.1:PORT` (the registry host for clients; or [`NodeConfig::listen_ip`]).
    pub fn host(&self) -> String {
        format!("{}:{}", self.cfg.ip(), self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://IP:PORT` of the internal (cluster) listener.
    /// The node's Prometheus endpoint (`server.metrics_listen`), e.g. `http://127.0.0.1:PORT/metrics`.
    pub fn metrics_url(&self) -> String {
        format!("http://{}:{}/metrics", self.cfg.ip(), self.metrics_port)
    }

    pub fn internal_url(&self) -> String {
        format!("http://{}:{}", self.cfg.ip(), self.internal_port)
    }

    pub fn internal_port(&self) -> u16 {
        self.internal_port
    }

    /// PID of the running process (panics if stopped).
    /// This process's `/status?scope=local`, or `None` if it does not answer 200.
    pub fn local_status(&self) -> Option<serde_json::Value> {
        if !self.is_running() {
            return None;
        }
        let url = format!("{}/status?scope=local", self.url());
        off_runtime(|| {
            let r = http_client(Duration::from_secs(3)).get(&url).send().ok()?;
            r.status().is_success().then(|| r.json().ok()).flatten()
        })
    }

    /// The region's Raft seat as this process reports it: the holder's name and the epoch.
    pub fn seat(&self) -> Option<(String, u64)> {
        let s = self.local_status()?;
        Some((s["seat"]["holder"].as_str()?.to_owned(), s["seat"]["epoch"].as_u64()?))
    }

    /// Waits until this process reports `holder` holding the seat with a running Raft member;
    /// returns the epoch and how long it took. Panics with the log tail after `bound`.
    pub fn wait_seat_holder(&self, holder: &str, bound: Duration) -> (u64, Duration) {
        let started = Instant::now();
        loop {
            if let Some(s) = self.local_status() {
                if s["seat"]["holder"] == holder && s["raft"]["role"] != "shutdown" {
                    return (s["seat"]["epoch"].as_u64().unwrap_or(0), started.elapsed());
                }
            }
            assert!(
                started.elapsed() < bound,
                "{holder} does not hold the seat within {bound:?} (seen {:?});\n{}",
                self.seat(),
                self.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("afreg is not running").id()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("afreg.toml")
    }

    /// The node's temp directory (config, key.pem, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// stdout+stderr of every run of this node (appended across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("afreg.log")
    }

    pub fn log_tail(&self, lines: usize) -> String {
        file_tail(&self.log_path(), lines)
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// SIGKILL (a crash); the process is reaped.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Graceful stop: SIGTERM, SIGKILL after 15 s. Returns the exit status if it exited.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        terminate(&mut c, Duration::from_secs(15));
        c.try_wait().ok().flatten()
    }

    /// Starts the node again with the same config and port (stopping it gracefully first if it
    /// is running) and waits until healthy. Panics with the log tail on failure.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
        if let Err(e) = self.wait_healthy(Duration::from_secs(30)) {
            panic!("{e}");
        }
    }

    /// Changes the config (written on the next [`Node::restart`]).
    pub fn reconfigure(&mut self, f: impl FnOnce(&mut NodeConfig)) {
        f(&mut self.cfg);
        self.write_config();
    }

    /// Runs `afreg ARGS... --config FILE` with `stdin` and returns its output (whatever the
    /// exit status).
    pub fn cli(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut cmd = Command::new(&self.bin);
        strip_inherited_afreg_env(&mut cmd);
        cmd.args(args)
            .arg("--config")
            .arg(self.config_path())
            .current_dir(self.dir.path())
            .envs(self.cfg.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        if let Some(data) = stdin {
            let mut si = child.stdin.take().unwrap();
            si.write_all(data).expect("write afreg stdin");
        }
        child.wait_with_output().expect("wait afreg cli")
    }

    /// `afreg user add NAME --config FILE --password-stdin`, password on stdin (the node's
    /// default grant, `*:pull,push,delete`). Panics on failure.
    pub fn add_user(&self, name: &str, password: &str) {
        self.add_user_with_grants(name, password, &[]);
    }

    /// Like [`Node::add_user`] with `--grant PATTERN:ACTIONS` for each entry of `grants`
    /// (e.g. `["team/*:pull"]`); an empty slice keeps the node's default grant.
    pub fn add_user_with_grants(&self, name: &str, password: &str, grants: &[&str]) {
        let mut args = vec!["user", "add", name, "--password-stdin"];
        for g in grants {
            args.push("--grant");
            args.push(g);
        }
        let out = self.cli(&args, Some(format!("{password}\n").as_bytes()));
        if !out.status.success() {
            panic!(
                "afreg user add {name} failed ({}):\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// The node reads `AFREG_SECTION__FIELD` variables as configuration: a test's node must be
/// configured only by its file and `NodeConfig::env`, never by the developer's shell (nor by
/// `AFREG_TOOLS`), so inherited `AFREG_*` variables are removed.
fn strip_inherited_afreg_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("AFREG_") {
            cmd.env_remove(k);
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- testkit: afreg on {} log tail ({}) ---\n{}",
                self.host(),
                self.log_path().display(),
                self.log_tail(60)
            );
        }
        self.kill();
    }
}
