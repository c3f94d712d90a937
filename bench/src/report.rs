//! What a run found, as data: every figure with its samples, the targets and their
//! configuration, the machine, and the goals of the speed issue, each with its ratio. The JSON
//! file is this value; the Markdown table and the charts are drawn from it and nothing else.

use serde::{Deserialize, Serialize};

/// One benchmark run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// RFC 3339, when the run started.
    pub started: String,
    pub quick: bool,
    pub rounds: usize,
    /// Blob sizes of the run, in bytes; the last is the one the goals are judged on.
    pub blob_sizes: Vec<u64>,
    pub machine: Machine,
    pub targets: Vec<TargetInfo>,
    pub figures: Vec<Figure>,
    pub goals: Vec<Goal>,
    /// How long the run took, in seconds.
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub memory_gib: f64,
    pub kernel: String,
}

/// A registry (or a physical reference) that the run measured, or could not.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetInfo {
    /// Stable id used in figures: `afreg`, `afreg-token`, `afreg-defaults`, `afreg-cluster`,
    /// `distribution-v3`, `distribution-2.8`, `zot`, `reference`.
    pub id: String,
    pub label: String,
    /// `afreg`, `peer` or `reference`.
    pub role: String,
    pub available: bool,
    /// How it ran (storage, logs, auth), or why it could not.
    pub configuration: String,
}

/// One measured quantity for one target: every sample, and their median and spread.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Figure {
    /// e.g. `pull/1GiB`, `manifest-get/32`, `replication-lag-p99/eu`.
    pub workload: String,
    /// The table and chart it belongs to: `blobs`, `images`, `manifests`, `limits`, `listing`,
    /// `cluster`, `physical`, `memory`.
    pub group: String,
    pub target: String,
    /// `MiB/s`, `req/s`, `ms`, `MiB`, `% refused`.
    pub unit: String,
    pub higher_is_better: bool,
    pub samples: Vec<f64>,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Figure {
    pub fn new(
        workload: &str,
        group: &str,
        target: &str,
        unit: &str,
        higher_is_better: bool,
        samples: Vec<f64>,
    ) -> Figure {
        let (median, min, max) = stats(&samples);
        Figure {
            workload: workload.into(),
            group: group.into(),
            target: target.into(),
            unit: unit.into(),
            higher_is_better,
            samples,
            median,
            min,
            max,
        }
    }
}

/// One goal of the speed issue: the ratio the run measured and whether it is met.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Goal {
    pub goal: String,
    /// The figures the ratio is taken from, in words.
    pub measured: String,
    pub ratio: Option<f64>,
    /// The ratio the goal asks for (the ratio is "at least" this, or "at most" for `at_most`).
    pub wanted: f64,
    pub at_most: bool,
    pub met: Option<bool>,
}

/// Median (the mean of the middle two for an even count), minimum and maximum; NaN for none.
pub fn stats(samples: &[f64]) -> (f64, f64, f64) {
    if samples.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    (median, v[0], v[n - 1])
}

/// The `p`th percentile (nearest rank) of some samples.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// A size in bytes as the workloads name it: `1MiB`, `100MiB`, `1GiB`.
pub fn size_label(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    if bytes >= 1 << 30 && bytes.is_multiple_of(1 << 30) {
        format!("{}GiB", bytes >> 30)
    } else if bytes.is_multiple_of(MIB) {
        format!("{}MiB", bytes / MIB)
    } else {
        format!("{}KiB", bytes / 1024)
    }
}

impl Report {
    pub fn figure(&self, workload: &str, target: &str) -> Option<&Figure> {
        self.figures.iter().find(|f| f.workload == workload && f.target == target && !f.samples.is_empty())
    }

    pub fn target(&self, id: &str) -> Option<&TargetInfo> {
        self.targets.iter().find(|t| t.id == id)
    }

    /// The peers that ran.
    pub fn peers(&self) -> Vec<&TargetInfo> {
        self.targets.iter().filter(|t| t.role == "peer" && t.available).collect()
    }

