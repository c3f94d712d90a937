//! `afreg up`: the local three-region cluster of the README's first command, so that anyone can
//! try replication, failover and the clients on one machine without writing a single config.
//! Every region of `regions/` gets, under one data directory, its own PostgreSQL cluster, its own
//! Kubo daemon (loopback only, offline, never the `server` profile) and its own `afreg serve`, on
//! the region file's `[local]` ports (plus `--port-shift`); the nodes form one Raft group from a
//! static bootstrap list and share one cluster secret. The first run creates the `admin` user;
//! every run writes `cluster.json`. Ctrl-C (or SIGTERM) stops everything in order: the nodes, then
//! Kubo, then Postgres. Running it again reuses the data.
//!
//! Every child runs in its own process group, so a Ctrl-C in the terminal reaches only this
//! process, which then stops the children in that order.
//!
//! A node that exits on its own (killed, crashed) is started again after a second, as Akash or
//! any supervisor restarts a container, backing off to 30 s while it keeps failing at once.
//! Each node's pid is in `<region>/afreg.pid` (process i > 0: `afreg-<i>.pid`), which is how
//! `afreg drill` finds the leader's process.

use std::fs;
use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use afreg_config::{random_secret, write_private, Action, BootstrapPeer, Config, LogFormat};
use afreg_deploy::local::kubo::{self, KuboPorts, Network};
use afreg_deploy::local::postgres::{self, Postgres, StopMode};
use afreg_deploy::local::{self as recipes, append_log, create_traversable_dir, is_root, tail, terminate};
use afreg_deploy::regions::RegionFile;
use afreg_deploy::swarm_key::SwarmKey;
use anyhow::{anyhow, bail, Context as _};
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::client::InternalClient;

/// How long each node, then the cluster, has to come up.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a node or a Kubo has after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// Lines of a log quoted in an error.
const TAIL_LINES: usize = 20;

#[derive(clap::Args)]
pub struct UpArgs {
    /// Data directory holding every region's Postgres, Kubo, config and logs.
    #[arg(long, default_value = ".data/cluster")]
    pub data: PathBuf,
    /// Directory of region files.
    #[arg(long, default_value = "regions")]
    pub regions: PathBuf,
    /// Added to every local port of the region files (to run beside something else).
    #[arg(long, default_value_t = 0)]
    pub port_shift: u16,
    /// `afreg serve` processes per region (default: each region file's `processes`). They
    /// share the region's Postgres, Kubo, public and internal ports; one holds the region's
    /// Raft seat. Process i > 0 logs to `<region>/afreg-<i>.log` and serves `/metrics` on the
    /// region's metrics port + 100 × i.
    #[arg(long)]
    pub processes: Option<u32>,
}

/// The file holding the pid of process `i` of the region whose directory is `dir`.
pub fn pid_file(dir: &Path, i: u32) -> PathBuf {
    if i == 0 {
        dir.join("afreg.pid")
    } else {
        dir.join(format!("afreg-{i}.pid"))
    }
}

/// How far apart the metrics ports of one region's processes are.
const METRICS_PORT_STEP: u16 = 100;

/// One region on this machine: its directory and its (shifted) ports.
struct LocalRegion {
    name: String,
    id: u64,
    dir: PathBuf,
    registry: u16,
    internal: u16,
    metrics: u16,
    postgres: u16,
    kubo: KuboPorts,
    processes: u32,
}

