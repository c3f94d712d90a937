//! `afreg up` as a user runs it: the real binary starts three regions (each its own Postgres,
//! Kubo and node) on shifted ports; the admin from cluster.json can log in everywhere; an image
//! pushed to us is served by eu and asia; Ctrl-C stops every process and frees every port; a
//! second run on the same data directory serves the same image with the same admin password.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::{file_tail, random_bytes, sha256_digest};

const REPO: &str = "t/up";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn regions_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../regions")
}

/// Every local port of every region file, plus `shift`.
fn shifted_ports(shift: u16) -> Vec<u16> {
    let regions = afreg_deploy::regions::load_dir(&regions_dir()).unwrap();
    regions
        .iter()
        .flat_map(|r| {
            let p = &r.local;
            // The metrics port of a second process too (`--processes 2`).
            [p.registry, p.internal, p.postgres, p.kubo_api, p.kubo_swarm, p.kubo_gateway, p.metrics, p.metrics + 100]
        })
        .map(|p| p + shift)
        .collect()
}

fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A shift that leaves all 21 ports free. Kept in 6000..10000: the registry and internal ports
/// land below the kernel's ephemeral range, Postgres and Kubo above it (and under 65536).
fn pick_port_shift() -> u16 {
    for _ in 0..200 {
        let r = random_bytes(2);
        let shift = 6000 + u16::from_le_bytes([r[0], r[1]]) % 4000;
        if shifted_ports(shift).into_iter().all(port_free) {
            return shift;
        }
    }
    panic!("no port shift in 6000..10000 leaves every region's ports free");
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().unwrap()
}

/// One `afreg up` process; stopped with SIGINT when dropped (a failing test leaves nothing running).
struct Up {
    child: Child,
    out: PathBuf,
    data: PathBuf,
}

impl Up {
    fn start(data: &Path, shift: u16, out: PathBuf, extra: &[&str]) -> Up {
        let log = fs::File::create(&out).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_afreg"))
            .arg("up")
            .args(extra)
            .arg("--data")
            .arg(data)
            .arg("--regions")
            .arg(regions_dir())
            .arg("--port-shift")
            .arg(shift.to_string())
            .env_remove("AFREG_CONFIG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn afreg up");
        Up { child, out, data: data.to_owned() }
    }

    fn output(&self) -> String {
        fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Waits (≤ 120 s) until cluster.json is written and the summary is printed.
    fn wait_ready(&mut self) -> Duration {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(120) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("afreg up exited ({status}) before it was ready:\n{}", self.output());
            }
            if self.data.join("cluster.json").exists() && self.output().contains("Ctrl-C stops the cluster") {
                return t0.elapsed();
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("afreg up was not ready within 120 s:\n{}", self.output());
    }

    /// SIGINT, as Ctrl-C sends it; the exit status if it exits within `within`.
    fn interrupt(&mut self, within: Duration) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let sent = Command::new("kill").arg("-INT").arg(self.child.id().to_string()).status().unwrap();
        assert!(sent.success(), "kill -INT");
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if self.interrupt(Duration::from_secs(60)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- afreg up output ({}) ---\n{}", self.out.display(), file_tail(&self.out, 60));
            for name in ["us", "eu", "asia"] {
                let log = self.data.join(name).join("afreg.log");
                eprintln!("--- {} ---\n{}", log.display(), file_tail(&log, 30));
            }
        }
    }
}

struct Region {
    name: String,
    url: String,
}

fn regions_of(cluster: &Value) -> Vec<Region> {
    ["us", "eu", "asia"]
        .iter()
        .map(|name| Region {
            name: name.to_string(),
            url: cluster["regions"][name]["url"]
                .as_str()
                .unwrap_or_else(|| panic!("no url for {name}: {cluster}"))
                .to_owned(),
        })
        .collect()
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&fs::read(p).unwrap()).unwrap()
}

