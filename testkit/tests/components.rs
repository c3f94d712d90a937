//! The harness starts real components: these tests prove each one works as the integration
//! tests expect (and that stop/start_again really take it down and bring it back).

use std::net::TcpStream;
use testkit::*;

#[test]
fn postgres_starts_answers_sql_and_restarts_with_its_data() {
    let mut pg = Postgres::start();
    assert!(pg.url().starts_with(&format!("postgres://postgres@127.0.0.1:{}/afreg", pg.port)));
    assert_eq!(pg.psql("SELECT 1"), "1");
    assert_eq!(pg.psql("SELECT current_database()"), "afreg");
    pg.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (42)");

    pg.stop();
    assert!(!pg.is_running());
    assert!(TcpStream::connect(("127.0.0.1", pg.port)).is_err(), "port still open after stop");

    pg.start_again();
    assert_eq!(pg.psql("SELECT x FROM t"), "42");
}

#[test]
fn postgres_servers_start_from_one_template_and_share_nothing() {
    let (a, b) = (Postgres::start(), Postgres::start());
    assert_ne!(a.port, b.port);
    a.psql("CREATE TABLE only_in_a (x int)");
    assert_eq!(a.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'"), "1");
    assert_eq!(b.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'"), "0");
    // A copy of a cluster, not the template itself: a new server starts without a's table.
    drop(a);
    let c = Postgres::start();
    assert_eq!(c.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'"), "0");
    assert_eq!(c.psql("SELECT current_database()"), "afreg");
}

#[test]
fn kubo_adds_cats_pins_and_survives_restart() {
    let mut kubo = Kubo::start();
    assert!(kubo.peer_id().starts_with("12D3") || kubo.peer_id().starts_with("Qm"), "{}", kubo.peer_id());
    let id = kubo.rpc_json("id", &[]);
    assert_eq!(id["ID"].as_str(), Some(kubo.peer_id()));

    // "hello world" as a single raw block: the CID documented in REFERENCE.md.
    let cid = kubo.add_bytes(b"hello world");
    assert_eq!(cid, "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e");
    assert_eq!(kubo.cat(&cid), b"hello world");
    assert!(kubo.pin_ls_recursive().contains(&cid));
    assert!(kubo.is_pinned(&cid));

    let big = random_bytes(3 * 1024 * 1024 + 17);
    let big_cid = kubo.add_bytes(&big);
    assert_eq!(kubo.cat(&big_cid), big);

    kubo.rpc("pin/rm", &[("arg", &cid)]).unwrap();
    assert!(!kubo.is_pinned(&cid));
    assert!(!kubo.pin_ls_recursive().contains(&cid));

    kubo.stop();
    assert!(kubo.rpc("id", &[]).is_err(), "API still answers after stop");
    kubo.start_again();
    assert_eq!(kubo.cat(&big_cid), big);
    assert!(kubo.pin_ls_recursive().contains(&big_cid));
}

#[test]
fn kubo_config_is_offline_and_loopback_only() {
    let kubo = Kubo::start();
    let cfg = kubo.rpc_json("config/show", &[]);
    assert_eq!(cfg["Routing"]["Type"], "none");
    assert_eq!(cfg["Discovery"]["MDNS"]["Enabled"], false);
    assert_eq!(cfg["Provide"]["Enabled"], false);
    assert_eq!(cfg["AutoConf"]["Enabled"], false);
    assert_eq!(cfg["AutoTLS"]["Enabled"], false);
    assert_eq!(cfg["Bootstrap"], serde_json::json!([]));
    assert_eq!(cfg["Addresses"]["API"], format!("/ip4/127.0.0.1/tcp/{}", kubo.api_port));
    assert!(kubo.swarm_peers().is_empty());
}

#[test]
fn two_kubos_peer_over_loopback_and_fetch_by_bitswap() {
    let a = Kubo::start();
    let b = Kubo::start();
    let data = random_bytes(100_000);
    let cid = a.add_bytes(&data);
    b.connect(&a);
    assert!(b.swarm_peers().iter().any(|p| p == a.peer_id()));
    let got = b.rpc("pin/add", &[("arg", &cid), ("timeout", "60s")]).unwrap();
    assert!(String::from_utf8_lossy(&got).contains(&cid));
    assert_eq!(b.cat(&cid), data);
}

#[test]
fn helpers() {
    let p1 = free_port();
    let p2 = free_port();
    assert_ne!(p1, p2);
    assert!(peak_rss_kib(std::process::id()) > 0);
    assert!(peak_rss_kib(std::process::id()) >= rss_kib(std::process::id()));
    assert_eq!(random_hex(9).len(), 9);
    assert_eq!(
        sha256_digest(b"hello world"),
        "sha256:b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
    );
    assert!(tools_dir().ends_with("bin") || std::env::var_os("AFREG_TOOLS").is_some());
}

#[test]
fn node_config_renders_every_section() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = NodeConfig::new("postgres://x/afreg", "http://127.0.0.1:1");
    cfg.config.kubo.chunker = "size-262144".into();
    cfg.config.auth.token_ttl_secs = 120;
    cfg.config.auth.anonymous = vec![];
    cfg.config.storage.upload_ttl_secs = 5;
    let config = cfg.to_config(4242, 4243, 4244, dir.path());
    let text = config.to_toml().unwrap();
    // What the node reads back is what testkit meant.
    let file = dir.path().join("afreg.toml");
    std::fs::write(&file, &text).unwrap();
    assert_eq!(Config::load_from(Some(&file), []).unwrap(), config);
    let back: toml::Table = text.parse().unwrap();
    assert_eq!(back["server"]["listen"].as_str(), Some("127.0.0.1:4242"));
    assert_eq!(back["server"]["public_url"].as_str(), Some("http://127.0.0.1:4242"));
    assert_eq!(back["server"]["metrics_listen"].as_str(), Some("127.0.0.1:4244"));
    assert_eq!(back["database"]["url"].as_str(), Some("postgres://x/afreg"));
    assert_eq!(back["kubo"]["api_url"].as_str(), Some("http://127.0.0.1:1"));
    assert_eq!(back["kubo"]["chunker"].as_str(), Some("size-262144"));
    assert_eq!(back["auth"]["anonymous"].as_array().unwrap().len(), 0);
    assert_eq!(back["auth"]["token_ttl_secs"].as_integer(), Some(120));
    assert_eq!(back["auth"]["enabled"].as_bool(), Some(true));
    assert_eq!(back["storage"]["upload_ttl_secs"].as_integer(), Some(5));
    assert_eq!(back["log"]["format"].as_str(), Some("json"));
    assert!(back["auth"]["signing_key"].as_str().unwrap().ends_with("key.pem"));
}

#[test]
fn junit_parses_ginkgo_reports() {
    let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="4" disabled="0" errors="0" failures="1" time="1.5">
  <testsuite name="conformance tests" package="/x" tests="4" disabled="0" skipped="1" errors="0" failures="1" time="1.5" timestamp="2024-01-01T00:00:00">
    <testcase name="[It] A passes" classname="conformance tests" status="passed" time="0.1"></testcase>
    <testcase name="[It] B fails" classname="conformance tests" status="failed" time="0.1">
      <failure message="Expected 200 got 404" type="failed">at push_test.go:12</failure>
    </testcase>
    <testcase name="[It] C skipped" classname="conformance tests" status="skipped" time="0"><skipped message="skipped - you have skipped this test."></skipped></testcase>
    <testcase name="[It] D passes" classname="conformance tests" status="passed" time="0.1"></testcase>
  </testsuite>
</testsuites>"#;
    let j = Junit::parse(xml).unwrap();
    assert_eq!((j.tests, j.failures, j.errors), (4, 1, 0));
    assert_eq!(j.cases.len(), 4);
    assert_eq!(j.passed().len(), 2);
    assert_eq!(j.skipped().len(), 1);
    assert_eq!(j.bad().len(), 1);
    let d = j.describe_bad();
    assert!(d.contains("B fails") && d.contains("Expected 200 got 404") && d.contains("push_test.go:12"), "{d}");
    assert!(Junit::parse("<html/>").is_err());
    assert!(Junit::parse("<testsuites/>").is_err());
}
