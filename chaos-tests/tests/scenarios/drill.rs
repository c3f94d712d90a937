//! Failover drills (`afreg_drill::run`, the loop `afreg drill` runs too): the mixed workload of
//! every kind of operation on every region (uploads, pushes, hot tags moved and deleted,
//! manifest deletes, pulls, linearizable and regional reads) runs while a fault hits the
//! leader, with GC at an aggressive setting all along; once the fault heals, the checkers rule
//! on the whole history: tags linearizable, regional reads sound, nothing acknowledged lost,
//! regions converged (tags and pins, read from each region's Postgres and Kubo), pulls
//! available in healthy regions, no request hanging, and the first write acknowledged after
//! the leader is lost within 6 s (`run::Bounds`).
//!
//! Each scenario is reproducible from its seed (`DRILL_SEED` overrides it: the clients'
//! choices and bytes derive from it). CI runs one round of each, the short form, which must
//! finish within `SHORT_FORM_BUDGET`; `DRILL_ROUNDS=N` runs N rounds (a soak), each hitting
//! whichever region leads then, and reports failover p50/p99 over them. `DRILL_LOGS=DIR`
//! keeps every node's log there.

use std::time::Duration;

use afreg_drill::history::{Op, Outcome};
use afreg_drill::oci::Endpoint;
use afreg_drill::run::{self, Fault, Plan, Report, Target};
use afreg_drill::workload::Mixed;
use testkit::history::{self, Outage};
use testkit::receiver::Receiver;

use crate::common::*;

/// How long the fault lasts: well past the longest election timeout (2.3 s).
const HOLD: Duration = Duration::from_secs(8);

