//! Data safety under concurrency: no acknowledged write is lost and the cluster does not stall
//! when many clients push at once, while GC runs, while pins move, and when a stream stops.
//! Every test runs real Postgres, Kubo and `afreg serve` processes; the races are forced with
//! real table locks in a region's Postgres, never with fakes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use testkit::cluster::{ClusterMember, TestCluster};
use testkit::oci::{
    check_pulls, cids_of, client, get_blob, new_image, put_manifest, upload_blob, upload_blob_streamed, within, Image,
    Refusal,
};
use testkit::{random_bytes, random_hex, rss_kib, sha256_digest, Action, TestRegion};

use testkit::afreg_bin as bin;

/// A cluster where anyone may pull, push and delete, with `f` applied to every region.
fn open_cluster(f: impl Fn(&mut testkit::NodeConfig)) -> TestCluster {
    TestCluster::start(bin(), &["us", "eu", "asia"], |_, c| {
        c.config.auth.anonymous = Action::ALL.to_vec();
        f(c);
    })
}

/// The CID Kubo gives these bytes with the node's `add` options (CIDv1, raw leaves, 1 MiB).
fn cid_of(region: &ClusterMember, data: &[u8]) -> String {
    region.kubo().add_bytes_with(
        data,
        &[
            ("cid-version", "1"),
            ("raw-leaves", "true"),
            ("chunker", "size-1048576"),
            ("only-hash", "true"),
            ("pin", "false"),
        ],
    )
}

/// Every region's pin records and its Kubo agree: every blob's CID and every `pinned` record is
/// pinned in Kubo, and Kubo pins nothing that no blob, upload or hold needs. `Err` says where not.
fn pins_agree(r: &ClusterMember) -> Result<(), String> {
    // The registry adds CIDv1 only; Kubo's own pins (the empty directory it pins at init, a
    // CIDv0 `Qm…`) are not the registry's.
    let kubo: BTreeSet<String> = r.kubo().pin_ls_recursive().into_iter().filter(|c| !c.starts_with("Qm")).collect();
    let rows =
        |q: &str| -> BTreeSet<String> { r.sql(q).lines().map(str::to_owned).filter(|l| !l.is_empty()).collect() };
    let blobs = rows("SELECT DISTINCT cid FROM blobs");
    let recorded = rows("SELECT cid FROM pins WHERE state = 'pinned'");
    let mut needed = blobs.clone();
    needed.extend(rows("SELECT cid FROM upload_chunks"));
    needed.extend(rows("SELECT cid FROM blob_holds"));
    let unpinned_blobs: Vec<_> = blobs.difference(&kubo).collect();
    let false_records: Vec<_> = recorded.difference(&kubo).collect();
    let stray: Vec<_> = kubo.difference(&needed).collect();
    if unpinned_blobs.is_empty() && false_records.is_empty() && stray.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}: blobs not pinned in Kubo {unpinned_blobs:?}; recorded pinned but not in Kubo {false_records:?}; \
             pinned in Kubo for nothing {stray:?}",
            r.name
        ))
    }
}

fn assert_pins_agree_within(cluster: &TestCluster, bound: Duration) {
    let started = Instant::now();
    loop {
        let errs: Vec<String> = cluster.regions.iter().filter_map(|r| pins_agree(r).err()).collect();
        if errs.is_empty() {
            return;
        }
        assert!(started.elapsed() < bound, "pin records and Kubo disagree after {bound:?}:\n{}", errs.join("\n"));
        std::thread::sleep(Duration::from_millis(250));
    }
}

// ---- 1. GC never deletes a layer that a committed manifest references --------------------

