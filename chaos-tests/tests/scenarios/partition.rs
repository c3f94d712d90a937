//! A region cut off from the others (both ways: its inbound link and its outbound proxy are
//! blackholed) keeps serving pulls of what it has, refuses pushes promptly with 503, and once
//! the partition heals it catches up — metadata and pins — while the rest of the cluster kept
//! taking writes. No acknowledged write is lost anywhere.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;

const REPO: &str = "part/app";
/// `cluster.write_timeout_ms` (the node's default): the longest a write may wait for quorum.
const WRITE_TIMEOUT: Duration = Duration::from_millis(10_000);
/// How long a refusal may take beyond the write timeout (slow machine, HTTP overhead).
const SLACK: Duration = Duration::from_secs(3);

/// A load push: when it started, how long it took, its refusal if any.
type Attempt = (Instant, Duration, Option<Refusal>);

/// Pushes `img` to `url` and expects a 503 `UNAVAILABLE` with `Retry-After`; returns how long
/// the refusal took.
fn expect_refused(url: &str, tag: &str, img: &Image, what: &str) -> Duration {
    let c = client();
    let started = Instant::now();
    let refused = push(&c, url, REPO, tag, img).expect_err(&format!("{what}: a push was acknowledged without quorum"));
    let took = started.elapsed();
    assert_eq!(refused.status, 503, "{what}: {refused:?}");
    assert!(refused.body.contains("UNAVAILABLE"), "{what}: {refused:?}");
    assert!(refused.retry_after.is_some(), "{what}: 503 without Retry-After: {refused:?}");
    assert!(took < WRITE_TIMEOUT + SLACK, "{what}: the refusal took {took:?}");
    eprintln!("{what}: 503 after {} ms ({})", took.as_millis(), refused.body.trim());
    took
}