fn seed(default: u64) -> u64 {
    std::env::var("DRILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// How long one drill may take in its short form (one round, what CI runs), from starting its
/// cluster to its report. Measured on 2 cores under other load (2026-12-06): 22-51 s, 66 s for
/// the broken build's; a drill that outgrows this slows every CI run, so it fails instead.
const SHORT_FORM_BUDGET: Duration = Duration::from_secs(120);

fn rounds() -> usize {
    std::env::var("DRILL_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(1)
}

/// The chaos cluster as a drill's target: `fault` is one round against the leader, and
/// convergence is judged from each region's Postgres and Kubo as well as the public API.
struct ChaosTarget<F> {
    chaos: Chaos,
    fault: F,
}

impl<F: FnMut(&mut Chaos, &Mixed, &str) -> Fault> Target for ChaosTarget<F> {
    fn regions(&self) -> Vec<Endpoint> {
        self.chaos.cluster.regions.iter().map(|r| Endpoint::open(&r.name, &r.url())).collect()
    }
    fn wait_leader(&mut self, bound: Duration) -> Result<(String, u64), String> {
        Ok(self.chaos.wait_agreed(bound))
    }
    fn inject(&mut self, leader: &str, work: &Mixed, _progress: &dyn Fn(&str)) -> Result<Fault, String> {
        eprintln!("({})", utc_now());
        Ok((self.fault)(&mut self.chaos, work, leader))
    }
    /// Both ways: tags and pins as each region's Postgres and Kubo hold them, then as the
    /// public API shows them (tag lists, `/status` pin backlogs), within one bound.
    fn converged(&self, repo: &str, bound: Duration) -> Result<Duration, String> {
        let members: Vec<_> = self.chaos.cluster.regions.iter().collect();
        let inside = history::check_converged(&members, bound)?;
        let outside = history::check_converged_api(&self.regions(), repo, bound.saturating_sub(inside))?;
        Ok(inside + outside)
    }
}

/// One-way delay of every link between the drills' regions.
const DELAY: Duration = Duration::from_millis(10);

/// A drill region's config: the product's Raft timings, GC at its most aggressive (blobs
/// unlinked 1 s after nothing references them, Kubo's GC every 2 s), and a snapshot every
/// 200 entries with 50 kept behind it, so that snapshots are built under the workload and a
/// region added later catches up from one.
fn drill_config(_: &str, cfg: &mut testkit::NodeConfig) {
    product_timings(cfg);
    let c = &mut cfg.config;
    (c.cluster.gc_grace_secs, c.cluster.gc_interval_secs, c.kubo.gc_interval_secs) = (1, 1, 2);
    (c.cluster.snapshot_every, c.cluster.snapshot_keep_logs) = (200, 50);
}

/// The drills' cluster: three regions of [`drill_config`], then `configure`, over [`DELAY`]
/// links.
fn drill_cluster(bin: &std::path::Path, configure: &dyn Fn(&mut testkit::NodeConfig)) -> Chaos {
    Chaos::start_bin(bin, &["us", "eu", "asia"], DELAY, |name, cfg| {
        drill_config(name, cfg);
        configure(cfg);
    })
}

/// Runs the workload on the drills' cluster, hits the current leader with `fault` for each
/// round, heals, rules on the history, and fails the test on any failed checker.
fn drill(scenario: &'static str, default_seed: u64, fault: impl FnMut(&mut Chaos, &Mixed, &str) -> Fault) -> Report {
    drill_configured(scenario, default_seed, &|_| {}, fault)
}

/// [`drill`] on regions that `configure` changes as well.
fn drill_configured(
    scenario: &'static str,
    default_seed: u64,
    configure: &dyn Fn(&mut testkit::NodeConfig),
    fault: impl FnMut(&mut Chaos, &Mixed, &str) -> Fault,
) -> Report {
    let report = drill_on(testkit::afreg_bin(), scenario, default_seed, configure, fault);
    // The table of the product's drills, passed or not (scripts/test.sh prints it, and
    // docs/drills.md is one); the broken build's drill is not the product's, so not in it.
    if let Ok(table) = std::env::var("DRILL_TABLE") {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&table).expect("open DRILL_TABLE");
        writeln!(f, "{}", report.row()).expect("append to DRILL_TABLE");
    }
    let failed: Vec<&str> = report.verdicts.iter().filter(|v| !v.ok).map(|v| v.checker.as_str()).collect();
    assert!(report.passed, "{scenario}: checkers failed: {failed:?} (seed {})", report.seed);
    report
}

/// [`drill`] on a cluster of `bin`, returning the report whatever it says.
fn drill_on(
    bin: &std::path::Path,
    scenario: &'static str,
    default_seed: u64,
    configure: &dyn Fn(&mut testkit::NodeConfig),
    fault: impl FnMut(&mut Chaos, &Mixed, &str) -> Fault,
) -> Report {
    let started = std::time::Instant::now();
    let mut plan = Plan::new(scenario, seed(default_seed));
    plan.rounds = rounds();
    let chaos = drill_cluster(bin, configure);
    chaos.wait_agreed(Duration::from_secs(30));
    let mut target = ChaosTarget { chaos, fault };
    let report = run::run(&plan, &mut target, &|line| eprintln!("{scenario}: {line}"))
        .unwrap_or_else(|e| panic!("{scenario}: {e}"));
    if let Ok(dir) = std::env::var("DRILL_LOGS") {
        for r in &target.chaos.cluster.regions {
            let to = std::path::Path::new(&dir).join(format!("{scenario}-{}.log", r.name));
            std::fs::create_dir_all(&dir)
                .and_then(|_| std::fs::copy(r.node().log_path(), &to))
                .expect("copy a node's log");
        }
    }
    eprintln!("{}\nDRILL {}", report.text(), report.row());
    let took = started.elapsed();
    assert!(
        plan.rounds > 1 || took <= SHORT_FORM_BUDGET,
        "{scenario}: the short form took {took:.1?}, past its budget of {SHORT_FORM_BUDGET:?}"
    );
    report
}

/// The outage of `region` from `from` until its node answers `/healthz` again.
fn outage_until_healthy(chaos: &Chaos, region: &str, from: Duration, work: &Mixed) -> Outage {
    let r = chaos.region(region);
    within(Duration::from_secs(30), Duration::from_millis(50), &format!("{region} healthy again"), || {
        r.local_status().is_some()
    });
    // Its clients' requests in flight when it came back may still be answered late.
    Outage { region: region.to_owned(), from, to: work.now() + Duration::from_secs(2) }
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).expect("signal the node");
}

/// The leader SIGKILLed for the hold, then started again.
fn kill_leader(chaos: &mut Chaos, work: &Mixed, leader: &str) -> Fault {
    let at = work.now();
    chaos.cluster.region_mut(leader).node_mut().kill();
    eprintln!("leader-kill: SIGKILLed {leader} at {at:.1?}");
    std::thread::sleep(HOLD);
    let node = chaos.cluster.region_mut(leader).node_mut();
    node.spawn_again();
    node.wait_healthy(Duration::from_secs(30)).expect("the killed leader comes back");
    Fault { leader_lost_at: Some(at), outages: vec![outage_until_healthy(chaos, leader, at, work)] }
}

#[test]
fn drill_leader_killed() {
    drill("leader-kill", 11, kill_leader);
}

/// What a write of the drill's workload is an event of, as distribution's envelope names it:
/// `(action, repository, digest, tag)` (`""` where the event has none).
fn event_of(op: &Op) -> Option<(&'static str, String, String, String)> {
    match op {
        Op::Push { repo, tag, digest } => Some(("push", repo.clone(), digest.clone(), tag.clone())),
        Op::SetTag { repo, tag, to: Some(digest) } => Some(("push", repo.clone(), digest.clone(), tag.clone())),
        Op::SetTag { repo, tag, to: None } => Some(("delete", repo.clone(), String::new(), tag.clone())),
        Op::DeleteManifest { repo, digest } => Some(("delete", repo.clone(), digest.clone(), String::new())),
        _ => None,
    }
}

#[test]
fn drill_leader_killed_with_a_receiver_that_gets_every_acknowledged_write() {
    // The leader-kill drill, every region with one endpoint for manifest and tag events (blob
    // events ignored, as distribution's users often configure it).
    let rx = Receiver::start();
    let url = rx.url();
    let report = drill_configured(
        "leader-kill-notified",
        14,
        &|cfg| {
            cfg.config.notifications.endpoints = vec![afreg_config::notifications::Endpoint {
                name: "drill".into(),
                url: url.clone(),
                timeout: "2s".into(),
                backoff: "200ms".into(),
                ignoredmediatypes: vec!["application/octet-stream".into()],
                ..Default::default()
            }];
        },
        kill_leader,
    );

    let key = |e: &serde_json::Value| {
        let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
        (s(&e["action"]), s(&e["target"]["repository"]), s(&e["target"]["digest"]), s(&e["target"]["tag"]))
    };
    let acked: Vec<_> =
        report.writes.iter().filter(|(_, o)| *o == Outcome::Ok).filter_map(|(op, _)| event_of(op)).collect();
    let maybe: std::collections::BTreeSet<_> = report
        .writes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Ok | Outcome::Unknown(_)))
        .filter_map(|(op, _)| event_of(op))
        .map(|(a, r, d, t)| (a.to_owned(), r, d, t))
        .collect();
    let want = |events: &[serde_json::Value]| {
        let got: std::collections::BTreeSet<_> = events.iter().map(key).collect();
        acked.iter().filter(|(a, r, d, t)| !got.contains(&(a.to_string(), r.clone(), d.clone(), t.clone()))).count()
    };
    // Every acknowledged write's event, counted by id: two writes of one key (a tag set twice
    // to one digest) are two events, and the second may still be on its way when the first
    // has arrived.
    let ids = |events: &[serde_json::Value]| {
        events.iter().filter_map(|e| e["id"].as_str()).collect::<std::collections::BTreeSet<_>>().len()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !(want(&rx.events()) == 0 && ids(&rx.events()) >= acked.len()) {
        if std::time::Instant::now() > deadline {
            // Per key: how many acknowledged writes, how many distinct event ids.
            let events = rx.events();
            let mut short = vec![];
            for k in acked.iter().collect::<std::collections::BTreeSet<_>>() {
                let writes = acked.iter().filter(|a| *a == k).count();
                let got = events
                    .iter()
                    .filter(|e| key(e) == (k.0.to_string(), k.1.clone(), k.2.clone(), k.3.clone()))
                    .filter_map(|e| e["id"].as_str())
                    .collect::<std::collections::BTreeSet<_>>();
                if got.len() < writes {
                    short.push(format!("{k:?}: {writes} acknowledged, events {got:?}"));
                }
            }
            panic!("not every acknowledged write's event within 60 s:\n{}", short.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    rx.assert_no_contract_errors();
    let events = rx.events();
    // Deduplicated by id: each id is one write's event, of a write a client sent and that was
    // acknowledged or may have applied (a 5xx or no answer); none of a write refused or never made.
    let mut by_id = std::collections::BTreeMap::new();
    for e in &events {
        let id = e["id"].as_str().unwrap().to_owned();
        let k = key(e);
        assert_eq!(*by_id.entry(id.clone()).or_insert_with(|| k.clone()), k, "event {id} names two writes");
        assert!(
            maybe.contains(&k),
            "event {id} is of no write a client sent and saw acknowledged or unanswered: {k:?}"
        );
    }
    let unknown =
        report.writes.iter().filter(|(op, o)| matches!(o, Outcome::Unknown(_)) && event_of(op).is_some()).count();
    assert!(
        by_id.len() >= acked.len() && by_id.len() <= acked.len() + unknown,
        "{} distinct events for {} acknowledged writes and {unknown} unanswered",
        by_id.len(),
        acked.len()
    );
    eprintln!(
        "leader-kill-notified: {} acknowledged writes, {unknown} unanswered; {} events received, {} distinct ids",
        acked.len(),
        events.len(),
        by_id.len()
    );
}

#[test]
fn drill_leader_paused() {
    drill("leader-pause", 12, |chaos, work, leader| pause_leader(chaos, work, leader));
}

/// The leader SIGSTOPped for the hold, then resumed.
fn pause_leader(chaos: &Chaos, work: &Mixed, leader: &str) -> Fault {
    let pid = chaos.region(leader).node().pid();
    let at = work.now();
    signal(pid, nix::sys::signal::Signal::SIGSTOP);
    eprintln!("leader-pause: SIGSTOPped {leader} at {at:.1?}");
    std::thread::sleep(HOLD);
    signal(pid, nix::sys::signal::Signal::SIGCONT);
    Fault { leader_lost_at: Some(at), outages: vec![outage_until_healthy(chaos, leader, at, work)] }
}

/// Whether openraft 0.9 on its own would still hold `region`'s next election back by its
/// smaller-log backoff (see replication/src/election.rs): the region campaigned behind a
/// longer log (afreg's `raft_campaign_behind`) since it last campaigned on its own election
/// timer (openraft's "do trigger election", the one thing that clears openraft's flag).
fn campaigned_behind(chaos: &Chaos, region: &str) -> bool {
    let log = chaos.region(region).node().log();
    let last = |word: &str| log.lines().enumerate().filter(|(_, l)| l.contains(word)).map(|(i, _)| i).last();
    matches!(last("raft_campaign_behind"), Some(behind) if Some(behind) > last("do trigger election"))
}

#[test]
fn drill_leader_paused_after_lagging_campaigns() {
    // Each follower in turn is cut off long enough to campaign alone while the workload moves
    // the log on without it, then healed: its next campaign is refused by regions with longer
    // logs. Then the leader is paused, as in leader-pause. Left to openraft 0.9, each of those
    // followers would carry a 4.6 s election backoff from then on, so with both carrying it
    // the paused leader would wake up 8 s later still leading, with no election in between.
    // The first write after the pause must still come within the failover bound.
    const CUT: Duration = Duration::from_secs(6); // past the lease + longest timeout, 4.6 s
    drill("lagging-campaigns", 24, |chaos, work, _| {
        for cut in 0.. {
            let (leader, _) = chaos.wait_agreed(Duration::from_secs(30));
            let names: Vec<String> = chaos.cluster.regions.iter().map(|r| r.name.clone()).collect();
            let Some(name) = names.into_iter().find(|n| *n != leader && !campaigned_behind(chaos, n)) else { break };
            assert!(
                cut < 6,
                "after {cut} cuts, the followers of {leader} have not both campaigned behind a longer log"
            );
            chaos.net(&name).partition();
            eprintln!("lagging-campaigns: cut {name} off at {:.1?}", work.now());
            std::thread::sleep(CUT);
            chaos.net(&name).heal();
            let healed = std::time::Instant::now();
            while !campaigned_behind(chaos, &name) && healed.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(100));
            }
            eprintln!("lagging-campaigns: healed {name}; campaigned behind: {}", campaigned_behind(chaos, &name));
        }
        let (leader, _) = chaos.wait_agreed(Duration::from_secs(30));
        pause_leader(chaos, work, &leader)
    });
}

/// The leader cut off from the others while its own clients keep writing to it.
fn isolate_leader(chaos: &mut Chaos, work: &Mixed, leader: &str) -> Fault {
    let at = work.now();
    chaos.net(leader).partition();
    eprintln!("leader-isolation: cut {leader} off at {at:.1?}");
    std::thread::sleep(HOLD);
    chaos.net(leader).heal();
    Fault { leader_lost_at: Some(at), outages: vec![] }
}

#[test]
fn drill_leader_isolated() {
    // The isolated leader's node, Postgres and Kubo stay healthy: its pulls must keep working
    // and its clients' writes must be refused promptly (no outage is declared).
    drill("leader-isolation", 13, isolate_leader);
}

/// The checkers can fail: the same isolation drill against a build that acknowledges writes
/// the cluster did not commit (feature `unsafe-ack-without-quorum`, built by scripts/test.sh
/// as `afreg-broken`) must be reported as losing acknowledged writes.
#[test]
fn drill_catches_a_build_that_acknowledges_without_a_quorum() {
    let bin = std::env::var("AFREG_BROKEN_BIN").unwrap_or_else(|_| {
        panic!(
            "AFREG_BROKEN_BIN is not set: run scripts/test.sh, or build the broken node with \
             `cargo build --release -p afreg --features unsafe-ack-without-quorum`, copy target/release/afreg \
             to afreg-broken and set AFREG_BROKEN_BIN to it"
        )
    });
    let report = drill_on(std::path::Path::new(&bin), "broken-ack-isolation", 13, &|_| {}, isolate_leader);
    let readable = report.verdicts.iter().find(|v| v.checker == "acked-readable").expect("the acked-readable verdict");
    assert!(
        !readable.ok && readable.detail.starts_with("LOST"),
        "the checker did not report the lost writes: {readable:?}"
    );
    assert!(report.lost > 0, "the report counts no lost write: {}", report.text());
    assert!(!report.passed, "a drill of the broken build passed");
}

#[test]
fn drill_one_way_partition() {
    // The leader hears the others but cannot reach them (its outbound proxy drops everything):
    // the others stop hearing heartbeats and elect a new leader, whose vote requests and
    // heartbeats still reach the old one and make it step down. Its node, Postgres and Kubo
    // stay healthy, so its pulls must keep working and its writes fail fast.
    drill("one-way-partition", 14, |chaos, work, leader| {
        let at = work.now();
        chaos.net(leader).outbound.set_blackhole(true);
        eprintln!("one-way-partition: {leader} can no longer send at {at:.1?}");
        std::thread::sleep(HOLD);
        chaos.net(leader).outbound.set_blackhole(false);
        Fault { leader_lost_at: Some(at), outages: vec![] }
    });
}

#[test]
fn drill_rolling_restart() {
    // Every region restarted in turn (SIGTERM, start, healthy, the cluster agreed on a leader
    // again), the followers first and the leader last, as an upgrade rolls out. A SIGTERMed
    // node drains its requests in flight with Raft still running, so the writes among them
    // commit and it exits in moments (not after a write timeout of waiting on a stopped Raft).
    drill("rolling-restart", 15, |chaos, work, leader| {
        let names = chaos.cluster.regions.iter().map(|r| r.name.clone()).collect();
        run::rolling_restart(names, leader, work, |name, at| {
            let node = chaos.cluster.region_mut(name).node_mut();
            let t = std::time::Instant::now();
            let status = node.stop();
            let took = t.elapsed();
            eprintln!("rolling-restart: stopped {name} at {at:.1?} in {took:.1?} ({status:?})");
            assert!(took < Duration::from_secs(5), "{name} took {took:.1?} to stop on SIGTERM under the workload");
            node.spawn_again();
            node.wait_healthy(Duration::from_secs(30))?;
            let outage = outage_until_healthy(chaos, name, at, work);
            chaos.wait_agreed(Duration::from_secs(30));
            Ok(outage)
        })
        .expect("every region restarted")
    });
}

#[test]
fn drill_postgres_killed() {
    // The leader's Postgres (its Raft log, vote and metadata) stopped at once, as a crash
    // would, in the middle of the workload's commits, and started again after the hold. The
    // region's writes get 503 while it is down and nothing acknowledged is lost.
    drill("postgres-killed", 16, |chaos, work, leader| {
        let at = work.now();
        chaos.cluster.region_mut(leader).region.pg.stop();
        eprintln!("postgres-killed: stopped {leader}'s Postgres (immediate) at {at:.1?}");
        std::thread::sleep(HOLD);
        chaos.cluster.region_mut(leader).region.pg.start_again();
        eprintln!("postgres-killed: {leader}'s Postgres is back at {:.1?}", work.now());
        Fault { leader_lost_at: Some(at), outages: vec![outage_until_healthy(chaos, leader, at, work)] }
    });
}

#[test]
fn drill_origin_kubo_killed() {
    // A follower's Kubo SIGKILLed while its clients push (the blobs only it holds yet are not
    // all pinned by the others), started again after the hold: its uploads and pulls fail
    // while it is down (an outage of that region), the others pin everything once it is back.
    drill("origin-kubo-killed", 17, |chaos, work, leader| {
        let name = follower(chaos, leader);
        let at = work.now();
        chaos.cluster.region_mut(&name).region.kubo.kill();
        eprintln!("origin-kubo-killed: SIGKILLed {name}'s Kubo at {at:.1?}");
        std::thread::sleep(HOLD);
        chaos.cluster.region_mut(&name).region.kubo.start_again();
        eprintln!("origin-kubo-killed: {name}'s Kubo is back at {:.1?}", work.now());
        Fault {
            leader_lost_at: None,
            outages: vec![Outage { region: name, from: at, to: work.now() + Duration::from_secs(2) }],
        }
    });
}

/// A region other than `leader`.
fn follower(chaos: &Chaos, leader: &str) -> String {
    chaos.cluster.regions.iter().map(|r| r.name.clone()).find(|n| n != leader).expect("a follower")
}

/// The time of day the node's newest log line carries: its own wall clock.
fn logged_time(r: &testkit::cluster::ClusterMember) -> Option<chrono::DateTime<chrono::Utc>> {
    let log = r.node().log();
    let line = log.lines().rev().find(|l| l.contains("\"timestamp\""))?;
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    v["timestamp"].as_str()?.parse().ok()
}

#[test]
fn drill_clock_skew() {
    // A follower restarted with its wall clock an hour slow (libfaketime; its monotonic clock,
    // so its timers and elections, run true), and left so. Its uploads must not look an hour
    // old to GC, which runs every second with a one-second grace: the leader stamps every
    // entry's time and GC's cut-off with its own clock. The no-early-gc checker sees a blob
    // collected early as a push refused for blobs its client uploaded moments before.
    const SKEW: i64 = -3600;
    drill("clock-skew", 18, |chaos, work, leader| {
        let name = follower(chaos, leader);
        let at = work.now();
        let node = chaos.cluster.region_mut(&name).node_mut();
        node.reconfigure(|cfg| cfg.clock_offset(SKEW));
        node.restart();
        let outage = outage_until_healthy(chaos, &name, at, work);
        let logged = logged_time(chaos.region(&name)).expect("the skewed node logs its time");
        let off = (logged - chrono::Utc::now()).num_seconds();
        assert!((SKEW - 30..=SKEW + 30).contains(&off), "{name}'s clock is {off} s off, not {SKEW} s");
        eprintln!("clock-skew: {name} restarted at {at:.1?} with its clock {off} s off");
        std::thread::sleep(HOLD);
        Fault { leader_lost_at: None, outages: vec![outage] }
    });
}

/// Waits (≤ 60 s) until `region`'s Raft log no longer starts at the first entry: a snapshot
/// was taken and the log behind it purged, so a region added now must be sent the snapshot.
fn wait_log_purged(chaos: &Chaos, region: &str) {
    let r = chaos.region(region);
    within(
        Duration::from_secs(60),
        Duration::from_millis(200),
        &format!("{region}'s log purged behind a snapshot"),
        || r.sql("SELECT coalesce(min(log_index), 0) > 1 FROM raft_log") == "t",
    );
}

/// Whether region `name`'s node installed a snapshot from the leader (it was too far behind
/// for the log).
fn installed_snapshot(chaos: &Chaos, name: &str) -> bool {
    chaos.region(name).node().log().contains("raft_snapshot_installed")
}

#[test]
fn drill_region_added_and_removed() {
    // Under the workload the operator adds a fourth region, which starts empty and catches up
    // from the leader's snapshot (the log behind it is purged), then removes a follower, whose
    // provider takes its node, Postgres and Kubo. Its clients can no longer reach it; every
    // write acknowledged anywhere reads back from the new region too, and its pins converge.
    // Region ids are never reused: each round adds one under the next.
    let mut next_id = 4;
    drill("region-churn", 19, move |chaos, work, leader| {
        let (id, new) = (next_id, format!("ap{next_id}"));
        next_id += 1;
        wait_log_purged(chaos, leader);
        let at = work.now();
        chaos.add_region(leader, id, &new, DELAY, drill_config);
        eprintln!("region-churn: {new} added from {at:.1?}, a voter at {:.1?}", work.now());
        assert!(
            installed_snapshot(chaos, &new),
            "{new} caught up without a snapshot:\n{}",
            chaos.region(&new).node().log_tail(40)
        );
        std::thread::sleep(HOLD / 2);
        let gone = follower(chaos, leader);
        let removed = work.now();
        chaos.remove_region(leader, chaos.region(&gone).id);
        chaos.vanish(&gone);
        eprintln!("region-churn: {gone} removed at {removed:.1?}");
        std::thread::sleep(HOLD / 2);
        Fault { leader_lost_at: None, outages: vec![Outage { region: gone, from: removed, to: Duration::MAX }] }
    });
}

#[test]
fn drill_provider_vanishes() {
    // The leader's provider ends its lease mid-workload: its node, Postgres and Kubo are gone
    // for good at once. The other two elect a leader; the operator removes the lost region and
    // adds a replacement under a new id, which catches up from a snapshot and pins every blob
    // (the converged checker compares its pins with its Kubo and the others').
    let mut next_id = 4;
    drill("provider-vanishes", 20, move |chaos, work, leader| {
        let (id, replacement) = (chaos.region(leader).id, format!("{leader}{next_id}"));
        let new_id = next_id;
        next_id += 1;
        let at = work.now();
        chaos.vanish(leader);
        eprintln!("provider-vanishes: {leader} gone at {at:.1?}");
        let (now_leads, _) = chaos.wait_agreed(Duration::from_secs(30));
        chaos.remove_region(&now_leads, id);
        eprintln!("provider-vanishes: {leader} removed at {:.1?}", work.now());
        wait_log_purged(chaos, &now_leads);
        chaos.add_region(&now_leads, new_id, &replacement, DELAY, drill_config);
        eprintln!("provider-vanishes: {replacement} a voter at {:.1?}", work.now());
        assert!(installed_snapshot(chaos, &replacement), "{replacement} caught up without a snapshot");
        std::thread::sleep(HOLD / 2);
        Fault {
            leader_lost_at: Some(at),
            outages: vec![Outage { region: leader.to_owned(), from: at, to: Duration::MAX }],
        }
    });
}

#[test]
fn drill_wan_latency_spike() {
    // Every link's one-way delay goes from 10 ms to 150 ms (RTT 300 ms, the top of the range
    // the default timings promise) for the hold, then back: the leader keeps its term (no
    // election churn), writes only slow down, and nothing is lost.
    drill("wan-latency", 21, |chaos, work, leader| {
        let (_, term) = chaos.wait_agreed(Duration::from_secs(5));
        let at = work.now();
        let set = |d| chaos.nets.values().for_each(|n| n.inbound.set_delay(d));
        set(Duration::from_millis(150));
        eprintln!("wan-latency: RTT 300 ms from {at:.1?}");
        std::thread::sleep(HOLD);
        set(DELAY);
        let after = chaos.wait_agreed(Duration::from_secs(10));
        assert_eq!(after, (leader.to_owned(), term), "the latency spike cost an election");
        Fault { leader_lost_at: None, outages: vec![] }
    });
}

#[test]
fn drill_connection_resets() {
    // Every inter-region connection reset at once, every half second for the hold: requests
    // in flight between regions fail and are retried on new connections.
    drill("connection-resets", 22, |chaos, work, _leader| {
        let at = work.now();
        while work.now() < at + HOLD {
            for net in chaos.nets.values() {
                net.inbound.sever();
                net.outbound.sever();
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        eprintln!("connection-resets: every connection reset every 500 ms from {at:.1?} to {:.1?}", work.now());
        Fault { leader_lost_at: None, outages: vec![] }
    });
}

#[test]
fn drill_follower_partitioned() {
    // A follower cut off both ways while its clients keep using it: its node, Postgres and
    // Kubo stay healthy, so its pulls must keep working, its writes and linearizable reads
    // must be refused promptly, and it catches up once healed.
    drill("follower-partition", 23, |chaos, work, leader| {
        let name = follower(chaos, leader);
        let at = work.now();
        chaos.net(&name).partition();
        eprintln!("follower-partition: cut {name} off at {at:.1?}");
        std::thread::sleep(HOLD);
        chaos.net(&name).heal();
        Fault { leader_lost_at: None, outages: vec![] }
    });
}