/// With a 1 s grace and GC every second, clients keep uploading fresh blobs and pushing
/// manifests over them about a grace period later (and re-uploading blobs that have aged past
/// it), while unreferenced garbage keeps GC busy. Every acknowledged manifest must still pull,
/// every byte, from every region.
#[test]
fn gc_never_collects_a_layer_of_an_acknowledged_manifest() {
    let cluster = open_cluster(|c| {
        c.config.cluster.gc_grace_secs = 1;
        c.config.cluster.gc_interval_secs = 1;
    });
    let urls: Vec<String> = cluster.regions.iter().map(|r| r.url()).collect();
    let run_for = Duration::from_secs(25);
    let acked: Arc<Mutex<Vec<(String, Image)>>> = Arc::default();
    let refused = Arc::new(Mutex::new(0usize));
    let started = Instant::now();
    std::thread::scope(|s| {
        // Garbage: blobs nobody references, so that every GC round has a long list to unlink.
        for (w, url) in urls.iter().take(2).enumerate() {
            let url = url.clone();
            s.spawn(move || {
                let c = client();
                while started.elapsed() < run_for {
                    let junk = random_bytes(2048);
                    let _ = upload_blob(&c, &url, &format!("gc/junk{w}"), &sha256_digest(&junk), &junk);
                    std::thread::sleep(Duration::from_millis(30));
                }
            });
        }
        for w in 0..6 {
            let (url, acked, refused) = (urls[w % urls.len()].clone(), acked.clone(), refused.clone());
            s.spawn(move || {
                let c = client();
                let mut i = 0u64;
                while started.elapsed() < run_for {
                    i += 1;
                    let img = new_image(16 * 1024);
                    let repo = format!("gc/w{w}");
                    if img.blobs.iter().any(|(d, b)| upload_blob(&c, &url, &repo, d, b).is_err()) {
                        continue;
                    }
                    // Just around the grace period, and on every other round past it followed by
                    // a re-upload, which must restart the grace period.
                    let wait = 800 + (i * 137 % 600);
                    std::thread::sleep(Duration::from_millis(wait));
                    if i.is_multiple_of(2) {
                        std::thread::sleep(Duration::from_millis(700));
                        if img.blobs.iter().any(|(d, b)| upload_blob(&c, &url, &repo, d, b).is_err()) {
                            continue;
                        }
                    }
                    match put_manifest(&c, &url, &repo, &format!("t{i}"), &img.manifest) {
                        Ok(()) => acked.lock().unwrap().push((repo, img)),
                        // A layer collected before the manifest came is refused, never lost.
                        Err(Refusal { status: 400, body, .. }) if body.contains("MANIFEST_BLOB_UNKNOWN") => {
                            *refused.lock().unwrap() += 1
                        }
                        Err(r) => panic!("manifest push: {r:?}"),
                    }
                }
            });
        }
    });
    let acked = acked.lock().unwrap().clone();
    let collected: usize = cluster
        .region("us")
        .sql("SELECT count(*) FROM raft_log WHERE payload::text LIKE '%unlink%' OR payload::text LIKE '%collect%'")
        .parse()
        .unwrap();
    eprintln!(
        "acknowledged {} manifests, {} refused for a collected layer, {collected} GC entries",
        acked.len(),
        refused.lock().unwrap()
    );
    assert!(acked.len() >= 20, "too few manifests acknowledged to mean anything: {}", acked.len());
    assert!(collected > 0, "GC never ran");
    // Let every region apply and pin, then pull every acknowledged manifest everywhere.
    std::thread::sleep(Duration::from_secs(3));
    let c = client();
    let mut lost = Vec::new();
    for (repo, img) in &acked {
        for url in &urls {
            if let Err(e) = check_pulls(&c, url, repo, &img.digest, img) {
                lost.push(e);
            }
        }
    }
    assert!(lost.is_empty(), "{} pulls of acknowledged manifests failed:\n{}", lost.len(), lost.join("\n"));
}

// ---- 2. A burst of pushes cannot stall Raft ------------------------------------------------

