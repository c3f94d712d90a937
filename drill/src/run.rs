//! One drill from start to verdict, whatever the cluster and the fault: the mixed workload runs
//! on every region, a [`Target`] hits whichever region leads with its fault for each round, and
//! once it has healed the checkers of [`crate::history`] rule on the whole history. The chaos
//! scenarios (regions behind fault-injecting proxies) and `afreg drill` (a running cluster)
//! are two targets of this one loop.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::history::{self, History, Outage};
use crate::oci::Endpoint;
use crate::workload::{Mixed, MixedConfig};

/// The bounds a drill holds the cluster to.
#[derive(Clone, Debug)]
pub struct Bounds {
    /// The first write acknowledged after the leader is lost comes within this (issue 14).
    pub failover: Duration,
    /// No request outside an outage of its own region takes longer: the write timeout (10 s)
    /// plus slack for a slow machine.
    pub request: Duration,
    /// Regions hold the same tags and every pin this soon after the workload stops.
    pub converge: Duration,
    /// Every acknowledged manifest reads back from every region within this.
    pub readable: Duration,
    /// The linearizability search decides within this, or fails.
    pub linearizable: Duration,
    /// GC's grace, or less: a blob uploaded this recently is never collected. 1 s, the least
    /// any cluster is configured with (the drills' own), holds for every cluster.
    pub gc_grace: Duration,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            failover: Duration::from_secs(6),
            request: Duration::from_secs(12),
            converge: Duration::from_secs(60),
            readable: Duration::from_secs(30),
            linearizable: Duration::from_secs(120),
            gc_grace: Duration::from_secs(1),
        }
    }
}

/// What a drill does: its scenario's name, seed, rounds and timings.
#[derive(Clone, Debug)]
pub struct Plan {
    pub scenario: String,
    pub seed: u64,
    /// Rounds of the fault, each hitting whichever region leads then.
    pub rounds: usize,
    /// The workload runs this long before the first fault.
    pub warm_up: Duration,
    /// And this long after each round healed.
    pub settle: Duration,
    pub workload: MixedConfig,
    pub bounds: Bounds,
}

impl Plan {
    pub fn new(scenario: &str, seed: u64) -> Plan {
        Plan {
            scenario: scenario.to_owned(),
            seed,
            rounds: 1,
            warm_up: Duration::from_secs(4),
            settle: Duration::from_secs(3),
            workload: MixedConfig { seed, ..MixedConfig::default() },
            bounds: Bounds::default(),
        }
    }
}

/// What one round of a fault did: when the leader was lost (`None`: the fault does not take
/// the leader away), and when a region's own process was down or paused (its clients can only
/// wait then, and its pulls may fail).
pub struct Fault {
    pub leader_lost_at: Option<Duration>,
    pub outages: Vec<Outage>,
}

/// A rolling restart, as an upgrade rolls out: `restart(region, at)` each region in turn (it
/// returns once the region is back and the cluster agrees on a leader, with the region's
/// outage from `at`), every follower first and `leader` last, whose restart loses the leader.
pub fn rolling_restart(
    regions: Vec<String>,
    leader: &str,
    work: &Mixed,
    mut restart: impl FnMut(&str, Duration) -> Result<Outage, String>,
) -> Result<Fault, String> {
    let mut order: Vec<String> = regions.into_iter().filter(|n| n != leader).collect();
    order.push(leader.to_owned());
    let (mut outages, mut lost_at) = (Vec::new(), None);
    for name in order {
        let at = work.now();
        if name == leader {
            lost_at = Some(at);
        }
        outages.push(restart(&name, at)?);
    }
    Ok(Fault { leader_lost_at: lost_at, outages })
}

/// A cluster a drill runs against, and the fault it injects.
pub trait Target {
    /// Every region now, as clients reach it: the workload runs on those there when it starts,
    /// the checkers read those there when it ends (a drill may add and remove regions).
    fn regions(&self) -> Vec<Endpoint>;
    /// Waits until every region names the same leader at the same term: (its name, the term).
    fn wait_leader(&mut self, bound: Duration) -> Result<(String, u64), String>;
    /// One round of the fault against `leader`, healed before it returns.
    fn inject(&mut self, leader: &str, work: &Mixed, progress: &dyn Fn(&str)) -> Result<Fault, String>;
    /// Regions converged (tags and pins): how long it took. By default through the public API.
    fn converged(&self, repo: &str, bound: Duration) -> Result<Duration, String> {
        history::check_converged_api(&self.regions(), repo, bound)
    }
}

/// A checker's name and verdict.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub checker: String,
    pub ok: bool,
    pub detail: String,
}