impl LocalRegion {
    fn new(r: &RegionFile, data: &Path, shift: u16, processes: Option<u32>) -> anyhow::Result<LocalRegion> {
        let processes = processes.unwrap_or(r.processes);
        anyhow::ensure!(processes >= 1, "region {}: --processes must be at least 1", r.name);
        let p = |port: u16| {
            let name = &r.name;
            port.checked_add(shift)
                .ok_or_else(|| anyhow!("region {name}: port {port} + --port-shift {shift} is over 65535"))
        };
        Ok(LocalRegion {
            name: r.name.clone(),
            id: r.raft_id,
            dir: data.join(&r.name),
            registry: p(r.local.registry)?,
            internal: p(r.local.internal)?,
            metrics: p(r.local.metrics)?,
            postgres: p(r.local.postgres)?,
            kubo: KuboPorts {
                api: p(r.local.kubo_api)?,
                gateway: p(r.local.kubo_gateway)?,
                swarm: p(r.local.kubo_swarm)?,
            },
            processes,
        })
    }
    /// Process `i`'s log (process 0 keeps the region's `afreg.log`).
    fn process_log(&self, i: u32) -> PathBuf {
        if i == 0 {
            self.log()
        } else {
            self.dir.join(format!("afreg-{i}.log"))
        }
    }
    fn process_metrics(&self, i: u32) -> anyhow::Result<u16> {
        (i as u16)
            .checked_mul(METRICS_PORT_STEP)
            .and_then(|d| self.metrics.checked_add(d))
            .ok_or_else(|| anyhow!("region {}: process {i}'s metrics port is over 65535", self.name))
    }
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.registry)
    }
    fn internal_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.internal)
    }
    fn pg_dir(&self) -> PathBuf {
        self.dir.join("pg")
    }
    fn kubo_repo(&self) -> PathBuf {
        self.dir.join("kubo")
    }
    fn kubo_log(&self) -> PathBuf {
        self.dir.join("kubo.log")
    }
    fn config(&self) -> PathBuf {
        self.dir.join("afreg.toml")
    }
    fn log(&self) -> PathBuf {
        self.dir.join("afreg.log")
    }
    fn pid_file(&self, i: u32) -> PathBuf {
        pid_file(&self.dir, i)
    }
    fn ports(&self) -> Vec<(u16, &'static str)> {
        let mut ports = vec![
            (self.registry, "registry"),
            (self.internal, "internal"),
            (self.postgres, "postgres"),
            (self.kubo.api, "kubo_api"),
            (self.kubo.swarm, "kubo_swarm"),
            (self.kubo.gateway, "kubo_gateway"),
        ];
        ports.extend((0..self.processes).filter_map(|i| self.process_metrics(i).ok()).map(|p| (p, "metrics")));
        ports
    }

    /// The node's configuration: loopback listeners, this region's Postgres and Kubo, anonymous
    /// pull, and a static bootstrap list of every region with loopback Raft timings.
    fn node_config(&self, all: &[LocalRegion], secret_file: &Path) -> Config {
        let mut c = Config::default();
        c.server.listen = ([127, 0, 0, 1], self.registry).into();
        c.server.public_url = self.url();
        c.server.metrics_listen = ([127, 0, 0, 1], self.metrics).into();
        c.database.url = postgres::url(self.postgres);
        c.kubo.api_url = kubo::api_url(self.kubo.api);
        c.kubo.gateway_url = kubo::api_url(self.kubo.gateway);
        c.auth.signing_key = self.dir.join("signing-key.pem");
        c.auth.anonymous = vec![Action::Pull];
        c.cluster.id = self.id;
        c.cluster.region = self.name.clone();
        c.cluster.listen = ([127, 0, 0, 1], self.internal).into();
        c.cluster.advertise_url = self.internal_url();
        c.cluster.secret_file = secret_file.to_owned();
        c.cluster.kubo_swarm_addrs = vec![format!("/ip4/127.0.0.1/tcp/{}", self.kubo.swarm)];
        c.cluster.bootstrap = all
            .iter()
            .map(|o| BootstrapPeer { id: o.id, name: o.name.clone(), url: o.internal_url(), api_url: o.url() })
            .collect();
        // Loopback round trips are sub-millisecond: faster failover than the WAN defaults.
        c.cluster.heartbeat_ms = 250;
        c.cluster.election_timeout_min_ms = 1000;
        c.cluster.election_timeout_max_ms = 2000;
        c.log.format = LogFormat::Json;
        c
    }
}