    /// The best peer figure for a workload (the highest, or the lowest where lower is better).
    pub fn best_peer(&self, workload: &str) -> Option<&Figure> {
        let figs = self.peers().into_iter().filter_map(|p| self.figure(workload, &p.id));
        figs.max_by(|a, b| {
            let (x, y) = if a.higher_is_better { (a.median, b.median) } else { (b.median, a.median) };
            x.total_cmp(&y)
        })
    }

    /// `target`'s figure over the best peer's, as "how many times better" (so > 1 is ahead
    /// whether higher or lower is better).
    pub fn vs_best_peer(&self, workload: &str, target: &str) -> Option<(f64, &Figure)> {
        let ours = self.figure(workload, target)?;
        let peer = self.best_peer(workload)?;
        Some((better_ratio(ours, peer), peer))
    }

    /// The goal that `target`'s `workload` is at least `wanted` times the faster peer's.
    fn vs_peer(&self, goal: &str, workload: &str, target: &str, wanted: f64) -> Goal {
        let r = self.vs_best_peer(workload, target);
        let measured = match &r {
            Some((_, p)) => format!(
                "{target} {} vs {} {} {}",
                fmt(self.figure(workload, target).map(|f| f.median)),
                p.target,
                fmt(Some(p.median)),
                p.unit
            ),
            None => format!("{workload}: a figure is missing"),
        };
        goal_of(goal, measured, r.map(|r| r.0), wanted, false)
    }

    /// The first workload recorded whose name starts with `prefix` (one whose size the run
    /// chose), or the prefix itself, which no figure has.
    fn workload_named(&self, prefix: &str) -> String {
        self.figures.iter().map(|f| &f.workload).find(|w| w.starts_with(prefix)).cloned().unwrap_or(prefix.into())
    }

    /// Fills `goals` from the figures.
    pub fn judge(&mut self) {
        let big = size_label(*self.blob_sizes.last().unwrap_or(&0));
        let small = size_label(*self.blob_sizes.first().unwrap_or(&0));
        let mut goals = vec![
            self.vs_peer(&format!("pull {big} ≥ 1.0× the faster peer"), &format!("pull/{big}"), "afreg", 1.0),
            self.vs_peer(
                &format!("push {big} monolithic (POST + PUT) ≥ 1.0× the faster peer"),
                &format!("push-mono/{big}"),
                "afreg",
                1.0,
            ),
            self.vs_peer(
                &format!("push {big} streamed (one PATCH) ≥ 1.0× the faster peer"),
                &format!("push-streamed/{big}"),
                "afreg",
                1.0,
            ),
            self.vs_peer("manifest GET at 32 connections ≥ 2× the faster peer", "manifest-get/32", "afreg", 2.0),
            self.vs_peer(
                "manifest GET at 32 connections, with a token, ≥ 2× the faster peer (anonymous)",
                "manifest-get/32",
                "afreg-token",
                2.0,
            ),
        ];
        // Memory: the peak RSS with the big blob over the peak with the small one.
        let rss = |size: &str| self.figure(&format!("node-rss/{size}"), "afreg").map(|f| f.median);
        let (r_big, r_small) = (rss(&big), rss(&small));
        let ratio = match (r_big, r_small) {
            (Some(b), Some(s)) if s > 0.0 => Some(b / s),
            _ => None,
        };
        goals.push(goal_of(
            &format!("node RSS flat in blob size ({small} → {big}): peak RSS ratio ≤ 1.5"),
            format!("peak RSS {} MiB at {small}, {} MiB at {big}", fmt(r_small), fmt(r_big)),
            ratio,
            1.5,
            true,
        ));
        for region in ["eu", "asia"] {
            let f = self.figure(&format!("replication-lag-p99/{region}"), "afreg-cluster").map(|f| f.median);
            goals.push(goal_of(
                &format!("replication lag p99 < 50 ms on loopback (us → {region})"),
                format!("p99 {} ms", fmt(f)),
                f,
                50.0,
                true,
            ));
        }
        let pin = self.figure(&format!("cross-region-pin/{big}"), "afreg-cluster").map(|f| f.median);
        let raw = self.figure(&format!("cross-region-pin/{big}"), "reference").map(|f| f.median);
        goals.push(goal_of(
            "cross-region pin ≥ 0.8× raw Kubo-to-Kubo",
            format!("eu pinning alone {} MiB/s, raw Kubo→Kubo {} MiB/s", fmt(pin), fmt(raw)),
            pin.zip(raw).map(|(p, r)| p / r),
            0.8,
            false,
        ));
        goals.extend(self.defaults_goals());
        goals.extend(self.variant_goals());
        goals.extend(self.mirror_goals());
        self.goals = goals;
    }

