//! The default Raft timings over WAN links: three regions, each behind a link that delays
//! every chunk, with the product's default timings (not testkit's loopback ones). The cluster
//! must elect one leader and keep it — no spurious election — while pushes go to a follower,
//! and every push must succeed. It must also survive what WAN links routinely do to long-lived
//! TCP connections: reset them all at once (NAT or load-balancer state lost, a middlebox
//! restarting); new connections then pay a TCP handshake (one more round trip) first.

use std::time::{Duration, Instant};

use afreg_config::ClusterConfig;

use crate::common::*;

const REPO: &str = "wan/app";

fn verbose() -> bool {
    std::env::var_os("CHAOS_VERBOSE").is_some()
}

/// One run: `one_way` delay on every region's inbound link (so every pair of regions has a
/// round trip of `2 * one_way`), `pushes` pushes to a follower.
fn wan_run(one_way: Duration, pushes: usize) {
    let t = ClusterConfig::default();
    let chaos = Chaos::start(&["us", "eu", "asia"], one_way, |_, cfg| {
        product_timings(cfg);
    });
    let rtt = 2 * one_way;
    let (leader, term) = chaos.wait_agreed(Duration::from_secs(30));
    let leader_id = chaos.region(&leader).id;
    let monitor = Monitor::start(&chaos);
    // Idle first, for two maximal election timeouts: an elected leader must hold on.
    std::thread::sleep(Duration::from_millis(2 * t.election_timeout_max_ms));
    if verbose() {
        for r in &chaos.cluster.regions {
            eprintln!(
                "--- {} ---\n{}",
                r.name,
                log_lines(r, &["vote is changing", "new candidate", "become leader"], 10)
            );
        }
    }
    let followers: Vec<&str> = chaos.cluster.regions.iter().map(|r| r.name.as_str()).filter(|n| *n != leader).collect();
    let (to, other) = (chaos.region(followers[0]), chaos.region(followers[1]));
    eprintln!(
        "RTT {} ms, timings {t:?}: leader {leader}, term {term}; pushing to follower {}, lag measured at {}",
        rtt.as_millis(),
        to.name,
        other.name
    );

    let c = client();
    let mut latencies = Vec::new();
    let mut lags = Vec::new();
    let mut images = Vec::new();
    for i in 0..pushes {
        let img = new_image(64 * 1024);
        let tag = format!("v{i}");
        let started = Instant::now();
        let pushed = push_timed(&c, &to.url(), REPO, &tag, &img);
        let took = started.elapsed();
        if verbose() {
            eprintln!("  push {tag} to {}: {took:?}, per request {pushed:?}", to.name);
        }
        if let Err(e) = pushed {
            panic!(
                "push {tag} to follower {} over {} ms round trips failed after {took:?}: {e:?}\n{}",
                to.name,
                rtt.as_millis(),
                log_lines(to, &["WARN", "ERROR", "vote is changing", "new candidate"], 30)
            );
        }
        latencies.push(took);
        // Replication lag: how long after the 201 the other follower serves the tag.
        let lag = within(
            Duration::from_secs(10),
            Duration::from_millis(5),
            &format!("{tag} visible in {}", other.name),
            || serves(&c, &other.url(), REPO, &tag, &img),
        );
        lags.push(lag);
        images.push((tag, img));
    }
    // For comparison: pushes straight to the leader (no forwarding).
    let mut leader_latencies = Vec::new();
    for i in 0..3 {
        let img = new_image(64 * 1024);
        let tag = format!("lead{i}");
        let started = Instant::now();
        let per = push_timed(&c, &chaos.region(&leader).url(), REPO, &tag, &img)
            .unwrap_or_else(|e| panic!("push {tag} to the leader over {} ms round trips: {e:?}", rtt.as_millis()));
        if verbose() {
            eprintln!("  push {tag} to the leader: {:?}, per request {per:?}", started.elapsed());
        }
        leader_latencies.push(started.elapsed());
        images.push((tag, img));
    }
    let rounds = monitor.stop();

    // No spurious election: every sample shows the same leader and term.
    let samples: Vec<(&str, &RaftView)> =
        rounds.iter().flat_map(|r| r.views.iter().filter_map(|(n, v)| v.as_ref().map(|v| (n.as_str(), v)))).collect();
    let unanswered = rounds.iter().flat_map(|r| r.views.iter()).filter(|(_, v)| v.is_none()).count();
    let odd: Vec<&(&str, &RaftView)> =
        samples.iter().filter(|(_, v)| v.term != term || v.leader != Some(leader_id)).collect();
    let max_term = samples.iter().map(|(_, v)| v.term).max().unwrap_or(term);
    let (p50, max) = p50_max(latencies.clone());
    let (lag50, lagmax) = p50_max(lags);
    let (lead50, leadmax) = p50_max(leader_latencies);
    eprintln!(
        "RTT {} ms: {} pushes to follower {}: latency p50 {} ms, max {} ms ({} ms per write at p50); \
         replication lag to {} p50 {} ms, max {} ms; pushes to the leader p50 {} ms, max {} ms; \
         term {term} -> {max_term}, leader {leader} throughout: {} of {} status samples differ ({unanswered} unanswered)",
        rtt.as_millis(),
        latencies.len(),
        to.name,
        p50.as_millis(),
        max.as_millis(),
        p50.as_millis() / 3,
        other.name,
        lag50.as_millis(),
        lagmax.as_millis(),
        lead50.as_millis(),
        leadmax.as_millis(),
        odd.len(),
        samples.len()
    );
    if lead50 > p50 {
        // Pushes to the leader should be the fast path: show what its log says.
        eprintln!(
            "pushes to the leader were slower than to a follower; load {}; leader log:\n{}",
            std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
            log_lines(chaos.region(&leader), &["WARN", "ERROR"], 20)
        );
    }
    assert!(samples.len() > 30, "too few status samples ({}) to judge leadership", samples.len());
    assert!(
        odd.is_empty(),
        "spurious election over {} ms round trips with the default timings: {} samples differ from (leader {leader}, term {term}), first {:?}\n--- {leader} ---\n{}",
        rtt.as_millis(),
        odd.len(),
        odd.first(),
        log_lines(chaos.region(&leader), &["vote is changing", "new candidate", "become leader", "WARN"], 30)
    );
    assert_eq!(chaos.wait_agreed(Duration::from_secs(5)), (leader.clone(), term), "term or leader changed at the end");

    // No acknowledged push is lost: every one is readable in every region, bytes included.
    for r in &chaos.cluster.regions {
        for (tag, img) in &images {
            within(Duration::from_secs(10), Duration::from_millis(50), &format!("{tag} in {}", r.name), || {
                serves(&c, &r.url(), REPO, tag, img)
            });
            assert_pulls(&c, &r.url(), REPO, tag, img);
        }
    }
}

