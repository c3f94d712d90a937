//! Real registry clients — crane, oras, skopeo, regctl, and the container runtimes most users
//! have, docker and podman — against real nodes (Postgres + Kubo) with auth on and no
//! anonymous access, so every client goes through the token flow with a user created by
//! `afreg user add`. Each client gets its own temporary HOME/DOCKER_CONFIG so no credentials
//! leak between tests.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use tempfile::TempDir;
use testkit::{random_bytes, random_hex, run_ok, run_stdout, sha256_digest, tool, TestRegion};

use testkit::afreg_bin as bin;

const USER: &str = "alice";
const PASSWORD: &str = "correct-horse-battery-staple";

struct Env {
    region: TestRegion,
    home: TempDir,
}

impl Env {
    /// A region with auth on, anonymous = [] and one user.
    fn start() -> Env {
        let region = TestRegion::start_with(bin(), |c| {
            c.config.auth.enabled = true;
            c.config.auth.anonymous = vec![];
        });
        region.node.add_user(USER, PASSWORD);
        let home = tempfile::Builder::new().prefix("afreg-client-home-").tempdir().unwrap();
        fs::create_dir_all(home.path().join(".docker")).unwrap();
        Env { region, home }
    }

    fn host(&self) -> String {
        self.region.node.host()
    }

    fn dir(&self, name: &str) -> PathBuf {
        let p = self.home.path().join(name);
        fs::create_dir_all(&p).unwrap();
        p
    }

    /// A client command isolated in the temporary HOME (docker config, regctl config,
    /// containers auth file), with no proxy.
    fn cmd(&self, prog: &str) -> Command {
        let path = if prog == "skopeo" { PathBuf::from("skopeo") } else { tool(prog) };
        let mut c = Command::new(path);
        let home = self.home.path();
        c.env("HOME", home)
            .env("DOCKER_CONFIG", home.join(".docker"))
            .env("REGISTRY_AUTH_FILE", home.join("containers-auth.json"))
            .env("XDG_RUNTIME_DIR", home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("NO_PROXY", "*")
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("REGCTL_CONFIG")
            .current_dir(home);
        c
    }

    fn crane_login(&self) {
        run_ok(self.cmd("crane").args(["auth", "login", &self.host(), "-u", USER, "-p", PASSWORD]));
    }

    /// Builds an uncompressed layer tarball with random content; returns its path and bytes.
    fn random_layer(&self) -> (PathBuf, Vec<u8>) {
        let work = self.dir(&format!("layer-{}", random_hex(8)));
        let rootfs = work.join("rootfs");
        fs::create_dir_all(rootfs.join("data")).unwrap();
        fs::write(rootfs.join("data/random.bin"), random_bytes(1024 * 1024 + 4099)).unwrap();
        fs::write(rootfs.join("hello.txt"), format!("hello from {}\n", random_hex(16))).unwrap();
        let tar = work.join("layer.tar");
        run_ok(Command::new("tar").arg("-cf").arg(&tar).arg("-C").arg(&rootfs).arg("."));
        let bytes = fs::read(&tar).unwrap();
        (tar, bytes)
    }

    /// Logs crane in and pushes a random one-layer image to `HOST/repo:tag`; returns
    /// (manifest digest, uncompressed layer tar bytes).
    fn push_random_image(&self, repo_tag: &str) -> (String, Vec<u8>) {
        self.crane_login();
        let (tar, bytes) = self.random_layer();
        let reference = format!("{}/{repo_tag}", self.host());
        run_ok(self.cmd("crane").arg("append").arg("-f").arg(&tar).arg("-t").arg(&reference));
        let digest = run_stdout(self.cmd("crane").args(["digest", &reference]));
        assert!(digest.starts_with("sha256:"), "crane digest printed {digest:?}");
        (digest, bytes)
    }
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display())))
        .unwrap_or_else(|e| panic!("parse {}: {e}", p.display()))
}

