//! Test harness for afreg: starts REAL components — PostgreSQL, an IPFS Kubo daemon and the
//! `afreg` binary — each on free loopback ports in its own temporary directory, and cleans
//! each up on `Drop` (process killed, directory removed).
//!
//! Every function here is synchronous and may be called from plain `#[test]`s as well as from
//! inside `#[tokio::test]`s: HTTP calls run the blocking `reqwest` client on a scoped thread,
//! so they never trip tokio's "blocking inside a runtime" guard (they do block the calling
//! thread for their duration, which is what a test wants).
//!
//! External tools (ipfs, crane, oras, regctl, oci-conformance) come from [`tools_dir`], which
//! `scripts/setup.sh` fills; PostgreSQL comes from Debian's `/usr/lib/postgresql/*/bin`.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------------
// Tools, ports, processes
// ---------------------------------------------------------------------------------------------

/// Where `scripts/setup.sh` installs the external tools: `$AFREG_TOOLS`, else
/// `~/.cache/afreg/bin`.
pub fn tools_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("AFREG_TOOLS") {
        if !d.is_empty() {
            return PathBuf::from(d);
        }
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache/afreg/bin")
}

/// The path of an installed tool (`ipfs`, `crane`, `oras`, `regctl`, `oci-conformance`).
/// Panics with a clear message when it is missing.
pub fn tool(name: &str) -> PathBuf {
    let p = tools_dir().join(name);
    if !p.is_file() {
        panic!(
            "testkit: tool `{name}` not found at {} — run scripts/setup.sh (it installs into \
             $AFREG_TOOLS, default ~/.cache/afreg/bin)",
            p.display()
        );
    }
    p
}

/// A free TCP port on 127.0.0.1 (bind to port 0, read it, release it). Another process may
/// grab it before the caller binds it; within this process a port is never handed out twice.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local_addr").port();
        if HANDED_OUT.lock().unwrap().insert(port) {
            return port;
        }
    }
}

/// Peak resident set size ("high water mark", `VmHWM`) of a live process, in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmHWM")
}

/// Current resident set size (`VmRSS`) of a live process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS")
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let prefix = format!("{field}:");
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix(&prefix) {
            let n = rest.trim().trim_end_matches("kB").trim();
            return n.parse().unwrap_or_else(|e| panic!("parse {field} {rest:?}: {e}"));
        }
    }
    panic!("{path} has no {field} line")
}

/// `count` random bytes from the kernel.
pub fn random_bytes(count: usize) -> Vec<u8> {
    let mut buf = vec![0u8; count];
    fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf)).expect("read /dev/urandom");
    buf
}

/// A random lowercase hex string of `len` characters (handy for repository and tag names).
pub fn random_hex(len: usize) -> String {
    let mut s = hex::encode(random_bytes(len.div_ceil(2)));
    s.truncate(len);
    s
}

/// `sha256:<hex>` of some bytes: an OCI digest.
pub fn sha256_digest(data: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// Runs a command, panicking with its command line, status, stdout and stderr unless it exits 0.
/// Returns the full output.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "command failed ({}): {cmd:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// [`run_ok`] and return stdout as a trimmed string.
pub fn run_stdout(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run_ok(cmd).stdout).trim().to_string()
}

/// The last `lines` lines of a text file ("" if it cannot be read).
pub fn file_tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = fs::File::open(path) else { return String::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    // Read at most the last 256 KiB: enough for any sensible tail.
    let start = len.saturating_sub(256 * 1024);
    let _ = f.seek(SeekFrom::Start(start));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs `f` on a scoped thread, so blocking clients work even inside a tokio runtime.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e),
    })
}

fn http_client(timeout: Duration) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()
        .expect("build reqwest client")
}

