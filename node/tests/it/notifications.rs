//! Notifications to real receivers (testkit/receivers/: an HTTP server that checks what
//! distribution's receivers rely on, and one built on the CloudEvents SDK from PyPI): events of
//! pushes, tag moves and deletes in three regions, the leader's region delivering; a receiver
//! that fails gets its events dead-lettered, and `afreg notifications retry` sends them once it
//! answers.

use std::time::Duration;

use afreg_node::config::notifications::{Endpoint, Format};
use serde_json::Value;
use testkit::cluster::TestCluster;
use testkit::oci::{client, delete_manifest, push, within};
use testkit::receiver::Receiver;
use testkit::Action;

use testkit::afreg_bin as bin;

const POLL: Duration = Duration::from_millis(100);
/// How long events may take to arrive once their writes were acknowledged.
const DELIVERY_BOUND: Duration = Duration::from_secs(30);

/// An endpoint for the manifest events (blob events are ignored, as distribution's users
/// often configure it; `blob_pushes_and_mounts_…` takes them).
fn endpoint(rx: &Receiver) -> Endpoint {
    Endpoint {
        name: "hooks".into(),
        url: rx.url(),
        timeout: "2s".into(),
        backoff: "200ms".into(),
        ignoredmediatypes: vec![BLOB.into()],
        ..Default::default()
    }
}

const BLOB: &str = "application/octet-stream";

/// The events about `digest` (a manifest's) the receiver took.
fn about<'a>(events: &'a [Value], digest: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["target"]["digest"] == digest).collect()
}