/// One drill's report: the figures of the closing note's table, the errors clients saw by
/// kind, and every checker's verdict. Serialised as `afreg drill --json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    pub rounds: usize,
    pub ops: usize,
    pub acknowledged: usize,
    pub failed: usize,
    pub unknown: usize,
    /// Acknowledged writes that did not read back (0, or the checker failed).
    pub lost: usize,
    /// `ok` or `violated`.
    pub linearizable: String,
    /// Per round: from the leader lost to the first write acknowledged after.
    pub failover_ms: Vec<u64>,
    pub failover_p50_ms: Option<u64>,
    pub failover_p99_ms: Option<u64>,
    pub failover_bound_ms: u64,
    /// From the workload stopped to tags and pins identical everywhere.
    pub converged_ms: Option<u64>,
    pub errors: BTreeMap<String, usize>,
    /// The first error of each kind.
    pub examples: BTreeMap<String, String>,
    pub verdicts: Vec<Verdict>,
    /// Whether every checker passed and every failover was within its bound.
    pub passed: bool,
    /// Every write the clients sent, with how it ended, in invoke order: what a test holds up
    /// against what else saw the writes (a notification receiver). A write acknowledged that
    /// changed nothing (a tag delete answered 404) is left out: nothing else saw it. Not in the
    /// JSON.
    #[serde(skip)]
    pub writes: Vec<(history::Op, history::Outcome)>,
}

impl Report {
    /// The report as `afreg drill` and the chaos scenarios print it.
    pub fn text(&self) -> String {
        let ms = |v: Option<u64>| v.map(|m| format!("{:.1} s", m as f64 / 1000.0)).unwrap_or_else(|| "-".into());
        let mut s = format!(
            "drill {} (seed {}, {} round{}): {}\n",
            self.scenario,
            self.seed,
            self.rounds,
            if self.rounds == 1 { "" } else { "s" },
            if self.passed { "PASSED" } else { "FAILED" }
        );
        s += &format!(
            "  operations {}, writes acknowledged {}, refused {}, unknown {}, lost {}\n",
            self.ops, self.acknowledged, self.failed, self.unknown, self.lost
        );
        s += &format!(
            "  failover: p50 {}, p99 {} (bound {:.1} s) over {} round{}\n",
            ms(self.failover_p50_ms),
            ms(self.failover_p99_ms),
            self.failover_bound_ms as f64 / 1000.0,
            self.failover_ms.len(),
            if self.failover_ms.len() == 1 { "" } else { "s" }
        );
        s += &format!("  converged (tags and pins) {} after the workload stopped\n", ms(self.converged_ms));
        if self.errors.is_empty() {
            s += "  errors clients saw: none\n";
        } else {
            let kinds: Vec<String> = self.errors.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
            s += &format!("  errors clients saw: {}\n", kinds.join(", "));
            for (kind, e) in &self.examples {
                s += &format!("    first {kind}: {}\n", e.chars().take(300).collect::<String>());
            }
        }
        for v in &self.verdicts {
            s += &format!("  {:<15} {}  {}\n", v.checker, if v.ok { "ok    " } else { "FAILED" }, v.detail);
        }
        s
    }

    /// The row of the drills' table (docs/drills.md; its header is in scripts/drills.sh).
    pub fn row(&self) -> String {
        let ms = |v: Option<u64>| v.map(|m| format!("{:.1}", m as f64 / 1000.0)).unwrap_or_else(|| "-".into());
        format!(
            "| {} | {},{} | {} | {} | {} | {} | {} | {}/{} s | {} ms |",
            self.scenario,
            self.seed,
            self.rounds,
            self.ops,
            self.acknowledged,
            self.unknown,
            self.lost,
            self.linearizable,
            ms(self.failover_p50_ms),
            ms(self.failover_p99_ms),
            self.converged_ms.map(|m| m.to_string()).unwrap_or_else(|| "-".into())
        )
    }
}

/// p50 and p99 (nearest rank) of some durations.
pub fn percentiles(v: &[Duration]) -> Option<(Duration, Duration)> {
    let mut v = v.to_vec();
    v.sort();
    if v.is_empty() {
        return None;
    }
    let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    Some((at(0.5), at(0.99)))
}

