//! Throughput benchmark (not a test): run with `cargo bench -p afreg --bench throughput`.
//!
//! In one run, against one real Postgres and one real Kubo, it measures:
//! - raw Kubo `add` and `cat` of 1 GiB (same chunker, CIDv1, raw leaves), straight over RPC;
//! - the node's push of 1 GiB, monolithic (`POST`, then `PUT` with the body) and streamed
//!   (`POST`, one `PATCH`, `PUT`), and its pull (`GET`), each as a ratio to the raw Kubo figure;
//! - manifest GET requests per second at 32 concurrent connections, by tag and by digest;
//! - the same pushes, pulls and GETs against a peer: the reference registry (distribution v3,
//!   filesystem storage, built by `scripts/setup.sh`).
//!
//! Every transfer uses fresh pseudo-random bytes, so Kubo never finds the blocks already
//! stored. `AFREG_BENCH_BYTES` changes the blob size (default 1 GiB).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::{Client, StatusCode};
use sha2::Digest as _;
use testkit::TestRegion;
use testkit::Action;



fn sha256_of(seed: u64, total: u64) -> String {
    let mut h = sha2::Sha256::new();
    futures::executor::block_on(testkit::stream::frames(seed, total).for_each(|f| {
        h.update(f.unwrap());
        futures::future::ready(())
    }));
    format!("sha256:{}", hex::encode(h.finalize()))
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / (1024.0 * 1024.0)
}

async fn drain(resp: reqwest::Response) -> u64 {
    assert!(resp.status().is_success(), "{}", resp.status());
    let mut n = 0;
    let mut s = resp.bytes_stream();
    while let Some(b) = s.next().await {
        n += b.unwrap().len() as u64;
    }
    n
}

async fn kubo_add(c: &Client, kubo: &str, seed: u64, total: u64) -> (Duration, String) {
    let part = reqwest::multipart::Part::stream(reqwest::Body::wrap_stream(testkit::stream::frames(seed, total))).file_name("blob");
    let t = Instant::now();
    let r = c
        .post(format!("{kubo}/api/v0/add?cid-version=1&raw-leaves=true&chunker=size-1048576&pin=false&quieter=true"))
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    let cid = serde_json::from_str::<serde_json::Value>(text.lines().last().unwrap()).unwrap()["Hash"].as_str().unwrap().to_owned();
    // The node pins what it stores; so does this baseline.
    let r = c.post(format!("{kubo}/api/v0/pin/add?arg={cid}")).send().await.unwrap();
    assert!(r.status().is_success());
    (t.elapsed(), cid)
}