/// 64 uploads of 1 MiB at once into one region, half monolithic and half streamed, half of
/// them the same bytes into 32 repositories. Returns how long each took, or its refusal.
fn burst(url: &str) -> Vec<Result<Duration, Refusal>> {
    let shared = random_bytes(1 << 20);
    let barrier = Barrier::new(64);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..64)
            .map(|i| {
                let (barrier, shared) = (&barrier, &shared);
                s.spawn(move || {
                    let data = if i < 32 { random_bytes(1 << 20) } else { shared.clone() };
                    let digest = sha256_digest(&data);
                    let repo = format!("burst/{}-{i}", random_hex(6));
                    let c = Client::builder().no_proxy().timeout(Duration::from_secs(120)).build().unwrap();
                    barrier.wait();
                    let t = Instant::now();
                    let r = if i % 2 == 0 {
                        upload_blob(&c, url, &repo, &digest, &data)
                    } else {
                        upload_blob_streamed(&c, url, &repo, &digest, &data)
                    };
                    r.map(|()| t.elapsed())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// One small image pushed to `url`, timed.
fn timed_push(c: &Client, url: &str) -> Duration {
    let img = new_image(4096);
    let t = Instant::now();
    testkit::oci::push(c, url, &format!("probe/{}", random_hex(6)), "v1", &img).expect("probe push");
    t.elapsed()
}

fn assert_burst_queued(cluster: &TestCluster, label: &str) {
    let (us, eu) = (cluster.region("us").url(), cluster.region("eu").url());
    let c = client();
    let usual: Duration = (0..3).map(|_| timed_push(&c, &eu)).max().unwrap();
    let bound = (usual * 10).max(Duration::from_secs(2));
    let (results, during) = std::thread::scope(|s| {
        let b = s.spawn(|| burst(&us));
        std::thread::sleep(Duration::from_millis(300));
        let during = timed_push(&c, &eu);
        (b.join().unwrap(), during)
    });
    let refused: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    let slowest = results.iter().filter_map(|r| r.as_ref().ok()).max().copied().unwrap_or_default();
    eprintln!(
        "{label}: {} of 64 uploads got 201, slowest {slowest:?}; push to eu during the burst {during:?} (usual {usual:?})",
        64 - refused.len()
    );
    assert!(refused.is_empty(), "{label}: {} of 64 uploads refused, e.g. {:?}", refused.len(), refused.first());
    assert!(slowest < Duration::from_secs(60), "{label}: an upload took {slowest:?}");
    assert!(
        during < bound,
        "{label}: a push to eu during the burst took {during:?} (usual {usual:?}, bound {bound:?})"
    );
}

#[test]
fn a_burst_of_uploads_is_queued_not_refused() {
    let mut cluster = open_cluster(|_| {});
    assert_burst_queued(&cluster, "default pool");
    let us = cluster.region_mut("us").node_mut();
    us.reconfigure(|c| c.config.database.max_connections = 8);
    us.restart();
    cluster.wait_converged(Duration::from_secs(60));
    assert_burst_queued(&cluster, "max_connections = 8");
}

// ---- 3. Pin state stays true --------------------------------------------------------------

/// A blob deleted through us and pushed again through eu, while us's pinner is held up (its
/// `pins` table locked, as a slow pass would): us must pin it again, and its pin records must
/// say what its Kubo holds.
#[test]
fn a_deleted_blob_pushed_again_elsewhere_is_pinned_again_everywhere() {
    let cluster = open_cluster(|_| {});
    let c = client();
    let (us, eu) = (cluster.region("us"), cluster.region("eu"));
    let data = random_bytes(300 * 1024);
    let digest = sha256_digest(&data);
    upload_blob(&c, &cluster.region("asia").url(), "pins/a", &digest, &data).unwrap();
    let cid = cids_of(cluster.region("asia"), &[&digest])[0].clone();
    for r in &cluster.regions {
        within(Duration::from_secs(30), Duration::from_millis(100), &format!("{} pins the blob", r.name), || {
            r.kubo().is_pinned(&cid)
                && r.sql(&format!("SELECT count(*) FROM pins WHERE cid = '{cid}' AND state = 'pinned'")) == "1"
        });
    }

    let mut lock =
        us.pg().psql_background("BEGIN; LOCK TABLE pins IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(4); COMMIT;");
    std::thread::sleep(Duration::from_millis(500));
    std::thread::scope(|s| {
        let del = s.spawn(|| {
            let r = client().delete(format!("{}/v2/pins/a/blobs/{digest}", us.url())).send().unwrap();
            assert_eq!(r.status().as_u16(), 202, "DELETE blob through us");
        });
        within(Duration::from_secs(10), Duration::from_millis(20), "us applies the delete", || {
            us.sql(&format!("SELECT count(*) FROM blobs WHERE digest = '{digest}'")) == "0"
        });
        upload_blob(&c, &eu.url(), "pins/b", &digest, &data).expect("push again through eu");
        del.join().unwrap();
    });
    assert!(lock.wait().unwrap().success(), "the lock holder failed");

    for r in &cluster.regions {
        within(
            Duration::from_secs(30),
            Duration::from_millis(200),
            &format!("{} pins the re-pushed blob again", r.name),
            || r.kubo().is_pinned(&cid),
        );
    }
    assert_pins_agree_within(&cluster, Duration::from_secs(30));
    for r in &cluster.regions {
        let (status, got) = get_blob(&c, &r.url(), "pins/b", &digest).unwrap();
        assert_eq!((status, sha256_digest(&got)), (200, digest.clone()), "blob from {}", r.name);
    }
}

/// eu receives a blob whose record it cannot apply in time (its `blobs` table locked, as a slow
/// apply would): the client gets a 503, the record commits and applies later, and eu's Kubo
/// must hold the blob's pin the whole time, including across a Kubo GC.
#[test]
fn a_blob_whose_record_times_out_stays_pinned_in_its_origin() {
    let cluster = open_cluster(|c| c.config.cluster.write_timeout_ms = 1500);
    let c = client();
    let eu = cluster.region("eu");
    let data = random_bytes(700 * 1024);
    let digest = sha256_digest(&data);
    let cid = cid_of(eu, &data);

    let mut lock = eu.pg().psql_background("BEGIN; LOCK TABLE blobs IN EXCLUSIVE MODE; SELECT pg_sleep(5); COMMIT;");
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let r = upload_blob(&c, &eu.url(), "timeout/a", &digest, &data);
    let refusal = r.expect_err("the upload cannot be applied in eu while its blobs table is locked");
    assert_eq!(refusal.status, 503, "{refusal:?}");
    assert!(refusal.retry_after.is_some(), "503 without Retry-After: {refusal:?}");
    eprintln!("503 after {:?}: {}", t.elapsed(), refusal.body);
    assert!(eu.kubo().is_pinned(&cid), "eu released the pin of a blob whose record may still commit");
    eu.kubo().repo_gc();
    assert!(lock.wait().unwrap().success(), "the lock holder failed");

    within(Duration::from_secs(30), Duration::from_millis(100), "the record applies in eu", || {
        eu.sql(&format!("SELECT count(*) FROM blobs WHERE digest = '{digest}'")) == "1"
    });
    assert!(eu.kubo().is_pinned(&cid), "eu lost the pin once the record applied");
    eu.kubo().repo_gc();
    for r in &cluster.regions {
        within(Duration::from_secs(30), Duration::from_millis(200), &format!("{} pins the blob", r.name), || {
            r.kubo().is_pinned(&cid)
        });
        let (status, got) = get_blob(&c, &r.url(), "timeout/a", &digest).unwrap();
        assert_eq!((status, sha256_digest(&got)), (200, digest.clone()), "blob from {}", r.name);
    }
    assert_pins_agree_within(&cluster, Duration::from_secs(30));
}

// ---- 4. Kubo's disk is reclaimed ----------------------------------------------------------

#[test]
fn kubo_disk_is_reclaimed_after_rejected_and_deleted_uploads() {
    let region = TestRegion::start_with(bin(), |c| {
        c.config.auth.anonymous = Action::ALL.to_vec();
        c.config.kubo.gc_interval_secs = 1;
    });
    let url = region.node.url();
    let c = client();
    let kept = random_bytes(8 << 20);
    let kept_digest = sha256_digest(&kept);
    upload_blob(&c, &url, "disk/keep", &kept_digest, &kept).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let before = region.kubo.repo_size();

    let big = random_bytes(64 << 20);
    let wrong = sha256_digest(b"not these bytes");
    let r = upload_blob(&c, &url, "disk/bad", &wrong, &big).expect_err("a digest mismatch is refused");
    assert_eq!(r.status, 400, "{r:?}");
    let big = random_bytes(64 << 20);
    let big_digest = sha256_digest(&big);
    upload_blob(&c, &url, "disk/gone", &big_digest, &big).unwrap();
    let r = c.delete(format!("{url}/v2/disk/gone/blobs/{big_digest}")).send().unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let grown = region.kubo.repo_size();
    eprintln!("Kubo repo: {before} bytes with the kept blob, {grown} after the rejected and deleted uploads");

    let slack = 4 << 20;
    let took = within(Duration::from_secs(60), Duration::from_millis(250), "Kubo's repo back within 4 MiB", || {
        region.kubo.repo_size() <= before + slack
    });
    eprintln!("reclaimed after {took:?}: {} bytes", region.kubo.repo_size());
    let (status, got) = get_blob(&c, &url, "disk/keep", &kept_digest).unwrap();
    assert_eq!(status, 200);
    assert!(got == kept, "the kept blob changed");
}

// ---- 5. No stream hangs for ever ----------------------------------------------------------

/// A blob whose root and first chunk are in Kubo but whose other chunks no peer has: the GET
/// must end with an error the client sees, soon after the idle timeout, not hang.
#[test]
fn a_stalled_blob_stream_ends_with_an_error() {
    let region = TestRegion::start_with(bin(), |c| {
        c.config.auth.anonymous = vec![Action::Pull, Action::Push];
        c.config.kubo.timeout_secs = 3;
        // The stream under test is Kubo's, the path of every blob this region holds no file
        // of: without blob files the pull below takes it (with them, the push's file serves it).
        c.config.storage.blob_cache_bytes = 0;
    });
    let url = region.node.url();
    let c = client();
    let data = random_bytes(3 << 20);
    let digest = sha256_digest(&data);
    upload_blob(&c, &url, "stall/a", &digest, &data).unwrap();
    let cid = region.pg.psql(&format!("SELECT cid FROM blobs WHERE digest = '{digest}'"));
    let dag = region.kubo.rpc_json("dag/get", &[("arg", &cid)]);
    let first = dag["Links"][0]["Hash"]["/"].as_str().expect("first chunk link").to_owned();
    let (root, leaf) = (region.kubo.block_get(&cid), region.kubo.block_get(&first));
    // Take every block away, then give back only the root and the first chunk.
    region.kubo.rpc("pin/rm", &[("arg", &cid)]).unwrap();
    region.kubo.repo_gc();
    assert_eq!(region.kubo.block_put(&root, "dag-pb"), cid);
    assert_eq!(region.kubo.block_put(&leaf, "raw"), first);

    let c = Client::builder().no_proxy().timeout(Duration::from_secs(25)).build().unwrap();
    let t = Instant::now();
    let got = get_blob(&c, &url, "stall/a", &digest);
    let took = t.elapsed();
    eprintln!("stalled GET ended after {took:?}: {:?}", got.as_ref().map(|(s, b)| (*s, b.len())));
    assert!(took < Duration::from_secs(15), "the stalled GET was not ended by the node (took {took:?})");
    match got {
        Err(_) => {}
        Ok((status, body)) => assert!(status != 200 || body.len() < data.len(), "a stalled stream cannot be whole"),
    }
    // A client that stops sending its upload half way is answered (or cut off) soon after the
    // idle timeout too, and what it sent is released.
    let pins_before = region.kubo.pin_ls_recursive();
    let started = Instant::now();
    let mut conn = std::net::TcpStream::connect(region.node.host()).unwrap();
    use std::io::{Read, Write};
    let head = format!(
        "POST /v2/stall/c/blobs/uploads/?digest={} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        sha256_digest(&data),
        region.node.host(),
        data.len()
    );
    conn.write_all(head.as_bytes()).unwrap();
    conn.write_all(&data[..100_000]).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(25))).unwrap();
    let mut answer = [0u8; 12];
    let n = conn.read(&mut answer).unwrap_or(0);
    let took = started.elapsed();
    eprintln!("stalled upload answered after {took:?}: {:?}", String::from_utf8_lossy(&answer[..n]));
    assert!(took < Duration::from_secs(15), "the stalled upload was not ended by the node (took {took:?})");
    assert!(answer.starts_with(b"HTTP/1.1 400"), "a client that stops sending is told so (400), not 503");
    within(Duration::from_secs(10), Duration::from_millis(200), "the stalled upload's bytes released", || {
        region.kubo.pin_ls_recursive() == pins_before
    });
    // The node still serves everything else.
    let other = random_bytes(1000);
    upload_blob(&client(), &url, "stall/b", &sha256_digest(&other), &other).unwrap();
}

/// PATCH and PUT to upload ids that do not exist answer 404 and leave no session state in the
/// node's memory (the gauge counts the in-memory session states).
#[test]
fn unknown_upload_ids_leave_nothing_in_memory() {
    let region = TestRegion::start_with(bin(), |c| c.config.auth.anonymous = vec![Action::Pull, Action::Push]);
    let url = region.node.url();
    let c = client();
    for i in 0..200 {
        let id = format!("{:08x}-0000-4000-8000-{:012x}", i, i);
        let r = c.patch(format!("{url}/v2/ghost/blobs/uploads/{id}")).body("x").send().unwrap();
        assert_eq!(r.status().as_u16(), 404);
        let r = c
            .put(format!("{url}/v2/ghost/blobs/uploads/{id}?digest={}", sha256_digest(b"x")))
            .body("x")
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 404);
    }
    let metrics = c.get(region.node.metrics_url()).send().unwrap().text().unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("afreg_upload_sessions_in_memory "))
        .unwrap_or_else(|| panic!("no afreg_upload_sessions_in_memory gauge in /metrics"));
    assert_eq!(line, "afreg_upload_sessions_in_memory 0", "session states left in memory");
}

