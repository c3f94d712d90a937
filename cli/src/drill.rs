//! `afreg drill SCENARIO`: a failover drill against a running cluster, with the workload, the
//! checkers and the report of `afreg_drill` (the same loop the chaos scenarios run). It shows
//! progress on stderr and prints the report (or, with `--json`, the report as data) on stdout;
//! it exits 1 when a checker failed.
//!
//! Against `afreg up`'s cluster (`--cluster`, its `cluster.json`) it finds the leader's
//! processes by their pid files and kills or pauses them; `afreg up` starts a killed node
//! again. Against real regions (`--region NAME=URL`, the admin's credentials) only the faults
//! that need no access to the regions' hosts can run: `watch` (the workload and every checker
//! while the operator breaks something by hand; the drill notices regions going down and the
//! leader being lost). The runbook says how.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use afreg_drill::history::Outage;
use afreg_drill::oci::Endpoint;
use afreg_drill::run::{self, Fault, Plan, Target};
use afreg_drill::workload::Mixed;
use anyhow::{bail, Context as _};
use nix::sys::signal::Signal;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// SIGKILL the leader's node (`afreg up` starts it again).
    LeaderKill,
    /// SIGSTOP the leader's node for `--hold`, then SIGCONT: it wakes up believing it leads.
    LeaderPause,
    /// SIGTERM every region's node in turn, the followers first and the leader last, each
    /// once the one before is back (`afreg up` starts each again), as an upgrade rolls out.
    RollingRestart,
    /// No fault of its own: the workload and every checker for `--hold` while you break
    /// something yourself; a region that stops answering counts as down, and the leader
    /// lost (down, or no longer leading) as a failover.
    Watch,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::LeaderKill => "leader-kill",
            Scenario::LeaderPause => "leader-pause",
            Scenario::RollingRestart => "rolling-restart",
            Scenario::Watch => "watch",
        }
    }
}

#[derive(clap::Args)]
pub struct DrillArgs {
    #[arg(value_enum)]
    scenario: Scenario,
    /// `afreg up`'s cluster.json: the regions, the admin user and the data directory.
    #[arg(long, default_value = ".data/cluster/cluster.json", conflicts_with = "regions")]
    cluster: PathBuf,
    /// A region of a deployed cluster as NAME=URL (repeat for each); only `watch` runs there.
    #[arg(long = "region", value_name = "NAME=URL")]
    regions: Vec<String>,
    /// The user the workload pushes as (with `--region`).
    #[arg(long, default_value = "admin")]
    user: String,
    /// Its password (with `--region`).
    #[arg(long, env = "AFREG_DRILL_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// The workload's seed: the clients' choices and bytes derive from it.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Rounds of the fault, each against whichever region leads then.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// How long a pause (or, for `watch`, each round) lasts, in seconds.
    #[arg(long, default_value_t = 8)]
    hold: u64,
    /// The repository the workload writes to (its tags and manifests are the drill's own).
    #[arg(long, default_value = "drill/app")]
    repo: String,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: DrillArgs) -> anyhow::Result<()> {
    let json = args.json;
    let report = tokio::task::spawn_blocking(move || drill(args)).await.context("the drill panicked")??;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    if !report.passed {
        let failed: Vec<&str> = report.verdicts.iter().filter(|v| !v.ok).map(|v| v.checker.as_str()).collect();
        bail!("drill {}: failed: {}", report.scenario, failed.join(", "));
    }
    Ok(())
}