/// Runs `plan` against `target`: the workload, a fault per round, the checkers. `progress`
/// gets a line at every step (and a line of totals every few seconds while a fault is on).
pub fn run(plan: &Plan, target: &mut dyn Target, progress: &dyn Fn(&str)) -> Result<Report, String> {
    let regions = target.regions();
    let (leader, term) = target.wait_leader(Duration::from_secs(30))?;
    progress(&format!(
        "{}: seed {}, {} round(s); leader {leader} (term {term})",
        plan.scenario, plan.seed, plan.rounds
    ));
    let work = Mixed::start(&regions, &plan.workload);
    let totals = |work: &Mixed| {
        let (ops, acked, errors) = work.progress();
        format!("{:>6.1?}: {ops} operations, {acked} writes acknowledged, {errors} errors", work.now())
    };
    std::thread::sleep(plan.warm_up);
    progress(&totals(&work));
    let (mut outages, mut lost_at) = (Vec::new(), Vec::new());
    for round in 0..plan.rounds {
        let (leader, term) = match target.wait_leader(Duration::from_secs(30)) {
            Ok(l) => l,
            Err(e) => {
                work.stop();
                return Err(e);
            }
        };
        progress(&format!("round {}/{}: leader {leader} (term {term}) at {:.1?}", round + 1, plan.rounds, work.now()));
        let tick = |line: &str| progress(&format!("{line} [{}]", totals(&work)));
        let f = match target.inject(&leader, &work, &tick) {
            Ok(f) => f,
            Err(e) => {
                work.stop();
                return Err(e);
            }
        };
        outages.extend(f.outages);
        lost_at.extend(f.leader_lost_at);
        match target.wait_leader(Duration::from_secs(30)) {
            Ok((leader, term)) => {
                progress(&format!("round {}: healed at {:.1?}; leader {leader} (term {term})", round + 1, work.now()))
            }
            Err(e) => {
                work.stop();
                return Err(e);
            }
        }
        std::thread::sleep(plan.settle);
        progress(&totals(&work));
    }
    let h = work.stop();
    progress(&format!("workload stopped: {} operations; checking", h.events.len()));
    // The regions now: a drill may have added or removed some.
    Ok(judge(plan, target, &target.regions(), h, &outages, &lost_at, progress))
}

/// The checkers' verdicts on the history, and the report.
fn judge(
    plan: &Plan,
    target: &dyn Target,
    regions: &[Endpoint],
    h: History,
    outages: &[Outage],
    lost_at: &[Duration],
    progress: &dyn Fn(&str),
) -> Report {
    let b = &plan.bounds;
    let repo = &plan.workload.repo;
    let mut verdicts = Vec::new();
    let mut add = |checker: &str, r: Result<String, String>| {
        let (ok, detail) = match r {
            Ok(s) => (true, s),
            Err(e) => (false, e),
        };
        progress(&format!("{checker}: {}", if ok { "ok" } else { "FAILED" }));
        verdicts.push(Verdict { checker: checker.to_owned(), ok, detail });
    };
    // Convergence first: its time is from the workload's end only if nothing runs before it
    // (reading back every acknowledged manifest from every region takes seconds).
    let converged = target.converged(repo, b.converge);
    let converged_ms = converged.as_ref().ok().map(|d| d.as_millis() as u64);
    add(
        "converged",
        converged.map(|d| format!("tags and pins identical in every region {d:.1?} after the workload stopped")),
    );
    let readable = history::check_acked_readable(&h, regions, repo, b.readable);
    let lost = if readable.is_err() { h.unreadable(regions, repo) } else { 0 };
    add("acked-readable", readable);
    let lin = history::check_tags_linearizable(&h, b.linearizable);
    let linearizable = if lin.is_ok() { "ok" } else { "violated" }.to_owned();
    add("linearizable", lin);
    add("regional-reads", history::check_regional_reads(&h));
    add("available", history::check_available(&h, outages));
    add("fail-fast", history::check_fail_fast(&h, outages, b.request));
    add("no-early-gc", history::check_no_early_gc(&h, b.gc_grace));
    let mut failovers = Vec::new();
    for at in lost_at {
        match h.first_ack_after(*at) {
            Some((took, via)) => {
                progress(&format!("first write acknowledged {took:.1?} after the leader was lost, via {via}"));
                failovers.push(took);
            }
            None => add("failover", Err(format!("no write was acknowledged after the leader was lost at {at:.1?}"))),
        }
    }
    let slow: Vec<String> = failovers.iter().filter(|f| **f > b.failover).map(|f| format!("{f:.1?}")).collect();
    if !lost_at.is_empty() && slow.is_empty() && failovers.len() == lost_at.len() {
        add("failover", Ok(format!("every round's first acknowledged write within {:.1?}", b.failover)));
    } else if !slow.is_empty() {
        add(
            "failover",
            Err(format!(
                "first acknowledged write after the leader was lost took {} (bound {:.1?})",
                slow.join(", "),
                b.failover
            )),
        );
    }
    let c = h.counts();
    let pct = percentiles(&failovers);
    let passed = verdicts.iter().all(|v| v.ok);
    Report {
        scenario: plan.scenario.clone(),
        seed: plan.seed,
        rounds: plan.rounds,
        ops: c.ops,
        acknowledged: c.acked_writes,
        failed: c.failed,
        unknown: c.unknown,
        lost,
        linearizable,
        failover_ms: failovers.iter().map(|d| d.as_millis() as u64).collect(),
        failover_p50_ms: pct.map(|p| p.0.as_millis() as u64),
        failover_p99_ms: pct.map(|p| p.1.as_millis() as u64),
        failover_bound_ms: b.failover.as_millis() as u64,
        converged_ms,
        errors: c.errors,
        examples: c.examples,
        verdicts,
        passed,
        writes: h
            .events
            .iter()
            .filter(|e| e.op.is_write() && !e.changed_nothing)
            .map(|e| (e.op.clone(), e.outcome.clone()))
            .collect(),
    }
}