/// A child process of one region.
struct Proc {
    region: String,
    log: PathBuf,
    child: Child,
    exited: bool,
    /// For a node: which region (index into the locals) and which of its processes.
    node: Option<(usize, u32)>,
    pid_file: Option<PathBuf>,
    started: Instant,
}

/// A node started again this soon after it exited.
const RESTART_AFTER: Duration = Duration::from_secs(1);
/// The longest wait before starting again a node that keeps exiting at once.
const RESTART_MAX: Duration = Duration::from_secs(30);
/// A node that ran this long before it exited is started again after [`RESTART_AFTER`].
const RAN_WELL: Duration = Duration::from_secs(10);

/// What has been started, so that it can be stopped: nodes, then Kubo, then Postgres.
#[derive(Default)]
struct Running {
    /// Postgres data directories (Postgres is started by `pg_ctl` and outlives it).
    postgres: Vec<PathBuf>,
    kubos: Vec<Proc>,
    nodes: Vec<Proc>,
}

/// This binary's path, read once at the start: a node started again later runs whatever is at
/// that path then (a rebuilt binary), where `/proc/self/exe` would name the replaced file.
static EXE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    // Installed first: a Ctrl-C during start-up stops what has started so far.
    let mut stop = StopSignals::new()?;
    EXE.set(std::env::current_exe().context("locating the afreg binary")?).ok();
    let regions = afreg_deploy::regions::load_dir(&args.regions)
        .with_context(|| format!("reading the region files in {}", args.regions.display()))?;
    let locals_under = |data: &Path| {
        regions
            .iter()
            .map(|r| LocalRegion::new(r, data, args.port_shift, args.processes))
            .collect::<anyhow::Result<Vec<_>>>()
    };
    check_ports_free(&locals_under(&args.data)?)?;
    let data = prepare_data_dir(&args.data)?;
    let locals = locals_under(&data)?;
    let secret_file = ensure_secret(&data)?;
    let network = Network::Private(ensure_swarm_key(&data)?);

    let mut running = Running::default();
    let started = tokio::select! {
        r = start_all(&locals, &data, &secret_file, &network, &mut running) => Some(r),
        _ = stop.recv() => None,
    };
    match started {
        Some(Ok(())) => {}
        Some(Err(e)) => {
            eprintln!("afreg up: start-up failed, stopping what was started");
            shutdown(running).await;
            return Err(e);
        }
        None => {
            eprintln!("afreg up: interrupted during start-up, stopping");
            shutdown(running).await;
            return Ok(());
        }
    }
    print_summary(&locals, &data);

    tokio::select! {
        _ = stop.recv() => {}
        _ = watch_nodes(&mut running.nodes, &locals) => {}
    }
    println!("afreg up: stopping");
    shutdown(running).await;
    println!("afreg up: stopped");
    Ok(())
}

/// Starts every region's Postgres and Kubo, then every node; waits for the nodes and a leader;
/// creates the admin user on the first run; writes `cluster.json`.
async fn start_all(
    locals: &[LocalRegion],
    data: &Path,
    secret_file: &Path,
    network: &Network,
    running: &mut Running,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let stage =
        |region: &str, what: &str| println!("afreg up: [{:>5.1}s] {region:<6} {what}", t0.elapsed().as_secs_f64());
    for l in locals {
        create_traversable_dir(&l.dir)?;
        // Recorded before it starts: an interrupted start is still stopped.
        running.postgres.push(l.pg_dir());
        let (pg, port) = (l.pg_dir(), l.postgres);
        blocking(move || start_postgres(&pg, port)).await.with_context(|| {
            format!("region {}: PostgreSQL (log {})", l.name, Postgres::log_of(&l.pg_dir()).display())
        })?;
        stage(&l.name, &format!("PostgreSQL ready on port {}", l.postgres));
        let kubo = start_kubo(l, network)
            .await
            .with_context(|| format!("region {}: Kubo (log {})", l.name, l.kubo_log().display()))?;
        running.kubos.push(kubo);
        stage(&l.name, &format!("Kubo ready, API on port {}", l.kubo.api));
    }
    for (n, l) in locals.iter().enumerate() {
        write_config(l, locals, secret_file)
            .with_context(|| format!("region {}: writing {}", l.name, l.config().display()))?;
        running.nodes.push(start_node(l, n, 0)?);
        stage(&l.name, "node started");
    }
    for (l, node) in locals.iter().zip(running.nodes.iter_mut()) {
        wait_healthy(l, &mut node.child).await?;
        stage(&l.name, &format!("node healthy at {}", l.url()));
    }
    // The other processes once the first has created the region's keys.
    let first_extra = running.nodes.len();
    for (n, l) in locals.iter().enumerate() {
        for i in 1..l.processes {
            running.nodes.push(start_node(l, n, i)?);
        }
    }
    let extra = locals.iter().flat_map(|l| (1..l.processes).map(move |_| l));
    for (l, node) in extra.zip(running.nodes[first_extra..].iter_mut()) {
        wait_healthy(l, &mut node.child).await?;
    }
    wait_leader(locals).await?;
    stage("", "the regions joined: a leader is elected");
    let password = ensure_admin(data, locals).await?;
    write_cluster_json(data, locals, secret_file, &password)?;
    stage("", "admin user ready, cluster.json written");
    Ok(())
}

