//! The multi-region cluster, end to end: three (or four) regions, each a real Postgres, a real
//! Kubo and a real `afreg serve`, joined by Raft over their internal endpoints. Processes are
//! killed and stopped for real.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::cluster::{ClusterMember, TestCluster};
use testkit::oci::{assert_pulls, cids_of, client, get_manifest, push, within, Image, OCI_MANIFEST};
use testkit::{random_bytes, run_ok, run_stdout, sha256_digest, tool, Action};

/// How long every region may take to pin every CID of a pushed image.
const PIN_BOUND: Duration = Duration::from_secs(30);
/// How long pushes may fail after the leader's process is killed.
const FAILOVER_BOUND: Duration = Duration::from_secs(15);

use testkit::afreg_bin as bin;

/// How often the tests poll for a condition.
const POLL: Duration = Duration::from_millis(100);

/// Regions where anyone may pull, push and delete (auth on, anonymous grants).
fn open_cluster(names: &[&str]) -> TestCluster {
    TestCluster::start(bin(), names, |_, c| c.config.auth.anonymous = Action::ALL.to_vec())
}

/// The images these tests push: a small config and a 300 KiB layer.
fn new_image() -> Image {
    testkit::oci::new_image(300 * 1024)
}

fn assert_all_pinned_within(cluster: &TestCluster, cids: &[String], bound: Duration) -> Duration {
    let mut slowest = Duration::ZERO;
    for r in cluster.regions.iter().filter(|r| r.node().is_running()) {
        let took = within(bound, POLL, &format!("every CID pinned in {}'s Kubo", r.name), || {
            let pinned = r.kubo().pin_ls_recursive();
            cids.iter().all(|c| pinned.contains(c))
        });
        slowest = slowest.max(took);
    }
    slowest
}

#[test]
fn crane_push_to_us_is_pulled_from_eu_and_asia_and_pinned_everywhere() {
    let cluster = TestCluster::start(bin(), &["us", "eu", "asia"], |_, c| c.config.auth.anonymous = vec![]);
    let (user, password) = ("carol", "cluster-passw0rd");
    // Created once, through us; replicated to every region.
    cluster.region("us").node().add_user(user, password);

    let home = tempfile::Builder::new().prefix("afreg-crane-home-").tempdir().unwrap();
    let crane = || {
        let mut c = std::process::Command::new(tool("crane"));
        c.env("HOME", home.path()).env("DOCKER_CONFIG", home.path()).env("NO_PROXY", "*");
        c
    };
    for r in &cluster.regions {
        run_ok(crane().args(["auth", "login", &r.host(), "-u", user, "-p", password]));
    }
    let layer_dir = home.path().join("rootfs");
    std::fs::create_dir_all(&layer_dir).unwrap();
    std::fs::write(layer_dir.join("big.bin"), random_bytes(3 * 1024 * 1024 + 17)).unwrap();
    let tar = home.path().join("layer.tar");
    run_ok(std::process::Command::new("tar").arg("-cf").arg(&tar).arg("-C").arg(&layer_dir).arg("."));

    let us = cluster.region("us");
    let reference = format!("{}/team/app:v1", us.host());
    run_ok(crane().arg("append").arg("-f").arg(&tar).arg("-t").arg(&reference));
    let digest = run_stdout(crane().args(["digest", &reference]));
    let manifest_bytes = crane().args(["manifest", &reference]).output().unwrap().stdout;
    assert_eq!(sha256_digest(&manifest_bytes), digest);
    let manifest: Value = serde_json::from_slice(&manifest_bytes).unwrap();
    let mut digests: Vec<String> = vec![manifest["config"]["digest"].as_str().unwrap().to_owned()];
    digests.extend(manifest["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_owned()));

    for name in ["eu", "asia"] {
        let r = cluster.region(name);
        let remote = format!("{}/team/app:v1", r.host());
        // The tag may trail the leader by the replication lag on a follower.
        within(Duration::from_secs(10), POLL, &format!("tag visible in {name}"), || {
            crane().args(["digest", &remote]).output().is_ok_and(|o| o.status.success())
        });
        let layout = home.path().join(format!("pulled-{name}"));
        run_ok(crane().args(["pull", "--format=oci", &remote]).arg(&layout));
        let pulled_manifest =
            std::fs::read(layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))).unwrap();
        assert_eq!(pulled_manifest, manifest_bytes, "manifest bytes pulled from {name}");
        for d in &digests {
            let bytes = std::fs::read(layout.join("blobs/sha256").join(d.trim_start_matches("sha256:"))).unwrap();
            assert_eq!(sha256_digest(&bytes), *d, "blob {d} pulled from {name} does not hash to its digest");
        }
    }

    // Every CID pinned in every region's Kubo, within the bound.
    let refs: Vec<&str> = digests.iter().map(|s| s.as_str()).collect();
    let cids = cids_of(us, &refs);
    for r in &cluster.regions {
        assert_eq!(cids_of(r, &refs), cids, "{} records other CIDs", r.name);
    }
    let took = assert_all_pinned_within(&cluster, &cids, PIN_BOUND);
    eprintln!("every CID pinned in every region after {took:?} (bound {PIN_BOUND:?})");

    // A token issued by us is accepted by asia (the verification keys are replicated).
    let c = client();
    let token: Value = c
        .get(format!("{}/token?service=afreg&scope=repository:team/app:pull", us.url()))
        .basic_auth(user, Some(password))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let token = token["token"].as_str().unwrap();
    let r = c
        .get(format!("{}/v2/team/app/manifests/v1", cluster.region("asia").url()))
        .header("accept", OCI_MANIFEST)
        .bearer_auth(token)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "a token from us in asia");

    // /status reports every region, and the pin backlogs drained.
    let status: Value = c.get(format!("{}/status", us.url())).send().unwrap().json().unwrap();
    let regions = status["regions"].as_array().unwrap();
    assert_eq!(regions.len(), 3, "{status}");
    for r in regions {
        assert_eq!(r["reachable"], true, "{status}");
        assert_eq!(r["pin_backlog"], 0, "{status}");
        assert!(r["term"].as_u64().unwrap() >= 1, "{status}");
    }
    let leaders = regions.iter().filter(|r| r["role"] == "leader").count();
    assert_eq!(leaders, 1, "{status}");
    // Bytes replicated: the two regions that fetched the blobs report them.
    let fetched: i64 =
        regions.iter().filter(|r| r["name"] != "us").map(|r| r["replicated_bytes"].as_i64().unwrap()).sum();
    let sizes: i64 = digests
        .iter()
        .map(|d| us.sql(&format!("SELECT size FROM blobs WHERE digest = '{d}'")).parse::<i64>().unwrap())
        .sum();
    assert_eq!(fetched, 2 * sizes, "{status}");
}