/// A push/pull token for `REPO` from `region`, retried for up to 10 s (the admin user reaches
/// the followers asynchronously).
fn token(c: &reqwest::blocking::Client, region: &Region, password: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = c
            .get(format!("{}/token?service=afreg&scope=repository:{REPO}:pull,push", region.url))
            .basic_auth("admin", Some(password))
            .send()
            .unwrap();
        let status = r.status();
        let body: Value = r.json().unwrap_or(Value::Null);
        if status == 200 {
            if let Some(t) = body["token"].as_str() {
                return t.to_owned();
            }
        }
        assert!(Instant::now() < deadline, "{}: no token for admin: {status} {body}", region.name);
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn push_blob(c: &reqwest::blocking::Client, region: &Region, token: &str, bytes: &[u8]) -> String {
    let digest = sha256_digest(bytes);
    let r = c
        .post(format!("{}/v2/{REPO}/blobs/uploads/?digest={digest}", region.url))
        .bearer_auth(token)
        .header("content-type", "application/octet-stream")
        .body(bytes.to_vec())
        .send()
        .unwrap();
    let status = r.status();
    assert_eq!(status, 201, "monolithic upload to {}: {}", region.name, r.text().unwrap_or_default());
    digest
}

/// The manifest's bytes as `region` serves them, polled for up to `timeout` (followers apply
/// replicated writes asynchronously).
fn wait_manifest(c: &reqwest::blocking::Client, region: &Region, token: &str, want: &[u8], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let r = c
            .get(format!("{}/v2/{REPO}/manifests/v1", region.url))
            .header("accept", OCI_MANIFEST)
            .bearer_auth(token)
            .send();
        let last = match r {
            Ok(r) => {
                let status = r.status();
                let body = r.bytes().unwrap_or_default();
                if status == 200 && body.as_ref() == want {
                    return;
                }
                format!("{status} {}", String::from_utf8_lossy(&body))
            }
            Err(e) => e.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "{} does not serve {REPO}:v1 as pushed within {timeout:?}: {last}",
            region.name
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Processes whose command line or environment names the data directory (Postgres `-D`, Kubo's
/// `IPFS_PATH`, the nodes' `--config`).
fn processes_under(data: &Path) -> Vec<String> {
    let needle = data.to_string_lossy().into_owned();
    let me = std::process::id().to_string();
    let mut found = vec![];
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
            continue;
        }
        let read = |f: &str| {
            fs::read(e.path().join(f)).map(|b| String::from_utf8_lossy(&b).replace('\0', " ")).unwrap_or_default()
        };
        let cmdline = read("cmdline");
        if cmdline.contains(&needle) || read("environ").contains(&needle) {
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}

/// After `afreg up` exited: no process of the cluster remains, every port is free, every
/// Postgres removed its postmaster.pid.
fn assert_all_stopped(data: &Path, shift: u16) {
    // Ports can take a moment to be released after the last process exits.
    let deadline = Instant::now() + Duration::from_secs(5);
    let busy = loop {
        let busy: Vec<u16> = shifted_ports(shift).into_iter().filter(|p| !port_free(*p)).collect();
        if busy.is_empty() || Instant::now() > deadline {
            break busy;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(busy.is_empty(), "ports still in use after afreg up exited: {busy:?}");
    for name in ["us", "eu", "asia"] {
        let pid_file = data.join(name).join("pg/postmaster.pid");
        assert!(!pid_file.exists(), "{} remains: Postgres of {name} still runs", pid_file.display());
    }
    let left = processes_under(data);
    assert!(left.is_empty(), "processes of the cluster still run:\n{}", left.join("\n"));
}

#[test]
fn up_starts_three_regions_replicates_stops_cleanly_and_restarts_on_the_same_data() {
    let tmp = tempfile::Builder::new().prefix("afreg-up-").tempdir_in("/tmp").unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let data = tmp.path().join("cluster");
    let shift = pick_port_shift();
    eprintln!("afreg up --data {} --port-shift {shift}", data.display());
    let c = http();

    // ---- first run: everything is created -------------------------------------------------
    let mut up = Up::start(&data, shift, tmp.path().join("up-1.out"), &[]);
    let took = up.wait_ready();
    eprintln!("first run ready after {took:?}");
    let cluster = read_json(&data.join("cluster.json"));
    let regions = regions_of(&cluster);
    let output = up.output();
    // A line per stage and region, each with the time since the start: a region's Kubo after
    // its PostgreSQL, every node started after every Kubo, healthy after started.
    let line_of = |stage: &str, region: &str| {
        output
            .lines()
            .position(|l| l.starts_with("afreg up: [") && l.contains(&format!("s] {region:<6} {stage}")))
            .unwrap_or_else(|| panic!("no stage line {stage:?} for {region}:\n{output}"))
    };
    let lines = |stage: &str| regions.iter().map(|r| line_of(stage, &r.name)).collect::<Vec<_>>();
    for r in &regions {
        assert!(line_of("PostgreSQL ready", &r.name) < line_of("Kubo ready", &r.name), "{output}");
    }
    for (before, after) in [("Kubo ready", "node started"), ("node started", "node healthy")] {
        let (b, a) = (lines(before), lines(after));
        assert!(b.iter().max() < a.iter().min(), "{after} before {before}:\n{output}");
    }
    assert!(output.contains("a leader is elected") && output.contains("cluster.json written"), "{output}");
    for r in &regions {
        assert!(
            output.lines().any(|l| l.starts_with(&r.name) && l.trim_end().ends_with(&r.url)),
            "no line for {}:\n{output}",
            r.name
        );
    }
    let password = cluster["admin"]["password"].as_str().unwrap().to_owned();
    assert_eq!(cluster["admin"]["username"], "admin");
    assert_eq!(password.len(), 24);
    assert_eq!(fs::read_to_string(data.join("admin-password")).unwrap().trim(), password);
    for (file, len) in [("admin-password", 24), ("cluster-secret", 40)] {
        let meta = fs::metadata(data.join(file)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{file} mode");
        assert_eq!(fs::read_to_string(data.join(file)).unwrap().trim().len(), len, "{file} length");
    }
    for name in ["eu", "asia"] {
        let cfg = fs::read_to_string(data.join(name).join("afreg.toml")).unwrap();
        assert!(
            cfg.contains(&format!("secret_file = \"{}\"", data.join("cluster-secret").display())),
            "{name}: one shared secret"
        );
    }
    // One private IPFS network: the swarm key (mode 0600) is in every region's Kubo repository.
    let key_file = data.join("swarm.key");
    assert_eq!(cluster["swarm_key_file"], key_file.display().to_string());
    assert_eq!(fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600, "swarm.key mode");
    let key = fs::read(&key_file).unwrap();
    for r in &regions {
        assert_eq!(
            fs::read(data.join(&r.name).join("kubo/swarm.key")).unwrap(),
            key,
            "{}: the cluster's swarm key",
            r.name
        );
    }
    // Each region's config reads back through the node's loader as what `afreg up` meant.
    for r in &regions {
        let cfg = afreg_config::Config::load_from(Some(&data.join(&r.name).join("afreg.toml")), []).unwrap();
        assert_eq!(
            (cfg.cluster.id, cfg.cluster.region.as_str()),
            (cluster["regions"][&r.name]["id"].as_u64().unwrap(), r.name.as_str())
        );
        assert_eq!(cfg.server.public_url, r.url);
        assert_eq!(cfg.cluster.secret_file, data.join("cluster-secret"));
        assert_eq!(cfg.cluster.bootstrap.len(), regions.len(), "{}: every region bootstraps", r.name);
        assert_eq!(cfg.auth.anonymous, vec![afreg_config::Action::Pull]);
    }

    // Every region challenges an anonymous /v2/ and issues the admin a token.
    let mut tokens = vec![];
    for r in &regions {
        let status = c.get(format!("{}/v2/", r.url)).send().unwrap().status();
        assert_eq!(status, 401, "{}: /v2/ without credentials", r.name);
        tokens.push(token(&c, r, &password));
    }

    // An image pushed to us is served by eu and asia, byte for byte.
    let us = &regions[0];
    let layer = random_bytes(4096);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(&layer)]},
    }))
    .unwrap();
    let config_digest = push_blob(&c, us, &tokens[0], &config);
    let layer_digest = push_blob(&c, us, &tokens[0], &layer);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}],
    }))
    .unwrap();
    let r = c
        .put(format!("{}/v2/{REPO}/manifests/v1", us.url))
        .bearer_auth(&tokens[0])
        .header("content-type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .unwrap();
    let status = r.status();
    assert_eq!(status, 201, "manifest PUT to us: {}", r.text().unwrap_or_default());
    for (r, t) in regions.iter().zip(&tokens).skip(1) {
        wait_manifest(&c, r, t, &manifest, Duration::from_secs(10));
    }

    // `afreg drill leader-kill` on this cluster: the leader is SIGKILLed, `afreg up` starts it
    // again, and the report (as JSON) has every checker passing and the failover within 6 s.
    let drill = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_afreg"))
            .arg("drill")
            .args(args)
            .arg("--cluster")
            .arg(data.join("cluster.json"))
            .env_remove("AFREG_CONFIG")
            .output()
            .unwrap();
        let (stdout, stderr) =
            (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
        assert!(out.status.success(), "afreg drill {args:?} failed ({}):\n{stderr}\n{stdout}", out.status);
        eprintln!("--- afreg drill {args:?} ---\n{stderr}{stdout}");
        (stdout, stderr)
    };
    let (stdout, stderr) = drill(&["leader-kill", "--json"]);
    let report: Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("drill --json printed no JSON ({e}):\n{stdout}"));
    assert_eq!(report["scenario"], "leader-kill");
    assert_eq!(report["passed"], true, "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["linearizable"], "ok", "{report}");
    assert!(report["acknowledged"].as_u64().unwrap() > 20, "too few writes acknowledged to judge: {report}");
    let failover = report["failover_ms"].as_array().unwrap();
    assert!(failover.len() == 1 && failover[0].as_u64().unwrap() <= 6000, "failover: {report}");
    let checkers: Vec<&str> =
        report["verdicts"].as_array().unwrap().iter().map(|v| v["checker"].as_str().unwrap()).collect();
    for c in [
        "acked-readable",
        "converged",
        "linearizable",
        "regional-reads",
        "available",
        "fail-fast",
        "no-early-gc",
        "failover",
    ] {
        assert!(checkers.contains(&c), "no {c} verdict: {report}");
    }
    assert!(
        stderr.contains("SIGKILLed the leader") && stderr.contains("is back after"),
        "no progress shown:\n{stderr}"
    );
    assert!(up.output().contains("started again"), "afreg up did not start the killed node again:\n{}", up.output());
    // `watch` (no fault of its own), as text: every region stayed up, so no failover to time.
    let (stdout, _) = drill(&["watch", "--hold", "3", "--seed", "2"]);
    assert!(stdout.starts_with("drill watch (seed 2, 1 round): PASSED"), "{stdout}");
    for line in ["operations", "failover: p50 -", "converged", "acked-readable  ok", "linearizable    ok"] {
        assert!(stdout.contains(line), "the report has no {line:?}:\n{stdout}");
    }
    // `rolling-restart`: every node SIGTERMed in turn, the leader last, each once the one
    // before is back; `afreg up` starts each again and nothing acknowledged is lost.
    let (stdout, stderr) = drill(&["rolling-restart", "--seed", "3"]);
    assert!(stdout.starts_with("drill rolling-restart (seed 3, 1 round): PASSED"), "{stdout}");
    assert_eq!(stderr.matches("SIGTERMed").count(), 3, "not every region was restarted:\n{stderr}");

    // Ctrl-C stops everything.
    let t0 = Instant::now();
    let status = up.interrupt(Duration::from_secs(60)).expect("afreg up exits within 60 s of SIGINT");
    assert!(status.success(), "afreg up exited with {status}:\n{}", up.output());
    eprintln!("first run stopped in {:?}", t0.elapsed());
    assert_all_stopped(&data, shift);
    drop(up);

    // ---- second run: the same data, two processes per region -------------------------------------
    fs::remove_file(data.join("cluster.json")).unwrap();
    let mut up = Up::start(&data, shift, tmp.path().join("up-2.out"), &["--processes", "2"]);
    let took = up.wait_ready();
    eprintln!("second run (two processes per region) ready after {took:?}");
    // Each region reports one seat holder and its other process, in /status and `afreg status`.
    let us_url = regions_of(&read_json(&data.join("cluster.json")))[0].url.clone();
    // "Ready" is every region answering; a region's second process shows in the list once it
    // has announced itself (within a seat renewal), so the list is read until it is complete.
    let sorted_processes = |r: &Value| -> Vec<String> {
        let mut p: Vec<String> =
            r["processes"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_owned()).collect();
        p.sort();
        p
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status: Value = loop {
        let status: Value = c.get(format!("{us_url}/status")).send().unwrap().json().unwrap();
        let complete = status["regions"].as_array().unwrap().iter().all(|r| sorted_processes(r).len() == 2);
        if complete || Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for r in status["regions"].as_array().unwrap() {
        let name = r["name"].as_str().unwrap();
        let mut processes: Vec<&str> = r["processes"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
        processes.sort();
        assert_eq!(processes, [format!("{name}-0"), format!("{name}-1")], "{name}'s processes: {r}");
        let holder = r["seat_holder"].as_str().unwrap_or_else(|| panic!("{name} has no seat holder: {r}"));
        assert!(processes.contains(&holder), "{name}: holder {holder}");
        assert!(r["seat_epoch"].as_u64().unwrap() >= 1);
    }
    let out = Command::new(env!("CARGO_BIN_EXE_afreg")).args(["status", "--url", &us_url]).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "afreg status: {}", String::from_utf8_lossy(&out.stderr));
    eprintln!("{table}");
    assert!(table.lines().next().unwrap().contains("SEAT-HOLDER"), "{table}");
    for name in ["us", "eu", "asia"] {
        let line = table.lines().find(|l| l.split_whitespace().nth(1) == Some(name)).unwrap_or_else(|| {
            panic!(
                "no row for {name}:
{table}"
            )
        });
        assert!(
            line.contains(&format!("{name}-0")) && line.contains(&format!("{name}-1")),
            "{name}: holder and other process:
{table}"
        );
    }
    let again = read_json(&data.join("cluster.json"));
    assert_eq!(again["admin"]["password"], password.as_str(), "the admin password survives a restart");
    let regions = regions_of(&again);
    let eu = &regions[1];
    let eu_token = token(&c, eu, &password);
    wait_manifest(&c, eu, &eu_token, &manifest, Duration::from_secs(10));
    let r =
        c.get(format!("{}/v2/{REPO}/blobs/{}", eu.url, sha256_digest(&layer))).bearer_auth(&eu_token).send().unwrap();
    assert_eq!(r.status(), 200, "eu serves the layer after a restart");
    assert_eq!(r.bytes().unwrap().as_ref(), layer.as_slice());

    let status = up.interrupt(Duration::from_secs(60)).expect("afreg up exits within 60 s of SIGINT");
    assert!(status.success(), "afreg up exited with {status}:\n{}", up.output());
    assert_all_stopped(&data, shift);
}
