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

use std::fs;
use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::regions::RegionFile;

/// How long each node, then the cluster, has to come up.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a node or a Kubo has after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(15);

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
}

/// One region on this machine: its directory and its (shifted) ports.
struct Local {
    name: String,
    id: u64,
    dir: PathBuf,
    registry: u16,
    internal: u16,
    postgres: u16,
    kubo_api: u16,
    kubo_swarm: u16,
    kubo_gateway: u16,
}

impl Local {
    fn new(r: &RegionFile, data: &Path, shift: u16) -> anyhow::Result<Local> {
        let p = |port: u16| {
            let name = &r.name;
            port.checked_add(shift).ok_or_else(|| anyhow!("region {name}: port {port} + --port-shift {shift} is over 65535"))
        };
        Ok(Local {
            name: r.name.clone(),
            id: r.raft_id,
            dir: data.join(&r.name),
            registry: p(r.local.registry)?,
            internal: p(r.local.internal)?,
            postgres: p(r.local.postgres)?,
            kubo_api: p(r.local.kubo_api)?,
            kubo_swarm: p(r.local.kubo_swarm)?,
            kubo_gateway: p(r.local.kubo_gateway)?,
        })
    }
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.registry)
    }
    fn internal_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.internal)
    }
    fn pg_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/afreg", self.postgres)
    }
    fn kubo_api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.kubo_api)
    }
    fn pg_dir(&self) -> PathBuf {
        self.dir.join("pg")
    }
    fn pg_log(&self) -> PathBuf {
        self.pg_dir().join("postgres.log")
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
    fn ports(&self) -> [(u16, &'static str); 6] {
        [
            (self.registry, "registry"),
            (self.internal, "internal"),
            (self.postgres, "postgres"),
            (self.kubo_api, "kubo_api"),
            (self.kubo_swarm, "kubo_swarm"),
            (self.kubo_gateway, "kubo_gateway"),
        ]
    }
}

/// A child process of one region.
struct Proc {
    region: String,
    log: PathBuf,
    child: Child,
    exited: bool,
}

/// What has been started, so that it can be stopped: nodes, then Kubo, then Postgres.
#[derive(Default)]
struct Running {
    /// Postgres data directories (Postgres is started by `pg_ctl` and outlives it).
    postgres: Vec<PathBuf>,
    kubos: Vec<Proc>,
    nodes: Vec<Proc>,
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    // Installed first: a Ctrl-C during start-up stops what has started so far.
    let mut stop = StopSignals::new()?;
    let regions = crate::regions::load_dir(&args.regions)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("reading the region files in {}", args.regions.display()))?;
    let locals_under =
        |data: &Path| regions.iter().map(|r| Local::new(r, data, args.port_shift)).collect::<anyhow::Result<Vec<_>>>();
    check_ports_free(&locals_under(&args.data)?)?;
    let data = prepare_data_dir(&args.data)?;
    let locals = locals_under(&data)?;
    let secret_file = ensure_secret(&data)?;

    let mut running = Running::default();
    let started = tokio::select! {
        r = start_all(&locals, &data, &secret_file, &mut running) => Some(r),
        _ = stop.recv() => None,
    };
    match started {
        Some(Ok(())) => {}
        Some(Err(e)) => {
            eprintln!("afreg up: start-up failed, stopping what was started");
            shutdown(&mut running).await;
            return Err(e);
        }
        None => {
            eprintln!("afreg up: interrupted during start-up, stopping");
            shutdown(&mut running).await;
            return Ok(());
        }
    }
    print_summary(&locals, &data);

    tokio::select! {
        _ = stop.recv() => {}
        _ = watch_nodes(&mut running.nodes) => {}
    }
    println!("afreg up: stopping");
    shutdown(&mut running).await;
    println!("afreg up: stopped");
    Ok(())
}