    /// The pull-through cache's goals at each size: a cold pull (fetched upstream as it
    /// streams) ≥ 0.8× pulling the same blob from the upstream directly, and a warm one as fast
    /// as afreg's own pull of a pushed blob (≥ 0.9×, the noise of one run on two cores).
    fn mirror_goals(&self) -> Vec<Goal> {
        let median = |w: &str, t: &str| self.figure(w, t).map(|f| f.median);
        let mut goals = vec![];
        for &size in &self.blob_sizes {
            let sz = size_label(size);
            let (cold, direct) = (
                median(&format!("mirror-cold/{sz}"), "afreg-mirror"),
                median(&format!("mirror-direct/{sz}"), "distribution-v3"),
            );
            goals.push(goal_of(
                &format!("pull-through cache: cold pull {sz} ≥ 0.8× pulling it from the upstream directly"),
                format!("afreg-mirror {} vs distribution-v3 {} MiB/s", fmt(cold), fmt(direct)),
                cold.zip(direct).filter(|(_, d)| *d > 0.0).map(|(c, d)| c / d),
                0.8,
                false,
            ));
            let (warm, local) =
                (median(&format!("mirror-warm/{sz}"), "afreg-mirror"), median(&format!("pull/{sz}"), "afreg"));
            goals.push(goal_of(
                &format!("pull-through cache: warm pull {sz} ≥ 0.9× afreg's pull of a pushed blob"),
                format!("afreg-mirror {} vs afreg {} MiB/s", fmt(warm), fmt(local)),
                warm.zip(local).filter(|(_, l)| *l > 0.0).map(|(w, l)| w / l),
                0.9,
                false,
            ));
        }
        goals
    }

    /// The A/B goals, each variant against `afreg` in the same rounds: notifications slow no
    /// push by more than 10%, and counting pulls slows no pull by more than 5%.
    fn variant_goals(&self) -> Vec<Goal> {
        let ratio = |workload: &str, a: &str, b: &str| {
            let (fa, fb) = (self.figure(workload, a).map(|f| f.median), self.figure(workload, b).map(|f| f.median));
            let measured = format!("{a} {} vs {b} {} MiB/s", fmt(fa), fmt(fb));
            (measured, fa.zip(fb).filter(|(_, b)| *b > 0.0).map(|(a, b)| a / b))
        };
        let mut goals = vec![];
        let mut pushes: Vec<String> = vec![];
        let mut pulls: Vec<String> = vec![];
        for &size in &self.blob_sizes {
            let sz = size_label(size);
            pushes.extend(["push-mono", "push-streamed", "push-chunked"].map(|w| format!("{w}/{sz}")));
            pulls.push(format!("pull/{sz}"));
        }
        pushes.push(crate::crane::workload("push"));
        pulls.push(self.workload_named("pull-32x"));
        pulls.push(crate::crane::workload("pull"));
        for w in pushes {
            let (measured, r) = ratio(&w, "afreg-notify", "afreg");
            goals.push(goal_of(&format!("notifications on: {w} ≥ 0.9× afreg without them"), measured, r, 0.9, false));
        }
        for w in pulls {
            let (measured, r) = ratio(&w, "afreg", "afreg-no-usage");
            goals.push(goal_of(
                &format!("pull counting on: {w} ≥ 0.95× afreg counting none"),
                measured,
                r,
                0.95,
                false,
            ));
        }
        goals
    }