fn drill(args: DrillArgs) -> anyhow::Result<afreg_drill::run::Report> {
    let mut plan = Plan::new(args.scenario.name(), args.seed);
    plan.rounds = args.rounds.max(1);
    plan.workload.repo = args.repo.clone();
    let hold = Duration::from_secs(args.hold);
    let mut target = if args.regions.is_empty() {
        LocalTarget::from_cluster_json(&args.cluster, args.scenario, hold)?
    } else {
        if args.scenario != Scenario::Watch {
            bail!(
                "{} needs the leader's processes: run it against `afreg up`'s cluster (--cluster), or break the leader's \
                 host yourself while `afreg drill watch` runs (docs/runbook-failover-drill.md)",
                args.scenario.name()
            );
        }
        let password = args.password.clone().context("--password (or AFREG_DRILL_PASSWORD) is needed with --region")?;
        let regions = args
            .regions
            .iter()
            .map(|r| {
                let (name, url) = r.split_once('=').with_context(|| format!("--region {r}: expected NAME=URL"))?;
                let mut e = Endpoint::open(name, url);
                e.credentials = Some((args.user.clone(), password.clone()));
                Ok(e)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        LocalTarget::new(regions, Vec::new(), Vec::new(), args.scenario, hold)?
    };
    let started = Instant::now();
    let progress = |line: &str| eprintln!("drill {:>6.1}s  {line}", started.elapsed().as_secs_f64());
    run::run(&plan, &mut target, &progress).map_err(|e| anyhow::anyhow!("drill {}: {e}", plan.scenario))
}

/// A running cluster: its regions, their Raft ids, and (for `afreg up`'s) their data
/// directories, where the nodes' pid files are.
struct LocalTarget {
    /// For the regions' `/status` (2 s per request).
    http: reqwest::blocking::Client,
    regions: Vec<Endpoint>,
    ids: Vec<(u64, String)>,
    dirs: Vec<(String, PathBuf)>,
    scenario: Scenario,
    hold: Duration,
}

impl LocalTarget {
    fn new(
        regions: Vec<Endpoint>,
        ids: Vec<(u64, String)>,
        dirs: Vec<(String, PathBuf)>,
        scenario: Scenario,
        hold: Duration,
    ) -> anyhow::Result<LocalTarget> {
        let http = reqwest::blocking::Client::builder().no_proxy().timeout(Duration::from_secs(2)).build()?;
        Ok(LocalTarget { http, regions, ids, dirs, scenario, hold })
    }

    fn from_cluster_json(path: &Path, scenario: Scenario, hold: Duration) -> anyhow::Result<LocalTarget> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading {} (is `afreg up` running?)", path.display()))?;
        let doc: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let user = doc["admin"]["username"].as_str().context("cluster.json has no admin.username")?.to_owned();
        let password = doc["admin"]["password"].as_str().context("cluster.json has no admin.password")?.to_owned();
        let mut t = LocalTarget::new(Vec::new(), Vec::new(), Vec::new(), scenario, hold)?;
        for (name, r) in doc["regions"].as_object().context("cluster.json has no regions")? {
            let url = r["url"].as_str().with_context(|| format!("cluster.json: region {name} has no url"))?;
            let mut e = Endpoint::open(name, url);
            e.credentials = Some((user.clone(), password.clone()));
            t.regions.push(e);
            t.ids.push((
                r["id"].as_u64().with_context(|| format!("cluster.json: region {name} has no id"))?,
                name.clone(),
            ));
            t.dirs.push((name.clone(), PathBuf::from(r["data_dir"].as_str().unwrap_or_default())));
        }
        Ok(t)
    }

    /// The pids of every process of `region`, from its pid files.
    fn pids(&self, region: &str) -> anyhow::Result<Vec<i32>> {
        let dir =
            &self.dirs.iter().find(|(n, _)| n == region).with_context(|| format!("no data directory for {region}"))?.1;
        let mut pids = Vec::new();
        for i in 0.. {
            let f = crate::up::pid_file(dir, i);
            let Ok(text) = std::fs::read_to_string(&f) else { break };
            pids.push(text.trim().parse().with_context(|| format!("{}: not a pid", f.display()))?);
        }
        if pids.is_empty() {
            bail!("no pid file in {} (is the cluster `afreg up`'s, and running?)", dir.display());
        }
        Ok(pids)
    }

    /// Every region's Raft id and name, from the first region whose cluster `/status` answers.
    fn raft_ids(&self) -> Vec<(u64, String)> {
        let c = reqwest::blocking::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build();
        for r in &self.regions {
            let v: Option<serde_json::Value> = c
                .as_ref()
                .ok()
                .and_then(|c| c.get(format!("{}/status", r.url)).send().ok())
                .and_then(|r| r.json().ok());
            let ids: Vec<(u64, String)> = v
                .iter()
                .flat_map(|v| v["regions"].as_array().cloned().unwrap_or_default())
                .filter_map(|r| Some((r["id"].as_u64()?, r["name"].as_str()?.to_owned())))
                .collect();
            if !ids.is_empty() {
                return ids;
            }
        }
        Vec::new()
    }

    fn status(&self, region: &Endpoint) -> Option<serde_json::Value> {
        self.http
            .get(format!("{}/status?scope=local", region.url))
            .send()
            .ok()
            .filter(|r| r.status().is_success())?
            .json()
            .ok()
    }

    /// Waits (≤ 60 s) until `region` answers its local status with a Raft view again.
    fn wait_back(&self, region: &str, progress: &dyn Fn(&str)) -> Result<(), String> {
        let e = self.regions.iter().find(|r| r.name == region).ok_or("no such region")?;
        let started = Instant::now();
        let mut said = Instant::now();
        while self.status(e).is_none_or(|s| s["raft"]["term"].is_null()) {
            if started.elapsed() > Duration::from_secs(60) {
                return Err(format!("{region} did not come back within 60 s (does `afreg up` still run?)"));
            }
            if said.elapsed() > Duration::from_secs(2) {
                progress(&format!("waiting for {region} to come back ({:.0?})", started.elapsed()));
                said = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        progress(&format!("{region} is back after {:.1?}", started.elapsed()));
        Ok(())
    }

    fn signal(&self, region: &str, sig: Signal) -> Result<Vec<i32>, String> {
        let pids = self.pids(region).map_err(|e| format!("{e:#}"))?;
        for pid in &pids {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), sig)
                .map_err(|e| format!("{sig} to {region}'s pid {pid}: {e}"))?;
        }
        Ok(pids)
    }

    /// Waits (≤ 30 s, a node's drain and shutdown) until none of `pids` runs.
    fn wait_exited(&self, region: &str, pids: &[i32]) -> Result<(), String> {
        let started = Instant::now();
        while pids.iter().any(|p| nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), None).is_ok()) {
            if started.elapsed() > Duration::from_secs(30) {
                return Err(format!("{region}'s node (pid {pids:?}) did not exit within 30 s of SIGTERM"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    fn hold(&self, what: &str, progress: &dyn Fn(&str)) {
        let started = Instant::now();
        while started.elapsed() < self.hold {
            std::thread::sleep(Duration::from_secs(2).min(self.hold.saturating_sub(started.elapsed())));
            progress(&format!("{what}, {:.0?} of {:?}", started.elapsed(), self.hold));
        }
    }
}

impl Target for LocalTarget {
    fn regions(&self) -> Vec<Endpoint> {
        self.regions.clone()
    }

    /// Every region that answers names the same leader at the same term, and they are a
    /// majority (a region down by hand in a `watch` drill does not answer).
    fn wait_leader(&mut self, bound: Duration) -> Result<(String, u64), String> {
        let started = Instant::now();
        if self.ids.is_empty() {
            self.ids = self.raft_ids();
        }
        loop {
            let views: Vec<(u64, Option<u64>)> = self
                .regions
                .iter()
                .filter_map(|r| {
                    self.status(r).and_then(|s| Some((s["raft"]["term"].as_u64()?, s["raft"]["leader"].as_u64())))
                })
                .collect();
            if let Some((term, Some(leader))) = views.first().copied() {
                if views.len() * 2 > self.regions.len() && views.iter().all(|v| *v == (term, Some(leader))) {
                    let name = self
                        .ids
                        .iter()
                        .find(|(id, _)| *id == leader)
                        .map(|(_, n)| n.clone())
                        .unwrap_or_else(|| format!("id {leader}"));
                    return Ok((name, term));
                }
            }
            if started.elapsed() > bound {
                return Err(format!(
                    "the regions did not agree on a leader within {bound:?}: (term, leader) {views:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn inject(&mut self, leader: &str, work: &Mixed, progress: &dyn Fn(&str)) -> Result<Fault, String> {
        let at = work.now();
        match self.scenario {
            Scenario::Watch => Ok(self.watch(leader, work, progress)),
            Scenario::LeaderKill => {
                let pids = self.signal(leader, Signal::SIGKILL)?;
                progress(&format!("SIGKILLed the leader, {leader} (pid {pids:?})"));
                self.wait_back(leader, progress)?;
                Ok(Fault { leader_lost_at: Some(at), outages: vec![self.outage(leader, at, work)] })
            }
            Scenario::LeaderPause => {
                let pids = self.signal(leader, Signal::SIGSTOP)?;
                progress(&format!("SIGSTOPped the leader, {leader} (pid {pids:?})"));
                self.hold(&format!("{leader} paused"), progress);
                self.signal(leader, Signal::SIGCONT)?;
                progress(&format!("SIGCONTed {leader}"));
                self.wait_back(leader, progress)?;
                Ok(Fault { leader_lost_at: Some(at), outages: vec![self.outage(leader, at, work)] })
            }
            Scenario::RollingRestart => {
                let names = self.regions.iter().map(|r| r.name.clone()).collect();
                run::rolling_restart(names, leader, work, |name, at| {
                    let pids = self.signal(name, Signal::SIGTERM)?;
                    progress(&format!("SIGTERMed {name} (pid {pids:?})"));
                    self.wait_exited(name, &pids)?;
                    self.wait_back(name, progress)?;
                    let outage = self.outage(name, at, work);
                    let (now_leads, term) = self.wait_leader(Duration::from_secs(30))?;
                    progress(&format!("{name} restarted; leader {now_leads} (term {term})"));
                    Ok(outage)
                })
            }
        }
    }
}

impl LocalTarget {
    /// For `--hold`, every 500 ms: which regions answer their local status (one that does not
    /// is down: an outage), and whether `leader` still leads (the first time it does not is
    /// when the leader was lost).
    fn watch(&self, leader: &str, work: &Mixed, progress: &dyn Fn(&str)) -> Fault {
        let started = Instant::now();
        let mut down: Vec<(String, Duration)> = Vec::new();
        let (mut outages, mut lost_at) = (Vec::new(), None);
        // When each region was last seen answering (and the leader leading): a region found
        // down was down since then, as far as anyone can tell.
        let mut seen: Vec<Duration> = vec![work.now(); self.regions.len()];
        let mut led = work.now();
        let mut said = Instant::now();
        while started.elapsed() < self.hold {
            for (k, r) in self.regions.iter().enumerate() {
                let s = self.status(r);
                let up = s.as_ref().is_some_and(|s| !s["raft"]["term"].is_null());
                if r.name == leader && lost_at.is_none() {
                    if s.as_ref().is_some_and(|s| s["raft"]["role"] == "leader") {
                        led = work.now();
                    } else {
                        lost_at = Some(led);
                        progress(&format!("the leader, {leader}, is lost"));
                    }
                }
                let was = down.iter().position(|(n, _)| *n == r.name);
                match (up, was) {
                    (true, None) => seen[k] = work.now(),
                    (false, None) => {
                        progress(&format!("{} does not answer", r.name));
                        down.push((r.name.clone(), seen[k]));
                    }
                    (true, Some(i)) => {
                        let (name, from) = down.remove(i);
                        progress(&format!("{name} answers again"));
                        outages.push(Outage { region: name, from, to: work.now() + Duration::from_secs(2) });
                        seen[k] = work.now();
                    }
                    (false, Some(_)) => {}
                }
            }
            if said.elapsed() >= Duration::from_secs(2) {
                progress(&format!("watching, {:.0?} of {:?}", started.elapsed(), self.hold));
                said = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        // Still down when the watch ends: down until the drill ends.
        outages.extend(down.into_iter().map(|(region, from)| Outage { region, from, to: Duration::MAX }));
        Fault { leader_lost_at: lost_at, outages }
    }

    /// The outage of `region`'s own process from `from` until now (it answers again), plus
    /// the time its clients' requests in flight may still take to be answered.
    fn outage(&self, region: &str, from: Duration, work: &Mixed) -> Outage {
        Outage { region: region.to_owned(), from, to: work.now() + Duration::from_secs(2) }
    }
}