/// Starts every region's Postgres and Kubo, then every node; waits for the nodes and a leader;
/// creates the admin user on the first run; writes `cluster.json`.
async fn start_all(locals: &[Local], data: &Path, secret_file: &Path, running: &mut Running) -> anyhow::Result<()> {
    for l in locals {
        create_traversable_dir(&l.dir)?;
        start_postgres(l, running)
            .await
            .with_context(|| format!("region {}: PostgreSQL (log {})", l.name, l.pg_log().display()))?;
        start_kubo(l, running).await.with_context(|| format!("region {}: Kubo (log {})", l.name, l.kubo_log().display()))?;
    }
    for l in locals {
        write_config(l, locals, secret_file).with_context(|| format!("region {}: writing {}", l.name, l.config().display()))?;
        start_node(l, running)?;
    }
    for (l, node) in locals.iter().zip(running.nodes.iter_mut()) {
        wait_healthy(l, &mut node.child).await?;
    }
    wait_leader(locals).await?;
    let password = ensure_admin(data, locals).await?;
    write_cluster_json(data, locals, secret_file, &password)?;
    Ok(())
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

fn create_traversable_dir(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Fails early, naming the port, when something else (another `afreg up`?) listens already.
fn check_ports_free(locals: &[Local]) -> anyhow::Result<()> {
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

/// The one cluster secret of every region: 40 random characters, created once, mode 0600.
fn ensure_secret(data: &Path) -> anyhow::Result<PathBuf> {
    let file = data.join("cluster-secret");
    if !file.exists() {
        write_private(&file, &random_alnum(40)).with_context(|| format!("writing {}", file.display()))?;
    }
    Ok(file)
}

// ---- PostgreSQL ------------------------------------------------------------------------------

/// The newest `/usr/lib/postgresql/<version>/bin` holding `initdb` (Debian's layout).
fn pg_bin() -> anyhow::Result<PathBuf> {
    let mut dirs: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (run scripts/setup.sh)")?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("bin/initdb").is_file())
        .map(|e| {
            let version = e.file_name().to_string_lossy().split('.').map(|p| p.parse().unwrap_or(0)).collect();
            (version, e.path().join("bin"))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, bin)| bin).context("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
}

fn is_root() -> bool {
    // /proc/self belongs to the process's effective user.
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A Postgres server tool, run as `postgres` when we are root (Postgres refuses to run as root),
/// from a directory `postgres` can enter, in its own process group.
fn pg_server_tool(bin: &Path, tool: &str, cwd: &Path) -> Command {
    let mut c = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        c
    } else {
        Command::new(bin.join(tool))
    };
    c.current_dir(cwd).process_group(0);
    c
}

async fn start_postgres(l: &Local, running: &mut Running) -> anyhow::Result<()> {
    let bin = pg_bin()?;
    let pg = l.pg_dir();
    if !pg.exists() {
        init_postgres(&bin, &pg, &l.dir).await?;
    }
    // Recorded before it starts: an interrupted start is still stopped.
    running.postgres.push(pg.clone());
    let mut c = pg_server_tool(&bin, "pg_ctl", &l.dir);
    c.arg("start").args(["-w", "-t", "60", "-D"]).arg(&pg).arg("-l").arg(l.pg_log()).arg("-o").arg(format!(
        "-p {} -c listen_addresses=127.0.0.1 -k {}",
        l.postgres,
        pg.display()
    ));
    if let Err(e) = run_ok(c, "pg_ctl start").await {
        bail!("{e:#}\n{}", tail(&l.pg_log()));
    }
    create_database(&bin, l.postgres).await
}

/// `initdb` into an empty directory owned by `postgres`, mode 0700. It is built as `pg.init`
/// and renamed to `pg` once complete, so an interrupted first run is started over.
async fn init_postgres(bin: &Path, pg: &Path, cwd: &Path) -> anyhow::Result<()> {
    let partial = pg.with_extension("init");
    if partial.exists() {
        fs::remove_dir_all(&partial).with_context(|| format!("removing the unfinished {}", partial.display()))?;
    }
    fs::create_dir(&partial)?;
    fs::set_permissions(&partial, fs::Permissions::from_mode(0o700))?;
    if is_root() {
        let mut c = Command::new("chown");
        c.arg("postgres:postgres").arg(&partial);
        run_ok(c, "chown postgres the Postgres data directory").await?;
    }
    let mut c = pg_server_tool(bin, "initdb", cwd);
    c.arg("-D").arg(&partial).args(["--auth=trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"]);
    run_ok(c, "initdb").await?;
    fs::rename(&partial, pg).with_context(|| format!("renaming {} to {}", partial.display(), pg.display()))
}

/// `CREATE DATABASE afreg` unless it exists (clients connect over TCP with trust auth).
async fn create_database(bin: &Path, port: u16) -> anyhow::Result<()> {
    let port = port.to_string();
    let out = Command::new(bin.join("psql"))
        .args(["-X", "-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-d", "postgres", "-tAc"])
        .arg("SELECT 1 FROM pg_database WHERE datname = 'afreg'")
        .stdin(Stdio::null())
        .output()
        .await
        .context("psql")?;
    if !out.status.success() {
        bail!("psql failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    if String::from_utf8_lossy(&out.stdout).trim() != "1" {
        let mut c = Command::new(bin.join("createdb"));
        c.args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "afreg"]);
        run_ok(c, "createdb afreg").await?;
    }
    Ok(())
}

async fn stop_postgres(pg: &Path) {
    if !pg.join("postmaster.pid").exists() {
        return;
    }
    let Ok(bin) = pg_bin() else { return };
    let cwd = pg.parent().unwrap_or(pg);
    let mut c = pg_server_tool(&bin, "pg_ctl", cwd);
    c.arg("stop").args(["-m", "fast", "-w", "-t", "60", "-D"]).arg(pg);
    if let Err(e) = run_ok(c, &format!("pg_ctl stop {}", pg.display())).await {
        eprintln!("afreg up: {e:#}");
    }
}

// ---- Kubo ------------------------------------------------------------------------------------

/// `ipfs` from `$AFREG_TOOLS`, else `~/.cache/afreg/bin` (where scripts/setup.sh puts it), else
/// the PATH.
fn ipfs_bin() -> PathBuf {
    let tools = std::env::var_os("AFREG_TOOLS")
        .filter(|t| !t.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/afreg/bin")));
    tools.map(|t| t.join("ipfs")).filter(|p| p.is_file()).unwrap_or_else(|| PathBuf::from("ipfs"))
}

fn ipfs(repo: &Path) -> Command {
    let mut c = Command::new(ipfs_bin());
    c.env("IPFS_PATH", repo).env("IPFS_TELEMETRY", "off").process_group(0);
    c
}

/// A fresh repository: the `test` profile, then loopback-only, offline settings (no bootstrap,
/// routing, MDNS, relays, NAT, AutoConf, AutoTLS or providing). The regions' pinners peer the
/// daemons with each other.
async fn init_kubo(l: &Local, repo: &Path) -> anyhow::Result<()> {
    let mut c = ipfs(repo);
    c.args(["init", "--profile=test", "--empty-repo"]);
    run_ok(c, "ipfs init").await?;
    // (key, value, value is JSON)
    let settings: [(&str, String, bool); 14] = [
        ("Addresses.API", format!("/ip4/127.0.0.1/tcp/{}", l.kubo_api), false),
        ("Addresses.Gateway", format!("/ip4/127.0.0.1/tcp/{}", l.kubo_gateway), false),
        ("Addresses.Swarm", format!("[\"/ip4/127.0.0.1/tcp/{}\"]", l.kubo_swarm), true),
        ("Bootstrap", "[]".into(), true),
        ("Routing.Type", "none".into(), false),
        ("Discovery.MDNS.Enabled", "false".into(), true),
        ("AutoNAT.ServiceMode", "disabled".into(), false),
        ("Swarm.RelayClient.Enabled", "false".into(), true),
        ("Swarm.RelayService.Enabled", "false".into(), true),
        ("Swarm.Transports.Network.Relay", "false".into(), true),
        ("Swarm.DisableNatPortMap", "true".into(), true),
        ("Provide.Enabled", "false".into(), true),
        ("AutoConf.Enabled", "false".into(), true),
        ("AutoTLS.Enabled", "false".into(), true),
    ];
    for (key, value, json) in settings {
        let mut c = ipfs(repo);
        c.arg("config");
        if json {
            c.arg("--json");
        }
        c.arg(key).arg(&value);
        run_ok(c, &format!("ipfs config {key}")).await?;
    }
    Ok(())
}

async fn start_kubo(l: &Local, running: &mut Running) -> anyhow::Result<()> {
    if !l.kubo_repo().exists() {
        // Built as `kubo.init` and renamed once configured, so an interrupted first run is
        // started over rather than left with Kubo's defaults (public bootstrap, port 5001).
        let partial = l.kubo_repo().with_extension("init");
        if partial.exists() {
            fs::remove_dir_all(&partial).with_context(|| format!("removing the unfinished {}", partial.display()))?;
        }
        init_kubo(l, &partial).await?;
        fs::rename(&partial, l.kubo_repo())?;
    }
    let log = append(&l.kubo_log())?;
    let mut c = ipfs(&l.kubo_repo());
    c.arg("daemon").stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    let child = c.spawn().context("spawning `ipfs daemon` (is Kubo installed? run scripts/setup.sh)")?;
    running.kubos.push(Proc { region: l.name.clone(), log: l.kubo_log(), child, exited: false });
    let kubo = running.kubos.last_mut().expect("just pushed");

    let api = format!("{}/api/v0/id", l.kubo_api_url());
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if http.post(&api).send().await.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        if let Some(status) = kubo.child.try_wait()? {
            kubo.exited = true;
            bail!("ipfs daemon exited ({status}):\n{}", tail(&l.kubo_log()));
        }
        if Instant::now() > deadline {
            bail!("Kubo did not answer on {api} within {START_TIMEOUT:?}:\n{}", tail(&l.kubo_log()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---- the nodes -------------------------------------------------------------------------------

/// The node's configuration, written once: an edited file is kept across runs.
fn write_config(l: &Local, all: &[Local], secret_file: &Path) -> anyhow::Result<()> {
    if l.config().exists() {
        return Ok(());
    }
    let bootstrap: Vec<String> = all
        .iter()
        .map(|o| format!("{{ id = {}, name = {}, url = {}, api_url = {} }}", o.id, q(&o.name), q(o.internal_url()), q(o.url())))
        .collect();
    let text = format!(
        r#"# Written by `afreg up` for region {plain_name}; edit freely, it is kept across runs.
[server]
listen = "127.0.0.1:{registry}"
public_url = {url}

[database]
url = {pg}

[kubo]
api_url = {kubo_api}

[auth]
signing_key = {signing_key}
anonymous = ["pull"]

[cluster]
id = {id}
region = {name}
listen = "127.0.0.1:{internal}"
advertise_url = {internal_url}
secret_file = {secret}
kubo_swarm_addrs = ["/ip4/127.0.0.1/tcp/{swarm}"]
bootstrap = [
    {bootstrap},
]
# Loopback round trips are sub-millisecond: faster failover than the WAN defaults.
heartbeat_ms = 250
election_timeout_min_ms = 1000
election_timeout_max_ms = 2000

[log]
format = "json"
"#,
        plain_name = l.name,
        name = q(&l.name),
        registry = l.registry,
        url = q(l.url()),
        pg = q(l.pg_url()),
        kubo_api = q(l.kubo_api_url()),
        signing_key = q(l.dir.join("signing-key.pem").display().to_string()),
        id = l.id,
        internal = l.internal,
        internal_url = q(l.internal_url()),
        secret = q(secret_file.display().to_string()),
        swarm = l.kubo_swarm,
        bootstrap = bootstrap.join(",\n    "),
    );
    fs::write(l.config(), text)?;
    Ok(())
}

/// `afreg serve --config <dir>/afreg.toml`, output appended to `<dir>/afreg.log`.
fn start_node(l: &Local, running: &mut Running) -> anyhow::Result<()> {
    let log = append(&l.log())?;
    let exe = std::env::current_exe().context("locating the afreg binary")?;
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
    let child = c.spawn().with_context(|| format!("region {}: spawning afreg serve", l.name))?;
    running.nodes.push(Proc { region: l.name.clone(), log: l.log(), child, exited: false });
    Ok(())
}

/// Waits until the node answers `GET /healthz` with 200; fails at once if it exits.
async fn wait_healthy(l: &Local, child: &mut Child) -> anyhow::Result<()> {
    let url = format!("{}/healthz", l.url());
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if http.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("region {}: afreg serve exited ({status}); see {}:\n{}", l.name, l.log().display(), tail(&l.log()));
        }
        if Instant::now() > deadline {
            bail!(
                "region {}: {url} did not answer 200 within {START_TIMEOUT:?}; see {}:\n{}",
                l.name,
                l.log().display(),
                tail(&l.log())
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls every region's `/status?scope=local` until one of them is the leader (a leader id alone
/// can be the one remembered from the last run, before any election).
async fn wait_leader(locals: &[Local]) -> anyhow::Result<()> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        for l in locals {
            let status: Option<serde_json::Value> = match http.get(format!("{}/status?scope=local", l.url())).send().await {
                Ok(r) if r.status().is_success() => r.json().await.ok(),
                _ => None,
            };
            if status.is_some_and(|s| s["raft"]["role"] == "leader" && s["raft"]["leader"].is_u64()) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            let tails: Vec<String> =
                locals.iter().map(|l| format!("--- region {}: {} ---\n{}", l.name, l.log().display(), tail(&l.log()))).collect();
            bail!("no region reported a Raft leader within {START_TIMEOUT:?}\n{}", tails.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// On the first run, creates `admin` (every grant) through the us region's internal endpoint,
/// as `afreg user add admin --password-stdin` does; the user is replicated to every region.
/// Later runs read the password back from `<data>/admin-password`.
async fn ensure_admin(data: &Path, locals: &[Local]) -> anyhow::Result<String> {
    let file = data.join("admin-password");
    if file.exists() {
        return Ok(fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?.trim().to_owned());
    }
    let region = locals.iter().find(|l| l.name == "us").unwrap_or(&locals[0]);
    let cfg = crate::config::Config::load(Some(&region.config())).map_err(anyhow::Error::msg)?;
    let password = random_alnum(24);
    let cmd = afreg_replication::Command::PutUser {
        name: "admin".into(),
        password_hash: crate::auth::hash_password(&password),
        grants: vec![("*".into(), vec!["pull".into(), "push".into(), "delete".into()])],
        at: chrono::Utc::now().timestamp_millis(),
    };
    let internal = crate::admin::Internal::new(&cfg, None)?;
    // A leader is known already; a write can still meet an election in progress (503): retry.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match internal.write(&cmd).await {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => {
                let log = region.log();
                return Err(e).with_context(|| format!("region {}: creating the admin user; see {}", region.name, log.display()));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    write_private(&file, &password).with_context(|| format!("writing {}", file.display()))?;
    Ok(password)
}

/// `<data>/cluster.json`: every region's URLs, ports, files, and the admin user (mode 0600).
fn write_cluster_json(data: &Path, locals: &[Local], secret_file: &Path, password: &str) -> anyhow::Result<()> {
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
                "postgres_url": l.pg_url(),
                "kubo_api": l.kubo_api_url(),
                "kubo_swarm_port": l.kubo_swarm,
                "kubo_gateway_port": l.kubo_gateway,
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

fn print_summary(locals: &[Local], data: &Path) {
    for l in locals {
        println!("{:<6} {}", l.name, l.url());
    }
    println!("admin password: {} (user admin)", data.join("admin-password").display());
    println!("cluster.json:   {}", data.join("cluster.json").display());
    println!("logs:           {}/<region>/afreg.log", data.display());
    println!("Ctrl-C stops the cluster");
}

/// Reports a node that exits on its own; the other regions keep running (a region down is a
/// thing to try). Never returns.
async fn watch_nodes(nodes: &mut [Proc]) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for n in nodes.iter_mut().filter(|n| !n.exited) {
            if let Ok(Some(status)) = n.child.try_wait() {
                n.exited = true;
                eprintln!("afreg up: region {} exited ({status}); see {}", n.region, n.log.display());
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

/// Stops the nodes, then Kubo, then Postgres (`pg_ctl -m fast`).
async fn shutdown(running: &mut Running) {
    terminate_all(&mut running.nodes).await;
    terminate_all(&mut running.kubos).await;
    for pg in running.postgres.iter().rev() {
        stop_postgres(pg).await;
    }
}

/// SIGTERM to every process at once, then waits for each; kills what has not exited within
/// [`STOP_GRACE`].
async fn terminate_all(procs: &mut [Proc]) {
    for p in procs.iter_mut() {
        if let (Ok(None), Some(pid)) = (p.child.try_wait(), p.child.id()) {
            let sent = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).stderr(Stdio::null()).status();
            if !sent.is_ok_and(|s| s.success()) {
                let _ = p.child.start_kill();
            }
        }
    }
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    for p in procs.iter_mut() {
        if tokio::time::timeout_at(deadline, p.child.wait()).await.is_err() {
            eprintln!("afreg up: region {}: {} did not stop within {STOP_GRACE:?}, killing it", p.region, p.log.display());
            let _ = p.child.kill().await;
        }
    }
}

// ---- small helpers ---------------------------------------------------------------------------

/// Runs a one-shot command to completion (killed if start-up is interrupted meanwhile).
async fn run_ok(mut c: Command, what: &str) -> anyhow::Result<()> {
    let out = c.stdin(Stdio::null()).kill_on_drop(true).output().await.with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what} failed ({}): {}{}", out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn append(p: &Path) -> anyhow::Result<fs::File> {
    fs::OpenOptions::new().create(true).append(true).open(p).with_context(|| format!("opening {}", p.display()))
}

/// The last lines of a log file (at most its last 64 KiB), for error messages.
fn tail(p: &Path) -> String {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut buf = Vec::new();
    if let Ok(mut f) = fs::File::open(p) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
        let _ = f.read_to_end(&mut buf);
    }
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A TOML string literal.
fn q(s: impl Into<String>) -> String {
    toml::Value::String(s.into()).to_string()
}

fn random_alnum(n: usize) -> String {
    use rand::Rng;
    rand::thread_rng().sample_iter(&rand::distributions::Alphanumeric).take(n).map(char::from).collect()
}

/// Creates a file only its owner can read.
fn write_private(p: &Path, content: &str) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(p)?;
    f.write_all(content.as_bytes())
}