#[test]
fn partitioned_region_serves_pulls_and_catches_up() {
    // The product's Raft timings, as in the WAN scenario.
    let chaos = Chaos::start(&["us", "eu", "asia"], Duration::from_millis(10), |_, cfg| {
        product_timings(cfg);
    });
    let c = client();
    let (leader, term0) = chaos.wait_agreed(Duration::from_secs(30));
    // Cut a follower: asia, unless it leads.
    let cut_name = if leader == "asia" { "eu" } else { "asia" };
    let cut = chaos.region(cut_name);
    let majority: Vec<&str> = ["us", "eu", "asia"].into_iter().filter(|n| *n != cut_name).collect();
    eprintln!("leader {leader} (term {term0}); cutting off {cut_name}; majority {majority:?}");
    let acked: Arc<Mutex<Vec<(String, Image)>>> = Arc::default();

    // Before: an image pushed to us, served and pinned by the region about to be cut.
    let us = chaos.region("us");
    let before = new_image(300 * 1024);
    push(&c, &us.url(), REPO, "before", &before).expect("push before the partition");
    let before_cids = cids_of(us, &before.digests());
    within(Duration::from_secs(10), Duration::from_millis(50), &format!("{cut_name} serves `before`"), || {
        serves(&c, &cut.url(), REPO, "before", &before)
    });
    within(Duration::from_secs(30), Duration::from_millis(200), &format!("{cut_name} pins `before`"), || {
        pinned_all(cut, &before_cids)
    });
    acked.lock().unwrap().push(("before".into(), before.clone()));

    // Load on us all along, through the partition and the heal: what is acknowledged must
    // survive; the only acceptable refusal is a 503.
    let stop = Arc::new(AtomicBool::new(false));
    // (started, took, refusal if any) of every load push.
    let attempts: Arc<Mutex<Vec<Attempt>>> = Arc::default();
    let load = {
        let (stop, acked, attempts, url) = (stop.clone(), acked.clone(), attempts.clone(), us.url());
        std::thread::spawn(move || {
            let c = client();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let img = new_image(4 * 1024);
                let tag = format!("load{i}");
                let started = Instant::now();
                let r = push(&c, &url, REPO, &tag, &img);
                let took = started.elapsed();
                match r {
                    Ok(()) => {
                        acked.lock().unwrap().push((tag, img));
                        attempts.lock().unwrap().push((started, took, None));
                    }
                    Err(e) => attempts.lock().unwrap().push((started, took, Some(e))),
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let monitor = Monitor::start(&chaos);
    std::thread::sleep(Duration::from_secs(1));

    // ---- The partition. ----
    let net = chaos.net(cut_name);
    net.partition();
    let cut_at = Instant::now();
    eprintln!("{cut_name} cut off at {}", utc_now());

    // Pulls keep working, bytes included.
    assert_pulls(&c, &cut.url(), REPO, "before", &before);
    // A push right away: the region still believes in its leader and forwards into the void.
    // Meanwhile, watch when the region notices it has no leader (an election timeout).
    let (first_refusal, noticed) = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            within(
                Duration::from_secs(20),
                Duration::from_millis(50),
                &format!("{cut_name} notices it lost the leader"),
                || raft_view(cut).is_some_and(|v| v.role != "follower" || v.leader.is_none()),
            );
            (cut_at.elapsed(), raft_view(cut))
        });
        let refused =
            expect_refused(&cut.url(), "refused1", &new_image(4 * 1024), &format!("push to {cut_name} just cut off"));
        (refused, watcher.join().unwrap())
    });
    eprintln!("{cut_name} knew it had no leader {} ms after the cut: {:?}", noticed.0.as_millis(), noticed.1);
    let second_refusal = expect_refused(
        &cut.url(),
        "refused2",
        &new_image(4 * 1024),
        &format!("push to {cut_name} that knows it is cut off"),
    );
    // A linearizable read must not pretend: it is refused, not answered from stale state.
    let started = Instant::now();
    let (status, body) = get_manifest(&c, &cut.url(), REPO, "before", "?consistency=linearizable");
    let lin_took = started.elapsed();
    assert_eq!(status, 503, "linearizable read in the cut-off {cut_name}: {}", String::from_utf8_lossy(&body));
    eprintln!("linearizable read in {cut_name}: 503 after {} ms", lin_took.as_millis());
    // The pull path still works after all that time.
    assert_pulls(&c, &cut.url(), REPO, "before", &before);

    // The majority keeps taking writes, at the leader and at the other follower, first time.
    let mut during = Vec::new();
    for name in &majority {
        let img = new_image(300 * 1024);
        let tag = format!("during-{name}");
        let started = Instant::now();
        push(&c, &chaos.region(name).url(), REPO, &tag, &img)
            .unwrap_or_else(|e| panic!("push to {name} while {cut_name} is cut off: {e:?}"));
        eprintln!("push to {name} during the partition: {} ms", started.elapsed().as_millis());
        during.push((tag, img));
    }
    for (tag, img) in &during {
        assert_eq!(get_manifest(&c, &cut.url(), REPO, tag, "").0, 404, "{tag} reached the cut-off {cut_name}");
        for name in &majority {
            within(Duration::from_secs(10), Duration::from_millis(50), &format!("{tag} in {name}"), || {
                serves(&c, &chaos.region(name).url(), REPO, tag, img)
            });
        }
    }
    let (leader_during, term_during) = chaos_majority_view(&chaos, &majority);
    assert_eq!(leader_during, leader, "the majority changed leader while {cut_name} was cut off");
    let cut_term = raft_view(cut).map(|v| v.term);
    eprintln!(
        "partition held {:.1?}: majority leader {leader_during} term {term_during}; {cut_name} term {cut_term:?}",
        cut_at.elapsed()
    );
    acked.lock().unwrap().extend(during.iter().cloned());

    // ---- Heal. ----
    net.heal();
    let healed_at = Instant::now();
    eprintln!("{cut_name} healed at {}", utc_now());
    let caught_up =
        within(Duration::from_secs(30), Duration::from_millis(50), &format!("{cut_name} catches up"), || {
            during.iter().all(|(tag, img)| serves(&c, &cut.url(), REPO, tag, img))
        });
    let during_digests: Vec<&str> = during.iter().flat_map(|(_, i)| i.digests()).collect();
    let during_cids = cids_of(us, &during_digests);
    within(Duration::from_secs(30), Duration::from_millis(100), &format!("{cut_name} pins what it missed"), || {
        pinned_all(cut, &during_cids)
    });
    let pinned = healed_at.elapsed();
    for (tag, img) in &during {
        assert_pulls(&c, &cut.url(), REPO, tag, img);
    }
    // And it takes pushes again (a 503 is acceptable while an election settles).
    let after = new_image(300 * 1024);
    let mut refused_after = Vec::new();
    within(
        Duration::from_secs(30),
        Duration::from_millis(200),
        &format!("{cut_name} takes pushes again"),
        || match push(&c, &cut.url(), REPO, "after", &after) {
            Ok(()) => true,
            Err(e) => {
                assert_eq!(e.status, 503, "push to {cut_name} after the heal: {e:?}");
                refused_after.push(e);
                false
            }
        },
    );
    let writable = healed_at.elapsed();
    acked.lock().unwrap().push(("after".into(), after));
    let (leader_after, term_after) = chaos.wait_agreed(Duration::from_secs(30));
    eprintln!(
        "after the heal: {cut_name} served the writes it missed after {} ms, pinned them after {} ms, took a push after {} ms ({} refusals first); \
         leader {leader} term {term0} -> leader {leader_after} term {term_after}",
        caught_up.as_millis(),
        pinned.as_millis(),
        writable.as_millis(),
        refused_after.len()
    );
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    load.join().expect("load thread");
    let rounds = monitor.stop();

    // The load on us: only 503s may be refused; how long pushes took in each phase.
    let attempts = attempts.lock().unwrap();
    for (_, _, r) in attempts.iter() {
        if let Some(r) = r {
            assert_eq!(r.status, 503, "a push to us around the partition failed otherwise: {r:?}");
        }
    }
    let phase = |from: Instant, to: Option<Instant>| {
        let v: Vec<&Attempt> = attempts.iter().filter(|(t, _, _)| *t >= from && to.is_none_or(|to| *t < to)).collect();
        let refused = v.iter().filter(|a| a.2.is_some()).count();
        let (p50, max) = p50_max(v.iter().map(|a| a.1).collect());
        (v.len(), refused, p50, max)
    };
    let (n_cut, refused_cut, p50_cut, max_cut) = phase(cut_at, Some(healed_at));
    let (n_heal, refused_heal, p50_heal, max_heal) = phase(healed_at, None);
    eprintln!(
        "load on us: during the partition {n_cut} pushes, {refused_cut} refused, p50 {} ms, max {} ms; \
         after the heal {n_heal} pushes, {refused_heal} refused, p50 {} ms, max {} ms",
        p50_cut.as_millis(),
        max_cut.as_millis(),
        p50_heal.as_millis(),
        max_heal.as_millis()
    );
    let majority_leaderless = longest_leaderless(&rounds, &majority, healed_at);
    if let Some((start, len)) = majority_leaderless {
        eprintln!(
            "after the heal, no region of the majority {majority:?} was leader for {} ms (from {} ms after the heal)",
            len.as_millis(),
            (start - healed_at).as_millis()
        );
    }
    if term_after != term0 {
        eprintln!(
            "the heal cost an election (term {term0} -> {term_after}); {cut_name}'s vote traffic:\n{}\n--- {leader} ---\n{}",
            log_lines(cut, &["vote is changing", "new candidate", "become leader", "rejected"], 8),
            log_lines(chaos.region(&leader), &["vote is changing", "new candidate", "become leader", "reject"], 12)
        );
    }
    assert_eq!(refused_cut, 0, "pushes to us were refused while only {cut_name} was cut off");
    assert!(
        max_cut < Duration::from_secs(5),
        "a push to us took {max_cut:?} while only {cut_name} was cut off (the majority has quorum)"
    );

    // No acknowledged write is lost: every one is readable, bytes included, in every region;
    // nothing of the refused pushes is.
    let acked = acked.lock().unwrap();
    for r in &chaos.cluster.regions {
        let (last_tag, last) = acked.last().unwrap();
        within(
            Duration::from_secs(20),
            Duration::from_millis(100),
            &format!("{} applied every acknowledged push", r.name),
            || serves(&c, &r.url(), REPO, last_tag, last),
        );
        for (tag, img) in acked.iter() {
            assert_pulls(&c, &r.url(), REPO, tag, img);
        }
        for tag in ["refused1", "refused2"] {
            assert_eq!(get_manifest(&c, &r.url(), REPO, tag, "").0, 404, "refused {tag} visible in {}", r.name);
        }
    }
    eprintln!("{} acknowledged pushes readable in all {} regions", acked.len(), chaos.cluster.regions.len());
    eprintln!(
        "summary: refusals in the cut-off region {} ms (just cut) / {} ms (knowing), linearizable read refused after {} ms",
        first_refusal.as_millis(),
        second_refusal.as_millis(),
        lin_took.as_millis()
    );
}

/// The leader and term the majority regions agree on.
fn chaos_majority_view(chaos: &Chaos, majority: &[&str]) -> (String, u64) {
    let views: Vec<RaftView> =
        majority.iter().map(|n| raft_view(chaos.region(n)).expect("majority region answers")).collect();
    let (l, t) = (views[0].leader.expect("majority has a leader"), views[0].term);
    assert!(views.iter().all(|v| v.leader == Some(l) && v.term == t), "the majority disagrees: {views:?}");
    let name = chaos.cluster.regions.iter().find(|r| r.id == l).unwrap().name.clone();
    (name, t)
}
