//! The cluster's own figures: replication lag (a manifest acknowledged by `us`, then visible by
//! tag in `eu` and `asia`, polled from the acknowledgement on) and cross-region pin throughput
//! with one region pinning at a time (asia's node is stopped while eu pins, so eu fetches
//! alone), next to raw Kubo-to-Kubo on two fresh daemons of the same configuration.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use reqwest::{Client, StatusCode};
use testkit::cluster::{ClusterMember, TestCluster};
use testkit::Kubo;

use crate::http::{self, mib_s, Push, OCI_MANIFEST};
use crate::physical;
use crate::targets::Target;

/// Pause between two GETs while waiting for a tag (tokio's timer rounds it up to 1 ms).
const LAG_POLL: Duration = Duration::from_micros(500);
/// A tag not visible after this long is an error, not a sample.
const LAG_BOUND: Duration = Duration::from_secs(30);
/// Pause between two `pins` queries.
const PIN_POLL: Duration = Duration::from_millis(20);

/// Pushes `samples` manifests to us and returns, for eu and asia, each sample's lag in ms.
pub async fn replication_lag(c: &Client, cluster: &TestCluster, samples: usize, round: usize) -> Result<[Vec<f64>; 2]> {
    let us = Target::at("afreg-cluster", cluster.region("us").url());
    let followers = [cluster.region("eu").url(), cluster.region("asia").url()];
    let repo = format!("bench/lag{round}");
    let (base_manifest, _) = http::push_image(c, &us, &repo, "base").await?;
    let mut lags: [Vec<f64>; 2] = [vec![], vec![]];
    for i in 0..samples {
        // A distinct manifest each time (an annotation), so every sample is a new digest.
        let mut m: serde_json::Value = serde_json::from_slice(&base_manifest)?;
        m["annotations"] = serde_json::json!({"dev.afreg.bench.sample": format!("{round}-{i}")});
        let body = serde_json::to_vec(&m)?;
        let tag = format!("s{i}");
        http::put_manifest(c, &us, &repo, &tag, &body).await?;
        let acked = Instant::now();
        let polls = followers.iter().map(|base| {
            let (c, url) = (c.clone(), format!("{base}/v2/{repo}/manifests/{tag}"));
            async move {
                loop {
                    let r = c.get(&url).header("accept", OCI_MANIFEST).send().await?;
                    match r.status() {
                        StatusCode::OK => return Ok::<Duration, anyhow::Error>(acked.elapsed()),
                        StatusCode::NOT_FOUND => {}
                        s => bail!("GET {url}: {s}"),
                    }
                    if acked.elapsed() > LAG_BOUND {
                        bail!("{url}: not visible within {LAG_BOUND:?}");
                    }
                    tokio::time::sleep(LAG_POLL).await;
                }
            }
        });
        let seen = futures::future::join_all(polls).await;
        for (k, s) in seen.into_iter().enumerate() {
            lags[k].push(s?.as_secs_f64() * 1000.0);
        }
    }
    Ok(lags)
}

/// Waits until every region has pinned every blob it has a record of (so the next timing is
/// not sharing the machine with background pins). Returns how long that took.
pub fn drain_pins(cluster: &TestCluster, bound: Duration) -> Result<Duration> {
    let q = "SELECT count(*) FROM blobs b WHERE NOT EXISTS (SELECT 1 FROM pins p WHERE p.cid = b.cid AND p.state = 'pinned')";
    let t = Instant::now();
    loop {
        let left: Vec<String> =
            cluster.regions.iter().filter(|r| r.name != "us" && r.node().is_running()).map(|r| r.sql(q)).collect();
        if left.iter().all(|n| n == "0") {
            return Ok(t.elapsed());
        }
        if t.elapsed() > bound {
            bail!("pins not drained within {bound:?}: {left:?} blobs left");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_pinned(region: &ClusterMember, cid: &str, from: Instant, bound: Duration) -> Result<Duration> {
    let q = format!("SELECT state FROM pins WHERE cid = '{cid}'");
    loop {
        if region.sql(&q) == "pinned" {
            return Ok(from.elapsed());
        }
        if from.elapsed() > bound {
            bail!("{}: {cid} not pinned within {bound:?}", region.name);
        }
        std::thread::sleep(PIN_POLL);
    }
}

/// One round of the pin comparison: eu pins a fresh `total`-byte blob alone (asia's node is
/// stopped meanwhile and started again after), then raw Kubo B pins a fresh blob added on A.
/// Returns (eu MiB/s, raw MiB/s).
pub async fn pin_round(
    c: &Client,
    cluster: &mut TestCluster,
    raw: &(Kubo, Kubo),
    seed: u64,
    total: u64,
) -> Result<(f64, f64)> {
    let bound = Duration::from_secs(120).max(Duration::from_secs(total >> 20));
    drain_pins(cluster, bound)?;
    cluster.region_mut("asia").node_mut().stop();
    let us = Target {
        kubos: cluster.regions.iter().map(|r| r.kubo().api_url()).collect(),
        ..Target::at("afreg-cluster", cluster.region("us").url())
    };
    let result = async {
        let (_, d) = http::push(c, &us, "bench/pin", Push::Streamed, seed, total).await?;
        let acked = Instant::now();
        let cid = cluster.region("us").sql(&format!("SELECT cid FROM blobs WHERE digest = '{d}'"));
        if cid.is_empty() {
            bail!("us has no blob row for {d}");
        }
        wait_pinned(cluster.region("eu"), &cid, acked, bound).map(|eu| (eu, d))
    }
    .await;
    cluster.region_mut("asia").node_mut().restart();
    let (eu, pushed) = result?;
    drain_pins(cluster, bound)?;
    // Three regions hold it: deleted (every region unpins it), so a run of rounds fits the disk.
    us.forget_blobs(c, "bench/pin", &[pushed]).await;

    let (a, b) = raw;
    let (_, cid) = physical::kubo_add(c, &a.api_url(), seed + 1, total).await?;
    let t = Instant::now();
    let r = c
        .post(format!("{}/api/v0/pin/add", b.api_url()))
        .query(&[("arg", cid.as_str()), ("recursive", "true")])
        .timeout(bound)
        .send()
        .await
        .context("raw pin/add")?;
    if !r.status().is_success() {
        bail!("raw pin/add: {}: {}", r.status(), r.text().await.unwrap_or_default());
    }
    r.bytes().await?;
    let raw_t = t.elapsed();
    physical::forget(c, b, &cid).await?;
    physical::forget(c, a, &cid).await?;
    Ok((mib_s(total, eu), mib_s(total, raw_t)))
}
