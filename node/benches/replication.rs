//! Replication benchmark (not a test): run with `cargo bench -p afreg --bench replication`.
//!
//! In one run, against a real local three-region cluster (`us`, `eu`, `asia`: each a real
//! Postgres, a real Kubo and a real `afreg serve`, joined into one Raft group), it measures:
//! - **replication lag**: from a manifest `PUT` acknowledged by `us` (201) until the tag is
//!   visible (`GET` → 200) in `eu` and in `asia`, polled in parallel with a tight loop; p50, p90,
//!   p99 and max per region, with the push latency (`PUT` → 201) as context;
//! - **cross-region pin throughput**: a blob of fresh pseudo-random bytes is pushed to `us`
//!   (streamed `PATCH`, then `PUT ?digest=`); from its 201 until its CID is `pinned` in `eu`'s and
//!   `asia`'s `pins` table (polled every 50 ms), as MB/s per region;
//! - next to it, in the same rounds, **raw Kubo-to-Kubo**: two fresh Kubo daemons, connected;
//!   `add` on A with the node's parameters (CIDv1, raw leaves, 1 MiB chunks, pinned), then the
//!   time of `pin/add` of that CID on B; and the ratio region / raw. Before each round it waits
//!   until eu and asia have pinned every earlier blob, so a round times its own blob only.
//!
//! Environment: `AFREG_BENCH_BYTES` (blob size, default 1 GiB), `AFREG_BENCH_ROUNDS` (pin rounds,
//! cluster and raw interleaved, default 2; each figure is the median), `AFREG_BENCH_LAG_SAMPLES`
//! (manifests pushed for the lag, default 200). Every transfer uses fresh bytes, so no Kubo finds
//! the blocks already stored, and the bytes are generated as they are sent (never all in memory).
//! `AFREG_BENCH_KEEP_LOGS=<dir>` keeps a copy of each region's node log.

use std::io::Read;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::blocking::Client;
use reqwest::StatusCode;
use sha2::Digest as _;
use testkit::cluster::{ClusterMember, TestCluster};
use testkit::Kubo;
use testkit::Action;

const FRAME: usize = 1024 * 1024;
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Pause between two manifest GETs while waiting for a tag (the brief: at most 1 ms).
const LAG_POLL: Duration = Duration::from_micros(500);
/// A tag not visible in a region after this long is a failure, not a sample.
const LAG_BOUND: Duration = Duration::from_secs(60);
/// Pause between two `pins` queries while waiting for a CID to be pinned.
const PIN_POLL: Duration = Duration::from_millis(50);
/// Manifests pushed (and waited for) before the lag samples, not counted.
const LAG_WARMUP: usize = 5;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Pseudo-random frames as a `Read`, optionally hashing what it hands out.
struct FrameReader {
    frames: Box<dyn Iterator<Item = Vec<u8>> + Send>,
    cur: Vec<u8>,
    pos: usize,
    hasher: Option<Arc<Mutex<sha2::Sha256>>>,
}

impl FrameReader {
    fn new(seed: u64, total: u64, hasher: Option<Arc<Mutex<sha2::Sha256>>>) -> FrameReader {
        FrameReader { frames: Box::new(testkit::pseudo_random_frames(seed, total, FRAME)), cur: vec![], pos: 0, hasher }
    }
}

