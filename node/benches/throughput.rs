//! Throughput benchmark (not a test): run with `cargo bench -p afreg --bench throughput`.
//!
//! In one run, against one real Postgres and one real Kubo, it measures:
//! - raw Kubo `add` and `cat` of 1 GiB (same chunker, CIDv1, raw leaves), straight over RPC;
//! - the node's push of 1 GiB, monolithic (`POST ?digest=`) and streamed (`POST`, one `PATCH`,
//!   `PUT`), and its pull (`GET`), each as a ratio to the raw Kubo figure;
//! - manifest GET requests per second at 32 concurrent connections, by tag and by digest.
//!
//! Every transfer uses fresh pseudo-random bytes, so Kubo never finds the blocks already
//! stored. `AFREG_BENCH_BYTES` changes the blob size (default 1 GiB).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::{Client, StatusCode};
use sha2::Digest as _;
use testkit::Region;

const FRAME: usize = 1024 * 1024;

fn frames(seed: u64, total: u64) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    let mut state = seed | 1;
    let n = (total as usize).div_ceil(FRAME);
    futures::stream::iter(0..n).map(move |i| {
        let len = if i + 1 == n { total as usize - i * FRAME } else { FRAME };
        let mut buf = Vec::with_capacity(len + 8);
        while buf.len() < len {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            buf.extend_from_slice(&state.wrapping_mul(0x2545F4914F6CDD1D).to_le_bytes());
        }
        buf.truncate(len);
        Ok(buf)
    })
}

fn sha256_of(seed: u64, total: u64) -> String {
    let mut h = sha2::Sha256::new();
    futures::executor::block_on(frames(seed, total).for_each(|f| {
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
    let part = reqwest::multipart::Part::stream(reqwest::Body::wrap_stream(frames(seed, total))).file_name("blob");
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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let total: u64 = std::env::var("AFREG_BENCH_BYTES").ok().and_then(|v| v.parse().ok()).unwrap_or(1 << 30);
    let region = Region::start_with(Path::new(env!("CARGO_BIN_EXE_afreg")), |c| {
        c.anonymous = vec!["pull".into(), "push".into(), "delete".into()];
        c.log_level = "warn".into();
    });
    let base = region.node.url();
    let kubo = region.kubo.api_url();
    let c = Client::builder().pool_max_idle_per_host(64).build().unwrap();
    let gib = total as f64 / (1u64 << 30) as f64;
    println!("afreg throughput benchmark: {gib:.2} GiB blobs, one Postgres, one Kubo, loopback, {} cores", num_cpus());

    let rounds: usize = std::env::var("AFREG_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    println!("{rounds} interleaved rounds; each figure is the median, every transfer uses fresh bytes");
    let mut t_raw_add = vec![];
    let mut t_raw_cat = vec![];
    let mut t_mono = vec![];
    let mut t_stream = vec![];
    let mut t_pull = vec![];
    for round in 0..rounds as u64 {
        let seed = 10 * (round + 1);
        // Raw Kubo.
        let (raw_add, raw_cid) = kubo_add(&c, &kubo, seed + 1, total).await;
        t_raw_add.push(raw_add);
        let t = Instant::now();
        let n = drain(c.post(format!("{kubo}/api/v0/cat?arg={raw_cid}")).send().await.unwrap()).await;
        t_raw_cat.push(t.elapsed());
        assert_eq!(n, total);

        // Node push, monolithic.
        let d_mono = sha256_of(seed + 2, total);
        let t = Instant::now();
        let r = c
            .post(format!("{base}/v2/bench/mono/blobs/uploads/?digest={d_mono}"))
            .body(reqwest::Body::wrap_stream(frames(seed + 2, total)))
            .send()
            .await
            .unwrap();
        t_mono.push(t.elapsed());
        assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());

        // Node push, streamed PATCH then PUT (what docker and crane do).
        let h = Arc::new(Mutex::new(sha2::Sha256::new()));
        let h2 = h.clone();
        let body = frames(seed + 3, total).map(move |f| {
            h2.lock().unwrap().update(f.as_ref().unwrap());
            f
        });
        let t = Instant::now();
        let r = c.post(format!("{base}/v2/bench/chunked/blobs/uploads/")).send().await.unwrap();
        let loc = format!("{base}{}", r.headers()["location"].to_str().unwrap());
        let r = c.patch(&loc).body(reqwest::Body::wrap_stream(body)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let d_chunked = format!("sha256:{}", hex::encode(h.lock().unwrap().clone().finalize()));
        let r = c.put(format!("{loc}?digest={d_chunked}")).send().await.unwrap();
        t_stream.push(t.elapsed());
        assert_eq!(r.status(), StatusCode::CREATED);

        // Node pull.
        let t = Instant::now();
        let n = drain(c.get(format!("{base}/v2/bench/mono/blobs/{d_mono}")).send().await.unwrap()).await;
        t_pull.push(t.elapsed());
        assert_eq!(n, total);
    }
    let (raw_add, raw_cat) = (median(&mut t_raw_add), median(&mut t_raw_cat));

    println!();
    println!("| transfer ({gib:.2} GiB) | seconds (median) | MiB/s | ratio to raw Kubo |");
    println!("|---|---|---|---|");
    let row = |name: &str, d: Duration, base: Duration| {
        println!("| {name} | {:.2} | {:.0} | {:.2} |", d.as_secs_f64(), mbps(total, d), base.as_secs_f64() / d.as_secs_f64());
    };
    row("raw Kubo add + pin", raw_add, raw_add);
    row("node push, monolithic POST", median(&mut t_mono), raw_add);
    row("node push, streamed PATCH + PUT", median(&mut t_stream), raw_add);
    row("raw Kubo cat", raw_cat, raw_cat);
    row("node pull, GET", median(&mut t_pull), raw_cat);
    let all = |v: &[Duration]| v.iter().map(|d| format!("{:.2}", d.as_secs_f64())).collect::<Vec<_>>().join(" ");
    println!("\nper round (s): raw add {} | mono {} | streamed {} | raw cat {} | pull {}",
        all(&t_raw_add), all(&t_mono), all(&t_stream), all(&t_raw_cat), all(&t_pull));

    // Manifest GETs.
    let cfg = br#"{"architecture":"amd64","os":"linux"}"#;
    let d_cfg = format!("sha256:{}", hex::encode(sha2::Sha256::digest(cfg)));
    let r = c.post(format!("{base}/v2/bench/img/blobs/uploads/?digest={d_cfg}")).body(cfg.to_vec()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d_cfg, "size": cfg.len()},
        "layers": []});
    let body = serde_json::to_vec(&manifest).unwrap();
    let r = c
        .put(format!("{base}/v2/bench/img/manifests/latest"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let digest = r.headers()["docker-content-digest"].to_str().unwrap().to_owned();
    let secs = Duration::from_secs(10);
    let by_tag = manifest_rps(&c, &format!("{base}/v2/bench/img/manifests/latest"), 32, secs).await;
    let by_digest = manifest_rps(&c, &format!("{base}/v2/bench/img/manifests/{digest}"), 32, secs).await;
    println!();
    println!("| manifest GET, 32 connections, {}s each | requests/s |", secs.as_secs());
    println!("|---|---|");
    println!("| by tag | {by_tag:.0} |");
    println!("| by digest | {by_digest:.0} |");
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