#[test]
fn a_push_to_a_follower_is_forwarded_and_reads_back_at_once() {
    let cluster = open_cluster(&["us", "eu", "asia"]);
    let leader = cluster.wait_leader(Duration::from_secs(30));
    let followers: Vec<&ClusterMember> = cluster.regions.iter().filter(|r| r.name != leader).collect();
    let c = client();
    for f in &followers {
        let img = new_image();
        let repo = format!("fwd/{}", f.name);
        push(&c, &f.url(), &repo, "v1", &img).unwrap_or_else(|e| panic!("push to follower {}: {e:?}", f.name));
        // Read back from the same follower at once: the write was applied there before the 201.
        let (status, body) = get_manifest(&c, &f.url(), &repo, "v1", "");
        assert_eq!(status, 200, "read-your-write on follower {}", f.name);
        assert_eq!(body, img.manifest);
        assert_pulls(&c, &f.url(), &repo, "v1", &img);
        // The blob record names the follower as the origin of the bytes.
        let origin = f.sql(&format!("SELECT origin_region FROM blobs WHERE digest = '{}'", img.blobs[1].0));
        assert_eq!(origin, f.id.to_string());
        // A linearizable read in any other region sees it without waiting.
        for other in cluster.regions.iter().filter(|r| r.name != f.name) {
            let (status, body) = get_manifest(&c, &other.url(), &repo, "v1", "?consistency=linearizable");
            assert_eq!(status, 200, "linearizable read in {}", other.name);
            assert_eq!(body, img.manifest);
        }
    }
}