/// Sends SIGTERM, waits up to `grace`, then SIGKILLs; always reaps the child.
fn terminate(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// A temporary directory under /tmp that other users (postgres) may traverse.
fn shared_tempdir(prefix: &str) -> TempDir {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir_in("/tmp").expect("create temp dir in /tmp");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
    dir
}

fn open_log(path: &Path) -> fs::File {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open log {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------------

/// A private PostgreSQL server on 127.0.0.1:`port` with a database `afreg`, trust auth, user
/// `postgres`. As root it runs through `runuser -u postgres` (Postgres refuses to run as root).
pub struct Postgres {
    /// The TCP port it listens on (kept across [`Postgres::stop`]/[`Postgres::start_again`]).
    pub port: u16,
    dir: TempDir,
    bin: PathBuf,
    running: bool,
}

/// The newest `/usr/lib/postgresql/<version>/bin` that has `initdb`.
pub fn postgres_bin_dir() -> PathBuf {
    let mut best: Option<(Vec<u64>, PathBuf)> = None;
    if let Ok(rd) = fs::read_dir("/usr/lib/postgresql") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let bin = e.path().join("bin");
            if !bin.join("initdb").is_file() {
                continue;
            }
            let ver: Vec<u64> = name.split('.').map(|p| p.parse().unwrap_or(0)).collect();
            if best.as_ref().map_or(true, |(v, _)| ver > *v) {
                best = Some((ver, bin));
            }
        }
    }
    best.map(|(_, b)| b).unwrap_or_else(|| {
        panic!("testkit: no /usr/lib/postgresql/*/bin/initdb — run scripts/setup.sh (installs postgresql)")
    })
}

impl Postgres {
    /// initdb + start + `createdb afreg`. Panics (with the server log) on failure.
    pub fn start() -> Postgres {
        let bin = postgres_bin_dir();
        let dir = shared_tempdir("afreg-pg-");
        if is_root() {
            let (uid, gid) = user_ids("postgres");
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown pg dir to postgres");
        }
        let pg = Postgres { port: free_port(), dir, bin, running: false };
        let data = pg.data_dir();
        let out = pg
            .as_postgres("initdb")
            .arg("-D")
            .arg(&data)
            .args(["--auth=trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"])
            .output()
            .expect("spawn initdb");
        if !out.status.success() {
            panic!(
                "initdb failed: {}\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut pg = pg;
        pg.start_again();
        run_ok(
            Command::new(pg.bin.join("createdb"))
                .args(["-h", "127.0.0.1", "-p", &pg.port.to_string(), "-U", "postgres", "afreg"]),
        );
        pg
    }

    /// `postgres://postgres@127.0.0.1:PORT/afreg`
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/afreg", self.port)
    }

    /// The data directory (owned by `postgres`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`): connections drop, the port closes.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        let out = self
            .as_postgres("pg_ctl")
            .args(["stop", "-w", "-t", "60", "-m", "immediate", "-D"])
            .arg(self.data_dir())
            .output()
            .expect("spawn pg_ctl stop");
        self.running = false;
        if !out.status.success() && !std::thread::panicking() {
            panic!(
                "pg_ctl stop failed: {}\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Starts the (stopped) server again on the same port and data directory; waits until it
    /// accepts connections.
    pub fn start_again(&mut self) {
        if self.running {
            return;
        }
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let out = self
            .as_postgres("pg_ctl")
            .args(["start", "-w", "-t", "60", "-D"])
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_path())
            .arg("-o")
            .arg(opts)
            .output()
            .expect("spawn pg_ctl start");
        if !out.status.success() {
            panic!(
                "pg_ctl start failed: {}\n{}\n{}\n--- postgres.log ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                file_tail(&self.log_path(), 40)
            );
        }
        self.running = true;
    }

    /// Runs SQL through `psql` against database `afreg` (unaligned, tuples only, stop on error)
    /// and returns its trimmed stdout. Panics on failure.
    pub fn psql(&self, sql: &str) -> String {
        run_stdout(
            Command::new(self.bin.join("psql"))
                .args(["-X", "-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-d", "afreg"])
                .args(["-At", "-v", "ON_ERROR_STOP=1", "-c", sql]),
        )
    }

    /// Starts `psql` with `sql` in the background (e.g. a transaction that holds a table lock
    /// for a while); the caller waits for the child.
    pub fn psql_background(&self, sql: &str) -> Child {
        Command::new(self.bin.join("psql"))
            .args(["-X", "-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-d", "afreg"])
            .args(["-At", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn psql")
    }

    fn as_postgres(&self, prog: &str) -> Command {
        let prog = self.bin.join(prog);
        let mut c = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(prog);
            c
        } else {
            Command::new(prog)
        };
        c.current_dir(self.dir.path());
        c
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- testkit: postgres on port {} log tail ({}) ---\n{}",
                self.port,
                self.log_path().display(),
                file_tail(&self.log_path(), 20)
            );
        }
        self.stop();
    }
}

/// (uid, gid) of a local user, from /etc/passwd.
fn user_ids(user: &str) -> (u32, u32) {
    let passwd = fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() > 3 && f[0] == user {
            return (f[2].parse().unwrap(), f[3].parse().unwrap());
        }
    }
    panic!("testkit: no user `{user}` in /etc/passwd — is postgresql installed? run scripts/setup.sh")
}

// ---------------------------------------------------------------------------------------------
// Kubo
// ---------------------------------------------------------------------------------------------

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
}

