//! The web console (`/ui/`) in a real browser: node/tests/console/console.cjs drives Debian's
//! Chromium through playwright-core against a three-region cluster with token auth, as two
//! users with different grants: login (keyboard focus visible), the repositories crane pushed
//! with their tags and sizes, a repository's platforms, referrers and pulls split by region, a
//! manifest, the usage chart, a tag and a manifest deleted and gone from every region's page,
//! the cluster page marking a stopped region unreachable within 10 s, pages that fit a 390 px
//! screen, and every request to the cluster's own nodes. Screenshots of each page go to
//! `target/console-screenshots/` (the README's are from there).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::cluster::{ClusterMember, TestCluster};
use testkit::oci::{get_manifest, push, put_manifest, sha256_digest, within, OCI_MANIFEST};
use testkit::tools::{run_ok, run_stdout, tool};

use testkit::afreg_bin as bin;

const SBOM: &str = "application/vnd.cyclonedx+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const POLL: Duration = Duration::from_millis(200);

fn npm_dir() -> PathBuf {
    match std::env::var_os("AFREG_NPM") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/afreg/npm"),
    }
}

/// `crane` with its own docker config (logged in as `user`) in `home`.
fn crane(home: &Path) -> Command {
    let mut c = Command::new(tool("crane"));
    c.env("DOCKER_CONFIG", home)
        .env("HOME", home)
        .env("NO_PROXY", "*")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY");
    c
}

/// Pushes a one-layer image of fresh bytes with `crane append`; returns its digest.
fn crane_push(home: &Path, region: &ClusterMember, repo_tag: &str) -> String {
    let rootfs = home.join(format!("rootfs-{}", testkit::oci::random_hex(6)));
    std::fs::create_dir_all(&rootfs).unwrap();
    std::fs::write(rootfs.join("data.bin"), testkit::oci::random_bytes(200 * 1024)).unwrap();
    let tar = rootfs.with_extension("tar");
    run_ok(Command::new("tar").arg("-cf").arg(&tar).arg("-C").arg(&rootfs).arg("."));
    let reference = format!("{}/{repo_tag}", region.host());
    run_ok(crane(home).args(["append", "--insecure", "-f"]).arg(&tar).args(["-t", &reference]));
    run_stdout(crane(home).args(["digest", "--insecure", &reference]))
}

/// team/app's pulls in every region, from the usage API.
fn pulls_of_team_app(us: &ClusterMember) -> Option<i64> {
    let r = testkit::oci::client()
        .get(format!("{}/v2/_afreg/usage", us.url()))
        .basic_auth("ops", Some("ops-password"))
        .send()
        .ok()?;
    let u: serde_json::Value = r.json().ok()?;
    u["repositories"].as_array()?.iter().find(|r| r["repository"] == "team/app")?["pulls"].as_i64()
}

