//! `afreg bench` (the `afreg-bench` binary, `src/main.rs`, which `afreg bench` runs): one command
//! that measures afreg against the registries people would pick instead, and against the
//! physical limits, side by side in one run on loopback. A binary of its own, so the `afreg`
//! binary and the image link no testkit.
//!
//! It starts afreg with one region and the local three-region cluster (real PostgreSQL, Kubo and
//! `afreg serve` processes, through testkit), both tuned for throughput; the same one-region
//! afreg with its defaults, as `afreg up` configures a region (private, so every request carries
//! a token; request-rate limits and request log on), since that is what a user gets;
//! distribution v3 and Debian's distribution 2.8 on their filesystem storage with access logs
//! off, and zot where the Go module proxy served it (otherwise the report says why it is
//! missing). The same client runs the same workloads on each, in interleaved rounds (every round
//! visits every target, in an order that rotates), and every figure keeps its samples, median
//! and spread. The result is `bench.json`, a Markdown page (`README.md`) of ratios with the
//! issue's goals met or missed, and SVG charts.
//!
//! # Layout
//! - [`targets`]: starting each registry; [`http`]: the client side of every registry
//!   workload; [`crane`]: a whole image pushed and pulled by crane; [`cluster`]: replication
//!   lag and cross-region pins; [`physical`]: the references (Kubo, SHA-256, loopback TCP, a
//!   cached file).
//! - [`report`]: the run as data, and the goals; [`table`] and [`charts`] draw it.

pub mod charts;
pub mod cluster;
pub mod crane;
pub mod http;
pub mod physical;
pub mod report;
pub mod table;
pub mod targets;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use reqwest::Method;

use crate::http::{mib_s, repository_scope, Push};
use crate::report::{size_label, Figure, Machine, Report, TargetInfo};
use crate::targets::{info, Peer, Target};

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Small sizes and short durations: a few seconds a workload (the CI run).
    pub quick: bool,
    /// Where bench.json, README.md and the charts go.
    pub out: PathBuf,
    /// Rounds (default 3, quick 2).
    pub rounds: Option<usize>,
}

/// Transfers of one blob workload in one round: enough of a small blob that one transfer's
/// jitter (a few milliseconds against a 1 MiB transfer's five) does not decide the figure.
fn repetitions(size: u64) -> u64 {
    ((64 << 20) / size.max(1)).clamp(1, 32)
}

/// Blobs this big are not pushed to the cluster in the blob workloads (see there).
const CLUSTER_MAX_BLOB: u64 = 1 << 30;

/// The pull-at-once workload (`pull-32x10/SIZE`): this many clients at once, pulling this many
/// distinct blobs (pushed once, before the rounds) from this repository.
pub(crate) const AT_ONCE_CLIENTS: usize = 32;
pub(crate) const AT_ONCE_BLOBS: usize = 10;
const AT_ONCE_REPO: &str = "bench/at-once";
/// The upstream's repository the pull-through cache workloads push to and pull through.
const MIRROR_REPO: &str = "bench/mirror";
/// The pause between the mirror's cold pulls and its warm ones.
const MIRROR_SETTLE: Duration = Duration::from_secs(2);

/// The sizes and durations of a run.
struct Plan {
    rounds: usize,
    sizes: Vec<u64>,
    /// The size of each blob of the pull-at-once workload.
    at_once_size: u64,
    conns: Vec<usize>,
    rate_for: Duration,
    tags: usize,
    repos: usize,
    lag_samples: usize,
}

impl Plan {
    fn of(o: &Options) -> Plan {
        if o.quick {
            Plan {
                rounds: o.rounds.unwrap_or(2).max(1),
                sizes: vec![1 << 20, 8 << 20],
                at_once_size: 8 << 20,
                conns: vec![1, 8, 32, 128],
                rate_for: Duration::from_millis(400),
                tags: 300,
                repos: 30,
                lag_samples: 10,
            }
        } else {
            Plan {
                rounds: o.rounds.unwrap_or(3).max(1),
                sizes: vec![1 << 20, 100 << 20, 1 << 30],
                at_once_size: 100 << 20,
                conns: vec![1, 8, 32, 128],
                rate_for: Duration::from_secs(2),
                tags: 10_000,
                repos: 1_000,
                lag_samples: 70,
            }
        }
    }
}