#[test]
fn killing_the_leader_elects_another_and_the_old_one_catches_up() {
    let mut cluster = open_cluster(&["us", "eu", "asia"]);
    let c = client();
    let before = new_image();
    let leader = cluster.wait_leader(Duration::from_secs(30));
    push(&c, &cluster.region(&leader).url(), "lead/app", "before", &before).unwrap();

    cluster.region_mut(&leader).node_mut().kill();
    let killed = Instant::now();
    let survivor = cluster.regions.iter().find(|r| r.name != leader).unwrap().url();
    let during = new_image();
    let mut last = None;
    let took = within(FAILOVER_BOUND, POLL, "a push succeeds after the leader was killed", || {
        match push(&c, &survivor, "lead/app", "after", &during) {
            Ok(()) => true,
            Err(e) => {
                // Only "unavailable, retry" is acceptable while the cluster elects.
                assert_eq!(e.status, 503, "push during failover: {e:?}");
                last = Some(e);
                false
            }
        }
    });
    eprintln!(
        "pushes succeeded again {took:?} after the leader was killed (bound {FAILOVER_BOUND:?}); last refusal {last:?}"
    );
    let new_leader = cluster.wait_leader(Duration::from_secs(10));
    assert_ne!(new_leader, leader);
    assert!(killed.elapsed() >= took);

    // The old leader restarts, rejoins as a follower and catches up from its peers.
    cluster.region_mut(&leader).node_mut().restart();
    let old = cluster.region(&leader);
    within(Duration::from_secs(30), POLL, "the old leader serves the write made while it was down", || {
        get_manifest(&c, &old.url(), "lead/app", "after", "").0 == 200
    });
    assert_pulls(&c, &old.url(), "lead/app", "after", &during);
    assert_pulls(&c, &old.url(), "lead/app", "before", &before);
    let s = old.local_status().unwrap();
    assert_ne!(s["raft"]["role"], "leader", "{s}");
}

#[test]
fn losing_a_region_keeps_the_others_serving_and_a_lone_region_still_serves_pulls() {
    let mut cluster = open_cluster(&["us", "eu", "asia"]);
    let c = client();
    let first = new_image();
    push(&c, &cluster.region("us").url(), "loss/app", "first", &first).unwrap();
    let digests: Vec<&str> = first.blobs.iter().map(|b| b.0.as_str()).collect();
    let cids = cids_of(cluster.region("us"), &digests);
    assert_all_pinned_within(&cluster, &cids, PIN_BOUND);

    // asia goes away entirely: node, Kubo and Postgres.
    {
        let asia = cluster.region_mut("asia");
        asia.node_mut().stop();
        asia.region.kubo.stop();
        asia.region.pg.stop();
    }
    let second = new_image();
    let us = cluster.region("us").url();
    within(FAILOVER_BOUND, POLL, "a push with one region down", || {
        push(&c, &us, "loss/app", "second", &second).is_ok()
    });
    let eu = cluster.region("eu").url();
    within(Duration::from_secs(10), POLL, "eu serves the new tag", || {
        get_manifest(&c, &eu, "loss/app", "second", "").0 == 200
    });
    assert_pulls(&c, &eu, "loss/app", "second", &second);
    assert_pulls(&c, &eu, "loss/app", "first", &first);

    // asia comes back and catches up, bytes included.
    {
        let asia = cluster.region_mut("asia");
        asia.region.pg.start_again();
        asia.region.kubo.start_again();
        asia.node_mut().restart();
    }
    let asia_url = cluster.region("asia").url();
    within(Duration::from_secs(30), POLL, "asia catches up", || {
        get_manifest(&c, &asia_url, "loss/app", "second", "").0 == 200
    });
    let digests2: Vec<&str> = second.blobs.iter().map(|b| b.0.as_str()).collect();
    let cids2 = cids_of(cluster.region("us"), &digests2);
    let asia_kubo_pinned = |cids: &[String]| {
        let pinned = cluster.region("asia").kubo().pin_ls_recursive();
        cids.iter().all(|c| pinned.contains(c))
    };
    within(PIN_BOUND, POLL, "asia pins what it missed", || asia_kubo_pinned(&cids2) && asia_kubo_pinned(&cids));

    // Now the other two go away entirely; asia alone still serves pulls from its own
    // Postgres and Kubo, and refuses writes promptly (no quorum).
    for name in ["us", "eu"] {
        let r = cluster.region_mut(name);
        r.node_mut().stop();
        r.region.kubo.stop();
        r.region.pg.stop();
    }
    assert_pulls(&c, &asia_url, "loss/app", "first", &first);
    assert_pulls(&c, &asia_url, "loss/app", "second", &second);
    let started = Instant::now();
    let refused = push(&c, &asia_url, "loss/app", "alone", &new_image()).expect_err("a push without quorum");
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(refused.body.contains("UNAVAILABLE"), "{refused:?}");
    assert!(started.elapsed() < Duration::from_secs(20), "refusing a push without quorum took {:?}", started.elapsed());
    assert_eq!(get_manifest(&c, &asia_url, "loss/app", "alone", "").0, 404, "nothing of the refused push is visible");
}

