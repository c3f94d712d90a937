//! The seat holder killed during the workload: region us runs two processes behind its
//! inbound link (one internal port, shared), writers push through both of them and through
//! eu, and the process that holds us's Raft seat is SIGKILLed mid-run. Checked afterwards:
//! the other process holds the seat within the bound, the cluster's term did not change (us
//! was a follower), every acknowledged push reads back byte-identical from every region, and
//! the regions' logs agree.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use testkit::workload::{assert_acked_readable, assert_logs_agree, Workload};

use crate::common::{product_timings, Chaos};

const TAKEOVER_BOUND: Duration = Duration::from_secs(10);

#[test]
fn seat_holder_killed_during_the_workload() {
    // eu (id 1) initializes and leads; us (id 3) is a follower. 20 ms each way on every link.
    let mut chaos = Chaos::start(&["eu", "asia", "us"], Duration::from_millis(20), |name, cfg| {
        product_timings(cfg);
        if name == "us" {
            cfg.config.cluster.shared_listeners = true;
            cfg.config.cluster.process_name = "us-0".into();
        }
    });
    chaos.cluster.add_process("us", "us-1");
    let (leader, term) = chaos.wait_agreed(Duration::from_secs(60));
    assert_ne!(leader, "us", "us must be a follower (eu initializes the cluster)");
    let us = chaos.region("us");
    let (holder, epoch) = us.process(0).seat().expect("us reports its seat");
    let (h, other) = if holder == "us-0" { (0, 1) } else { (1, 0) };
    let other_name = format!("us-{other}");

    let via = vec![us.process(0).url(), us.process(1).url(), chaos.region("eu").url()];
    let started = Instant::now();
    let workload = Workload::start(&via, "seat/app", Duration::from_millis(50));
    std::thread::sleep(Duration::from_secs(4));
    let killed_at = started.elapsed();
    chaos.cluster.region_mut("us").process_mut(h).kill();
    let survivor = chaos.region("us").process(other);
    let (new_epoch, took) = survivor.wait_seat_holder(&other_name, TAKEOVER_BOUND);
    std::thread::sleep(Duration::from_secs(6));
    let history = workload.stop();

    let after: Vec<&testkit::workload::Ack> = history.acked.iter().filter(|a| a.at > killed_at + took).collect();
    eprintln!(
        "seat holder {holder} killed at {killed_at:?}; {other_name} held the seat {took:?} later (epoch {epoch} -> {new_epoch}); \
         {} acknowledged ({} after the takeover), {} refused, {} unknown",
        history.acked.len(),
        after.len(),
        history.refused,
        history.unknown
    );
    assert!(
        after.iter().any(|a| a.via == survivor.url()),
        "no push through the new holder was acknowledged after the takeover;\n{}",
        testkit::tools::grep_lines(&survivor.log(), &["seat", "raft_member", "request_failed", "\"status\":\"5"], 60)
    );
    let mut from: Vec<String> = ["eu", "asia"].iter().map(|n| chaos.region(n).url()).collect();
    from.push(survivor.url());
    let lag = assert_acked_readable(&history, &from, Duration::from_secs(60));
    let regions: Vec<&testkit::cluster::ClusterMember> = chaos.cluster.regions.iter().collect();
    let compared = assert_logs_agree(&regions);
    let terms = chaos.cluster.terms();
    assert!(terms.iter().all(|(_, t)| *t == term), "the term changed over the takeover: {terms:?} (was {term})");
    eprintln!(
        "checkers: lost 0 of {} acknowledged (read back everywhere within {lag:?}), logs agree on {compared} shared indexes, term {term} throughout",
        history.acked.len()
    );
}