/// Samples as they come in, keyed by (workload, target), in first-recorded order.
#[derive(Default)]
struct Samples {
    order: Vec<(String, String)>,
    by: BTreeMap<(String, String), Series>,
}

/// One workload's samples on one target: (group, unit, higher is better, the samples).
type Series = (String, String, bool, Vec<f64>);

impl Samples {
    fn add(&mut self, workload: &str, group: &str, target: &str, unit: &str, higher_is_better: bool, v: f64) {
        let key = (workload.to_owned(), target.to_owned());
        if !self.by.contains_key(&key) {
            self.order.push(key.clone());
        }
        self.by.entry(key).or_insert_with(|| (group.into(), unit.into(), higher_is_better, vec![])).3.push(v);
        progress(&format!("{workload} · {}: {} {unit}", targets::label(target), report::fmt(Some(v))));
    }

    fn figures(self) -> Vec<Figure> {
        let Samples { order, mut by } = self;
        order
            .into_iter()
            .filter_map(|k| {
                let (g, u, h, s) = by.remove(&k)?;
                Some(Figure::new(&k.0, &g, &k.1, &u, h, s))
            })
            .collect()
    }
}

fn progress(line: &str) {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("[bench {t:7.1}s] {line}");
}

fn machine() -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let mem_kib: f64 = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0);
    Machine {
        cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        cpu,
        memory_gib: mem_kib / (1024.0 * 1024.0),
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
    }
}