fn oci_blob_path(layout: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').expect("digest has an algorithm");
    layout.join("blobs").join(alg).join(hex)
}

#[test]
fn crane_push_and_pull_round_trip_through_token_auth() {
    let env = Env::start();
    let host = env.host();
    let reference = format!("{host}/crane/img-{}:v1", random_hex(6));
    let (tar, layer_tar) = env.random_layer();

    // Without logging in, the private registry refuses the push.
    let out = env.cmd("crane").arg("append").arg("-f").arg(&tar).arg("-t").arg(&reference).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "anonymous push to a private registry succeeded: {stderr}");
    assert!(stderr.contains("UNAUTHORIZED") || stderr.contains("401"), "anonymous push error: {stderr}");

    env.crane_login();
    let pushed = run_stdout(env.cmd("crane").arg("append").arg("-f").arg(&tar).arg("-t").arg(&reference));
    let digest = run_stdout(env.cmd("crane").args(["digest", &reference]));
    assert!(digest.starts_with("sha256:"), "{digest}");
    assert!(pushed.ends_with(&digest), "crane append printed {pushed:?}, registry says {digest}");

    // Pull it back as an OCI layout and check every byte.
    let layout = env.dir("pulled");
    run_ok(env.cmd("crane").args(["pull", "--format=oci", &reference]).arg(&layout));
    let index = read_json(&layout.join("index.json"));
    let manifests = index["manifests"].as_array().expect("index.json manifests");
    assert_eq!(manifests.len(), 1, "{index}");
    assert_eq!(manifests[0]["digest"].as_str(), Some(digest.as_str()), "pulled manifest digest");

    let manifest_bytes = fs::read(oci_blob_path(&layout, &digest)).unwrap();
    assert_eq!(sha256_digest(&manifest_bytes), digest, "pulled manifest bytes do not hash to its digest");
    let remote_manifest = env.cmd("crane").args(["manifest", &reference]).output().unwrap();
    assert!(remote_manifest.status.success());
    assert_eq!(remote_manifest.stdout, manifest_bytes, "crane manifest differs from the pulled manifest");

    let manifest: Value = serde_json::from_slice(&manifest_bytes).unwrap();
    let layers = manifest["layers"].as_array().expect("manifest layers");
    assert_eq!(layers.len(), 1, "{manifest}");
    let layer_digest = layers[0]["digest"].as_str().unwrap();
    let layer_path = oci_blob_path(&layout, layer_digest);
    let layer_blob = fs::read(&layer_path).unwrap();
    assert_eq!(sha256_digest(&layer_blob), layer_digest, "pulled layer does not hash to its digest");
    assert_eq!(layers[0]["size"].as_u64(), Some(layer_blob.len() as u64), "layer size");
    // crane gzips the tarball it appends: the pulled layer must decompress to our exact tar.
    let unzipped = run_ok(Command::new("gzip").arg("-dc").arg(&layer_path)).stdout;
    assert!(unzipped == layer_tar, "pulled layer content differs from the pushed tarball");

    // The blob endpoint serves the same bytes.
    let blob =
        run_ok(env.cmd("crane").args(["blob", &format!("{host}/{}@{layer_digest}", repo_of(&reference))])).stdout;
    assert!(blob == layer_blob, "crane blob differs from the pulled layer");

    // And the config blob matches its digest.
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    let config = fs::read(oci_blob_path(&layout, config_digest)).unwrap();
    assert_eq!(sha256_digest(&config), config_digest);
}

/// `HOST/a/b:tag` -> `a/b`
fn repo_of(reference: &str) -> String {
    let path = reference.split_once('/').unwrap().1;
    path.rsplit_once(':').map(|(r, _)| r).unwrap_or(path).to_string()
}

