//! The seat holder killed during the workload: region us runs two processes behind its
//! inbound link (one internal port, shared), writers push through both of them and through
//! eu, and the process that holds us's Raft seat is SIGKILLed mid-run. Checked afterwards:
//! the other process holds the seat within the bound, the cluster's term did not change (us
//! was a follower), every acknowledged push reads back byte-identical from every region, and
//! the regions' logs agree.

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