// ---- 6. A mixed soak ----------------------------------------------------------------------

#[derive(Default)]
struct Tally {
    ops: u64,
    acked: u64,
    unavailable: u64,
    retry_after: BTreeMap<String, u64>,
    other_refusals: Vec<String>,
    pull_failures: Vec<String>,
}

impl Tally {
    fn refused(&mut self, what: &str, r: &Refusal) {
        if r.status == 503 {
            self.unavailable += 1;
            *self.retry_after.entry(r.retry_after.clone().unwrap_or_else(|| "none".into())).or_default() += 1;
        } else {
            self.other_refusals.push(format!("{what}: {} {}", r.status, r.body.chars().take(200).collect::<String>()));
        }
    }
}

/// Concurrent pushes, tag moves, deletes and pulls on all three regions with GC at an
/// aggressive setting (`AFREG_SOAK_SECS`, default 40). Afterwards every acknowledged manifest
/// reads back byte-identical with all its blobs in every region, every region's pin records
/// match its Kubo, and every node's RSS is flat: sampled after the first quarter of the run
/// (pools and caches filling), the peak of the last third within 10% of the first third's.
#[test]
fn mixed_soak_loses_nothing() {
    let secs: u64 = std::env::var("AFREG_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(40);
    let run_for = Duration::from_secs(secs);
    let warm_up = run_for / 4;
    let cluster = open_cluster(|c| {
        c.config.cluster.gc_grace_secs = 2;
        c.config.cluster.gc_interval_secs = 1;
        c.config.kubo.gc_interval_secs = 2;
        c.config.cluster.pin_reconcile_secs = 3;
        // No Raft snapshot during the run: building one holds the whole replicated state in
        // memory for a moment (a peak that grows with the state, reported on its own), and
        // this soak looks for memory that the request, replication, pin and GC paths keep.
        c.config.cluster.snapshot_every = 1_000_000;
    });
    let urls: Vec<(String, String)> = cluster.regions.iter().map(|r| (r.name.clone(), r.url())).collect();
    let pids: Vec<(String, u32)> = cluster.regions.iter().map(|r| (r.name.clone(), r.node().pid())).collect();
    let tally = Arc::new(Mutex::new(Tally::default()));
    // What must exist at the end: (repo, image), acknowledged and not deleted by its writer.
    let live: Arc<Mutex<Vec<(String, Image)>>> = Arc::default();
    let hot_writes: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    // (when, each region's RSS in KiB)
    type RssSample = (Duration, Vec<u64>);
    let rss: Arc<Mutex<Vec<RssSample>>> = Arc::default();
    let started = Instant::now();
    std::thread::scope(|s| {
        // RSS is sampled once the nodes are warm (pools filled, statements prepared).
        s.spawn(|| {
            std::thread::sleep(warm_up);
            while started.elapsed() < run_for {
                let sample = pids.iter().map(|(_, p)| rss_kib(*p)).collect();
                rss.lock().unwrap().push((started.elapsed(), sample));
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        for w in 0..9usize {
            let (region, url) = urls[w % urls.len()].clone();
            let (tally, live, hot_writes) = (tally.clone(), live.clone(), hot_writes.clone());
            s.spawn(move || {
                let c = client();
                let repo = format!("soak/w{w}");
                let mut mine: Vec<Image> = Vec::new();
                let mut k = 0u64;
                while started.elapsed() < run_for {
                    k += 1;
                    let dice = (k * 7 + w as u64 * 3) % 20;
                    let mut t = Tally { ops: 1, ..Tally::default() };
                    if dice < 8 || mine.is_empty() {
                        let img = new_image(if k.is_multiple_of(5) { 1 << 20 } else { 32 * 1024 });
                        match testkit::oci::push(&c, &url, &repo, &format!("n{k}"), &img) {
                            Ok(()) => {
                                t.acked = 1;
                                mine.push(img);
                            }
                            Err(r) if r.status == 400 && r.body.contains("MANIFEST_BLOB_UNKNOWN") => {
                                t.refused("push", &r)
                            }
                            Err(r) => t.refused("push", &r),
                        }
                    } else if dice < 11 {
                        // Move a hot tag (shared by every writer) to one of this writer's images.
                        let img = &mine[k as usize % mine.len()];
                        let tag = format!("t{}", k % 3);
                        match testkit::oci::push(&c, &url, "soak/hot", &tag, img) {
                            Ok(()) => {
                                t.acked = 1;
                                hot_writes.lock().unwrap().insert(img.digest.clone());
                                live.lock().unwrap().push(("soak/hot".into(), img.clone()));
                            }
                            Err(r) => t.refused("tag move", &r),
                        }
                    } else if dice < 13 {
                        let img = mine.remove(k as usize % mine.len());
                        let r = c.delete(format!("{url}/v2/{repo}/manifests/{}", img.digest)).send();
                        match r {
                            Ok(r) if r.status().as_u16() == 202 => t.acked = 1,
                            Ok(r) => {
                                let refusal = Refusal {
                                    status: r.status().as_u16(),
                                    retry_after: r
                                        .headers()
                                        .get("retry-after")
                                        .and_then(|v| v.to_str().ok())
                                        .map(String::from),
                                    body: r.text().unwrap_or_default(),
                                };
                                t.refused("delete", &refusal);
                            }
                            Err(e) => t.other_refusals.push(format!("delete: {e}")),
                        }
                    } else {
                        let img = &mine[k as usize % mine.len()];
                        if let Err(e) = check_pulls(&c, &url, &repo, &img.digest, img) {
                            t.pull_failures.push(format!("{region}: {e}"));
                        }
                    }
                    let mut all = tally.lock().unwrap();
                    all.ops += t.ops;
                    all.acked += t.acked;
                    all.unavailable += t.unavailable;
                    for (k, v) in t.retry_after {
                        *all.retry_after.entry(k).or_default() += v;
                    }
                    all.other_refusals.extend(t.other_refusals);
                    all.pull_failures.extend(t.pull_failures);
                }
                live.lock().unwrap().extend(mine.into_iter().map(|img| (repo.clone(), img)));
            });
        }
    });

    // Converged: every region holds the same tag → digest map, within a bound.
    let tag_map = |r: &ClusterMember| {
        r.sql(
            "SELECT string_agg(rp.name || ':' || t.name || '=' || t.manifest_digest, ',' ORDER BY rp.name, t.name)
                 FROM tags t JOIN repositories rp ON rp.id = t.repository_id",
        )
    };
    let converged = within(Duration::from_secs(30), Duration::from_millis(200), "regions hold identical tags", || {
        let maps: BTreeSet<String> = cluster.regions.iter().map(tag_map).collect();
        maps.len() == 1
    });
    let c = client();
    let live = live.lock().unwrap().clone();
    let mut lost = Vec::new();
    for (repo, img) in &live {
        for (_, url) in &urls {
            if let Err(e) = check_pulls(&c, url, repo, &img.digest, img) {
                lost.push(e);
            }
        }
    }
    // The hot tags point at images that were written there.
    let hot: Vec<String> = cluster.region("us").sql(
        "SELECT t.manifest_digest FROM tags t JOIN repositories r ON r.id = t.repository_id WHERE r.name = 'soak/hot'",
    ).lines().map(str::to_owned).collect();
    let written = hot_writes.lock().unwrap().clone();
    let phantom: Vec<_> = hot.iter().filter(|d| !written.contains(*d)).collect();
    assert_pins_agree_within(&cluster, Duration::from_secs(60));

    let t = tally.lock().unwrap();
    let samples = rss.lock().unwrap().clone();
    let third = samples.len() / 3;
    eprintln!("soak {secs} s: {} operations, {} acknowledged, {} lost, {} answered 503 (Retry-After: {:?}), {} other refusals; \
               tags converged {converged:?} after the workload",
        t.ops, t.acked, lost.len(), t.unavailable, t.retry_after, t.other_refusals.len());
    let mut flat = Vec::new();
    for (i, (name, _)) in pids.iter().enumerate() {
        let peak = |s: &[(Duration, Vec<u64>)]| s.iter().map(|(_, v)| v[i]).max().unwrap_or(0);
        let (first, last, all) = (peak(&samples[..third]), peak(&samples[samples.len() - third..]), peak(&samples));
        let series: Vec<u64> = samples.iter().step_by((samples.len() / 10).max(1)).map(|(_, v)| v[i] / 1024).collect();
        eprintln!("  {name}: peak RSS {} MiB (after a {warm_up:?} warm-up: first third {} KiB, last third {} KiB; MiB over time {series:?})",
            all / 1024, first, last);
        if last as f64 > first as f64 * 1.10 {
            flat.push(format!("{name}: last third peaked at {last} KiB, first third at {first} KiB"));
        }
    }
    assert!(lost.is_empty(), "{} acknowledged manifests or blobs lost:\n{}", lost.len(), lost.join("\n"));
    assert!(t.pull_failures.is_empty(), "pulls failed during the soak:\n{}", t.pull_failures.join("\n"));
    assert!(phantom.is_empty(), "hot tags point at manifests nobody wrote there: {phantom:?}");
    let unexpected: Vec<_> = t.other_refusals.iter().filter(|r| !r.contains("MANIFEST_BLOB_UNKNOWN")).collect();
    assert!(unexpected.is_empty(), "unexpected refusals: {unexpected:?}");
    assert_eq!(t.unavailable, 0, "503s with every region healthy: {:?}", t.retry_after);
    assert!(t.acked > 50, "the soak acknowledged too little to mean anything: {}", t.acked);
    assert!(flat.is_empty(), "RSS grew: {flat:?}");
}