    /// The goals of afreg as a user runs it (`afreg-defaults`: private, every request with a
    /// token, request-rate limits on), against the faster peer (anonymous, unlimited).
    fn defaults_goals(&self) -> Vec<Goal> {
        const D: &str = "afreg-defaults";
        let big = size_label(*self.blob_sizes.last().unwrap_or(&0));
        let mut goals = vec![self.vs_peer(
            "afreg with its defaults: manifest GET at 32 connections ≥ 2× the faster peer",
            "manifest-get/32",
            D,
            2.0,
        )];
        for &size in &self.blob_sizes {
            let sz = size_label(size);
            for (workload, what) in [
                ("pull", "pull"),
                ("push-mono", "push monolithic"),
                ("push-streamed", "push streamed"),
                ("push-chunked", "push chunked"),
            ] {
                let goal = format!("afreg with its defaults: {what} {sz} ≥ 1.0× the faster peer");
                goals.push(self.vs_peer(&goal, &format!("{workload}/{sz}"), D, 1.0));
            }
        }
        // The big pulls (every size but the smallest: 100 MiB and 1 GiB in a full run).
        let cached = self.figure(&format!("page-cache-read/{big}"), "reference").map(|f| f.median);
        for &size in self.blob_sizes.iter().skip(1) {
            let sz = size_label(size);
            let pull = format!("pull/{sz}");
            goals.push(self.vs_peer(
                &format!("afreg with its defaults: pull {sz} ≥ 1.3× the faster peer"),
                &pull,
                D,
                1.3,
            ));
            let pulled = self.figure(&pull, D).map(|f| f.median);
            goals.push(goal_of(
                &format!("afreg with its defaults: pull {sz} ≥ 0.5× reading a cached file of {big} (`cat`, piped)"),
                format!("{D} {} vs page-cache-read/{big} {} MiB/s", fmt(pulled), fmt(cached)),
                pulled.zip(cached).map(|(p, c)| p / c),
                0.5,
                false,
            ));
        }
        let (clients, blobs) = (crate::AT_ONCE_CLIENTS, crate::AT_ONCE_BLOBS);
        let at_once = self.workload_named(&format!("pull-{clients}x{blobs}/"));
        let goal =
            format!("afreg with its defaults: {clients} clients pulling {blobs} blobs at once ≥ 1.2× the faster peer");
        goals.push(self.vs_peer(&goal, &at_once, D, 1.2));
        for verb in ["push", "pull"] {
            let workload = crate::crane::workload(verb);
            goals.push(self.vs_peer(
                &format!("afreg with its defaults: crane {verb} of an image ≥ 1.0× the faster peer"),
                &workload,
                D,
                1.0,
            ));
        }
        let peak = self
            .figures
            .iter()
            .filter(|f| f.target == D && f.workload.starts_with("node-rss/") && !f.samples.is_empty())
            .map(|f| f.max)
            .reduce(f64::max);
        goals.push(goal_of(
            "afreg with its defaults: node peak RSS < 150 MiB",
            format!("highest peak RSS of any round and workload {} MiB", fmt(peak)),
            peak,
            150.0,
            true,
        ));
        goals
    }
}

/// How many times better `a` is than `b` (> 1 means `a` is ahead).
pub fn better_ratio(a: &Figure, b: &Figure) -> f64 {
    if a.higher_is_better {
        a.median / b.median
    } else {
        b.median / a.median
    }
}

fn goal_of(goal: &str, measured: String, ratio: Option<f64>, wanted: f64, at_most: bool) -> Goal {
    let met = ratio.map(|r| if at_most { r <= wanted } else { r >= wanted });
    Goal { goal: goal.into(), measured, ratio, wanted, at_most, met }
}