#[test]
fn two_users_browse_the_console_and_one_deletes_what_only_it_may() {
    let mut cluster = TestCluster::start(bin(), &["us", "eu", "asia"], |_, c| c.config.auth.anonymous = vec![]);
    let us = cluster.region("us");
    us.node().add_user_with_grants("ops", "ops-password", &["*:pull,push,delete"]);
    us.node().add_user_with_grants("team", "team-password", &["team/*:pull"]);
    let ops = |region: &str, repo: &str| cluster.region(region).client_as("ops", "ops-password", repo);
    let home = tempfile::Builder::new().prefix("afreg-console-").tempdir().unwrap();
    run_ok(crane(home.path()).args(["auth", "login", &us.host(), "-u", "ops", "-p", "ops-password"]));

    // Two images pushed with crane; beside them an SBOM referring to team/app:v1, an index of
    // two platforms as team/app:multi, and other/secret:v1, which team may not see.
    let v1 = crane_push(home.path(), us, "team/app:v1");
    crane_push(home.path(), us, "team/web:v1");
    let c = ops("us", "team/app");
    let head = c.head(format!("{}/v2/team/app/manifests/{v1}", us.url())).send().unwrap();
    assert_eq!(head.status(), 200);
    let v1_type = head.headers()["content-type"].to_str().unwrap().to_owned();
    let v1_size: u64 = head.headers()["content-length"].to_str().unwrap().parse().unwrap();
    let (empty, empty_digest) = (b"{}".to_vec(), sha256_digest(b"{}"));
    testkit::oci::upload_blob(&c, &us.url(), "team/app", &empty_digest, &empty).unwrap();
    let sbom = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": SBOM,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty_digest, "size": 2},
        "layers": [],
        "subject": {"mediaType": v1_type, "digest": v1, "size": v1_size},
    }))
    .unwrap();
    put_manifest(&c, &us.url(), "team/app", &sha256_digest(&sbom), &sbom).unwrap();
    let (amd64, arm64) = (testkit::oci::new_image(4 * 1024), testkit::oci::new_image(4 * 1024));
    for img in [&amd64, &arm64] {
        push(&c, &us.url(), "team/app", &img.digest, img).unwrap();
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": amd64.digest, "size": amd64.manifest.len(),
             "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": OCI_MANIFEST, "digest": arm64.digest, "size": arm64.manifest.len(),
             "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        ],
    }))
    .unwrap();
    let put = c.put(format!("{}/v2/team/app/manifests/multi", us.url())).header("content-type", OCI_INDEX).body(index);
    assert_eq!(put.send().unwrap().status(), 201);
    let secret = testkit::oci::new_image(1024);
    push(&ops("us", "other/secret"), &us.url(), "other/secret", "v1", &secret).unwrap();
    for r in &cluster.regions {
        within(Duration::from_secs(30), POLL, "the tags everywhere", || r.sql("SELECT count(*) FROM tags") == "4");
    }
    // Nothing has pulled team/app yet (the pushes only asked with HEAD).
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(pulls_of_team_app(us).unwrap_or(0), 0);
    // v1 pulled three times from eu and twice from asia.
    for (region, times) in [("eu", 3), ("asia", 2)] {
        for _ in 0..times {
            let url = cluster.region(region).url();
            assert_eq!(get_manifest(&ops(region, "team/app"), &url, "team/app", "v1", "").0, 200);
        }
    }
    within(Duration::from_secs(15), POLL, "the pulls counted", || pulls_of_team_app(us) == Some(5));

    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let signal = home.path().join("stop-asia");
    let host = url::Url::parse(&us.url()).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/console/console.cjs");
    let mut browser = Command::new("node")
        .arg(&script)
        .env("NODE_PATH", npm_dir().join("node_modules"))
        .env("US_URL", us.url())
        .env("EU_URL", cluster.region("eu").url())
        .env("ASIA_URL", cluster.region("asia").url())
        .env("PULL_HOST", format!("{}:{}", host.host_str().unwrap(), host.port().unwrap()))
        .env("V1_DIGEST", &v1)
        .env("V1_LAYERS", "1")
        .env("SBOM_TYPE", SBOM)
        .env("SECRET", &secret.digest)
        .env("SCREENSHOTS", &shots)
        .env("SIGNAL", &signal)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node");
    // The script asks for asia's node to stop while it watches the cluster page.
    let started = Instant::now();
    let mut stopped = false;
    while browser.try_wait().unwrap().is_none() {
        if !stopped && signal.exists() {
            cluster.region_mut("asia").node_mut().kill();
            stopped = true;
        }
        assert!(started.elapsed() < Duration::from_secs(240), "the browser's checks took over four minutes");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = browser.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the browser's checks failed:\n{stderr}\n{stdout}");
    assert!(stopped && stdout.contains("\"ok\":true"), "{stdout}");
    eprintln!("console: {stdout}");

    // The deletes in the console are the registry's: gone in the regions that are up.
    for name in ["us", "eu"] {
        let r = cluster.region(name);
        within(Duration::from_secs(30), POLL, "the deleted manifest gone", || {
            get_manifest(&r.client_as("ops", "ops-password", "team/app"), &r.url(), "team/app", &v1, "").0 == 404
        });
    }
}

/// A static page server (python's) on a free port, for a UI's origin, serving its directory.
struct PageServer {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl PageServer {
    fn start() -> (PageServer, String) {
        let dir = tempfile::Builder::new().prefix("afreg-ui-origin-").tempdir().unwrap();
        std::fs::write(dir.path().join("index.html"), "<!doctype html><title>a registry UI</title>").unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string()])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        within(Duration::from_secs(10), POLL, "the page server", || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
        (PageServer { child, _dir: dir }, format!("http://127.0.0.1:{port}"))
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_browser_ui_on_an_allowed_origin_reads_the_registry_and_one_elsewhere_cannot() {
    let ((_allowed, allowed), (_other, other)) = (PageServer::start(), PageServer::start());
    let origin = allowed.clone();
    let cluster = TestCluster::start(bin(), &["us"], move |_, c| {
        c.config.auth.anonymous = vec![];
        c.config.server.cors.allowed_origins = vec![origin.clone()];
    });
    let us = cluster.region("us");
    us.node().add_user_with_grants("ops", "ops-password", &["*:pull,push,delete"]);
    let img = testkit::oci::new_image(1024);
    push(&us.client_as("ops", "ops-password", "team/app"), &us.url(), "team/app", "v1", &img).unwrap();

    // The preflight is answered before auth (no credentials in it), for listed origins only.
    let preflight = |from: &str| {
        testkit::oci::client()
            .request(reqwest::Method::OPTIONS, format!("{}/v2/_catalog", us.url()))
            .header("origin", from)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
            .unwrap()
    };
    let ok = preflight(&allowed);
    assert!(ok.status().is_success(), "{}", ok.status());
    assert_eq!(ok.headers()["access-control-allow-origin"], allowed.as_str());
    assert!(ok.headers()["access-control-allow-headers"].to_str().unwrap().contains("authorization"));
    assert!(preflight(&other).headers().get("access-control-allow-origin").is_none());

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/console/cors.cjs");
    let out = Command::new("node")
        .arg(&script)
        .env("NODE_PATH", npm_dir().join("node_modules"))
        .env("REGISTRY", us.url())
        .env("ALLOWED_ORIGIN", &allowed)
        .env("OTHER_ORIGIN", &other)
        .env("USER", "ops")
        .env("PASSWORD", "ops-password")
        .env("DIGEST", &img.digest)
        .output()
        .expect("node");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the browser's checks failed:\n{stderr}\n{stdout}");
}