/// Runs a blocking recipe off the runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> anyhow::Result<T> + Send + 'static) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await.context("a start-up step panicked")?
}

// ---- the data directory ------------------------------------------------------------------------

/// Creates the data directory and returns its absolute path. When we are root, Postgres runs as
/// `postgres` and must traverse it and every parent.
fn prepare_data_dir(data: &Path) -> anyhow::Result<PathBuf> {
    create_traversable_dir(data)?;
    let data = fs::canonicalize(data)?;
    if is_root() {
        for dir in data.ancestors().skip(1) {
            let mode = fs::metadata(dir)?.mode();
            if mode & 0o001 == 0 {
                bail!(
                    "PostgreSQL runs as user postgres and must traverse {}, but {} is mode {:o}: \
                     choose another --data or `chmod o+x {}`",
                    data.display(),
                    dir.display(),
                    mode & 0o7777,
                    dir.display()
                );
            }
        }
    }
    Ok(data)
}

/// Fails early, naming the port, when something else (another `afreg up`?) listens already.
fn check_ports_free(locals: &[LocalRegion]) -> anyhow::Result<()> {
    for l in locals {
        for (port, what) in l.ports() {
            if TcpListener::bind(("127.0.0.1", port)).is_err() {
                bail!(
                    "region {}: port {port} ({what}) is in use: is another `afreg up` running? \
                     (--port-shift moves every port)",
                    l.name
                );
            }
        }
    }
    Ok(())
}

/// The key of the regions' private IPFS network, created once (`<data>/swarm.key`, mode 0600).
/// Every region's Kubo gets it; replacing the file and restarting rotates it.
fn ensure_swarm_key(data: &Path) -> anyhow::Result<SwarmKey> {
    let file = data.join(kubo::SWARM_KEY_FILE);
    if !file.exists() {
        SwarmKey::generate().write_new(&file)?;
    }
    Ok(SwarmKey::read(&file)?)
}

/// The one cluster secret of every region: 40 random characters, created once, mode 0600.
fn ensure_secret(data: &Path) -> anyhow::Result<PathBuf> {
    let file = data.join("cluster-secret");
    if !file.exists() {
        write_private(&file, &random_secret(40)).with_context(|| format!("writing {}", file.display()))?;
    }
    Ok(file)
}

// ---- Postgres and Kubo -----------------------------------------------------------------------

/// The region's Postgres (created on the first run), started, with its database.
fn start_postgres(pg: &Path, port: u16) -> anyhow::Result<()> {
    let bin = Postgres::find()?;
    if !pg.exists() {
        bin.initdb(pg)?;
    }
    bin.start(pg, port, &[])?;
    bin.ensure_database(port)?;
    Ok(())
}