impl Read for FrameReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.frames.next() {
                Some(f) => {
                    if let Some(h) = &self.hasher {
                        h.lock().unwrap().update(&f);
                    }
                    self.cur = f;
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn client(timeout: Duration) -> Client {
    Client::builder().no_proxy().timeout(timeout).pool_max_idle_per_host(16).build().unwrap()
}

fn absolute(base: &str, loc: &str) -> String {
    if loc.starts_with("http") {
        loc.to_owned()
    } else {
        format!("{base}{loc}")
    }
}

fn location(r: &reqwest::blocking::Response) -> String {
    r.headers()["location"].to_str().unwrap().to_owned()
}

fn sha256_hex(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// Monolithic single-request upload (`POST ?digest=` with the body).
fn push_small_blob(c: &Client, base: &str, repo: &str, data: &[u8]) -> String {
    let d = sha256_hex(data);
    let r = c
        .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={d}"))
        .header("content-type", "application/octet-stream")
        .body(data.to_vec())
        .send()
        .unwrap();
    let status = r.status();
    assert_eq!(status, StatusCode::CREATED, "POST blob {d} to {base}: {}", r.text().unwrap_or_default());
    d
}

/// Streams `total` fresh bytes to `base` (`POST`, one `PATCH`, `PUT ?digest=`). Returns the
/// digest, the upload's duration and the instant (and wall-clock time) its 201 arrived.
fn push_big_blob(c: &Client, base: &str, repo: &str, seed: u64, total: u64) -> (String, Duration, Instant, SystemTime) {
    let h = Arc::new(Mutex::new(sha2::Sha256::new()));
    let t = Instant::now();
    let r = c.post(format!("{base}/v2/{repo}/blobs/uploads/")).send().unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = absolute(base, &location(&r));
    let r = c
        .patch(&loc)
        .header("content-type", "application/octet-stream")
        .body(reqwest::blocking::Body::sized(FrameReader::new(seed, total, Some(h.clone())), total))
        .send()
        .unwrap();
    let status = r.status();
    assert_eq!(status, StatusCode::ACCEPTED, "PATCH: {}", r.text().unwrap_or_default());
    let loc = absolute(base, &location(&r));
    let d = format!("sha256:{}", hex::encode(h.lock().unwrap().clone().finalize()));
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = c.put(format!("{loc}{sep}digest={d}")).send().unwrap();
    let (acked, wall) = (Instant::now(), SystemTime::now());
    let status = r.status();
    assert_eq!(status, StatusCode::CREATED, "PUT ?digest=: {}", r.text().unwrap_or_default());
    (d, acked - t, acked, wall)
}

fn manifest_bytes(cfg: (&str, usize), layer: (&str, usize), sample: usize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg.0, "size": cfg.1},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.0, "size": layer.1}],
        "annotations": {"dev.afreg.bench.sample": sample.to_string()},
    }))
    .unwrap()
}

/// Polls `GET /v2/<repo>/manifests/<tag>` until 200; returns (lag since `acked`, GETs sent).
fn wait_visible(c: &Client, base: &str, repo: &str, tag: &str, acked: Instant) -> Result<(Duration, u32), String> {
    let url = format!("{base}/v2/{repo}/manifests/{tag}");
    let mut gets = 0;
    loop {
        let r = c.get(&url).header("accept", OCI_MANIFEST).send().map_err(|e| format!("GET {url}: {e}"))?;
        gets += 1;
        let status = r.status();
        let body = r.bytes().map_err(|e| format!("GET {url}: {e}"))?;
        match status {
            StatusCode::OK => return Ok((acked.elapsed(), gets)),
            StatusCode::NOT_FOUND => {}
            s => return Err(format!("GET {url}: {s}: {}", String::from_utf8_lossy(&body))),
        }
        if acked.elapsed() > LAG_BOUND {
            return Err(format!("{url}: not visible within {LAG_BOUND:?} ({gets} GETs)"));
        }
        std::thread::sleep(LAG_POLL);
    }
}

struct Pinned {
    /// From the upload's 201 until the poll saw `pinned`.
    polled: Duration,
    /// From the upload's 201 (wall clock) to the row's `updated_at` (written right after Kubo's
    /// `pin/add` returned).
    row: Duration,
    fetched_bytes: u64,
    /// `failed` states seen on the way (attempts, last_error).
    failures: Vec<String>,
    /// The pinner's own `duration_ms` of the successful `pin/add` (its `blob_pinned` log line).
    pin_call: Option<Duration>,
}

