//! The benchmark command end to end: `afreg bench --quick` starts every target on loopback,
//! runs every workload, and writes a JSON report with a figure for every workload and target,
//! the Markdown page and the charts.

use std::process::Command;

use afreg_bench::report::Report;

#[test]
fn afreg_bench_quick_reports_every_workload_for_every_target() {
    let out = tempfile::tempdir().unwrap();
    // Its progress lines are kept, and shown only if it fails.
    let run = Command::new(testkit::afreg_bin())
        .args(["bench", "--quick", "--out"])
        .arg(out.path())
        .output()
        .expect("run afreg bench");
    assert!(
        run.status.success(),
        "afreg bench --quick exited {}:\n{}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );

    let report: Report = serde_json::from_slice(&std::fs::read(out.path().join("bench.json")).unwrap()).unwrap();
    assert!(report.quick);
    assert_eq!(report.rounds, 2);
    let sizes = ["1MiB", "8MiB"];

    // Every peer is listed; zot either ran or says why not.
    for id in [
        "afreg",
        "afreg-token",
        "afreg-defaults",
        "afreg-cluster",
        "afreg-notify",
        "afreg-no-usage",
        "afreg-mirror",
        "distribution-v3",
        "distribution-2.8",
        "zot",
        "reference",
    ] {
        let t = report.target(id).unwrap_or_else(|| panic!("target {id} missing from {:?}", report.targets));
        assert!(!t.configuration.is_empty(), "{id} has no configuration or reason");
        if id != "zot" {
            assert!(t.available, "{id} did not run: {}", t.configuration);
        }
    }
    let mut registries = vec!["afreg", "afreg-defaults", "afreg-cluster", "distribution-v3", "distribution-2.8"];
    if report.target("zot").unwrap().available {
        registries.push("zot");
    }

    let mut want: Vec<(String, &str)> = vec![];
    for size in sizes {
        for w in ["push-mono", "push-streamed", "push-chunked", "pull", "node-rss"] {
            for t in &registries {
                want.push((format!("{w}/{size}"), t));
            }
        }
        for t in ["afreg", "afreg-defaults", "afreg-cluster"] {
            want.push((format!("push-single-post/{size}"), t));
        }
        // The A/B variants run the blob workloads beside afreg.
        for w in ["push-mono", "push-single-post", "push-streamed", "push-chunked", "pull", "node-rss"] {
            for t in ["afreg-notify", "afreg-no-usage"] {
                want.push((format!("{w}/{size}"), t));
            }
        }
    }
    // The pull-through cache: the upstream directly, then cold and warm through the mirror.
    for size in sizes {
        want.push((format!("mirror-direct/{size}"), "distribution-v3"));
        for w in ["mirror-cold", "mirror-warm"] {
            want.push((format!("{w}/{size}"), "afreg-mirror"));
        }
    }
    for t in ["afreg-notify", "afreg-no-usage"] {
        for w in ["pull-32x10/8MiB", "crane-push/20-layers", "crane-pull/20-layers"] {
            want.push((w.into(), t));
        }
    }
    for t in &registries {
        for w in ["pull-32x10/8MiB", "node-rss/pull-32x10/8MiB", "crane-push/20-layers", "crane-pull/20-layers"] {
            want.push((w.into(), t));
        }
    }
    for conns in [1, 8, 32, 128] {
        for w in ["manifest-get", "manifest-head"] {
            for t in registries.iter().chain(&["afreg-token"]) {
                want.push((format!("{w}/{conns}"), t));
            }
        }
    }
    for t in &registries {
        want.push(("tags-list/300".into(), t));
        want.push(("catalog/30".into(), t));
    }
    for region in ["eu", "asia"] {
        for p in ["p50", "p99"] {
            want.push((format!("replication-lag-{p}/{region}"), "afreg-cluster"));
        }
    }
    want.push(("cross-region-pin/8MiB".into(), "afreg-cluster"));
    want.push(("cross-region-pin/8MiB".into(), "reference"));
    for w in [
        "kubo-add/8MiB",
        "kubo-gateway-read/8MiB",
        "kubo-rpc-cat/8MiB",
        "sha256-one-core",
        "loopback-tcp",
        "page-cache-read/8MiB",
    ] {
        want.push((w.into(), "reference"));
    }
    for (w, t) in &want {
        let f = report.figure(w, t).unwrap_or_else(|| panic!("no figure for {w} on {t}"));
        assert_eq!(f.samples.len(), 2, "{w} on {t}: one sample per round");
        assert!(f.samples.iter().all(|v| v.is_finite() && *v > 0.0), "{w} on {t}: {:?}", f.samples);
        assert!(f.min <= f.median && f.median <= f.max, "{w} on {t}: median outside the spread");
    }
    // The share of 429s of the rate-limited target: one sample a round, possibly 0.
    for conns in [1, 8, 32, 128] {
        for w in ["manifest-get-refused", "manifest-head-refused"] {
            let f =
                report.figure(&format!("{w}/{conns}"), "afreg-defaults").unwrap_or_else(|| panic!("no {w}/{conns}"));
            assert_eq!(f.samples.len(), 2, "{w}/{conns}: one sample per round");
            assert!(f.samples.iter().all(|v| (0.0..=100.0).contains(v)), "{w}/{conns}: {:?}", f.samples);
        }
    }
    // The goals are judged, each with a ratio from the figures above: nine of afreg tuned and
    // the cluster; of afreg with its defaults, manifest GET, four blob workloads at each of two
    // sizes, two for the 8 MiB pull (the peer, the page cache), pull-32x10, crane push and pull,
    // and its peak RSS; then the A/B goals: notifications on three pushes at each size and
    // crane's, pull counting on the pull at each size, pull-32x10 and crane's; the mirror's
    // cold and warm pull at each size.
    assert_eq!(report.goals.len(), 9 + 1 + 8 + 2 + 1 + 2 + 1 + (3 * 2 + 1) + (2 + 2) + 2 * 2, "{:?}", report.goals);
    for g in &report.goals {
        assert!(g.ratio.is_some() && g.met.is_some(), "goal not judged: {g:?}");
    }

    let page = std::fs::read_to_string(out.path().join("README.md")).unwrap();
    for needle in [
        "## Goals",
        "## Blobs",
        "## Manifests",
        "## Listing",
        "## Cluster",
        "## Physical references",
        "## Images",
        "## Request-rate limits",
        "## Pull-through cache",
        "afreg with its defaults",
        "page-cache-read/8MiB",
        "distribution 2.8",
        "zot",
    ] {
        assert!(page.contains(needle), "README.md lacks {needle:?}:\n{page}");
    }
    for chart in [
        "ratios.svg",
        "ratios-defaults.svg",
        "crane.svg",
        "blobs-1MiB.svg",
        "blobs-8MiB.svg",
        "manifest-get.svg",
        "manifest-head.svg",
        "replication-lag.svg",
        "cross-region-pin.svg",
    ] {
        let svg = std::fs::read_to_string(out.path().join(chart)).unwrap_or_else(|e| panic!("{chart}: {e}"));
        assert!(svg.starts_with("<svg") && svg.contains("<rect"), "{chart} is not a drawn SVG");
    }
}