#[test]
fn a_fourth_region_joins_and_leaves_under_load_without_losing_a_write() {
    let cluster = open_cluster(&["us", "eu", "asia"]);
    let us = cluster.region("us");
    let acked: Arc<Mutex<Vec<(String, Image)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (acked, stop, url) = (acked.clone(), stop.clone(), us.url());
        std::thread::spawn(move || {
            let c = client();
            let mut i = 0;
            let mut refused = 0;
            while !stop.load(Ordering::Relaxed) {
                let img = new_image();
                let tag = format!("t{i}");
                match push(&c, &url, "load/app", &tag, &img) {
                    Ok(()) => acked.lock().unwrap().push((tag, img)),
                    Err(e) => {
                        assert_eq!(e.status, 503, "push under membership change: {e:?}");
                        refused += 1;
                    }
                }
                i += 1;
            }
            refused
        })
    };
    std::thread::sleep(Duration::from_secs(2));

    // A fourth region starts empty, waiting to be joined; the operator adds it.
    let ap = cluster.start_joining_region(4, "ap", |_| {});
    let out = us.node().cli(
        &[
            "region",
            "add",
            "--id",
            "4",
            "--name",
            "ap",
            "--internal-url",
            &ap.node().internal_url(),
            "--api-url",
            &ap.url(),
        ],
        None,
    );
    assert!(
        out.status.success(),
        "region add: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Promoted only after catching up: when `region add` returns, ap's own Postgres already
    // holds the log up to the entry that made it a learner. (ap's openraft metrics are not
    // the witness: they are published asynchronously and may trail its durable log.)
    let learner_entry: u64 = us
        .sql("SELECT min(log_index) FROM raft_log WHERE payload->'Membership'->'nodes' ? '4'")
        .parse()
        .expect("us's log holds the membership entry that added ap");
    let held: u64 = ap.sql("SELECT coalesce(max(log_index), 0) FROM raft_log").parse().unwrap();
    assert!(
        learner_entry > 10 && held >= learner_entry,
        "ap was promoted holding its log only up to {held}, before the entry {learner_entry} that added it\nstatus: {:?}\n{}",
        ap.local_status(),
        ap.node().log_tail(40)
    );
    within(Duration::from_secs(10), POLL, "ap sees itself as a voter", || {
        ap.local_status().is_some_and(|s| s["raft"]["voters"].as_array().unwrap().iter().any(|v| v == 4))
    });
    std::thread::sleep(Duration::from_secs(2));
    // The new region serves what was acknowledged before and during its join.
    let c = client();
    let sample: Vec<(String, Vec<u8>)> =
        acked.lock().unwrap().iter().take(3).map(|(t, i)| (t.clone(), i.manifest.clone())).collect();
    assert!(!sample.is_empty(), "no push was acknowledged under load");
    for (tag, manifest) in &sample {
        within(Duration::from_secs(20), POLL, &format!("ap serves {tag}"), || {
            get_manifest(&c, &ap.url(), "load/app", tag, "").1 == *manifest
        });
    }

    // A token ap issued is honoured by the other regions while ap is a member...
    let ap_token = c
        .get(format!("{}/token?service=afreg&scope=repository:load/app:pull", ap.url()))
        .send()
        .unwrap()
        .json::<serde_json::Value>()
        .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (tag0, _) = &sample[0];
    let with_ap_token =
        |url: &str| c.get(format!("{url}/v2/load/app/manifests/{tag0}")).bearer_auth(&ap_token).send().unwrap();
    within(Duration::from_secs(10), POLL, "us honours a token ap issued", || with_ap_token(&us.url()).status() == 200);

    let out = us.node().cli(&["region", "remove", "--id", "4"], None);
    assert!(out.status.success(), "region remove: {}", String::from_utf8_lossy(&out.stderr));
    // ...and refused once ap is removed (its key leaves every region's trust).
    for r in &cluster.regions {
        within(Duration::from_secs(10), POLL, &format!("{} refuses the removed region's token", r.name), || {
            let resp = with_ap_token(&r.url());
            resp.status() == 401
                && resp.headers().get("www-authenticate").is_some_and(|h| h.to_str().unwrap().contains("invalid_token"))
        });
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let refused = load.join().expect("load thread");
    let acked = acked.lock().unwrap();
    eprintln!("{} pushes acknowledged under load, {refused} refused with 503", acked.len());

    // No acknowledged write is lost, in any remaining region.
    for r in &cluster.regions {
        within(Duration::from_secs(20), POLL, &format!("{} applied every acknowledged push", r.name), || {
            let (_, last) = acked.last().unwrap();
            get_manifest(&c, &r.url(), "load/app", &acked.last().unwrap().0, "").1 == last.manifest
        });
        for (tag, img) in acked.iter() {
            let (status, body) = get_manifest(&c, &r.url(), "load/app", tag, "");
            assert_eq!(status, 200, "acknowledged {tag} missing in {}", r.name);
            assert_eq!(body, img.manifest, "{tag} in {}", r.name);
        }
    }
    // Three voters again, and id 4 is retired for good.
    let s = us.local_status().unwrap();
    let voters: Vec<u64> = s["raft"]["voters"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(voters, vec![1, 2, 3], "{s}");
    assert_eq!(us.sql("SELECT removed FROM regions WHERE id = 4"), "t");
    let again = us.node().cli(
        &[
            "region",
            "add",
            "--id",
            "4",
            "--name",
            "ap2",
            "--internal-url",
            &ap.node().internal_url(),
            "--api-url",
            &ap.url(),
        ],
        None,
    );
    assert!(!again.status.success(), "re-using a retired region id must be refused");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("never reused"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

#[test]
fn internal_endpoints_need_the_cluster_secret() {
    let cluster = open_cluster(&["us", "eu", "asia"]);
    let c = client();
    let us = cluster.region("us");
    let cmd = json!({"op": "remove_user.v1", "name": "nobody"});
    for auth in [None, Some("Bearer wrong-secret-wrong-secret")] {
        let mut req = c.post(format!("{}/internal/write", us.node().internal_url())).json(&cmd);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        assert_eq!(req.send().unwrap().status().as_u16(), 401, "{auth:?}");
    }
    for path in ["/internal/raft/vote", "/internal/raft/append", "/internal/admin"] {
        let r = c.post(format!("{}{path}", us.node().internal_url())).json(&json!({})).send().unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path}");
    }
    // And they are not on the public port at all.
    let r = c.post(format!("{}/internal/write", us.url())).json(&cmd).send().unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let r = c
        .post(format!("{}/internal/write", us.node().internal_url()))
        .bearer_auth(testkit::cluster::TEST_SECRET)
        .json(&cmd)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "with the secret");
}

#[test]
fn deleted_and_collected_blobs_are_unpinned_in_every_region() {
    let cluster = TestCluster::start(bin(), &["us", "eu", "asia"], |_, c| {
        c.config.auth.anonymous = Action::ALL.to_vec();
        // Collect blobs unreferenced for 3 s, checking every second.
        c.config.cluster.gc_grace_secs = 3;
        c.config.cluster.gc_interval_secs = 1;
    });
    let c = client();
    let (us, eu, asia) = (cluster.region("us"), cluster.region("eu"), cluster.region("asia"));
    let kept = new_image();
    push(&c, &us.url(), "gc/app", "kept", &kept).unwrap();

    // A blob deleted through asia is unpinned in every region.
    let deleted = random_bytes(200 * 1024);
    let d = sha256_digest(&deleted);
    let r = c.post(format!("{}/v2/gc/app/blobs/uploads/?digest={d}", us.url())).body(deleted.clone()).send().unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let d_cid = cids_of(us, &[&d]).remove(0);
    assert_all_pinned_within(&cluster, std::slice::from_ref(&d_cid), PIN_BOUND);
    let r = c.delete(format!("{}/v2/gc/app/blobs/{d}", asia.url())).send().unwrap();
    assert_eq!(r.status().as_u16(), 202, "DELETE blob through asia");
    for r in &cluster.regions {
        within(Duration::from_secs(20), POLL, &format!("deleted blob unpinned in {}", r.name), || {
            !r.kubo().pin_ls_recursive().contains(&d_cid)
        });
        assert_eq!(r.sql(&format!("SELECT count(*) FROM blobs WHERE digest = '{d}'")), "0");
    }

    // A blob no manifest references is collected after the grace period, everywhere.
    let lonely = random_bytes(100 * 1024);
    let l = sha256_digest(&lonely);
    let r = c.post(format!("{}/v2/gc/lonely/blobs/uploads/?digest={l}", eu.url())).body(lonely).send().unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let l_cid = cids_of(eu, &[&l]).remove(0);
    for r in &cluster.regions {
        within(
            Duration::from_secs(30),
            POLL,
            &format!("unreferenced blob collected and unpinned in {}", r.name),
            || {
                r.sql(&format!("SELECT count(*) FROM blobs WHERE digest = '{l}'")) == "0"
                    && !r.kubo().pin_ls_recursive().contains(&l_cid)
            },
        );
    }
    // What a manifest references outlives the grace period, pinned and served everywhere.
    let refs: Vec<&str> = kept.blobs.iter().map(|b| b.0.as_str()).collect();
    let kept_cids = cids_of(us, &refs);
    assert_all_pinned_within(&cluster, &kept_cids, Duration::from_secs(1));
    for r in &cluster.regions {
        assert_pulls(&c, &r.url(), "gc/app", "kept", &kept);
    }
}

#[test]
fn status_reports_every_region_and_metrics_carry_the_raft_figures() {
    let cluster = open_cluster(&["us", "eu", "asia"]);
    let us = cluster.region("us");
    let out = us.node().cli(&["status", "--url", &us.url()], None);
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "afreg status: {table}{}", String::from_utf8_lossy(&out.stderr));
    assert!(table.starts_with("ID"), "{table}");
    for r in &cluster.regions {
        assert!(table.lines().any(|l| l.contains(&r.name) && l.contains(&r.url())), "{} missing:\n{table}", r.name);
    }
    assert_eq!(table.lines().filter(|l| l.contains(" leader ")).count(), 1, "{table}");
    within(Duration::from_secs(5), POLL, "raft gauges exported", || {
        let m = client().get(us.node().metrics_url()).send().unwrap().text().unwrap();
        ["afreg_raft_term", "afreg_raft_is_leader", "afreg_raft_last_applied", "afreg_pin_backlog"]
            .iter()
            .all(|k| m.contains(k))
    });
}

#[test]
fn a_region_that_could_not_pin_yet_still_serves_the_blob_from_its_peers() {
    // asia's pins always time out at once, so it never holds the blob pinned.
    let cluster = TestCluster::start(bin(), &["us", "eu", "asia"], |name, c| {
        c.config.auth.anonymous = Action::ALL.to_vec();
        if name == "asia" {
            c.config.kubo.pin_timeout_secs = 0;
        }
    });
    let c = client();
    let img = new_image();
    push(&c, &cluster.region("us").url(), "unpinned/app", "v1", &img).unwrap();
    let asia = cluster.region("asia");
    let layer = &img.blobs[1].0;
    let cid = cids_of(cluster.region("us"), &[layer]).remove(0);
    within(Duration::from_secs(20), POLL, "asia records its failed pin attempt", || {
        asia.sql(&format!("SELECT state FROM pins WHERE cid = '{cid}'")) == "failed"
    });
    assert!(!asia.kubo().pin_ls_recursive().contains(&cid), "asia pinned it after all");
    let backlog: Value = asia.local_status().unwrap();
    assert!(backlog["pins"]["backlog"].as_i64().unwrap() >= 1, "{backlog}");
    assert!(backlog["pins"]["failing"].as_i64().unwrap() >= 1, "{backlog}");
    // Served anyway: asia's Kubo fetches the blocks from its peers as it streams.
    assert_pulls(&c, &asia.url(), "unpinned/app", "v1", &img);
    let r = c
        .get(format!("{}/v2/unpinned/app/blobs/{layer}", asia.url()))
        .header("range", "bytes=1000-1999")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 206);
    assert_eq!(r.bytes().unwrap().as_ref(), &img.blobs[1].1[1000..2000]);
}
