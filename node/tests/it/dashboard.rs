//! The Grafana dashboard (docs/grafana/afreg.json) against real figures: Debian's Prometheus
//! scrapes a three-region cluster every second while images are pushed to us and pulled from
//! eu and asia, and every query of every panel, with Grafana's variables filled in as Grafana
//! would, must return at least one series with a number in it. Then each region's `/metrics`
//! passes `promtool check metrics`, and has no family the node does not list.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use afreg_node::config::notifications::Endpoint;
use serde_json::Value;
use testkit::cluster::TestCluster;
use testkit::oci::{client, get_blob, get_manifest, push, within};
use testkit::tools::free_port;
use testkit::Action;

use testkit::afreg_bin as bin;

const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/grafana/afreg.json");
/// Grafana's variables as it fills them for the last 10 minutes on a 1 s scrape.
const VARIABLES: &[(&str, &str)] = &[("$__rate_interval", "30s"), ("$__range", "10m"), ("$region", ".*")];

/// A Prometheus server of its own, scraping each region's `/metrics` with a `region` label.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(targets: &[(String, String)]) -> Prometheus {
        let dir = tempfile::Builder::new().prefix("afreg-prometheus-").tempdir().unwrap();
        let mut config = String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n");
        for (region, url) in targets {
            let url = url.strip_prefix("http://").unwrap();
            let (host, path) = url.split_once('/').unwrap();
            config += &format!(
                "  - job_name: afreg-{region}\n    metrics_path: /{path}\n    static_configs:\n      - targets: ['{host}']\n        labels: {{region: {region}}}\n"
            );
        }
        let file = dir.path().join("prometheus.yml");
        std::fs::write(&file, config).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(prometheus_bin())
            .arg(format!("--config.file={}", file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus (scripts/setup.sh installs Debian's)");
        let p = Prometheus { child, port, _dir: dir };
        within(Duration::from_secs(30), Duration::from_millis(200), "prometheus ready", || {
            client().get(format!("http://127.0.0.1:{port}/-/ready")).send().is_ok_and(|r| r.status().is_success())
        });
        p
    }

    fn query(&self, expr: &str) -> Value {
        let r = client()
            .get(format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .query(&[("query", expr)])
            .send()
            .unwrap();
        let body: Value = r.json().unwrap();
        assert_eq!(body["status"], "success", "{expr}: {body}");
        body["data"].clone()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn prometheus_bin() -> PathBuf {
    std::env::var_os("AFREG_PROMETHEUS").map(PathBuf::from).unwrap_or_else(|| Path::new("/usr/bin/prometheus").into())
}

/// Every panel's queries, each with its panel's title.
fn panel_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = vec![];
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap().to_owned();
        let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("panel {title} has no queries"));
        assert!(!targets.is_empty(), "panel {title} has no queries");
        for t in targets {
            let mut expr = t["expr"].as_str().unwrap().to_owned();
            for (name, value) in VARIABLES {
                expr = expr.replace(name, value);
            }
            assert!(!expr.contains('$'), "panel {title}: a variable this test does not fill: {expr}");
            out.push((title.clone(), expr));
        }
    }
    out
}

#[test]
fn prometheus_scrapes_a_cluster_and_every_panel_of_the_dashboard_has_data() {
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    let queries = panel_queries(&dashboard);
    assert!(queries.len() >= 20, "{} queries", queries.len());

    let cluster = TestCluster::start(bin(), &["us", "eu", "asia"], |_, c| {
        c.config.auth.anonymous = Action::ALL.to_vec();
        // An endpoint nobody listens on: its events wait, and the notification panels have
        // pending and failed deliveries to show.
        c.config.notifications.endpoints = vec![Endpoint {
            name: "hooks".into(),
            url: format!("http://127.0.0.1:{}/events", free_port()),
            timeout: "1s".into(),
            backoff: "200ms".into(),
            ..Default::default()
        }];
    });
    cluster.wait_leader(Duration::from_secs(30));
    let targets: Vec<(String, String)> =
        cluster.regions.iter().map(|r| (r.name.clone(), r.node().metrics_url())).collect();
    let prometheus = Prometheus::start(&targets);
    within(Duration::from_secs(30), Duration::from_millis(500), "every region scraped", || {
        prometheus.query("sum(up)")["result"][0]["value"][1] == "3"
    });

    // Traffic for 15 s, so that every rate has samples on both sides of it: pushes to us (Raft
    // writes, Kubo adds, pins in eu and asia), then manifest and blob pulls from every region.
    let c = client();
    let started = Instant::now();
    let mut round = 0;
    while started.elapsed() < Duration::from_secs(15) {
        round += 1;
        let img = testkit::oci::new_image(256 * 1024);
        push(&c, &cluster.region("us").url(), "dash/app", &format!("r{round}"), &img).unwrap();
        for region in &cluster.regions {
            for _ in 0..5 {
                // Linearizable: a region's own reads may trail the push to us by its lag.
                let read =
                    get_manifest(&c, &region.url(), "dash/app", &format!("r{round}"), "?consistency=linearizable");
                assert_eq!(read.0, 200);
            }
            // A blob not pinned yet in eu or asia may answer from the swarm or not at all; a
            // pull that fails now is not what this test is about.
            let _ = get_blob(&c, &region.url(), "dash/app", &img.blobs[1].0);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // Two more scrapes past the last request.
    std::thread::sleep(Duration::from_secs(3));

    let mut empty = vec![];
    for (title, expr) in &queries {
        let data = prometheus.query(expr);
        let series = data["result"].as_array().unwrap();
        let numbers = series
            .iter()
            .filter(|s| s["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()).is_some_and(f64::is_finite))
            .count();
        eprintln!("{title}: {} series, {numbers} with a number: {expr}", series.len());
        if numbers == 0 {
            empty.push(format!("{title}: {expr} → {}", data["result"]));
        }
    }
    assert!(empty.is_empty(), "panels whose query returned no data:\n{}", empty.join("\n"));

    // Every region's /metrics, after that traffic: clean by promtool's lint, and every family
    // in it one the node lists (and the README's table shows: telemetry's unit test).
    for region in &cluster.regions {
        let text = c.get(region.node().metrics_url()).send().unwrap().text().unwrap();
        let mut check = Command::new(promtool_bin())
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool (Debian's prometheus package, which scripts/setup.sh installs)");
        std::io::Write::write_all(check.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
        let out = check.wait_with_output().unwrap();
        assert!(
            out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
            "promtool check metrics on {}'s /metrics ({}):\n{}{}",
            region.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let listed = afreg_node::telemetry::METRICS;
        for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
            let (name, kind) = line.split_once(' ').unwrap();
            let known = listed.iter().find(|m| m.name == name);
            assert!(
                known.is_some_and(|m| m.kind.as_str() == kind),
                "{}: /metrics has {name} ({kind}), which telemetry::METRICS does not list as such",
                region.name
            );
        }
        let build = text.lines().find(|l| l.starts_with("afreg_build_info{")).expect("afreg_build_info");
        assert!(build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))), "{build}");
        assert!(!build.contains("revision=\"unknown\""), "afreg serve did not name its revision: {build}");
    }
}

fn promtool_bin() -> PathBuf {
    std::env::var_os("AFREG_PROMTOOL").map(PathBuf::from).unwrap_or_else(|| Path::new("/usr/bin/promtool").into())
}
