//! The token flow as clients meet it on a registry with anonymous pull: `GET /v2/` must still
//! challenge, or clients decide no login is needed and never present their credentials. Run
//! with crane, a real client: a logged-in user pushes, anyone pulls, an anonymous push is refused.

use std::fs;
use std::path::Path;
use std::process::Command;

use testkit::{random_bytes, run_ok, run_stdout, tool, Action, TestRegion};

fn crane(home: &Path) -> Command {
    let mut c = Command::new(tool("crane"));
    c.env("HOME", home).env("DOCKER_CONFIG", home.join(".docker"));
    c
}

#[test]
fn anonymous_pull_registry_still_runs_the_token_flow_for_pushes() {
    let region = TestRegion::start_with(testkit::afreg_bin(), |c| {
        c.config.auth.anonymous = vec![Action::Pull];
    });
    region.node.add_user("alice", "alice-passw0rd");
    let host = region.node.host();

    let work = tempfile::tempdir().unwrap();
    let rootfs = work.path().join("rootfs");
    fs::create_dir(&rootfs).unwrap();
    fs::write(rootfs.join("data.bin"), random_bytes(200_000)).unwrap();
    let tar = work.path().join("layer.tar");
    run_ok(Command::new("tar").arg("-cf").arg(&tar).arg("-C").arg(&rootfs).arg("."));

    // GET /v2/ without a token is a challenge, not a 200.
    let r = reqwest::blocking::get(format!("{}/v2/", region.node.url())).unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer realm="));

    // Logged in: push works.
    let alice = tempfile::tempdir().unwrap();
    run_ok(crane(alice.path()).args(["auth", "login", &host, "-u", "alice", "-p", "alice-passw0rd"]));
    let reference = format!("{host}/open/app:v1");
    run_ok(crane(alice.path()).arg("append").arg("-f").arg(&tar).arg("-t").arg(&reference));
    let pushed = run_stdout(crane(alice.path()).args(["digest", &reference]));

    // Anonymous: pull works, push is refused.
    let anon = tempfile::tempdir().unwrap();
    let pulled = run_stdout(crane(anon.path()).args(["digest", &reference]));
    assert_eq!(pulled.trim(), pushed.trim());
    let out = crane(anon.path())
        .arg("append")
        .arg("-f")
        .arg(&tar)
        .arg("-t")
        .arg(format!("{host}/open/other:v1"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "an anonymous push must be refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("UNAUTHORIZED"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(region.pg.psql("SELECT count(*) FROM repositories WHERE name = 'open/other'").trim(), "0");
}