impl Kubo {
    /// Initialises and starts a daemon; waits until `POST /api/v0/id` answers.
    pub fn start() -> Kubo {
        Self::start_with(|_| {}, &[])
    }

    /// Like [`Kubo::start`], but `tweak` may edit the JSON config after testkit's settings
    /// (e.g. `Datastore.StorageMax`, `Peering.Peers`) and `daemon_args` are appended to
    /// `ipfs daemon` (e.g. `--enable-gc`).
    pub fn start_with(tweak: impl FnOnce(&mut Value), daemon_args: &[&str]) -> Kubo {
        let dir = tempfile::Builder::new().prefix("afreg-kubo-").tempdir_in("/tmp").expect("kubo temp dir");
        let mut k = Kubo {
            api_port: free_port(),
            gateway_port: free_port(),
            swarm_port: free_port(),
            dir,
            child: None,
            peer_id: String::new(),
            daemon_args: daemon_args.iter().map(|s| s.to_string()).collect(),
        };
        run_ok(k.ipfs().args(["init", "--profile=test", "--empty-repo"]));

        let cfg_path = k.repo_path().join("config");
        let mut cfg: Value =
            serde_json::from_slice(&fs::read(&cfg_path).expect("read kubo config")).expect("parse kubo config");
        let set = |cfg: &mut Value, path: &str, v: Value| json_set(cfg, path, v);
        set(&mut cfg, "Addresses.API", format!("/ip4/127.0.0.1/tcp/{}", k.api_port).into());
        set(&mut cfg, "Addresses.Gateway", format!("/ip4/127.0.0.1/tcp/{}", k.gateway_port).into());
        set(&mut cfg, "Addresses.Swarm", serde_json::json!([format!("/ip4/127.0.0.1/tcp/{}", k.swarm_port)]));
        set(&mut cfg, "Addresses.Announce", serde_json::json!([]));
        set(&mut cfg, "Addresses.NoAnnounce", serde_json::json!([]));
        set(&mut cfg, "Bootstrap", serde_json::json!([]));
        set(&mut cfg, "Routing.Type", "none".into());
        set(&mut cfg, "Discovery.MDNS.Enabled", false.into());
        set(&mut cfg, "AutoNAT.ServiceMode", "disabled".into());
        set(&mut cfg, "Swarm.RelayClient.Enabled", false.into());
        set(&mut cfg, "Swarm.RelayService.Enabled", false.into());
        set(&mut cfg, "Swarm.Transports.Network.Relay", false.into());
        set(&mut cfg, "Swarm.DisableNatPortMap", true.into());
        set(&mut cfg, "Provide.Enabled", false.into());
        set(&mut cfg, "AutoConf.Enabled", false.into());
        set(&mut cfg, "AutoTLS.Enabled", false.into());
        tweak(&mut cfg);
        fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).expect("write kubo config");
        k.peer_id = cfg["Identity"]["PeerID"].as_str().expect("Identity.PeerID").to_string();
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
    pub fn repo_path(&self) -> &Path {
        self.dir.path()
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
        let mut c = Command::new(tool("ipfs"));
        c.env("IPFS_PATH", self.repo_path()).env("IPFS_TELEMETRY", "off").stdin(Stdio::null());
        c
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
        let mut cmd = self.ipfs();
        cmd.arg("daemon")
            .args(&self.daemon_args)
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = cmd.spawn().expect("spawn ipfs daemon");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                panic!("ipfs daemon exited early ({status})\n{}", file_tail(&self.log_path(), 40));
            }
            if self.rpc("id", &[]).is_ok() {
                return;
            }
            if Instant::now() > deadline {
                panic!("ipfs daemon did not answer /api/v0/id within 60 s\n{}", file_tail(&self.log_path(), 40));
            }
            std::thread::sleep(Duration::from_millis(100));
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
        let last = body.lines().filter(|l| !l.trim().is_empty()).last().unwrap_or("");
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

/// Sets `a.b.c` in a JSON object, creating intermediate objects.
pub fn json_set(root: &mut Value, path: &str, v: Value) {
    let mut cur = root;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, p) in parts.iter().enumerate() {
        if !cur.is_object() {
            *cur = Value::Object(Default::default());
        }
        let obj = cur.as_object_mut().unwrap();
        if i == parts.len() - 1 {
            obj.insert(p.to_string(), v);
            return;
        }
        cur = obj.entry(p.to_string()).or_insert_with(|| Value::Object(Default::default()));
    }
}