/// Every inter-region connection is reset at once between pushes; writes must work again
/// within `bound` (503s are acceptable until then) and nothing acknowledged is lost.
fn wan_reset_run(one_way: Duration, bound: Duration) {
    let chaos = Chaos::start(&["us", "eu", "asia"], one_way, |_, cfg| {
        product_timings(cfg);
    });
    let rtt = 2 * one_way;
    let (leader, term) = chaos.wait_agreed(Duration::from_secs(30));
    let follower = chaos.cluster.regions.iter().find(|r| r.name != leader).unwrap();
    let c = client();
    let mut acked = Vec::new();
    for i in 0..2 {
        let img = new_image(16 * 1024);
        push(&c, &follower.url(), REPO, &format!("before{i}"), &img).expect("push before the reset");
        acked.push((format!("before{i}"), img));
    }
    for net in chaos.nets.values() {
        net.inbound.sever();
        net.outbound.sever();
    }
    let reset_at = Instant::now();
    eprintln!(
        "RTT {} ms: every inter-region connection reset at {} (leader {leader}, term {term})",
        rtt.as_millis(),
        utc_now()
    );
    let mut refusals = Vec::new();
    let mut i = 0;
    loop {
        let img = new_image(16 * 1024);
        let tag = format!("after{i}");
        i += 1;
        match push(&c, &follower.url(), REPO, &tag, &img) {
            Ok(()) => {
                acked.push((tag, img));
                break;
            }
            Err(e) => {
                assert_eq!(e.status, 503, "push after the reset: {e:?}");
                refusals.push(e);
            }
        }
        if reset_at.elapsed() > bound {
            panic!(
                "RTT {} ms, default timings: no write succeeded within {bound:?} after the connections were reset \
                 ({} refusals, last {:?}); views {:?}\n--- {leader} ---\n{}",
                rtt.as_millis(),
                refusals.len(),
                refusals.last(),
                chaos.raft_views(),
                log_lines(
                    chaos.region(&leader),
                    &["timed out", "timeout after", "vote is changing", "become leader"],
                    16
                )
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let recovered = reset_at.elapsed();
    for j in 0..3 {
        let img = new_image(16 * 1024);
        let tag = format!("steady{j}");
        push(&c, &follower.url(), REPO, &tag, &img).unwrap_or_else(|e| panic!("push {tag} after recovery: {e:?}"));
        acked.push((tag, img));
    }
    let (leader_after, term_after) = chaos.wait_agreed(Duration::from_secs(10));
    eprintln!(
        "RTT {} ms: writes worked again {} ms after the reset ({} refusals first); leader {leader} term {term} -> leader {leader_after} term {term_after}",
        rtt.as_millis(),
        recovered.as_millis(),
        refusals.len()
    );
    for r in &chaos.cluster.regions {
        for (tag, img) in &acked {
            within(Duration::from_secs(10), Duration::from_millis(50), &format!("{tag} in {}", r.name), || {
                serves(&c, &r.url(), REPO, tag, img)
            });
        }
    }
}

/// RTT ~150 ms between every pair of regions.
#[test]
fn wan_latency_default_timings() {
    wan_run(Duration::from_millis(75), 20);
}

/// RTT ~300 ms between every pair of regions, the top of the range the defaults promise.
#[test]
fn wan_latency_default_timings_300ms_rtt() {
    wan_run(Duration::from_millis(150), 10);
}

/// RTT ~150 ms: a reconnect (handshake + request = 2 round trips = 300 ms) fits in the
/// AppendEntries timeout (the 600 ms heartbeat).
#[test]
fn wan_connection_reset_default_timings() {
    wan_reset_run(Duration::from_millis(75), Duration::from_secs(20));
}

/// RTT ~300 ms: a reconnect takes 600 ms (handshake + request), as long as openraft's
/// AppendEntries timeout (the 600 ms heartbeat). Before the network layer let a timed-out
/// request finish in the background (keeping its connection for the next one), every attempt
/// timed out and started over while the followers, still receiving, never elected anyone else:
/// writes stayed refused for good. This test found that.
#[test]
fn wan_connection_reset_default_timings_300ms_rtt() {
    wan_reset_run(Duration::from_millis(150), Duration::from_secs(30));
}
