//! The web console (`/ui/`) in a real browser: node/tests/console/console.cjs drives Debian's
//! Chromium through playwright-core against a three-region cluster with token auth, as two
//! users with different grants: login, the repositories each may see, a repository's tags,
//! platforms, referrers, pull counts and pull command, a manifest, the live cluster table, the
//! usage charts, and a delete with its confirmation; every request the pages make goes to the
//! node.

use std::path::PathBuf;
use std::time::Duration;

use testkit::cluster::TestCluster;
use testkit::oci::{get_manifest, push, put_manifest, sha256_digest, within, OCI_MANIFEST};

use testkit::afreg_bin as bin;

const SBOM: &str = "application/vnd.cyclonedx+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn npm_dir() -> PathBuf {
    match std::env::var_os("AFREG_NPM") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/afreg/npm"),
    }
}

#[test]
fn two_users_browse_the_console_and_one_deletes_what_only_it_may() {
    let cluster = TestCluster::start(bin(), &["us", "eu", "asia"], |_, c| c.config.auth.anonymous = vec![]);
    let us = cluster.region("us");
    us.node().add_user_with_grants("ops", "ops-password", &["*:pull,push,delete"]);
    us.node().add_user_with_grants("team", "team-password", &["team/*:pull"]);
    let ops = |region: &str, repo: &str| cluster.region(region).client_as("ops", "ops-password", repo);
    let c = ops("us", "team/app");

    // team/app:v1, one layer, with an SBOM as its referrer; team/app:multi, an index of two
    // platforms; other/secret:v1.
    let v1 = testkit::oci::new_image(16 * 1024);
    push(&c, &us.url(), "team/app", "v1", &v1).unwrap();
    let config = &v1.blobs[0];
    let sbom = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": SBOM,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config.0, "size": config.1.len()},
        "layers": [],
        "subject": {"mediaType": OCI_MANIFEST, "digest": v1.digest, "size": v1.manifest.len()},
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
    let put = c
        .put(format!("{}/v2/team/app/manifests/multi", us.url()))
        .header("content-type", OCI_INDEX)
        .body(index)
        .send()
        .unwrap();
    assert_eq!(put.status(), 201);
    let secret = testkit::oci::new_image(1024);
    push(&ops("us", "other/secret"), &us.url(), "other/secret", "v1", &secret).unwrap();
    for r in &cluster.regions {
        within(Duration::from_secs(30), Duration::from_millis(200), "the tags everywhere", || {
            r.sql("SELECT count(*) FROM tags") == "3"
        });
    }
    // Pulls of v1: two in us, three in eu.
    for (region, times) in [("us", 2), ("eu", 3)] {
        for _ in 0..times {
            let url = cluster.region(region).url();
            assert_eq!(get_manifest(&ops(region, "team/app"), &url, "team/app", "v1", "").0, 200);
        }
    }
    within(Duration::from_secs(15), Duration::from_millis(200), "the pulls counted", || {
        let r = testkit::oci::client()
            .get(format!("{}/v2/_afreg/usage", us.url()))
            .basic_auth("ops", Some("ops-password"))
            .send()
            .unwrap();
        let u: serde_json::Value = r.json().unwrap_or_default();
        u["repositories"].as_array().is_some_and(|l| l.iter().any(|r| r["repository"] == "team/app" && r["pulls"] == 5))
    });

    let host = url::Url::parse(&us.url()).unwrap();
    let pull_host = format!("{}:{}", host.host_str().unwrap(), host.port().unwrap());
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/console/console.cjs");
    let out = std::process::Command::new("node")
        .arg(&script)
        .env("NODE_PATH", npm_dir().join("node_modules"))
        .env("CONSOLE_URL", us.url())
        .env("PULL_HOST", pull_host)
        .env("V1_DIGEST", &v1.digest)
        .env("V1_LAYERS", "1")
        .env("V1_PULLS", "5")
        .env("SBOM_TYPE", SBOM)
        .env("SECRET", &secret.digest)
        .output()
        .expect("node");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the browser's checks failed:\n{stderr}\n{stdout}");
    assert!(stdout.contains("\"ok\":true"), "{stdout}");

    // The delete in the console is the registry's: gone in every region.
    for r in &cluster.regions {
        within(Duration::from_secs(30), Duration::from_millis(200), "the deleted manifest gone", || {
            get_manifest(&ops(&r.name, "team/app"), &r.url(), "team/app", &v1.digest, "").0 == 404
        });
    }
}