// ---------------------------------------------------------------------------------------------
// afreg node
// ---------------------------------------------------------------------------------------------

/// What testkit writes into the node's TOML config. Fields map onto `node/src/config.rs`;
/// `extra` is deep-merged last, so any key (e.g. `{"kubo": {"chunker": "size-262144"}}`) can
/// be set or overridden without changing this struct.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Fixed listen port; `None` picks a free one.
    pub port: Option<u16>,
    /// Fixed port of the internal (cluster) listener; `None` picks a free one.
    pub internal_port: Option<u16>,
    /// `[database] url`
    pub database_url: String,
    /// `[kubo] api_url`
    pub kubo_api_url: String,
    /// `[auth] enabled`
    pub auth_enabled: bool,
    /// `[auth] anonymous` (e.g. `["pull"]`, `["pull","push","delete"]`, `[]`).
    pub anonymous: Vec<String>,
    /// `[auth] service` and `issuer`.
    pub service: String,
    pub issuer: String,
    /// `[auth] token_ttl_secs` if set.
    pub token_ttl_secs: Option<u64>,
    /// `[storage] upload_ttl_secs` / `upload_sweep_interval_secs` / `max_manifest_bytes` if set.
    pub upload_ttl_secs: Option<u64>,
    pub upload_sweep_interval_secs: Option<u64>,
    pub max_manifest_bytes: Option<u64>,
    /// `[database] acquire_timeout_secs` if set.
    pub db_acquire_timeout_secs: Option<u64>,
    /// `[log] level`
    pub log_level: String,
    /// Deep-merged over the generated config (tables merge, other values replace).
    pub extra: toml::Table,
    /// Extra environment variables for the node process (e.g. `AFREG_SECTION__FIELD`).
    pub env: Vec<(String, String)>,
    /// The loopback address the node listens on (`server.listen`, `server.public_url`, the
    /// health probe, [`Node::url`], [`Node::host`]); `None` is 127.0.0.1. Nodes on distinct
    /// addresses (127.0.0.11, 127.0.0.12, …) look like hosts at different IPs, e.g. to DNS.
    pub listen_ip: Option<std::net::Ipv4Addr>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            port: None,
            internal_port: None,
            database_url: String::new(),
            kubo_api_url: String::new(),
            auth_enabled: true,
            anonymous: vec!["pull".into()],
            service: "afreg".into(),
            issuer: "afreg".into(),
            token_ttl_secs: None,
            upload_ttl_secs: None,
            upload_sweep_interval_secs: None,
            max_manifest_bytes: None,
            db_acquire_timeout_secs: None,
            log_level: "info".into(),
            extra: toml::Table::new(),
            env: Vec::new(),
            listen_ip: None,
        }
    }
}