/// The region's Kubo (its repository created on the first run) in the cluster's private
/// network, started in its own process group, once its API listens.
async fn start_kubo(l: &LocalRegion, network: &Network) -> anyhow::Result<Proc> {
    let (repo, ports, log, network) = (l.kubo_repo(), l.kubo, l.kubo_log(), network.clone());
    let child = blocking(move || {
        if !repo.exists() {
            kubo::init(&repo, ports, &network, |_| {})?;
        } else if let Network::Private(key) = &network {
            // The data directory's key is the one in force (a repository from before the
            // private network gets it; a rotated key replaces the old one).
            kubo::install_swarm_key(&repo, key)?;
        }
        let out = append_log(&log)?;
        let mut c = kubo::daemon(&repo, &network, &[]);
        c.stdout(out.try_clone()?).stderr(out).process_group(0);
        let mut child = c.spawn().context("spawning `ipfs daemon` (is Kubo installed? run scripts/setup.sh)")?;
        if let Err(e) = recipes::wait_listening(&mut child, ports.api, START_TIMEOUT, "ipfs daemon", &log) {
            terminate(&mut child, STOP_GRACE);
            return Err(e.into());
        }
        Ok(child)
    })
    .await?;
    Ok(Proc {
        region: l.name.clone(),
        log: l.kubo_log(),
        child,
        exited: false,
        node: None,
        pid_file: None,
        started: Instant::now(),
    })
}

// ---- the nodes -------------------------------------------------------------------------------

/// The node's configuration, written once: an edited file is kept across runs.
fn write_config(l: &LocalRegion, all: &[LocalRegion], secret_file: &Path) -> anyhow::Result<()> {
    if l.config().exists() {
        return Ok(());
    }
    let text = format!(
        "# Written by `afreg up` for region {}; edit freely, it is kept across runs.\n{}",
        l.name,
        l.node_config(all, secret_file).to_toml()?
    );
    fs::write(l.config(), text)?;
    Ok(())
}