async fn manifest_rps(c: &Client, url: &str, conns: usize, dur: Duration) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + dur;
    let mut tasks = vec![];
    for _ in 0..conns {
        let (c, url, done) = (c.clone(), url.to_owned(), done.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < stop {
                let r = c.get(&url).header("accept", "application/vnd.oci.image.manifest.v1+json").send().await.unwrap();
                assert_eq!(r.status(), StatusCode::OK);
                r.bytes().await.unwrap();
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let t = Instant::now();
    for task in tasks {
        task.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64()
}

/// The reference registry (distribution v3, filesystem storage) on a free loopback port.
struct Peer {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Peer {
    fn start() -> Peer {
        let dir = tempfile::tempdir().unwrap();
        let port = testkit::free_port();
        let cfg = dir.path().join("config.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new(testkit::tool("registry"))
            .arg("serve")
            .arg(&cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while reqwest::blocking::get(format!("{url}/v2/")).map(|r| r.status() != StatusCode::OK).unwrap_or(true) {
            assert!(Instant::now() < deadline, "distribution registry did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Peer { child, url, _dir: dir }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The spec's monolithic upload that every registry implements: `POST`, then one `PUT ?digest=`
/// carrying the whole blob (distribution does not implement the single-request `POST ?digest=`).
async fn push_mono(c: &Client, base: &str, repo: &str, seed: u64, total: u64) -> (Duration, String) {
    let d = sha256_of(seed, total);
    let t = Instant::now();
    let r = c.post(format!("{base}/v2/{repo}/blobs/uploads/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let loc = if loc.starts_with("http") { loc } else { format!("{base}{loc}") };
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = c
        .put(format!("{loc}{sep}digest={d}"))
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(testkit::stream::frames(seed, total)))
        .send()
        .await
        .unwrap();
    let took = t.elapsed();
    assert_eq!(r.status(), StatusCode::CREATED, "{base}: {}", r.text().await.unwrap());
    (took, d)
}

async fn push_streamed(c: &Client, base: &str, repo: &str, seed: u64, total: u64) -> Duration {
    let t = Instant::now();
    testkit::stream::push_streamed(c, base, repo, seed, total).await;
    t.elapsed()
}

async fn pull(c: &Client, base: &str, repo: &str, d: &str, total: u64) -> Duration {
    let t = Instant::now();
    let n = drain(c.get(format!("{base}/v2/{repo}/blobs/{d}")).send().await.unwrap()).await;
    assert_eq!(n, total);
    t.elapsed()
}

/// Pushes a small image and returns its manifest digest.
async fn push_image(c: &Client, base: &str) -> String {
    let cfg = br#"{"architecture":"amd64","os":"linux"}"#;
    let d_cfg = format!("sha256:{}", hex::encode(sha2::Sha256::digest(cfg)));
    let r = c.post(format!("{base}/v2/bench/img/blobs/uploads/")).send().await.unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let loc = if loc.starts_with("http") { loc } else { format!("{base}{loc}") };
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = c.put(format!("{loc}{sep}digest={d_cfg}")).body(cfg.to_vec()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d_cfg, "size": cfg.len()},
        "layers": []});
    let r = c
        .put(format!("{base}/v2/bench/img/manifests/latest"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(serde_json::to_vec(&manifest).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    r.headers()["docker-content-digest"].to_str().unwrap().to_owned()
}

#[derive(Default)]
struct Times {
    mono: Vec<Duration>,
    streamed: Vec<Duration>,
    pull: Vec<Duration>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let total: u64 = std::env::var("AFREG_BENCH_BYTES").ok().and_then(|v| v.parse().ok()).unwrap_or(1 << 30);
    let rounds: usize = std::env::var("AFREG_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let region = TestRegion::start_with(testkit::afreg_bin(), |c| {
        c.config.auth.anonymous = Action::ALL.to_vec();
        c.config.log.level = "warn".into();
        // Throughput, not the request-rate limits: the reference registry has none.
        c.config.server.requests_per_second_per_client = 0;
        c.config.server.requests_per_second_per_token = 0;
    });
    let peer = Peer::start();
    let base = region.node.url();
    let kubo = region.kubo.api_url();
    let c = Client::builder().pool_max_idle_per_host(64).build().unwrap();
    let gib = total as f64 / (1u64 << 30) as f64;
    println!("afreg throughput benchmark: {gib:.2} GiB blobs, loopback, {} cores", num_cpus());
    println!("node: afreg over one Postgres and one Kubo; peer: distribution v3 registry, filesystem storage");
    println!("{rounds} interleaved rounds; each figure is the median; every transfer uses fresh bytes");

    let (mut raw_add_t, mut raw_cat_t) = (vec![], vec![]);
    let (mut node, mut dist) = (Times::default(), Times::default());
    for round in 0..rounds as u64 {
        let seed = 100 * (round + 1);
        let (t, cid) = kubo_add(&c, &kubo, seed + 1, total).await;
        raw_add_t.push(t);
        let t = Instant::now();
        assert_eq!(drain(c.post(format!("{kubo}/api/v0/cat?arg={cid}")).send().await.unwrap()).await, total);
        raw_cat_t.push(t.elapsed());
        for (k, (url, times)) in [(&base, &mut node), (&peer.url, &mut dist)].into_iter().enumerate() {
            let s = seed + 10 * (k as u64 + 1);
            let (t, d) = push_mono(&c, url, "bench/mono", s, total).await;
            times.mono.push(t);
            times.streamed.push(push_streamed(&c, url, "bench/streamed", s + 1, total).await);
            times.pull.push(pull(&c, url, "bench/mono", &d, total).await);
        }
    }
    let (raw_add, raw_cat) = (median(&mut raw_add_t), median(&mut raw_cat_t));
    let m = |v: &mut Vec<Duration>| median(v);
    let rows = [
        ("push, monolithic (POST, PUT with body)", m(&mut node.mono), m(&mut dist.mono), raw_add),
        ("push, streamed PATCH + PUT", m(&mut node.streamed), m(&mut dist.streamed), raw_add),
        ("pull, GET", m(&mut node.pull), m(&mut dist.pull), raw_cat),
    ];
    println!();
    println!("| {gib:.2} GiB | node MiB/s | peer MiB/s | raw Kubo MiB/s | node / raw Kubo | node / peer |");
    println!("|---|---|---|---|---|---|");
    for (name, n, p, k) in rows {
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} |",
            mbps(total, n),
            mbps(total, p),
            mbps(total, k),
            k.as_secs_f64() / n.as_secs_f64(),
            p.as_secs_f64() / n.as_secs_f64()
        );
    }
    println!("(raw Kubo: `add` with the node's parameters then `pin/add` for pushes; `cat` for pulls)");

    let secs = Duration::from_secs(10);
    let node_digest = push_image(&c, &base).await;
    let peer_digest = push_image(&c, &peer.url).await;
    println!();
    println!("| manifest GET, 32 connections, {}s each | node req/s | peer req/s | node / peer |", secs.as_secs());
    println!("|---|---|---|---|");
    for (name, n_ref, p_ref) in [("by tag", "latest".to_owned(), "latest".to_owned()), ("by digest", node_digest, peer_digest)] {
        let n = manifest_rps(&c, &format!("{base}/v2/bench/img/manifests/{n_ref}"), 32, secs).await;
        let p = manifest_rps(&c, &format!("{}/v2/bench/img/manifests/{p_ref}", peer.url), 32, secs).await;
        println!("| {name} | {n:.0} | {p:.0} | {:.2} |", n / p);
    }
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