/// The region's node log lines (JSON, flattened) that name `cid`.
fn log_lines_for(region: &ClusterMember, cid: &str) -> Vec<serde_json::Value> {
    region
        .node()
        .log()
        .lines()
        .filter(|l| l.contains(cid))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .collect()
}

/// `duration_ms` of the pinner's `blob_pinned` line for `cid` (written right after the row).
fn pinner_duration(region: &ClusterMember, cid: &str) -> Option<Duration> {
    for _ in 0..20 {
        let found = log_lines_for(region, cid)
            .into_iter()
            .find(|v| v["event"] == "blob_pinned")
            .and_then(|v| v["duration_ms"].as_u64());
        if let Some(ms) = found {
            return Some(Duration::from_millis(ms));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Polls `region`'s `pins` row for `cid` every 50 ms until `pinned`.
fn wait_pinned(
    region: &ClusterMember,
    cid: &str,
    acked: Instant,
    acked_wall: SystemTime,
    bound: Duration,
) -> Result<Pinned, String> {
    let q = format!(
        "SELECT state || '|' || attempts || '|' || extract(epoch from updated_at) || '|' || fetched_bytes || '|' || coalesce(last_error, '') \
         FROM pins WHERE cid = '{cid}'"
    );
    let mut failures: Vec<String> = vec![];
    loop {
        let row = region.sql(&q);
        let polled = acked.elapsed();
        let f: Vec<&str> = row.splitn(5, '|').collect();
        match f.first().copied() {
            Some("pinned") => {
                let at = f[2].parse::<f64>().unwrap_or(f64::NAN);
                let start = acked_wall.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
                let row = Duration::from_secs_f64((at - start).max(0.0));
                let pin_call = pinner_duration(region, cid);
                return Ok(Pinned { polled, row, fetched_bytes: f[3].parse().unwrap_or(0), failures, pin_call });
            }
            Some("failed") => {
                let note = format!("attempts {}: {}", f[1], f.get(4).unwrap_or(&""));
                if failures.last() != Some(&note) {
                    eprintln!("  [{}] pins row for {cid} is 'failed' after {polled:.1?}: {note}", region.name);
                    failures.push(note);
                }
            }
            _ => {}
        }
        if polled > bound {
            return Err(format!("{}: {cid} not pinned within {bound:?} (last row: {row:?})", region.name));
        }
        std::thread::sleep(PIN_POLL);
    }
}

/// Waits until no blob is waiting to be pinned in any of `regions` (each blob CID has a
/// `pinned` row), so a round times its own blob only. Returns how long that took.
fn wait_backlog_empty(regions: &[&ClusterMember], bound: Duration) -> Duration {
    let q = "SELECT count(*) FROM blobs b WHERE NOT EXISTS (SELECT 1 FROM pins p WHERE p.cid = b.cid AND p.state = 'pinned')";
    let t = Instant::now();
    loop {
        let left: Vec<String> = regions.iter().map(|r| r.sql(q)).collect();
        if left.iter().all(|n| n == "0") {
            return t.elapsed();
        }
        assert!(t.elapsed() < bound, "pin backlog not empty within {bound:?}: {left:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `add` on A with the node's parameters, pinned; returns the root CID.
fn raw_add(c: &Client, a: &Kubo, seed: u64, total: u64) -> String {
    let part = reqwest::blocking::multipart::Part::reader_with_length(FrameReader::new(seed, total, None), total)
        .file_name("blob")
        .mime_str("application/octet-stream")
        .unwrap();
    let r = c
        .post(format!(
            "{}/api/v0/add?cid-version=1&raw-leaves=true&chunker=size-1048576&pin=true&quieter=true",
            a.api_url()
        ))
        .multipart(reqwest::blocking::multipart::Form::new().part("file", part))
        .send()
        .unwrap();
    let status = r.status();
    let text = r.text().unwrap();
    assert!(status.is_success(), "kubo add: {status}: {text}");
    let last = text.lines().filter(|l| !l.trim().is_empty()).last().unwrap();
    serde_json::from_str::<serde_json::Value>(last).unwrap()["Hash"].as_str().unwrap().to_owned()
}

/// Times `pin/add` of `cid` on B (fetched from A over bitswap).
fn raw_pin(c: &Client, b: &Kubo, cid: &str, timeout: Duration) -> Duration {
    let t = Instant::now();
    let r = c
        .post(format!("{}/api/v0/pin/add", b.api_url()))
        .query(&[("arg", cid), ("recursive", "true"), ("timeout", &format!("{}s", timeout.as_secs()))])
        .send()
        .unwrap();
    let took = t.elapsed();
    let status = r.status();
    let body = r.text().unwrap_or_default();
    assert!(status.is_success(), "raw pin/add on B: {status}: {body}");
    took
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mb_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2
    }
}

fn sh(cmd: &str) -> String {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|e| format!("({cmd}: {e})"))
}

/// Each region's node log lines about pinning (and warnings/errors), last `n`.
fn pin_log_lines(cluster: &TestCluster, n: usize) -> String {
    let mut out = String::new();
    for r in &cluster.regions {
        let log = r.node().log();
        let lines: Vec<&str> =
            log.lines().filter(|l| l.contains("pin") || l.contains("\"WARN\"") || l.contains("\"ERROR\"")).collect();
        out += &format!(
            "--- {} ({}):\n{}\n",
            r.name,
            r.node().log_path().display(),
            lines[lines.len().saturating_sub(n)..].join("\n")
        );
    }
    out
}

/// With `AFREG_BENCH_KEEP_LOGS=<dir>`, copies each region's node log to `<dir>/<region>.log`
/// (the cluster's temporary directories go away when the run ends).
fn keep_logs(cluster: &TestCluster) {
    let Some(dir) = std::env::var_os("AFREG_BENCH_KEEP_LOGS") else { return };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).unwrap();
    for r in &cluster.regions {
        let to = dir.join(format!("{}.log", r.name));
        match std::fs::copy(r.node().log_path(), &to) {
            Ok(_) => eprintln!("kept {}'s node log: {}", r.name, to.display()),
            Err(e) => eprintln!("could not keep {}'s node log: {e}", r.name),
        }
    }
}

fn main() {
    let total: u64 = env_or("AFREG_BENCH_BYTES", 1u64 << 30);
    let rounds: usize = env_or("AFREG_BENCH_ROUNDS", 2usize).max(1);
    let samples: usize = env_or("AFREG_BENCH_LAG_SAMPLES", 200usize).max(1);
    let load_before = sh("uptime");
    let nproc = sh("nproc");

    let cluster = TestCluster::start(testkit::afreg_bin(), &["us", "eu", "asia"], |_, c| {
        c.config.auth.anonymous = Action::ALL.to_vec();
        // Throughput, not the request-rate limits.
        c.config.server.requests_per_second_per_client = 0;
        c.config.server.requests_per_second_per_token = 0;
    });
    let leader_before = cluster.wait_leader(Duration::from_secs(30));
    let (a, b) = (Kubo::start(), Kubo::start());
    b.connect(&a);
    let (us, eu, asia) = (cluster.region("us"), cluster.region("eu"), cluster.region("asia"));
    let followers = [eu, asia];

    println!("afreg replication benchmark: three-region cluster (us, eu, asia) on loopback, {nproc} cores");
    println!("before: {load_before}");
    println!("raft leader at start: {leader_before}; pushes go to us");
    println!(
        "lag: {samples} manifests (+{LAG_WARMUP} warm-up); pins: {rounds} rounds of {total} bytes ({:.2} GiB), cluster and raw Kubo interleaved",
        total as f64 / (1u64 << 30) as f64
    );

    // ---- 1. Replication lag --------------------------------------------------------------------
    let c = client(Duration::from_secs(60));
    let pollers: Vec<Client> = followers.iter().map(|_| client(Duration::from_secs(10))).collect();
    let repo = "bench/lag";
    let cfg = format!(r#"{{"architecture":"amd64","os":"linux","bench":"{}"}}"#, testkit::random_hex(8)).into_bytes();
    let layer = testkit::random_bytes(4096);
    let d_cfg = push_small_blob(&c, &us.url(), repo, &cfg);
    let d_layer = push_small_blob(&c, &us.url(), repo, &layer);
    let mut push_lat = vec![];
    let mut lags: Vec<Vec<Duration>> = vec![vec![]; followers.len()];
    let mut first_get: Vec<usize> = vec![0; followers.len()];
    let mut lag_errors: Vec<String> = vec![];
    for i in 0..LAG_WARMUP + samples {
        let tag = format!("s{i}");
        let body = manifest_bytes((&d_cfg, cfg.len()), (&d_layer, layer.len()), i);
        let t = Instant::now();
        let r = c
            .put(format!("{}/v2/{repo}/manifests/{tag}", us.url()))
            .header("content-type", OCI_MANIFEST)
            .body(body)
            .send()
            .unwrap();
        let acked = Instant::now();
        let status = r.status();
        assert_eq!(status, StatusCode::CREATED, "PUT manifest {tag} to us: {}", r.text().unwrap_or_default());
        drop(r);
        let seen: Vec<Result<(Duration, u32), String>> = std::thread::scope(|s| {
            let hs: Vec<_> = followers
                .iter()
                .zip(&pollers)
                .map(|(region, pc)| {
                    let (url, tag) = (region.url(), tag.clone());
                    s.spawn(move || wait_visible(pc, &url, repo, &tag, acked))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        if i < LAG_WARMUP {
            continue;
        }
        push_lat.push(acked - t);
        for (k, res) in seen.into_iter().enumerate() {
            match res {
                Ok((lag, gets)) => {
                    lags[k].push(lag);
                    if gets == 1 {
                        first_get[k] += 1;
                    }
                }
                Err(e) => lag_errors.push(format!("{}: sample {i}: {e}", followers[k].name)),
            }
        }
    }
    for e in &lag_errors {
        eprintln!("lag error: {e}");
    }

    // ---- 2. Cross-region pin throughput vs raw Kubo-to-Kubo ------------------------------------
    let big = client(Duration::from_secs(3600));
    let pin_bound = Duration::from_secs(600).max(Duration::from_secs_f64(total as f64 / 1e6)); // ≥ 1 MB/s
    struct Round {
        drained: Duration,
        upload: Duration,
        regions: Vec<Pinned>,
        raw: Duration,
    }
    let mut results: Vec<Round> = vec![];
    for round in 0..rounds as u64 {
        let seed = 1000 * (round + 1);
        let drained = wait_backlog_empty(&followers, pin_bound);
        eprintln!("round {}/{rounds}: eu's and asia's pin backlog empty after {drained:.1?}", round + 1);
        eprintln!("round {}/{rounds}: pushing {total} bytes to us …", round + 1);
        let (d, upload, acked, acked_wall) = push_big_blob(&big, &us.url(), "bench/big", seed + 1, total);
        let cid = us.sql(&format!("SELECT cid FROM blobs WHERE digest = '{d}'"));
        assert!(!cid.is_empty(), "no blob row for {d} in us");
        eprintln!("round {}/{rounds}: uploaded in {upload:.1?} ({cid}); waiting for eu and asia to pin …", round + 1);
        let pinned: Vec<Result<Pinned, String>> = std::thread::scope(|s| {
            let hs: Vec<_> = followers
                .iter()
                .map(|region| {
                    let cid = cid.clone();
                    s.spawn(move || wait_pinned(region, &cid, acked, acked_wall, pin_bound))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut regions = vec![];
        for p in pinned {
            match p {
                Ok(p) => regions.push(p),
                Err(e) => {
                    eprintln!("PIN FAILURE: {e}\nnode log lines about pins:\n{}", pin_log_lines(&cluster, 40));
                    for r in &cluster.regions {
                        eprintln!("--- {} pins: {}", r.name, r.sql("SELECT string_agg(cid || ' ' || state || ' ' || attempts || ' ' || coalesce(last_error,''), E'\\n') FROM pins"));
                    }
                    keep_logs(&cluster);
                    panic!("cross-region pin did not complete: {e}");
                }
            }
        }
        for region in &followers {
            for v in log_lines_for(region, &cid) {
                eprintln!(
                    "  [{}] {} {} {}",
                    region.name,
                    v["timestamp"].as_str().unwrap_or(""),
                    v["event"].as_str().unwrap_or(""),
                    v.get("duration_ms").map(|d| format!("duration_ms={d}")).unwrap_or_default()
                );
            }
        }
        eprintln!("round {}/{rounds}: raw Kubo: add on A …", round + 1);
        let raw_cid = raw_add(&big, &a, seed + 2, total);
        let raw = raw_pin(&big, &b, &raw_cid, pin_bound);
        eprintln!(
            "round {}/{rounds}: eu {:.1?}, asia {:.1?}, raw {raw:.1?}",
            round + 1,
            regions[0].polled,
            regions[1].polled
        );
        results.push(Round { drained, upload, regions, raw });
    }
    keep_logs(&cluster);
    // Anything the nodes warned about during the run (stderr, after the rounds).
    for r in &cluster.regions {
        let log = r.node().log();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("\"WARN\"") || l.contains("\"ERROR\"")).collect();
        eprintln!(
            "--- {}: {} WARN/ERROR log lines ({}){}",
            r.name,
            lines.len(),
            r.node().log_path().display(),
            if lines.is_empty() { "" } else { "; last ones:" }
        );
        for l in &lines[lines.len().saturating_sub(8)..] {
            eprintln!("  {l}");
        }
    }
    let leader_after = cluster.wait_leader(Duration::from_secs(30));
    let load_after = sh("uptime");

    // ---- Report ----------------------------------------------------------------------------------
    println!();
    println!("## Replication lag: manifest PUT acknowledged by us (201) → GET by tag 200 in the region");
    println!(
        "(polled from the 201 on, one thread per region, {LAG_POLL:?} between GETs; {} lag errors)",
        lag_errors.len()
    );
    println!();
    println!("| region | samples | p50 ms | p90 ms | p99 ms | max ms | visible on 1st GET |");
    println!("|---|---|---|---|---|---|---|");
    for (k, region) in followers.iter().enumerate() {
        let mut v = lags[k].clone();
        v.sort();
        if v.is_empty() {
            println!("| {} | 0 | – | – | – | – | – |", region.name);
            continue;
        }
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
            region.name,
            v.len(),
            ms(percentile(&v, 50.0)),
            ms(percentile(&v, 90.0)),
            ms(percentile(&v, 99.0)),
            ms(*v.last().unwrap()),
            first_get[k]
        );
    }
    push_lat.sort();
    println!();
    println!(
        "push latency at us (PUT manifest → 201): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
        ms(percentile(&push_lat, 50.0)),
        ms(percentile(&push_lat, 99.0)),
        ms(*push_lat.last().unwrap()),
        push_lat.len()
    );

    println!();
    println!(
        "## Cross-region pin of a {total}-byte blob ({:.2} GiB): us upload 201 → `pinned` in the region's pins table",
        total as f64 / (1u64 << 30) as f64
    );
    println!("(polled every {PIN_POLL:?} via psql; \"row\" = the pins row's updated_at − the 201's wall clock; MB = 10^6 bytes)");
    println!();
    println!("| round | us upload MB/s | eu s (row s) | eu MB/s | asia s (row s) | asia MB/s | raw Kubo→Kubo s | raw MB/s | eu / raw | asia / raw |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (i, r) in results.iter().enumerate() {
        let (e, s) = (&r.regions[0], &r.regions[1]);
        println!(
            "| {} | {:.0} | {:.2} ({:.2}) | {:.0} | {:.2} ({:.2}) | {:.0} | {:.2} | {:.0} | {:.2} | {:.2} |",
            i + 1,
            mb_s(total, r.upload),
            e.polled.as_secs_f64(),
            e.row.as_secs_f64(),
            mb_s(total, e.polled),
            s.polled.as_secs_f64(),
            s.row.as_secs_f64(),
            mb_s(total, s.polled),
            r.raw.as_secs_f64(),
            mb_s(total, r.raw),
            r.raw.as_secs_f64() / e.polled.as_secs_f64(),
            r.raw.as_secs_f64() / s.polled.as_secs_f64(),
        );
    }
    let med = |f: &dyn Fn(&Round) -> Duration| median(&results.iter().map(f).collect::<Vec<_>>());
    let (m_up, m_eu, m_asia, m_raw) =
        (med(&|r| r.upload), med(&|r| r.regions[0].polled), med(&|r| r.regions[1].polled), med(&|r| r.raw));
    let (m_eu_row, m_asia_row) = (med(&|r| r.regions[0].row), med(&|r| r.regions[1].row));
    println!(
        "| **median** | {:.0} | {:.2} ({:.2}) | **{:.0}** | {:.2} ({:.2}) | **{:.0}** | {:.2} | **{:.0}** | **{:.2}** | **{:.2}** |",
        mb_s(total, m_up),
        m_eu.as_secs_f64(),
        m_eu_row.as_secs_f64(),
        mb_s(total, m_eu),
        m_asia.as_secs_f64(),
        m_asia_row.as_secs_f64(),
        mb_s(total, m_asia),
        m_raw.as_secs_f64(),
        mb_s(total, m_raw),
        m_raw.as_secs_f64() / m_eu.as_secs_f64(),
        m_raw.as_secs_f64() / m_asia.as_secs_f64(),
    );
    let fetched: Vec<String> = results
        .iter()
        .flat_map(|r| r.regions.iter().zip(["eu", "asia"]).map(|(p, n)| format!("{n} {}", p.fetched_bytes)))
        .collect();
    let failures: Vec<String> = results
        .iter()
        .flat_map(|r| {
            r.regions.iter().zip(["eu", "asia"]).flat_map(|(p, n)| p.failures.iter().map(move |f| format!("{n}: {f}")))
        })
        .collect();
    println!();
    println!(
        "before each round the bench waited until eu and asia had pinned every earlier blob: {}",
        results
            .iter()
            .enumerate()
            .map(|(i, r)| format!("round {} waited {:.2} s", i + 1, r.drained.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("pins rows' fetched_bytes per round: {}", fetched.join(", "));
    let secs = |d: Option<Duration>| d.map(|d| format!("{:.2} s", d.as_secs_f64())).unwrap_or_else(|| "?".into());
    let calls: Vec<String> = results
        .iter()
        .enumerate()
        .flat_map(|(i, r)| {
            r.regions.iter().zip(["eu", "asia"]).map(move |(p, n)| {
                let started = p.pin_call.map(|c| p.row.saturating_sub(c));
                format!("round {} {n}: pin/add {} (started {} after the 201)", i + 1, secs(p.pin_call), secs(started))
            })
        })
        .collect();
    println!("the pinner's own pin/add duration (its blob_pinned log line): {}", calls.join("; "));
    println!("failed pin attempts seen: {}", if failures.is_empty() { "none".to_owned() } else { failures.join("; ") });
    println!("raw: two fresh Kubo daemons (testkit, same config as the regions'), B connected to A; `add` on A (cid-version=1, raw-leaves, size-1048576, pin) then timed `pin/add` on B");
    println!("cluster: eu and asia pin concurrently (each may fetch from us and from each other); raw is one pair");
    println!("raft leader at end: {leader_after}");
    println!();
    println!("machine: {nproc} cores (nproc)");
    println!("before: {load_before}");
    println!("after:  {load_after}");
}