/// Process `i` of the region (`n` of the locals): `afreg serve --config <dir>/afreg.toml`,
/// output appended to its log, pid written to its pid file. With several processes, each is
/// named `<region>-<i>`, has its own metrics port, and shares the region's public and internal
/// ports (`cluster.shared_listeners`).
fn start_node(l: &LocalRegion, n: usize, i: u32) -> anyhow::Result<Proc> {
    let log = append_log(&l.process_log(i))?;
    let exe = match EXE.get() {
        Some(exe) => exe.clone(),
        None => std::env::current_exe().context("locating the afreg binary")?,
    };
    let mut c = Command::new(exe);
    c.arg("serve")
        .arg("--config")
        .arg(l.config())
        .current_dir(&l.dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    // Only the file's settings: the caller's AFREG_CONFIG or AFREG_SECTION__FIELD would override it.
    for (k, _) in std::env::vars_os() {
        if k.to_str().is_some_and(|k| k == "AFREG_CONFIG" || (k.starts_with("AFREG_") && k.contains("__"))) {
            c.env_remove(k);
        }
    }
    if l.processes > 1 {
        c.env("AFREG_CLUSTER__PROCESS_NAME", format!("{}-{i}", l.name))
            .env("AFREG_CLUSTER__SHARED_LISTENERS", "true")
            .env("AFREG_SERVER__METRICS_LISTEN", format!("127.0.0.1:{}", l.process_metrics(i)?));
    }
    let child = c.spawn().with_context(|| format!("region {}: spawning afreg serve (process {i})", l.name))?;
    // Not fatal: the child runs already and must stay in the list of what is stopped.
    if let Err(e) = fs::write(l.pid_file(i), format!("{}\n", child.id())) {
        eprintln!("afreg up: region {}: writing {}: {e}", l.name, l.pid_file(i).display());
    }
    let region = if l.processes > 1 { format!("{}-{i}", l.name) } else { l.name.clone() };
    Ok(Proc {
        region,
        log: l.process_log(i),
        child,
        exited: false,
        node: Some((n, i)),
        pid_file: Some(l.pid_file(i)),
        started: Instant::now(),
    })
}

/// Waits until the node answers `GET /healthz` with 200; fails at once if it exits.
async fn wait_healthy(l: &LocalRegion, child: &mut Child) -> anyhow::Result<()> {
    let url = format!("{}/healthz", l.url());
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if http.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "region {}: afreg serve exited ({status}); see {}:\n{}",
                l.name,
                l.log().display(),
                tail(&l.log(), TAIL_LINES)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "region {}: {url} did not answer 200 within {START_TIMEOUT:?}; see {}:\n{}",
                l.name,
                l.log().display(),
                tail(&l.log(), TAIL_LINES)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls every region's `/status?scope=local` until one of them is the leader (a leader id alone
/// can be the one remembered from the last run, before any election).
async fn wait_leader(locals: &[LocalRegion]) -> anyhow::Result<()> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        for l in locals {
            let status: Option<serde_json::Value> =
                match http.get(format!("{}/status?scope=local", l.url())).send().await {
                    Ok(r) if r.status().is_success() => r.json().await.ok(),
                    _ => None,
                };
            if status.is_some_and(|s| s["raft"]["role"] == "leader" && s["raft"]["leader"].is_u64()) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            let tails: Vec<String> = locals
                .iter()
                .map(|l| format!("--- region {}: {} ---\n{}", l.name, l.log().display(), tail(&l.log(), TAIL_LINES)))
                .collect();
            bail!("no region reported a Raft leader within {START_TIMEOUT:?}\n{}", tails.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// On the first run, creates `admin` (every grant) through the us region's internal endpoint,
/// as `afreg user add admin --password-stdin` does; the user is replicated to every region.
/// Later runs read the password back from `<data>/admin-password`.
async fn ensure_admin(data: &Path, locals: &[LocalRegion]) -> anyhow::Result<String> {
    let file = data.join("admin-password");
    if file.exists() {
        return Ok(fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?.trim().to_owned());
    }
    let region = locals.iter().find(|l| l.name == "us").unwrap_or(&locals[0]);
    let cfg = Config::load_from(Some(&region.config()), [])?;
    let password = random_secret(24);
    let all = Action::ALL.iter().map(|a| a.as_str().to_owned()).collect();
    let cmd = crate::user::put_user("admin", &password, vec![("*".into(), all)]);
    let internal = InternalClient::new(&cfg, None)?;
    // A leader is known already; a write can still meet an election in progress (503): retry.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match internal.write(&cmd).await {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => {
                let log = region.log();
                return Err(e).with_context(|| {
                    format!("region {}: creating the admin user; see {}", region.name, log.display())
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    write_private(&file, &password).with_context(|| format!("writing {}", file.display()))?;
    Ok(password)
}

/// `<data>/cluster.json`: every region's URLs, ports, files, and the admin user (mode 0600).
fn write_cluster_json(data: &Path, locals: &[LocalRegion], secret_file: &Path, password: &str) -> anyhow::Result<()> {
    let regions: serde_json::Map<String, serde_json::Value> = locals
        .iter()
        .map(|l| {
            let region = serde_json::json!({
                "id": l.id,
                "url": l.url(),
                "internal_url": l.internal_url(),
                "registry_port": l.registry,
                "internal_port": l.internal,
                "postgres_port": l.postgres,
                "postgres_url": postgres::url(l.postgres),
                "kubo_api": kubo::api_url(l.kubo.api),
                "kubo_swarm_port": l.kubo.swarm,
                "kubo_gateway_port": l.kubo.gateway,
                "data_dir": l.dir,
                "config": l.config(),
                "log": l.log(),
            });
            (l.name.clone(), region)
        })
        .collect();
    let doc = serde_json::json!({
        "regions": regions,
        "admin": {"username": "admin", "password": password},
        "cluster_secret_file": secret_file,
        "swarm_key_file": data.join(kubo::SWARM_KEY_FILE),
    });
    let path = data.join("cluster.json");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(serde_json::to_string_pretty(&doc)?.as_bytes())?;
    f.write_all(b"\n")?;
    Ok(())
}

fn print_summary(locals: &[LocalRegion], data: &Path) {
    for l in locals {
        let processes = if l.processes > 1 { format!(" ({} processes)", l.processes) } else { String::new() };
        println!("{:<6} {}{processes}", l.name, l.url());
    }
    println!("admin password: {} (user admin)", data.join("admin-password").display());
    println!("cluster.json:   {}", data.join("cluster.json").display());
    println!("logs:           {}/<region>/afreg.log", data.display());
    println!("Ctrl-C stops the cluster");
}

/// Starts again a node that exits on its own, after [`RESTART_AFTER`], doubling the wait up to
/// [`RESTART_MAX`] while it exits within [`RAN_WELL`] of starting. Never returns.
async fn watch_nodes(nodes: &mut [Proc], locals: &[LocalRegion]) {
    // Per node: when to start it again, and the wait after its last quick exit.
    let mut pending: Vec<Option<Instant>> = vec![None; nodes.len()];
    let mut backoff: Vec<Duration> = vec![RESTART_AFTER; nodes.len()];
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        for (k, p) in nodes.iter_mut().enumerate() {
            if !p.exited {
                if let Ok(Some(status)) = p.child.try_wait() {
                    p.exited = true;
                    backoff[k] =
                        if p.started.elapsed() >= RAN_WELL { RESTART_AFTER } else { (backoff[k] * 2).min(RESTART_MAX) };
                    let wait = backoff[k];
                    pending[k] = Some(Instant::now() + wait);
                    eprintln!(
                        "afreg up: region {} exited ({status}); starting it again in {wait:?}; see {}",
                        p.region,
                        p.log.display()
                    );
                }
            }
            let (Some(at), Some((n, i))) = (pending[k], p.node) else { continue };
            if Instant::now() < at {
                continue;
            }
            pending[k] = None;
            match start_node(&locals[n], n, i) {
                Ok(again) => {
                    eprintln!("afreg up: region {} started again (pid {})", again.region, again.child.id());
                    *p = again;
                }
                Err(e) => {
                    eprintln!("afreg up: region {}: {e:#}", p.region);
                    pending[k] = Some(Instant::now() + RESTART_MAX);
                }
            }
        }
    }
}

// ---- shutdown --------------------------------------------------------------------------------

/// SIGINT, SIGTERM and SIGHUP: each asks for a clean stop.
struct StopSignals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl StopSignals {
    fn new() -> anyhow::Result<StopSignals> {
        Ok(StopSignals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
            _ = self.hup.recv() => {}
        }
    }
}

/// Stops the nodes, then Kubo, then Postgres (`pg_ctl -m fast`), off the runtime.
async fn shutdown(mut running: Running) {
    let done = tokio::task::spawn_blocking(move || {
        terminate_all(&mut running.nodes);
        for p in &running.nodes {
            if let Some(pid_file) = &p.pid_file {
                let _ = fs::remove_file(pid_file);
            }
        }
        terminate_all(&mut running.kubos);
        if let Ok(bin) = Postgres::find() {
            for pg in running.postgres.iter().rev() {
                if let Err(e) = bin.stop(pg, StopMode::Fast) {
                    eprintln!("afreg up: {e}");
                }
            }
        }
    });
    let _ = done.await;
}

/// SIGTERM to every process at once, then waits for each; kills what has not exited within
/// [`STOP_GRACE`] of the signal.
fn terminate_all(procs: &mut [Proc]) {
    for p in procs.iter_mut() {
        if let Ok(None) = p.child.try_wait() {
            let pid = nix::unistd::Pid::from_raw(p.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + STOP_GRACE;
    for p in procs.iter_mut() {
        if terminate(&mut p.child, deadline.saturating_duration_since(Instant::now())).is_none() {
            eprintln!(
                "afreg up: region {}: {} did not stop within {STOP_GRACE:?}, killed it",
                p.region,
                p.log.display()
            );
        }
    }
}