/// A figure for a table: three significant digits or so, `–` for none.
pub fn fmt(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v.is_nan() => "–".into(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(stats(&[4.0, 1.0, 3.0, 2.0]), (2.5, 1.0, 4.0));
        assert_eq!(stats(&[5.0, 1.0, 3.0]), (3.0, 1.0, 5.0));
        assert!(stats(&[]).0.is_nan());
    }

    #[test]
    fn percentile_is_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }

    #[test]
    fn sizes_are_named_in_binary_units() {
        assert_eq!(size_label(1 << 20), "1MiB");
        assert_eq!(size_label(100 << 20), "100MiB");
        assert_eq!(size_label(1 << 30), "1GiB");
        assert_eq!(size_label(256 << 10), "256KiB");
    }

    #[test]
    fn the_defaults_are_judged_against_the_faster_peer_the_page_cache_and_their_peak_memory() {
        let peer = |id: &str| TargetInfo {
            id: id.into(),
            label: id.into(),
            role: "peer".into(),
            available: true,
            configuration: String::new(),
        };
        let fig = |w: &str, t: &str, v: f64| Figure::new(w, "g", t, "MiB/s", true, vec![v]);
        let mut figures = vec![
            fig("pull/8MiB", "afreg-defaults", 600.0),
            fig("pull/8MiB", "distribution-v3", 400.0),
            fig("pull/8MiB", "distribution-2.8", 500.0),
            fig("page-cache-read/8MiB", "reference", 2000.0),
        ];
        figures.push(Figure::new("node-rss/1MiB", "memory", "afreg-defaults", "MiB", false, vec![40.0, 90.0]));
        figures.push(Figure::new("node-rss/pull-32x10/8MiB", "memory", "afreg-defaults", "MiB", false, vec![60.0]));
        let report = Report {
            started: String::new(),
            quick: true,
            rounds: 1,
            blob_sizes: vec![1 << 20, 8 << 20],
            machine: Machine { cores: 2, cpu: String::new(), memory_gib: 1.0, kernel: String::new() },
            targets: vec![peer("distribution-v3"), peer("distribution-2.8")],
            figures,
            goals: vec![],
            seconds: 0.0,
        };
        let goals = report.defaults_goals();
        // Manifest GET, four blob workloads at two sizes, the 8 MiB pull twice, pull-32x10,
        // crane push and pull, peak RSS.
        assert_eq!(goals.len(), 1 + 8 + 2 + 1 + 2 + 1, "{goals:?}");
        let goal = |text: &str| goals.iter().find(|g| g.goal.contains(text)).unwrap_or_else(|| panic!("{text}"));
        let vs_peer = goal("pull 8MiB ≥ 1.3×");
        assert_eq!((vs_peer.ratio, vs_peer.met), (Some(1.2), Some(false)));
        let vs_cache = goal("pull 8MiB ≥ 0.5× reading a cached file");
        assert_eq!((vs_cache.ratio, vs_cache.met), (Some(0.3), Some(false)));
        // The highest sample of any node-rss figure, not a median.
        let rss = goal("peak RSS");
        assert_eq!((rss.ratio, rss.met), (Some(90.0), Some(true)));
        // No figure, no verdict.
        assert_eq!(goal("crane push").met, None);
        assert_eq!(goal("clients pulling 10 blobs at once").met, None);
    }

    #[test]
    fn the_ratio_to_the_best_peer_is_above_one_when_ahead_either_way() {
        let fast = Figure::new("w", "g", "a", "MiB/s", true, vec![200.0]);
        let slow = Figure::new("w", "g", "b", "MiB/s", true, vec![100.0]);
        assert_eq!(better_ratio(&fast, &slow), 2.0);
        let quick = Figure::new("w", "g", "a", "ms", false, vec![10.0]);
        let late = Figure::new("w", "g", "b", "ms", false, vec![30.0]);
        assert_eq!(better_ratio(&quick, &late), 3.0);
    }
}
