//! The node's own container image: `scripts/image.sh` builds it offline from this build's
//! binary; podman, a real container runtime, loads it and runs it against a real Postgres and
//! Kubo on the host network, configured only through `AFREG_*` variables (as the SDL does);
//! through the containerized node a client pushes an image and pulls it back byte for byte.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::containers::Podman;
use testkit::oci::{assert_pulls, client, new_image, push};
use testkit::{free_port, run_ok, run_stdout, Action, Kubo, NodeConfig, Postgres};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn the_image_runs_the_node_under_podman_and_serves_pushes_and_pulls() {
    // Built offline, from the binary under test.
    let out = tempfile::tempdir().unwrap();
    let built = run_stdout(
        Command::new(repo().join("scripts/image.sh"))
            .arg("--out")
            .arg(out.path())
            .env("AFREG_BIN", testkit::afreg_bin()),
    );
    let archive = PathBuf::from(built.lines().last().unwrap());
    assert_eq!(archive, out.path().canonicalize().unwrap().join(format!("afreg-{VERSION}.oci.tar")));

    let mut podman = Podman::new();
    run_ok(podman.cmd().args(["load", "-i"]).arg(&archive));
    let image = format!("localhost/afreg:{VERSION}");
    let inspect = |format: &str| run_stdout(podman.cmd().args(["image", "inspect", "--format", format, &image]));
    assert_eq!(inspect("{{.Config.User}}"), "10001:10001", "the image runs as a non-root user");
    assert_eq!(inspect("{{json .Config.Entrypoint}}"), r#"["/usr/local/bin/afreg"]"#);
    assert_eq!(inspect("{{json .Config.Cmd}}"), r#"["serve"]"#);
    // A shell for lease-shell: copying certificates onto the volume.
    let shell = run_stdout(podman.cmd().args([
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "/bin/sh",
        &image,
        "-c",
        "echo shell; cat /etc/passwd",
    ]));
    assert!(shell.starts_with("shell") && shell.contains("afreg:x:10001"), "{shell}");

    // The node's state on a volume the image's user owns.
    let pg = Postgres::start();
    let kubo = Kubo::start();
    let data = tempfile::Builder::new().prefix("afreg-data-").tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(data.path(), Some(10001), Some(10001)).unwrap();
    let (port, internal) = (free_port(), free_port());
    let mut cfg = NodeConfig::for_kubo(pg.url(), &kubo);
    cfg.config.auth.anonymous = Action::ALL.to_vec();
    let env = cfg.to_config(port, internal, free_port(), Path::new("/data")).env_overrides().unwrap();

    let name = format!("afreg-test-{}", testkit::random_hex(8));
    let mut run = podman.cmd();
    run.args(["run", "-d", "--name", &name, "--network", "host", "-v"]).arg(format!("{}:/data", data.path().display()));
    for (k, v) in &env {
        run.arg("-e").arg(format!("{k}={v}"));
    }
    run.arg(&image);
    run_ok(&mut run);
    podman.track(&name);

    let url = format!("http://127.0.0.1:{port}");
    let c = client();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if c.get(format!("{url}/readyz")).send().is_ok_and(|r| r.status() == 200) {
            break;
        }
        let state = run_stdout(podman.cmd().args(["inspect", "--format", "{{.State.Status}}", &name]));
        assert_eq!(state, "running", "the containerized node stopped");
        assert!(Instant::now() < deadline, "the containerized node was not ready within 60 s");
        std::thread::sleep(Duration::from_millis(200));
    }

    let img = new_image(300_000);
    push(&c, &url, "containerized/app", "v1", &img).unwrap_or_else(|e| panic!("push through the container: {e:?}"));
    assert_pulls(&c, &url, "containerized/app", "v1", &img);
    assert_eq!(c.get(format!("{url}/readyz")).send().unwrap().status(), 200);
    // The node wrote its signing key as the image's user, on the volume.
    let key = std::fs::metadata(data.path().join("key.pem")).expect("the node's signing key on /data");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&key), 10001);
}