/// Resets a process's peak RSS (`VmHWM`), so the next reading covers what follows.
fn reset_peak_rss(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// Runs the benchmark and writes bench.json, README.md and the charts into `opts.out`.
pub async fn run(opts: Options, afreg: &Path) -> Result<Report> {
    let plan = Plan::of(&opts);
    let started = chrono::Utc::now();
    let t0 = Instant::now();
    std::fs::create_dir_all(&opts.out).with_context(|| format!("create {}", opts.out.display()))?;
    progress(&format!(
        "{} rounds; blobs {}; manifests at {:?} connections, {:?} each; {} tags, {} repositories",
        plan.rounds,
        plan.sizes.iter().map(|s| size_label(*s)).collect::<Vec<_>>().join(", "),
        plan.conns,
        plan.rate_for,
        plan.tags,
        plan.repos
    ));

    // ---- The targets -------------------------------------------------------------------------
    let mut infos: Vec<TargetInfo> = vec![];
    progress("starting afreg (one region: PostgreSQL, Kubo, node)");
    let region = targets::afreg_region(afreg);
    let password = testkit::random_hex(24);
    region.node.add_user("bench", &password);
    progress("starting afreg with its defaults (one region as `afreg up` configures it)");
    let defaults = targets::afreg_defaults_region(afreg);
    defaults.node.add_user_with_grants("bench", &password, targets::DEFAULTS_GRANTS);
    progress("starting afreg with notifications on (and a receiver) and afreg counting no pulls");
    let receiver = testkit::receiver::Receiver::start();
    let notify = targets::afreg_notify_region(afreg, &receiver.url());
    let no_usage = targets::afreg_no_usage_region(afreg);
    progress("starting the three-region cluster (us, eu, asia)");
    let mut cluster = targets::afreg_cluster(afreg);
    progress("starting distribution v3 and 2.8");
    let dist3 = Peer::distribution(&testkit::tool("registry")).context("distribution v3")?;
    let dist28 = match targets::docker_registry_bin() {
        Some(bin) => Ok(Peer::distribution(&bin).context("distribution 2.8")?),
        None => Err("Debian's docker-registry is not installed (scripts/setup.sh installs it)".to_owned()),
    };
    let zot = targets::zot_bin().and_then(|bin| Peer::zot(&bin).map_err(|e| format!("{e:#}")));
    progress("starting afreg as a pull-through cache of distribution v3");
    let mirror = targets::afreg_mirror_region(afreg, &dist3.url);
    let raw_pair = (testkit::Kubo::start(), testkit::Kubo::start());
    raw_pair.1.connect(&raw_pair.0);

    infos.push(info("afreg", "afreg", "afreg", true, targets::AFREG_CONFIG));
    infos.push(info("afreg-token", "afreg (token)", "afreg", true, targets::TOKEN_CONFIG));
    infos.push(info("afreg-defaults", "afreg with its defaults", "afreg", true, targets::defaults_config()));
    infos.push(info("afreg-notify", "afreg with notifications", "afreg", true, targets::NOTIFY_CONFIG));
    infos.push(info("afreg-no-usage", "afreg counting no pulls", "afreg", true, targets::NO_USAGE_CONFIG));
    infos.push(info("afreg-cluster", "afreg cluster (us)", "afreg", true, targets::CLUSTER_CONFIG));
    infos.push(info("afreg-mirror", targets::label("afreg-mirror"), "afreg", true, targets::MIRROR_CONFIG));
    infos.push(info("distribution-v3", "distribution v3", "peer", true, targets::DIST_CONFIG));
    match &dist28 {
        Ok(_) => infos.push(info("distribution-2.8", "distribution 2.8", "peer", true, targets::DIST28_CONFIG)),
        Err(why) => infos.push(info("distribution-2.8", "distribution 2.8", "peer", false, why.clone())),
    }
    match &zot {
        Ok(_) => infos.push(info(
            "zot",
            "zot",
            "peer",
            true,
            "zot, filesystem storage, dedupe and GC off, log level error, anonymous",
        )),
        Err(why) => {
            progress(&format!("zot unavailable: {why}"));
            infos.push(info("zot", "zot", "peer", false, why.clone()));
        }
    }
    infos.push(info("reference", "reference", "reference", true, "raw Kubo add, gateway read and RPC cat on a fresh Kubo of the regions' configuration; two such Kubos, connected, for Kubo→Kubo; SHA-256 (sha2 crate) on one core; one loopback TCP stream; `cat` of a file in the page cache, piped into the bench"));

    let afreg_t = Target {
        pid: Some(region.node.pid()),
        kubos: vec![region.kubo.api_url()],
        ..Target::at("afreg", region.node.url())
    };
    let defaults_t = Target {
        login: Some(("bench".into(), password.clone())),
        rate_limited: true,
        pid: Some(defaults.node.pid()),
        kubos: vec![defaults.kubo.api_url()],
        ..Target::at("afreg-defaults", defaults.node.url())
    };
    let variant = |id, r: &testkit::TestRegion| Target {
        pid: Some(r.node.pid()),
        kubos: vec![r.kubo.api_url()],
        variant: true,
        ..Target::at(id, r.node.url())
    };
    let (notify_t, no_usage_t) = (variant("afreg-notify", &notify), variant("afreg-no-usage", &no_usage));
    let us = cluster.region("us");
    let cluster_t = Target {
        pid: Some(us.node().pid()),
        kubos: cluster.regions.iter().map(|r| r.kubo().api_url()).collect(),
        ..Target::at("afreg-cluster", us.url())
    };
    let peer = |id, p: &Peer| Target {
        pid: Some(p.pid()),
        single_post: false,
        blob_dir: p.blob_dir(),
        ..Target::at(id, p.url.clone())
    };
    let dist3_t = peer("distribution-v3", &dist3);
    let mirror_t = Target {
        pid: Some(mirror.node.pid()),
        kubos: vec![mirror.kubo.api_url()],
        ..Target::at("afreg-mirror", mirror.node.url())
    };
    let mut registries = vec![afreg_t.clone(), notify_t, no_usage_t, defaults_t, cluster_t, dist3_t.clone()];
    for (id, p) in [("distribution-2.8", dist28.as_ref().ok()), ("zot", zot.as_ref().ok())] {
        if let Some(p) = p {
            registries.push(peer(id, p));
        }
    }

    let c = http::client();
    let mut s = Samples::default();
    let mut seed = 1u64;
    let mut next_seed = || {
        seed += 1;
        seed * 7919
    };
    let pin_bound = Duration::from_secs(600);

    // ---- Fixtures: the manifest to read, the tags and repositories to list, the blobs to pull
    // at once -------------------------------------------------------------------------------------
    progress(&format!(
        "pushing the fixtures: a manifest, {} tags, {} repositories and {AT_ONCE_BLOBS} blobs of {} per registry",
        plan.tags,
        plan.repos,
        size_label(plan.at_once_size)
    ));
    let mut at_once_digests: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for t in &registries {
        // The variants run the blob workloads only: their many-clients blobs are all they need.
        if !t.variant {
            let signed_in =
                http::authorized(&c, t, &[repository_scope("bench/img"), repository_scope("bench/tags")]).await?;
            let (body, _) = http::push_image(&c, &signed_in, "bench/img", "latest").await?;
            let d_cfg = serde_json::from_slice::<serde_json::Value>(&body)?["config"]["digest"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let puts = (0..plan.tags).map(|i| {
                let (c, t, body) = (c.clone(), signed_in.clone(), body.clone());
                async move { http::put_manifest(&c, &t, "bench/tags", &format!("t{i:05}"), &body).await }
            });
            // The tag list's repository needs the config blob first.
            http::mount(&c, &signed_in, "bench/tags", "bench/img", &d_cfg).await?;
            futures::StreamExt::collect::<Vec<_>>(futures::StreamExt::buffer_unordered(
                futures::stream::iter(puts),
                16,
            ))
            .await
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
            let repos = (0..plan.repos).map(|i| {
                let (c, t, body, d_cfg) = (c.clone(), t.clone(), body.clone(), d_cfg.clone());
                async move {
                    let repo = format!("bench/r{i:04}");
                    let t = http::authorized(&c, &t, &[repository_scope(&repo), repository_scope("bench/img")]).await?;
                    http::mount(&c, &t, &repo, "bench/img", &d_cfg).await?;
                    http::put_manifest(&c, &t, &repo, "latest", &body).await
                }
            });
            futures::StreamExt::collect::<Vec<_>>(futures::StreamExt::buffer_unordered(
                futures::stream::iter(repos),
                16,
            ))
            .await
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
        }
        let signed_in = http::authorized(&c, t, &[repository_scope(AT_ONCE_REPO)]).await?;
        let mut digests = vec![];
        for _ in 0..AT_ONCE_BLOBS {
            digests.push(http::push(&c, &signed_in, AT_ONCE_REPO, Push::Mono, next_seed(), plan.at_once_size).await?.1);
        }
        at_once_digests.insert(t.id, digests);
        progress(&format!("fixtures pushed to {}", targets::label(t.id)));
    }
    cluster::drain_pins(&cluster, pin_bound)?;

    for round in 0..plan.rounds {
        progress(&format!("round {}/{}", round + 1, plan.rounds));
        let mut order = registries.clone();
        let turn = round % order.len();
        order.rotate_left(turn);

        // ---- Blobs ---------------------------------------------------------------------------
        for &size in &plan.sizes {
            let sz = size_label(size);
            let chunk = (size / 8).max(256 << 10);
            for t in &order {
                // The cluster keeps every blob three times over; its 1 GiB transfers are the
                // cross-region pin workload's, so that a full run fits the disk.
                if t.id == "afreg-cluster" && size >= CLUSTER_MAX_BLOB {
                    continue;
                }
                if let Some(pid) = t.pid {
                    reset_peak_rss(pid);
                }
                let mut modes = vec![Push::Mono];
                if t.single_post {
                    modes.push(Push::SinglePost);
                }
                modes.extend([Push::Streamed, Push::Chunked { chunk }]);
                let mut mono = None;
                let mut pushed = vec![];
                let reps = repetitions(size);
                for how in modes {
                    let signed_in = http::authorized(&c, t, &[repository_scope("bench/blobs")]).await?;
                    let mut took = Duration::ZERO;
                    for _ in 0..reps {
                        let (one, d) = http::push(&c, &signed_in, "bench/blobs", how, next_seed(), size).await?;
                        took += one;
                        if how == Push::Mono {
                            mono = Some(d.clone());
                        }
                        pushed.push(d);
                        if t.id == "afreg-cluster" {
                            cluster::drain_pins(&cluster, pin_bound)?;
                        }
                    }
                    s.add(&format!("{}/{sz}", how.workload()), "blobs", t.id, "MiB/s", true, mib_s(size * reps, took));
                }
                let signed_in = http::authorized(&c, t, &[repository_scope("bench/blobs")]).await?;
                let mut took = Duration::ZERO;
                for _ in 0..reps {
                    took +=
                        http::pull(&c, &signed_in, "bench/blobs", mono.as_deref().unwrap_or_default(), size).await?;
                }
                s.add(&format!("pull/{sz}"), "blobs", t.id, "MiB/s", true, mib_s(size * reps, took));
                if let Some(pid) = t.pid {
                    s.add(
                        &format!("node-rss/{sz}"),
                        "memory",
                        t.id,
                        "MiB",
                        false,
                        testkit::peak_rss_kib(pid) as f64 / 1024.0,
                    );
                }
                t.forget_blobs(&c, "bench/blobs", &pushed).await;
            }
        }

        // ---- The pull-through cache -----------------------------------------------------------
        // Each blob fresh on the upstream: pulled from it directly, then through afreg's mirror
        // cold (fetched upstream while it streams to the client and into the store); once all
        // of a size are in, a moment later (the blob file is written off the request's path, as
        // after a push), each again, warm.
        let mirrored = format!("mirror/{MIRROR_REPO}");
        for &size in &plan.sizes {
            let sz = size_label(size);
            let (mut direct, mut cold, mut warm) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
            let mut pushed = vec![];
            for _ in 0..repetitions(size) {
                let (_, d) = http::push(&c, &dist3_t, MIRROR_REPO, Push::Mono, next_seed(), size).await?;
                direct += http::pull(&c, &dist3_t, MIRROR_REPO, &d, size).await?;
                cold += http::pull(&c, &mirror_t, &mirrored, &d, size).await?;
                pushed.push(d);
            }
            tokio::time::sleep(MIRROR_SETTLE).await;
            for d in &pushed {
                warm += http::pull(&c, &mirror_t, &mirrored, d, size).await?;
            }
            let moved = size * pushed.len() as u64;
            s.add(&format!("mirror-direct/{sz}"), "mirror", "distribution-v3", "MiB/s", true, mib_s(moved, direct));
            s.add(&format!("mirror-cold/{sz}"), "mirror", "afreg-mirror", "MiB/s", true, mib_s(moved, cold));
            s.add(&format!("mirror-warm/{sz}"), "mirror", "afreg-mirror", "MiB/s", true, mib_s(moved, warm));
            dist3_t.forget_blobs(&c, MIRROR_REPO, &pushed).await;
            mirror_t.forget_blobs(&c, &mirrored, &pushed).await;
        }

        // ---- Many clients pulling at once ------------------------------------------------------
        let at_once = format!("pull-{AT_ONCE_CLIENTS}x{AT_ONCE_BLOBS}/{}", size_label(plan.at_once_size));
        for t in &order {
            if let Some(pid) = t.pid {
                reset_peak_rss(pid);
            }
            let signed_in = http::authorized(&c, t, &[repository_scope(AT_ONCE_REPO)]).await?;
            let digests = &at_once_digests[t.id];
            let took =
                http::pull_at_once(&c, &signed_in, AT_ONCE_REPO, digests, plan.at_once_size, AT_ONCE_CLIENTS).await?;
            let bytes = plan.at_once_size * AT_ONCE_CLIENTS as u64;
            s.add(&at_once, "blobs", t.id, "MiB/s", true, mib_s(bytes, took));
            if let Some(pid) = t.pid {
                let rss = testkit::peak_rss_kib(pid) as f64 / 1024.0;
                s.add(&format!("node-rss/{at_once}"), "memory", t.id, "MiB", false, rss);
            }
        }

        // ---- A whole image, pushed and pulled by crane -----------------------------------------
        for t in &order {
            let layout = tempfile::tempdir()?;
            let image = crane::write_layout(layout.path(), next_seed())?;
            let reference = crane::reference(t, &format!("bench/crane-{round}"), "latest");
            let pushed = crane::push(t, layout.path(), &reference).await?;
            if t.id == "afreg-cluster" {
                cluster::drain_pins(&cluster, pin_bound)?;
            }
            let pulled_into = tempfile::tempdir()?;
            let pulled = crane::pull(t, &reference, &pulled_into.path().join("image"), &image).await?;
            s.add(&crane::workload("push"), "images", t.id, "MiB/s", true, mib_s(image.bytes, pushed));
            s.add(&crane::workload("pull"), "images", t.id, "MiB/s", true, mib_s(image.bytes, pulled));
            let layers: Vec<String> = image.blobs.iter().map(|(d, _)| d.clone()).collect();
            t.forget_blobs(&c, &format!("bench/crane-{round}"), &layers).await;
        }

        // ---- Physical references (the biggest size) ------------------------------------------
        let big = *plan.sizes.last().unwrap();
        let bz = size_label(big);
        // On a Kubo of the bench's own, with the regions' configuration, emptied after.
        let kubo = &raw_pair.0;
        let (add, cid) = physical::kubo_add(&c, &kubo.api_url(), next_seed(), big).await?;
        s.add(&format!("kubo-add/{bz}"), "physical", "reference", "MiB/s", true, add);
        let gw = physical::gateway_read(&c, &kubo.gateway_url(), &cid, big).await?;
        s.add(&format!("kubo-gateway-read/{bz}"), "physical", "reference", "MiB/s", true, gw);
        let cat = physical::rpc_cat(&c, &kubo.api_url(), &cid, big).await?;
        s.add(&format!("kubo-rpc-cat/{bz}"), "physical", "reference", "MiB/s", true, cat);
        physical::forget(&c, kubo, &cid).await?;
        s.add(
            "sha256-one-core",
            "physical",
            "reference",
            "MiB/s",
            true,
            physical::sha256_one_core(big.max(64 << 20)).await?,
        );
        s.add(
            "loopback-tcp",
            "physical",
            "reference",
            "MiB/s",
            true,
            physical::loopback_tcp(big.max(256 << 20)).await?,
        );
        let cached = physical::page_cache_read(next_seed(), big).await?;
        s.add(&format!("page-cache-read/{bz}"), "physical", "reference", "MiB/s", true, cached);

        // ---- Manifests -----------------------------------------------------------------------
        let mut manifest_targets: Vec<Target> = order.iter().filter(|t| !t.variant).cloned().collect();
        let pull_img = ["repository:bench/img:pull".to_owned()];
        let tok = http::token(&c, &afreg_t.url, ("bench", &password), &pull_img).await?;
        manifest_targets.insert(1, Target { id: "afreg-token", token: Some(tok), ..afreg_t.clone() });
        for &conns in &plan.conns {
            for (method, name) in [(Method::GET, "manifest-get"), (Method::HEAD, "manifest-head")] {
                for t in &manifest_targets {
                    let signed_in = http::authorized(&c, t, &pull_img).await?;
                    let url = format!("{}/v2/bench/img/manifests/latest", t.url);
                    let rate = http::request_rate(&c, &signed_in, &url, method.clone(), conns, plan.rate_for).await?;
                    s.add(&format!("{name}/{conns}"), "manifests", t.id, "req/s", true, rate.per_second);
                    if t.rate_limited {
                        let refused = rate.refused_percent();
                        s.add(&format!("{name}-refused/{conns}"), "limits", t.id, "% refused", false, refused);
                    }
                }
            }
        }

        // ---- Listing -------------------------------------------------------------------------
        for t in order.iter().filter(|t| !t.variant) {
            let signed_in = http::authorized(&c, t, &[repository_scope("bench/tags")]).await?;
            let (n, took) = http::list_all(&c, &signed_in, "/v2/bench/tags/tags/list", "tags").await?;
            anyhow::ensure!(n == plan.tags, "{}: listed {n} tags of {}", t.id, plan.tags);
            s.add(&format!("tags-list/{}", plan.tags), "listing", t.id, "ms", false, took.as_secs_f64() * 1000.0);
            let signed_in = http::authorized(&c, t, &[http::CATALOG_SCOPE.to_owned()]).await?;
            let (n, took) = http::list_all(&c, &signed_in, "/v2/_catalog?n=1000", "repositories").await?;
            anyhow::ensure!(n >= plan.repos, "{}: catalog lists {n} repositories, fewer than {}", t.id, plan.repos);
            s.add(&format!("catalog/{}", plan.repos), "listing", t.id, "ms", false, took.as_secs_f64() * 1000.0);
        }

        // ---- Cluster -------------------------------------------------------------------------
        let lags = cluster::replication_lag(&c, &cluster, plan.lag_samples, round).await?;
        for (region, l) in ["eu", "asia"].iter().zip(lags) {
            s.add(
                &format!("replication-lag-p50/{region}"),
                "cluster",
                "afreg-cluster",
                "ms",
                false,
                report::percentile(&l, 50.0),
            );
            s.add(
                &format!("replication-lag-p99/{region}"),
                "cluster",
                "afreg-cluster",
                "ms",
                false,
                report::percentile(&l, 99.0),
            );
        }
        let (eu, raw) = cluster::pin_round(&c, &mut cluster, &raw_pair, next_seed(), big).await?;
        s.add(&format!("cross-region-pin/{bz}"), "cluster", "afreg-cluster", "MiB/s", true, eu);
        s.add(&format!("cross-region-pin/{bz}"), "cluster", "reference", "MiB/s", true, raw);
    }

    for t in &registries {
        t.forget_blobs(&c, AT_ONCE_REPO, &at_once_digests[t.id]).await;
    }
    let refused = receiver.contract_errors();
    progress(&format!(
        "the receiver of afreg-notify took {} events of {} requests",
        receiver.events().len(),
        receiver.requests()
    ));
    anyhow::ensure!(
        refused.is_empty(),
        "afreg-notify's receiver refused requests as breaking distribution's contract:\n{refused}"
    );

    let mut report = Report {
        started: started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        quick: opts.quick,
        rounds: plan.rounds,
        blob_sizes: plan.sizes.clone(),
        machine: machine(),
        targets: infos,
        figures: s.figures(),
        goals: vec![],
        seconds: t0.elapsed().as_secs_f64(),
    };
    report.judge();
    write(&report, &opts.out)?;
    Ok(report)
}

/// Writes bench.json, README.md and the charts.
pub fn write(report: &Report, dir: &Path) -> Result<()> {
    std::fs::write(dir.join("bench.json"), serde_json::to_vec_pretty(report)?)?;
    std::fs::write(dir.join("README.md"), table::markdown(report))?;
    charts::draw_all(report, dir)?;
    Ok(())
}