#[test]
fn oras_push_and_pull_an_artifact() {
    let env = Env::start();
    let host = env.host();
    let reference = format!("{host}/oras/artifact-{}:v1", random_hex(6));

    let src = env.dir("oras-src");
    let content = random_bytes(3 * 1024 * 1024 + 12345);
    fs::write(src.join("artifact.bin"), &content).unwrap();

    run_ok(env.cmd("oras").args(["login", "--plain-http", "-u", USER, "-p", PASSWORD, &host]));
    run_ok(env.cmd("oras").current_dir(&src).args([
        "push",
        "--plain-http",
        "--artifact-type",
        "application/vnd.afreg.test.artifact",
        &reference,
        "artifact.bin:application/vnd.afreg.test.blob",
    ]));

    let dst = env.dir("oras-dst");
    run_ok(env.cmd("oras").args(["pull", "--plain-http", "-o"]).arg(&dst).arg(&reference));
    let pulled = fs::read(dst.join("artifact.bin")).expect("oras pull wrote no artifact.bin");
    assert_eq!(pulled.len(), content.len());
    assert!(pulled == content, "pulled artifact differs from the pushed file");

    // The manifest names the artifact type and the file's digest.
    let manifest: Value =
        serde_json::from_str(&run_stdout(env.cmd("oras").args(["manifest", "fetch", "--plain-http", &reference])))
            .unwrap();
    assert_eq!(manifest["artifactType"].as_str(), Some("application/vnd.afreg.test.artifact"), "{manifest}");
    assert_eq!(manifest["layers"][0]["digest"].as_str(), Some(sha256_digest(&content).as_str()), "{manifest}");
}

#[test]
fn skopeo_copies_an_image_between_repositories() {
    let env = Env::start();
    let host = env.host();
    let suffix = random_hex(6);
    let src = format!("{host}/skopeo/src-{suffix}:v1");
    let dst = format!("{host}/skopeo/dst-{suffix}:v1");
    let (src_digest, _) = env.push_random_image(src.split_once('/').unwrap().1);

    let creds = format!("{USER}:{PASSWORD}");
    run_ok(env.cmd("skopeo").args([
        "--insecure-policy",
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--src-creds",
        &creds,
        "--dest-creds",
        &creds,
        &format!("docker://{src}"),
        &format!("docker://{dst}"),
    ]));

    let inspected: Value = serde_json::from_str(&run_stdout(env.cmd("skopeo").args([
        "inspect",
        "--tls-verify=false",
        "--creds",
        &creds,
        &format!("docker://{dst}"),
    ])))
    .unwrap();
    assert_eq!(inspected["Digest"].as_str(), Some(src_digest.as_str()), "skopeo inspect of the copy: {inspected}");
    let dst_digest = run_stdout(env.cmd("crane").args(["digest", &dst]));
    assert_eq!(dst_digest, src_digest, "digest at the destination differs from the source");
}