impl NodeConfig {
    /// Defaults (auth on, anonymous pull) against this database and Kubo.
    pub fn new(database_url: impl Into<String>, kubo_api_url: impl Into<String>) -> Self {
        NodeConfig { database_url: database_url.into(), kubo_api_url: kubo_api_url.into(), ..Default::default() }
    }

    /// Sets `section.key` (any depth) in `extra`, e.g. `.set("kubo.pin_timeout_secs", 5)`.
    pub fn set(mut self, dotted: &str, value: impl Into<toml::Value>) -> Self {
        let parts: Vec<&str> = dotted.split('.').collect();
        let mut cur = &mut self.extra;
        for p in &parts[..parts.len() - 1] {
            let e = cur.entry(p.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !e.is_table() {
                *e = toml::Value::Table(toml::Table::new());
            }
            cur = e.as_table_mut().unwrap();
        }
        cur.insert(parts[parts.len() - 1].to_string(), value.into());
        self
    }

    /// The TOML document for a node listening on `port` (public) and `internal_port`
    /// (cluster), with its files in `dir`. The `[cluster]` section makes a one-region cluster
    /// with loopback Raft timings; `extra` can turn it into a member of a larger one.
    pub fn to_toml(&self, port: u16, internal_port: u16, dir: &Path) -> toml::Table {
        use toml::Value as V;
        let mut server = toml::Table::new();
        let ip = self.listen_ip.unwrap_or(std::net::Ipv4Addr::LOCALHOST);
        server.insert("listen".into(), V::String(format!("{ip}:{port}")));
        server.insert("public_url".into(), V::String(format!("http://{ip}:{port}")));
        let mut database = toml::Table::new();
        database.insert("url".into(), V::String(self.database_url.clone()));
        if let Some(s) = self.db_acquire_timeout_secs {
            database.insert("acquire_timeout_secs".into(), V::Integer(s as i64));
        }
        let mut kubo = toml::Table::new();
        kubo.insert("api_url".into(), V::String(self.kubo_api_url.clone()));
        let mut auth = toml::Table::new();
        auth.insert("enabled".into(), V::Boolean(self.auth_enabled));
        auth.insert("service".into(), V::String(self.service.clone()));
        auth.insert("issuer".into(), V::String(self.issuer.clone()));
        auth.insert("signing_key".into(), V::String(dir.join("key.pem").display().to_string()));
        auth.insert("anonymous".into(), V::Array(self.anonymous.iter().map(|a| V::String(a.clone())).collect()));
        if let Some(t) = self.token_ttl_secs {
            auth.insert("token_ttl_secs".into(), V::Integer(t as i64));
        }
        let mut storage = toml::Table::new();
        if let Some(t) = self.upload_ttl_secs {
            storage.insert("upload_ttl_secs".into(), V::Integer(t as i64));
        }
        if let Some(t) = self.upload_sweep_interval_secs {
            storage.insert("upload_sweep_interval_secs".into(), V::Integer(t as i64));
        }
        if let Some(t) = self.max_manifest_bytes {
            storage.insert("max_manifest_bytes".into(), V::Integer(t as i64));
        }
        let mut log = toml::Table::new();
        log.insert("format".into(), V::String("json".into()));
        log.insert("level".into(), V::String(self.log_level.clone()));

        let mut cluster = toml::Table::new();
        cluster.insert("listen".into(), V::String(format!("{ip}:{internal_port}")));
        cluster.insert("advertise_url".into(), V::String(format!("http://{ip}:{internal_port}")));
        cluster.insert("secret_file".into(), V::String(dir.join("cluster-secret").display().to_string()));
        // Loopback round trips are sub-millisecond; a loaded 2-core machine still needs room.
        cluster.insert("heartbeat_ms".into(), V::Integer(250));
        cluster.insert("election_timeout_min_ms".into(), V::Integer(1000));
        cluster.insert("election_timeout_max_ms".into(), V::Integer(2000));

        let mut doc = toml::Table::new();
        doc.insert("server".into(), V::Table(server));
        doc.insert("cluster".into(), V::Table(cluster));
        doc.insert("database".into(), V::Table(database));
        doc.insert("kubo".into(), V::Table(kubo));
        doc.insert("storage".into(), V::Table(storage));
        doc.insert("auth".into(), V::Table(auth));
        doc.insert("log".into(), V::Table(log));
        toml_merge(&mut doc, &self.extra);
        doc
    }
}

/// Deep-merges `over` into `base`: tables merge recursively, anything else replaces.
pub fn toml_merge(base: &mut toml::Table, over: &toml::Table) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => toml_merge(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

/// A running `afreg serve` process with its own config file, signing key and log file.
pub struct Node {
    bin: PathBuf,
    cfg: NodeConfig,
    dir: TempDir,
    port: u16,
    internal_port: u16,
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
        let dir = tempfile::Builder::new().prefix("afreg-node-").tempdir_in("/tmp").expect("node temp dir");
        let port = cfg.port.unwrap_or_else(free_port);
        let internal_port = cfg.internal_port.unwrap_or_else(free_port);
        let mut node = Node { bin: bin.to_path_buf(), cfg, dir, port, internal_port, child: None };
        node.write_config();
        node.spawn();
        node.wait_healthy(Duration::from_secs(30))?;
        Ok(node)
    }

    fn write_config(&self) {
        let doc = self.cfg.to_toml(self.port, self.internal_port, self.dir.path());
        fs::write(self.config_path(), toml::to_string_pretty(&doc).expect("serialise config"))
            .expect("write node config");
    }

    /// Spawns `afreg serve` without waiting for health.
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "node already running");
        assert!(self.bin.is_file(), "afreg binary not found at {}", self.bin.display());
        let log = open_log(&self.log_path());
        let _ = writeln!(&log, "=== testkit: starting {} serve --config {} ===", self.bin.display(), self.config_path().display());
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
        format!("{}:{}", self.cfg.listen_ip.unwrap_or(std::net::Ipv4Addr::LOCALHOST), self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://IP:PORT` of the internal (cluster) listener.
    pub fn internal_url(&self) -> String {
        format!("http://{}:{}", self.cfg.listen_ip.unwrap_or(std::net::Ipv4Addr::LOCALHOST), self.internal_port)
    }

    pub fn internal_port(&self) -> u16 {
        self.internal_port
    }

    /// PID of the running process (panics if stopped).
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

// ---------------------------------------------------------------------------------------------
// Region
// ---------------------------------------------------------------------------------------------

/// One region: Postgres + Kubo + an afreg node wired to them. Fields drop in order, so the node
/// stops before its backends.
pub struct Region {
    pub node: Node,
    pub kubo: Kubo,
    pub pg: Postgres,
}

impl Region {
    /// Starts Postgres, Kubo and the node with the default [`NodeConfig`] (auth on, anonymous
    /// pull).
    pub fn start(bin: &Path) -> Region {
        Self::start_with(bin, |_| {})
    }

    /// Like [`Region::start`], letting `f` adjust the node's config (database and Kubo URLs
    /// are already filled in).
    pub fn start_with(bin: &Path, f: impl FnOnce(&mut NodeConfig)) -> Region {
        let pg = Postgres::start();
        let kubo = Kubo::start();
        let mut cfg = NodeConfig::new(pg.url(), kubo.api_url());
        f(&mut cfg);
        let node = Node::start(bin, cfg);
        Region { node, kubo, pg }
    }
}

// ---------------------------------------------------------------------------------------------
// JUnit reports and the OCI conformance suite
// ---------------------------------------------------------------------------------------------

/// One `<testcase>` of a JUnit report.
#[derive(Debug, Clone)]
pub struct JunitCase {
    pub name: String,
    /// Ginkgo's `status` attribute: `passed`, `failed`, `skipped`, `pending`, `panicked`, ...
    pub status: String,
    /// `<failure message>` + body, if any.
    pub failure: Option<String>,
    /// `<error message>` + body, if any.
    pub error: Option<String>,
    /// `<skipped message>`, if skipped.
    pub skipped: Option<String>,
}

/// A JUnit report (as Ginkgo writes it): the `<testsuites>` totals and every test case.
#[derive(Debug, Clone)]
pub struct Junit {
    pub tests: u64,
    pub failures: u64,
    pub errors: u64,
    pub disabled: u64,
    pub cases: Vec<JunitCase>,
}

impl Junit {
    pub fn parse_file(path: &Path) -> Result<Junit, String> {
        let text = fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
        Self::parse(&text)
    }

    pub fn parse(xml: &str) -> Result<Junit, String> {
        let doc = roxmltree::Document::parse(xml).map_err(|e| format!("junit XML: {e}"))?;
        let root = doc.root_element();
        let attr = |n: roxmltree::Node, a: &str| -> Result<u64, String> {
            match n.attribute(a) {
                None | Some("") => Ok(0),
                Some(v) => v.parse().map_err(|e| format!("junit attribute {a}={v:?}: {e}")),
            }
        };
        let (tests, failures, errors, disabled);
        if root.has_tag_name("testsuites") {
            let has = |a| root.attribute(a).is_some();
            if !(has("tests") && has("failures") && has("errors")) {
                return Err("junit <testsuites> lacks tests/failures/errors attributes".into());
            }
            tests = attr(root, "tests")?;
            failures = attr(root, "failures")?;
            errors = attr(root, "errors")?;
            disabled = attr(root, "disabled")?;
        } else if root.has_tag_name("testsuite") {
            tests = attr(root, "tests")?;
            failures = attr(root, "failures")?;
            errors = attr(root, "errors")?;
            disabled = attr(root, "disabled")?;
        } else {
            return Err(format!("junit root is <{}>", root.tag_name().name()));
        }
        let text_of = |n: roxmltree::Node| -> String {
            let msg = n.attribute("message").unwrap_or("");
            let body: String = n.descendants().filter_map(|d| d.text()).collect();
            format!("{msg}\n{}", body.trim())
        };
        let mut cases = Vec::new();
        for tc in root.descendants().filter(|n| n.has_tag_name("testcase")) {
            let child = |tag: &str| tc.children().find(|c| c.has_tag_name(tag));
            let failure = child("failure").map(text_of);
            let error = child("error").map(text_of);
            let skipped = child("skipped").map(|n| n.attribute("message").unwrap_or("").to_string());
            let status = tc.attribute("status").map(String::from).unwrap_or_else(|| {
                if failure.is_some() {
                    "failed".into()
                } else if error.is_some() {
                    "error".into()
                } else if skipped.is_some() {
                    "skipped".into()
                } else {
                    "passed".into()
                }
            });
            cases.push(JunitCase { name: tc.attribute("name").unwrap_or("").to_string(), status, failure, error, skipped });
        }
        Ok(Junit { tests, failures, errors, disabled, cases })
    }

    /// Cases whose status is `passed`.
    pub fn passed(&self) -> Vec<&JunitCase> {
        self.cases.iter().filter(|c| c.status == "passed").collect()
    }

    /// Cases whose status is `skipped` (or that carry `<skipped>`).
    pub fn skipped(&self) -> Vec<&JunitCase> {
        self.cases.iter().filter(|c| c.status == "skipped" || (c.skipped.is_some() && c.status != "passed")).collect()
    }

    /// Cases that failed, errored or panicked (anything neither passed nor skipped).
    pub fn bad(&self) -> Vec<&JunitCase> {
        self.cases
            .iter()
            .filter(|c| c.failure.is_some() || c.error.is_some() || !matches!(c.status.as_str(), "passed" | "skipped"))
            .collect()
    }

    /// A readable list of the bad cases with their messages.
    pub fn describe_bad(&self) -> String {
        let mut s = String::new();
        for c in self.bad() {
            s.push_str(&format!("  [{}] {}\n", c.status, c.name));
            for m in [&c.failure, &c.error].into_iter().flatten() {
                for line in m.lines() {
                    s.push_str(&format!("      {line}\n"));
                }
            }
        }
        s
    }
}

/// The result of one run of the OCI conformance suite.
pub struct ConformanceRun {
    pub status: std::process::ExitStatus,
    /// stdout+stderr of the suite.
    pub output: String,
    /// The parsed `junit.xml` (Err if it is missing or unreadable).
    pub junit: Result<Junit, String>,
    /// `OCI_REPORT_DIR` (junit.xml, report.html); removed when this is dropped.
    pub report_dir: TempDir,
}

/// Runs `$AFREG_TOOLS/oci-conformance` (the classic Ginkgo distribution-spec suite) against
/// `root_url` with all four workflows enabled, namespaces `a/b` and `c/d`, and
/// `OCI_AUTOMATIC_CROSSMOUNT=0`. `creds` sets `OCI_USERNAME`/`OCI_PASSWORD`; `extra_env` is
/// applied last (it may override any of the above).
pub fn run_conformance(root_url: &str, creds: Option<(&str, &str)>, extra_env: &[(&str, &str)]) -> ConformanceRun {
    let report_dir = tempfile::Builder::new().prefix("afreg-conformance-").tempdir().expect("report dir");
    let mut cmd = Command::new(tool("oci-conformance"));
    cmd.current_dir(report_dir.path())
        .env("OCI_ROOT_URL", root_url)
        .env("OCI_NAMESPACE", "a/b")
        .env("OCI_CROSSMOUNT_NAMESPACE", "c/d")
        .env("OCI_TEST_PULL", "1")
        .env("OCI_TEST_PUSH", "1")
        .env("OCI_TEST_CONTENT_DISCOVERY", "1")
        .env("OCI_TEST_CONTENT_MANAGEMENT", "1")
        .env("OCI_AUTOMATIC_CROSSMOUNT", "0")
        .env("OCI_HIDE_SKIPPED_WORKFLOWS", "0")
        .env("OCI_DEBUG", "0")
        .env("OCI_REPORT_DIR", report_dir.path())
        .env_remove("OCI_USERNAME")
        .env_remove("OCI_PASSWORD")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .stdin(Stdio::null());
    if let Some((u, p)) = creds {
        cmd.env("OCI_USERNAME", u).env("OCI_PASSWORD", p);
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("spawn oci-conformance: {e}"));
    let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let junit = Junit::parse_file(&report_dir.path().join("junit.xml"));
    ConformanceRun { status: out.status, output, junit, report_dir }
}

/// `total` deterministic pseudo-random bytes (xorshift64*) in frames of at most `frame` bytes,
/// generated lazily: large test and benchmark bodies without holding them in memory.
pub fn pseudo_random_frames(seed: u64, total: u64, frame: usize) -> impl Iterator<Item = Vec<u8>> + Send + 'static {
    let mut state = seed | 1;
    let n = (total as usize).div_ceil(frame);
    (0..n).map(move |i| {
        let len = if i + 1 == n { total as usize - i * frame } else { frame };
        let mut buf = Vec::with_capacity(len + 8);
        while buf.len() < len {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            buf.extend_from_slice(&state.wrapping_mul(0x2545F4914F6CDD1D).to_le_bytes());
        }
        buf.truncate(len);
        buf
    })
}
pub mod cluster;
pub mod oci;