/// The seat holder's own Postgres session goes silent (a half-open connection: a relay in front
/// of Postgres that stops forwarding, while every other connection of the process stays up),
/// right after the holder reported itself, so the statement it sends next is never answered.
/// The other process takes the seat within the bound; the old holder steps down while the
/// silence lasts and goes on serving (its pushes are relayed to the new holder, not refused with
/// 503 until a restart), and once its session's path is back it is a candidate again.
#[test]
fn seat_session_blackholed_during_the_workload() {
    let link: Mutex<Option<chaos_tests::Link>> = Mutex::default();
    let mut chaos = Chaos::start(&["eu", "asia", "us"], Duration::from_millis(20), |name, cfg| {
        product_timings(cfg);
        if name == "us" {
            cfg.config.cluster.shared_listeners = true;
            cfg.config.cluster.process_name = "us-0".into();
            // us-0's seat session, and only it, through a link in front of us's Postgres.
            let db = cfg.config.database.url.clone();
            // postgres://postgres@127.0.0.1:PORT/afreg
            let port = db.rsplit(':').next().and_then(|p| p.split('/').next()).unwrap();
            let pg_addr = format!("127.0.0.1:{port}");
            let l = chaos_tests::Link::start(pg_addr.parse().unwrap());
            cfg.config.database.seat_url = Some(db.replace(&pg_addr, &l.addr().to_string()));
            *link.lock().unwrap() = Some(l);
        }
    });
    let link = link.into_inner().unwrap().expect("us was configured");
    let mut second = chaos.cluster.process_config("us", "us-1");
    second.config.database.seat_url = None;
    let node = testkit::Node::start(chaos.cluster.bin(), second);
    chaos.cluster.region_mut("us").more.push(node);
    chaos.wait_agreed(Duration::from_secs(60));
    let us = chaos.region("us");
    let (first, second) = (us.process(0), us.process(1));
    first.wait_seat_holder("us-0", TAKEOVER_BOUND);

    let via = vec![first.url(), second.url(), chaos.region("eu").url()];
    let started = Instant::now();
    let workload = Workload::start(&via, "seat/silent", Duration::from_millis(50));
    std::thread::sleep(Duration::from_secs(3));
    // The holder reports itself every 12 renewals (2 leases); its report's parameters name it.
    link.blackhole_after(b"us-0");
    let armed = Instant::now();
    while !link.is_blackholed() {
        assert!(armed.elapsed() < Duration::from_secs(15), "us-0 never reported itself on its seat session");
        std::thread::sleep(Duration::from_millis(20));
    }
    let silenced_at = started.elapsed();
    let (new_epoch, took) = second.wait_seat_holder("us-1", TAKEOVER_BOUND);
    // The silence goes on: the old holder must step down without its session coming back.
    std::thread::sleep(Duration::from_secs(8));
    let history = workload.stop();
    link.set_blackhole(false);

    let after: Vec<&testkit::workload::Ack> = history.acked.iter().filter(|a| a.at > silenced_at + took).collect();
    eprintln!(
        "us-0's seat session silenced at {silenced_at:?}; us-1 held the seat {took:?} later (epoch {new_epoch}); \
         {} acknowledged ({} after the takeover), {} refused, {} unknown",
        history.acked.len(),
        after.len(),
        history.refused,
        history.unknown
    );
    assert!(took < TAKEOVER_BOUND);
    assert!(
        after.iter().any(|a| a.via == first.url()),
        "no push through the old holder was acknowledged after the takeover: it did not step down;\n{}",
        testkit::tools::grep_lines(&first.log(), &["seat", "raft_member", "request_failed", "\"status\":\"5"], 60)
    );
    assert!(first.log().contains("\"event\":\"seat_lost\""), "us-0 never logged that it stepped down");
    // A candidate again once its session's path is back: it reports itself to the region.
    let back = Instant::now();
    loop {
        let seen = second.local_status().and_then(|s| {
            s["seat"]["processes"].as_array()?.iter().find(|p| p["name"] == "us-0")?["seen_secs_ago"].as_f64()
        });
        if seen.is_some_and(|s| s < 2.0) {
            break;
        }
        assert!(back.elapsed() < TAKEOVER_BOUND, "us-0 stopped taking part in the seat;\n{}", first.log_tail(40));
        std::thread::sleep(Duration::from_millis(200));
    }
    let from: Vec<String> = ["eu", "asia"].iter().map(|n| chaos.region(n).url()).chain([second.url()]).collect();
    assert_acked_readable(&history, &from, Duration::from_secs(60));
}