#[test]
fn a_push_a_tag_move_and_a_delete_in_three_regions_each_arrive_once_with_the_id_every_region_gives_them() {
    let rx = Receiver::start();
    let cluster = TestCluster::start(bin(), &["us", "eu", "asia"], |_, c| {
        c.config.auth.anonymous = Action::ALL.to_vec();
        c.config.notifications.endpoints = vec![endpoint(&rx)];
    });
    let c = client();
    let url = |name: &str| cluster.region(name).url();
    let repo = "hooks/app";
    let first = testkit::oci::new_image(64 * 1024);
    let second = testkit::oci::new_image(64 * 1024);
    push(&c, &url("us"), repo, "v1", &first).unwrap();
    // The tag moves to another manifest, pushed to eu.
    push(&c, &url("eu"), repo, "v1", &second).unwrap();
    // The first manifest is deleted through asia.
    let status = delete_manifest(&c, &url("asia"), repo, &first.digest).unwrap();
    assert_eq!(status, 202);

    within(DELIVERY_BOUND, POLL, "three events at the receiver", || rx.events().len() >= 3);
    // Nothing else is on its way: the cursor has passed them all.
    std::thread::sleep(Duration::from_secs(2));
    rx.assert_no_contract_errors();
    let events = rx.events();
    let pushes_of_first = about(&events, &first.digest);
    let pushes_of_second = about(&events, &second.digest);
    assert_eq!(events.len(), 3, "each event once: {events:#?}");
    assert_eq!(pushes_of_first.len(), 2, "the first manifest's push and delete: {events:#?}");
    assert_eq!(pushes_of_second.len(), 1, "the tag move: {events:#?}");

    let (push1, delete1) = (pushes_of_first[0], pushes_of_first[1]);
    let push2 = pushes_of_second[0];
    assert_eq!(
        (push1["action"].as_str(), push2["action"].as_str(), delete1["action"].as_str()),
        (Some("push"), Some("push"), Some("delete"))
    );
    for (e, region) in [(push1, "us"), (push2, "eu"), (delete1, "asia")] {
        assert_eq!(e["source"]["region"], region, "the region that took the request: {e}");
        assert_eq!(e["target"]["repository"], repo);
    }
    assert_eq!(push1["target"]["tag"], "v1");
    assert_eq!(push2["target"]["tag"], "v1");
    assert_eq!(push1["target"]["mediaType"], testkit::oci::OCI_MANIFEST);
    assert_eq!(push1["target"]["size"], first.manifest.len());
    assert!(push1["target"]["url"].as_str().unwrap().ends_with(&format!("/v2/{repo}/manifests/{}", first.digest)));
    // Events arrive in the order their entries were applied.
    let ids: Vec<i64> = [push1, push2, delete1].iter().map(|e| e["id"].as_str().unwrap().parse().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    // An event's id is its entry's log index: every region holds that entry, so whichever
    // delivers gives the event the same id.
    for r in &cluster.regions {
        for (id, digest) in ids.iter().zip([&first.digest, &second.digest, &first.digest]) {
            let names = r.sql(&format!(
                "SELECT payload::text LIKE '%with_origin.v1%{digest}%' FROM raft_log WHERE log_index = {id}"
            ));
            assert_eq!(names, "t", "{}: entry {id} is not the write of {digest}", r.name);
        }
    }
}

#[test]
fn a_receiver_that_always_fails_gets_its_events_dead_lettered_and_retry_sends_them_when_it_answers() {
    let rx = Receiver::start();
    rx.answer(500);
    let cluster = TestCluster::start(bin(), &["us"], |_, c| {
        c.config.auth.anonymous = Action::ALL.to_vec();
        c.config.notifications.endpoints =
            vec![Endpoint { max_attempts: 3, threshold: 1, backoff: "100ms".into(), ..endpoint(&rx) }];
    });
    let us = cluster.region("us");
    let c = client();
    let images = [testkit::oci::new_image(16 * 1024), testkit::oci::new_image(16 * 1024)];
    for (i, img) in images.iter().enumerate() {
        let started = std::time::Instant::now();
        push(&c, &us.url(), "hooks/dead", &format!("t{i}"), img).unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a failing receiver held a push up: {:?}",
            started.elapsed()
        );
    }
    within(DELIVERY_BOUND, POLL, "both events dead-lettered", || {
        us.sql("SELECT count(*) FROM notification_dead_letters WHERE endpoint = 'hooks'") == "2"
    });
    assert!(rx.requests() >= 6, "three attempts of each event: {} requests", rx.requests());
    assert!(rx.events().is_empty());
    let metrics = client().get(us.node().metrics_url()).send().unwrap().text().unwrap();
    let dead = metrics
        .lines()
        .find(|l| l.starts_with("afreg_notifications_total") && l.contains("dead_lettered"))
        .unwrap_or_else(|| panic!("no dead-letter counter in /metrics"));
    assert!(dead.ends_with(" 2"), "{dead}");
    // The backlog is bounded: nothing is pending once both went to the dead letters.
    assert_eq!(us.sql("SELECT count(*) FROM notification_events WHERE id > (SELECT delivered FROM notification_cursors WHERE endpoint = 'hooks')"), "0");

    let out = us.node().cli(&["notifications", "list"], None);
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{listed}{}", String::from_utf8_lossy(&out.stderr));
    assert!(listed.contains("2 dead letters") && listed.contains("hooks/dead"), "{listed}");

    rx.answer(200);
    let out = us.node().cli(&["notifications", "retry", "--endpoint", "hooks"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    within(DELIVERY_BOUND, POLL, "the dead letters delivered", || rx.events().len() >= 2);
    rx.assert_no_contract_errors();
    let got: Vec<String> = rx.events().iter().map(|e| e["target"]["digest"].as_str().unwrap().to_owned()).collect();
    for img in &images {
        assert_eq!(got.iter().filter(|d| **d == img.digest).count(), 1, "{got:?}");
    }
    within(DELIVERY_BOUND, POLL, "no dead letters left", || {
        us.sql("SELECT count(*) FROM notification_dead_letters") == "0"
    });
}

#[test]
fn a_receiver_built_on_the_cloudevents_sdk_takes_each_event_in_binary_mode() {
    let rx = Receiver::cloudevents();
    let cluster = TestCluster::start(bin(), &["us"], |_, c| {
        c.config.auth.anonymous = Action::ALL.to_vec();
        c.config.notifications.endpoints = vec![Endpoint { format: Format::Cloudevents, ..endpoint(&rx) }];
    });
    let us = cluster.region("us");
    let c = client();
    let img = testkit::oci::new_image(16 * 1024);
    push(&c, &us.url(), "hooks/ce", "v1", &img).unwrap();
    assert_eq!(delete_manifest(&c, &us.url(), "hooks/ce", "v1").unwrap(), 202);
    within(DELIVERY_BOUND, POLL, "two CloudEvents at the receiver", || rx.events().len() >= 2);
    rx.assert_no_contract_errors();
    let events = rx.events();
    assert_eq!(events.len(), 2, "{events:#?}");
    let (pushed, deleted) = (&events[0], &events[1]);
    assert_eq!(pushed["specversion"], "1.0");
    assert_eq!(pushed["type"], "io.afreg.manifest.pushed");
    assert_eq!(deleted["type"], "io.afreg.tag.deleted");
    assert_eq!(pushed["region"], "us");
    assert_eq!(pushed["source"], us.url().trim_end_matches('/'));
    assert_eq!(pushed["subject"], "hooks/ce");
    assert_eq!(pushed["data"]["digest"], img.digest);
    assert_eq!(pushed["data"]["tag"], "v1");
    assert_eq!(deleted["data"]["tag"], "v1");
    let id = |e: &Value| e["id"].as_str().unwrap().parse::<i64>().unwrap();
    assert!(id(pushed) < id(deleted));
}

#[test]
fn events_pending_when_the_node_is_killed_all_arrive_after_it_restarts() {
    let rx = Receiver::start();
    rx.answer(503);
    let mut cluster = TestCluster::start(bin(), &["us"], |_, c| {
        c.config.auth.anonymous = Action::ALL.to_vec();
        c.config.notifications.endpoints = vec![endpoint(&rx)];
    });
    let c = client();
    let images: Vec<_> = (0..3).map(|_| testkit::oci::new_image(8 * 1024)).collect();
    for (i, img) in images.iter().enumerate() {
        push(&c, &cluster.region("us").url(), "hooks/restart", &format!("t{i}"), img).unwrap();
    }
    within(DELIVERY_BOUND, POLL, "the receiver refusing them", || rx.requests() >= 2);
    // A crash, with every event still pending.
    let node = cluster.region_mut("us").node_mut();
    node.kill();
    rx.answer(200);
    node.restart();
    within(DELIVERY_BOUND, POLL, "the three events after the restart", || rx.events().len() >= 3);
    rx.assert_no_contract_errors();
    let got: Vec<String> = rx.events().iter().map(|e| e["target"]["digest"].as_str().unwrap().to_owned()).collect();
    for img in &images {
        assert!(got.contains(&img.digest), "{} lost across the restart: {got:?}", img.digest);
    }
}

#[test]
fn with_the_leader_killed_under_pushes_every_acknowledged_push_arrives_and_an_id_names_one_write() {
    let rx = Receiver::start();
    let mut cluster = TestCluster::start(bin(), &["us", "eu", "asia"], |_, c| {
        c.config.auth.anonymous = Action::ALL.to_vec();
        c.config.notifications.endpoints = vec![endpoint(&rx)];
    });
    let leader = cluster.wait_leader(Duration::from_secs(30));
    let survivor = cluster.regions.iter().find(|r| r.name != leader).unwrap().url();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pusher = {
        let (stop, survivor) = (stop.clone(), survivor.clone());
        std::thread::spawn(move || {
            let c = client();
            let (mut acked, mut tried) = (vec![], 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let img = testkit::oci::new_image(4 * 1024);
                tried += 1;
                match push(&c, &survivor, "hooks/failover", &format!("t{tried}"), &img) {
                    Ok(()) => acked.push(img.digest),
                    Err(e) => assert_eq!(e.status, 503, "a push during the failover: {e:?}"),
                }
            }
            (acked, tried)
        })
    };
    std::thread::sleep(Duration::from_secs(3));
    cluster.region_mut(&leader).node_mut().kill();
    let new_leader = cluster.wait_leader(Duration::from_secs(20));
    assert_ne!(new_leader, leader);
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (acked, tried) = pusher.join().unwrap();
    assert!(acked.len() >= 5, "only {} of {tried} pushes acknowledged", acked.len());

    let received = || -> std::collections::BTreeSet<String> {
        rx.events().iter().map(|e| e["target"]["digest"].as_str().unwrap_or_default().to_owned()).collect()
    };
    within(DELIVERY_BOUND, POLL, "every acknowledged push's event, from the new leader", || {
        let got = received();
        acked.iter().all(|d| got.contains(d))
    });
    rx.assert_no_contract_errors();
    // Repeats are allowed (a cursor write lost with its leader), but an id is one entry's,
    // whichever region delivered it: it never names two targets.
    let mut by_id = std::collections::BTreeMap::new();
    for e in rx.events() {
        let (id, digest) = (e["id"].as_str().unwrap().to_owned(), e["target"]["digest"].as_str().unwrap().to_owned());
        let seen = by_id.entry(id.clone()).or_insert_with(|| digest.clone());
        assert_eq!(*seen, digest, "event {id} named two targets");
    }
    eprintln!(
        "{} pushes tried, {} acknowledged, {} events received ({} distinct ids)",
        tried,
        acked.len(),
        rx.events().len(),
        by_id.len()
    );
}

#[test]
fn pull_events_come_from_the_region_that_served_them_and_only_to_the_endpoints_that_ask() {
    let (pulls, pushes) = (Receiver::start(), Receiver::start());
    let cluster = TestCluster::start(bin(), &["us", "eu"], |_, c| {
        c.config.auth.anonymous = Action::ALL.to_vec();
        c.config.notifications.endpoints = vec![
            Endpoint { name: "pulls".into(), pulls: true, ignoredmediatypes: vec![], ..endpoint(&pulls) },
            endpoint(&pushes),
        ];
    });
    let c = client();
    let (us, eu) = (cluster.region("us"), cluster.region("eu"));
    let repo = "hooks/pulled";
    let img = testkit::oci::new_image(32 * 1024);
    push(&c, &us.url(), repo, "v1", &img).unwrap();
    within(Duration::from_secs(30), POLL, "the tag in eu", || eu.sql("SELECT count(*) FROM tags") == "1");
    // eu serves two pulls by tag and one of the layer; us one by digest; a HEAD is no pull.
    for _ in 0..2 {
        assert_eq!(testkit::oci::get_manifest(&c, &eu.url(), repo, "v1", "").0, 200);
    }
    let layer = &img.blobs.iter().find(|(_, b)| b.len() == 32 * 1024).unwrap().0;
    assert_eq!(testkit::oci::get_blob(&c, &eu.url(), repo, layer).unwrap().0, 200);
    assert_eq!(testkit::oci::get_manifest(&c, &us.url(), repo, &img.digest, "").0, 200);
    let head = c.head(format!("{}/v2/{repo}/manifests/v1", us.url())).send().unwrap();
    assert_eq!(head.status(), 200);

    let pulled = |rx: &Receiver| -> Vec<Value> { rx.events().into_iter().filter(|e| e["action"] == "pull").collect() };
    within(DELIVERY_BOUND, POLL, "four pull events", || pulled(&pulls).len() >= 4);
    within(DELIVERY_BOUND, POLL, "the push at both", || {
        [&pulls, &pushes].iter().all(|rx| rx.events().iter().any(|e| e["action"] == "push"))
    });
    std::thread::sleep(Duration::from_secs(2));
    pulls.assert_no_contract_errors();
    let events = pulled(&pulls);
    assert_eq!(events.len(), 4, "each pull once: {events:#?}");
    assert!(pulled(&pushes).is_empty(), "an endpoint without `pulls` got pull events");
    let from = |region: &str| events.iter().filter(|e| e["source"]["region"] == region).collect::<Vec<_>>();
    let (in_eu, in_us) = (from("eu"), from("us"));
    assert_eq!((in_eu.len(), in_us.len()), (3, 1), "{events:#?}");
    for e in &in_eu {
        assert!(e["id"].as_str().unwrap().starts_with("eu-pull-"), "{e}");
    }
    let ids: std::collections::BTreeSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 4, "distinct ids: {ids:?}");
    let by_tag: Vec<_> = in_eu.iter().filter(|e| e["target"]["tag"] == "v1").collect();
    assert_eq!(by_tag.len(), 2);
    assert_eq!(by_tag[0]["target"]["digest"], img.digest);
    assert_eq!(by_tag[0]["target"]["mediaType"], testkit::oci::OCI_MANIFEST);
    assert_eq!(by_tag[0]["request"]["method"], "GET");
    let blob = in_eu.iter().find(|e| e["target"]["mediaType"] == "application/octet-stream").expect("the layer's pull");
    assert_eq!(blob["target"]["digest"], *layer);
    assert!(blob["target"]["url"].as_str().unwrap().ends_with(&format!("/v2/{repo}/blobs/{layer}")), "{blob}");
    assert_eq!(in_us[0]["target"]["digest"], img.digest);
    assert!(in_us[0]["id"].as_str().unwrap().starts_with("us-pull-"));
}

#[test]
fn blob_pushes_and_mounts_have_events_before_the_manifest_that_needs_them() {
    let rx = Receiver::start();
    let cluster = TestCluster::start(bin(), &["us"], |_, c| {
        c.config.auth.anonymous = Action::ALL.to_vec();
        c.config.notifications.endpoints = vec![Endpoint { ignoredmediatypes: vec![], ..endpoint(&rx) }];
    });
    let (c, us) = (client(), cluster.region("us"));
    let img = testkit::oci::new_image(24 * 1024);
    push(&c, &us.url(), "hooks/blobs", "v1", &img).unwrap();
    let (layer, layer_bytes) = img.blobs.iter().find(|(_, b)| b.len() == 24 * 1024).unwrap();
    let mounted =
        c.post(format!("{}/v2/hooks/mounted/blobs/uploads/?mount={layer}&from=hooks/blobs", us.url())).send().unwrap();
    assert_eq!(mounted.status(), 201);
    let wanted = img.blobs.len() + 2;
    within(DELIVERY_BOUND, POLL, "the blob pushes, the manifest push and the mount", || rx.events().len() >= wanted);
    std::thread::sleep(Duration::from_secs(2));
    rx.assert_no_contract_errors();
    let events = rx.events();
    assert_eq!(events.len(), wanted, "{events:#?}");
    let blob_pushes: Vec<_> =
        events.iter().filter(|e| e["action"] == "push" && e["target"]["mediaType"] == BLOB).collect();
    assert_eq!(blob_pushes.len(), img.blobs.len(), "{events:#?}");
    let layer_push = blob_pushes.iter().find(|e| e["target"]["digest"] == *layer).expect("the layer's push");
    assert_eq!(layer_push["target"]["size"], layer_bytes.len());
    assert!(layer_push["target"]["url"].as_str().unwrap().ends_with(&format!("/v2/hooks/blobs/blobs/{layer}")));
    let manifest = events.iter().find(|e| e["target"]["digest"] == img.digest).expect("the manifest's push");
    let mount = events.iter().find(|e| e["action"] == "mount").expect("the mount");
    assert_eq!(mount["target"]["repository"], "hooks/mounted");
    assert_eq!(mount["target"]["digest"], *layer);
    assert_eq!(mount["request"]["method"], "POST");
    let id = |e: &Value| e["id"].as_str().unwrap().parse::<i64>().unwrap();
    assert!(blob_pushes.iter().all(|b| id(b) < id(manifest)), "a manifest's blobs are pushed before it");
    assert!(id(manifest) < id(mount));
}

#[test]
fn a_receiver_down_for_a_minute_gets_everything_after_in_order_per_repository() {
    let mut rx = Receiver::start();
    let cluster = TestCluster::start(bin(), &["us", "eu", "asia"], |_, c| {
        c.config.auth.anonymous = Action::ALL.to_vec();
        // distribution's defaults: the breaker opens after ten failures and waits a second,
        // doubling, so the first attempt after the outage comes within about a minute.
        c.config.notifications.endpoints = vec![Endpoint { threshold: 10, backoff: "1s".into(), ..endpoint(&rx) }];
    });
    let c = client();
    rx.go_down();
    let down_at = std::time::Instant::now();
    let repos = ["hooks/outage-a", "hooks/outage-b"];
    let mut pushed: Vec<(String, String)> = vec![];
    let mut i = 0;
    while down_at.elapsed() < Duration::from_secs(60) {
        let img = testkit::oci::new_image(4 * 1024);
        let region = ["us", "eu", "asia"][i % 3];
        let repo = repos[i % 2];
        push(&c, &cluster.region(region).url(), repo, &format!("t{i}"), &img).unwrap();
        pushed.push((repo.to_owned(), img.digest));
        i += 1;
        std::thread::sleep(Duration::from_secs(3));
    }
    assert!(rx.requests() == 0 && rx.events().is_empty(), "the receiver was down");
    rx.come_back();
    // The breaker's wait is at most five minutes; after about a minute of failures it is well
    // under that.
    within(Duration::from_secs(180), POLL, "every event after the outage", || rx.events().len() >= pushed.len());
    std::thread::sleep(Duration::from_secs(2));
    rx.assert_no_contract_errors();
    let events = rx.events();
    for repo in repos {
        let sent: Vec<&str> = pushed.iter().filter(|(r, _)| r == repo).map(|(_, d)| d.as_str()).collect();
        let got: Vec<&str> = events
            .iter()
            .filter(|e| e["target"]["repository"] == repo)
            .map(|e| e["target"]["digest"].as_str().unwrap())
            .collect();
        assert_eq!(got, sent, "{repo}: every push, once, in the order acknowledged");
    }
}

#[test]
fn a_receiver_that_always_fails_under_a_thousand_events_leaves_the_backlog_and_the_node_memory_bounded() {
    const TAGS: usize = 1000;
    let rx = Receiver::start();
    rx.answer(500);
    let cluster = TestCluster::start(bin(), &["us"], |_, c| {
        c.config.auth.anonymous = Action::ALL.to_vec();
        // Given up on at the first failure, so that the dead letters keep pace with the pushes;
        // the breaker never opens (the threshold is past what this test sends).
        c.config.notifications.endpoints = vec![Endpoint { max_attempts: 1, threshold: 100_000, ..endpoint(&rx) }];
    });
    let us = cluster.region("us");
    let img = testkit::oci::new_image(4 * 1024);
    push(&client(), &us.url(), "hooks/flood", "t0", &img).unwrap();
    within(DELIVERY_BOUND, POLL, "the first event dead-lettered", || {
        us.sql("SELECT count(*) FROM notification_dead_letters") == "1"
    });
    let pid = us.node().pid();
    let before = testkit::tools::rss_kib(pid);

    // A thousand tag writes of the one manifest from four clients, each one event.
    let (url, manifest) = (us.url(), img.manifest.clone());
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (url, manifest) = (url.clone(), manifest.clone());
            std::thread::spawn(move || {
                let c = client();
                for i in (w..TAGS).step_by(4) {
                    testkit::oci::put_manifest(&c, &url, "hooks/flood", &format!("t{}", i + 1), &manifest).unwrap();
                }
            })
        })
        .collect();
    let mut peak_pending = 0i64;
    while !writers.iter().all(|w| w.is_finished()) {
        let pending: i64 = us
            .sql("SELECT count(*) FROM notification_events WHERE id > (SELECT delivered FROM notification_cursors WHERE endpoint = 'hooks')")
            .parse()
            .unwrap();
        peak_pending = peak_pending.max(pending);
        std::thread::sleep(Duration::from_millis(200));
    }
    for w in writers {
        w.join().unwrap();
    }
    within(Duration::from_secs(60), POLL, "every event dead-lettered", || {
        us.sql("SELECT count(*) FROM notification_dead_letters") == (TAGS + 1).to_string()
    });
    let after = testkit::tools::rss_kib(pid);
    eprintln!(
        "{} requests refused; pending at most {peak_pending}; node RSS {} KiB before, {} KiB after {TAGS} events",
        rx.requests(),
        before,
        after
    );
    assert!(rx.events().is_empty());
    assert!(rx.requests() > TAGS, "each event tried once: {} requests", rx.requests());
    assert_eq!(us.sql("SELECT count(*) FROM notification_events WHERE id > (SELECT delivered FROM notification_cursors WHERE endpoint = 'hooks')"), "0");
    // Events wait in Postgres, read 32 at a time, not in the node: its resident set does not
    // grow with them (the margin is the allocator's and the connection pool's noise).
    assert!(after < before + 24 * 1024, "node RSS grew from {before} KiB to {after} KiB over {TAGS} failing events");
}