#[test]
fn regctl_copies_an_image_between_repositories() {
    let env = Env::start();
    let host = env.host();
    let suffix = random_hex(6);
    let src = format!("{host}/regctl/src-{suffix}:v1");
    let dst = format!("{host}/regctl/dst-{suffix}:v1");
    let (src_digest, _) = env.push_random_image(src.split_once('/').unwrap().1);

    run_ok(env.cmd("regctl").args(["registry", "set", &host, "--tls", "disabled"]));
    let mut login = env.cmd("regctl");
    login.args(["registry", "login", &host, "-u", USER, "--pass-stdin"]);
    login.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = login.spawn().unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(PASSWORD.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "regctl registry login failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    run_ok(env.cmd("regctl").args(["image", "copy", &src, &dst]));
    let regctl_digest = run_stdout(env.cmd("regctl").args(["image", "digest", &dst]));
    assert_eq!(regctl_digest, src_digest, "regctl sees a different digest at the destination");
    let crane_digest = run_stdout(env.cmd("crane").args(["digest", &dst]));
    assert_eq!(crane_digest, src_digest, "digest at the destination differs from the source");
}

/// docker (a dockerd of the test's own) and podman each log in through the token flow, push
/// afreg's own image to us, pull it from eu (logged in there), and run it with no network.
#[test]
fn docker_and_podman_push_to_one_region_and_pull_and_run_from_another() {
    let cluster = testkit::cluster::TestCluster::start(bin(), &["us", "eu", "asia"], |_, c| {
        c.config.auth.enabled = true;
        c.config.auth.anonymous = vec![];
    });
    let (us, eu) = (cluster.region("us"), cluster.region("eu"));
    us.node().add_user(USER, PASSWORD);
    // The user reaches eu through the log: wait until eu issues it a token.
    testkit::oci::within(
        std::time::Duration::from_secs(15),
        std::time::Duration::from_millis(100),
        "eu knows the user",
        || {
            reqwest::blocking::Client::new()
                .get(format!("{}/token?service=afreg&scope=repository:x:pull", eu.url()))
                .basic_auth(USER, Some(PASSWORD))
                .send()
                .is_ok_and(|r| r.status() == 200)
        },
    );

    let repo_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = tempfile::tempdir().unwrap();
    let archive = run_stdout(
        Command::new(repo_root.join("scripts/image.sh")).arg("--out").arg(out.path()).env("AFREG_BIN", bin()),
    );
    let archive = archive.lines().last().unwrap().to_owned();
    let version = run_stdout(Command::new(bin()).arg("--version"));
    // `afreg 0.1.0 (<revision>)`: the image is tagged with the crate version.
    let crate_version = version.split_whitespace().nth(1).unwrap_or_else(|| panic!("afreg --version: {version}"));
    let local = format!("localhost/afreg:{crate_version}");

    let podman = testkit::containers::Podman::new();
    run_ok(podman.cmd().args(["load", "-i", &archive]));
    let pushed = format!("{}/clients/afreg:podman", us.host());
    let pulled = format!("{}/clients/afreg:podman", eu.host());
    run_ok(podman.cmd().args(["tag", &local, &pushed]));
    for host in [us.host(), eu.host()] {
        run_ok(podman.cmd().args(["login", "--tls-verify=false", "-u", USER, "-p", PASSWORD, &host]));
    }
    run_ok(podman.cmd().args(["push", "--tls-verify=false", &pushed]));
    run_ok(podman.cmd().args(["rmi", &pushed]));
    run_ok(podman.cmd().args(["pull", "--tls-verify=false", &pulled]));
    let ran = run_stdout(podman.cmd().args(["run", "--rm", "--network", "none", &pulled, "--version"]));
    assert_eq!(ran, version, "podman ran the image pulled from eu");

    // docker takes a docker-archive: podman writes one from the image it loaded.
    let docker_archive = out.path().join("afreg.docker.tar");
    run_ok(podman.cmd().args(["save", "--format", "docker-archive", "-o"]).arg(&docker_archive).arg(&local));
    let dockerd = testkit::containers::Dockerd::start();
    run_ok(dockerd.docker().arg("load").arg("-i").arg(&docker_archive));
    let pushed = format!("{}/clients/afreg:docker", us.host());
    let pulled = format!("{}/clients/afreg:docker", eu.host());
    run_ok(dockerd.docker().args(["tag", &local, &pushed]));
    for host in [us.host(), eu.host()] {
        run_ok(dockerd.docker().args(["login", "-u", USER, "-p", PASSWORD, &host]));
    }
    run_ok(dockerd.docker().args(["push", &pushed]));
    run_ok(dockerd.docker().args(["rmi", &pushed, &local]));
    run_ok(dockerd.docker().args(["pull", &pulled]));
    let ran = run_stdout(dockerd.docker().args(["run", "--rm", "--network", "none", &pulled, "--version"]));
    assert_eq!(ran, version, "docker ran the image pulled from eu");
}
