//! The pull-through cache against a real upstream: distribution v3 (the `registry` binary
//! set-up builds) with basic auth from an htpasswd file, holding a two-platform image whose
//! layers are real tar archives. The upstream's own access log counts what it was asked.
//! podman, with afreg as the mirror in its registries.conf, pulls through us; eu and asia then
//! serve the same image without asking the upstream; with the upstream killed, cached tags and
//! digests keep being served in every region; concurrent cold pulls are one upstream fetch per
//! manifest and blob; a tag moved upstream is seen after `tag_ttl` and not before; bytes that do
//! not match their digest reach no client whole and are not kept; pushes into the mirror are
//! refused; images no region pulled for `cache_ttl`, or past `max_bytes` the least recently
//! pulled, are evicted in every region, and fetched again on their next pull; docker, with
//! afreg as its `registry-mirrors`, pulls a Docker Hub name through it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use afreg_node::config::mirror::Upstream;
use reqwest::blocking::Client;
use serde_json::json;
use testkit::cluster::TestCluster;
use testkit::oci::{client, sha256_digest, within, Image, OCI_MANIFEST};
use testkit::tools::{free_port, run_ok, tool};
use testkit::Action;

use testkit::afreg_bin as bin;

const USER: &str = "mirror";
const PASSWORD: &str = "upstream-password";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const TAG_TTL: Duration = Duration::from_secs(3);

/// distribution v3 on a free port with basic auth, its access log in a file.
struct Distribution {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
}

impl Distribution {
    fn start() -> Distribution {
        let dir = tempfile::Builder::new().prefix("afreg-upstream-").tempdir().unwrap();
        let hash = bcrypt::hash(PASSWORD, 5).unwrap();
        std::fs::write(dir.path().join("htpasswd"), format!("{USER}:{hash}\n")).unwrap();
        let port = free_port();
        std::fs::write(
            dir.path().join("config.yml"),
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\nauth:\n  htpasswd:\n    realm: upstream\n    path: {htpasswd}\n",
                data = dir.path().join("data").display(),
                htpasswd = dir.path().join("htpasswd").display(),
            ),
        )
        .unwrap();
        let mut d = Distribution { child: None, dir, port };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("access.log")).unwrap();
        let child = Command::new(tool("registry"))
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("distribution's registry");
        self.child = Some(child);
        let url = self.url();
        within(Duration::from_secs(15), Duration::from_millis(100), "the upstream listening", || {
            client().get(format!("{url}/v2/")).send().is_ok()
        });
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Successful GETs of paths starting with `path` in the access log.
    fn gets(&self, path: &str) -> usize {
        let log = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        let needle = format!("\"GET {path}");
        log.lines().filter(|l| l.contains(&needle) && l.contains("\" 200 ")).count()
    }

    /// Every request for a repository's content in the access log, whatever the answer.
    fn requests_of(&self, repo: &str) -> usize {
        let log = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        let needle = format!(" /v2/{repo}/");
        log.lines().filter(|l| l.contains(&needle)).count()
    }

    /// The file distribution keeps a blob's bytes in.
    fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir.path().join(format!("data/docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }

    /// Pushes `img` as `repo:tag` (POST, then PUT with the body), as the mirror's user.
    fn push(&self, repo: &str, tag: &str, img: &Image) {
        let c = client();
        for (digest, bytes) in &img.blobs {
            let r = c
                .post(format!("{}/v2/{repo}/blobs/uploads/", self.url()))
                .basic_auth(USER, Some(PASSWORD))
                .send()
                .unwrap();
            assert_eq!(r.status(), 202, "upload start: {}", r.text().unwrap_or_default());
            let location = r.headers()["location"].to_str().unwrap().to_owned();
            let location = if location.starts_with("http") { location } else { format!("{}{location}", self.url()) };
            let sep = if location.contains('?') { '&' } else { '?' };
            let r = c
                .put(format!("{location}{sep}digest={digest}"))
                .basic_auth(USER, Some(PASSWORD))
                .body(bytes.clone())
                .send()
                .unwrap();
            assert_eq!(r.status(), 201, "blob PUT: {}", r.text().unwrap_or_default());
        }
        self.put_manifest(repo, tag, OCI_MANIFEST, &img.manifest);
    }

    fn put_manifest(&self, repo: &str, tag: &str, media_type: &str, body: &[u8]) {
        let r = client()
            .put(format!("{}/v2/{repo}/manifests/{tag}", self.url()))
            .basic_auth(USER, Some(PASSWORD))
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()
            .unwrap();
        assert_eq!(r.status(), 201, "manifest PUT: {}", r.text().unwrap_or_default());
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A tar archive of one file of `bytes` random bytes (a layer podman can unpack).
fn tar_layer(bytes: usize) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("data.bin"), testkit::oci::random_bytes(bytes)).unwrap();
    let tar = dir.path().join("layer.tar");
    run_ok(Command::new("tar").arg("-cf").arg(&tar).arg("-C").arg(dir.path()).arg("data.bin"));
    std::fs::read(tar).unwrap()
}

/// An image for `arch` of one tar layer.
fn image(arch: &str, bytes: usize) -> Image {
    let layer = tar_layer(bytes);
    let config = serde_json::to_vec(&json!({
        "architecture": arch, "os": "linux",
        "config": {"Cmd": ["/data.bin"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(&layer)]},
        "id": testkit::oci::random_hex(8),
    }))
    .unwrap();
    testkit::oci::image_of(config, layer)
}

/// An index of `amd64` and `arm64`.
fn index(amd64: &Image, arm64: &Image) -> Vec<u8> {
    let entry = |img: &Image, arch: &str| {
        json!({"mediaType": OCI_MANIFEST, "digest": img.digest, "size": img.manifest.len(),
               "platform": {"architecture": arch, "os": "linux"}})
    };
    serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [entry(amd64, "amd64"), entry(arm64, "arm64")]}))
    .unwrap()
}

/// The upstream's password in a file of its own (the directory goes with the first half).
fn password_file() -> (tempfile::TempDir, PathBuf) {
    let secrets = tempfile::tempdir().unwrap();
    let file = secrets.path().join("upstream-password");
    std::fs::write(&file, PASSWORD).unwrap();
    (secrets, file)
}

fn upstream_config(upstream: &Distribution, password_file: &Path) -> Upstream {
    Upstream {
        name: "up".into(),
        url: upstream.url(),
        destination: "hub".into(),
        ns: vec![upstream.host()],
        username: USER.into(),
        password_file: Some(password_file.to_owned()),
        tag_ttl: format!("{}s", TAG_TTL.as_secs()),
        timeout: "5s".into(),
        ..Default::default()
    }
}

/// GET of a manifest: (status, digest header, Warning header, body).
fn manifest(c: &Client, url: &str, repo: &str, reference: &str) -> (u16, String, Option<String>, Vec<u8>) {
    let r = c
        .get(format!("{url}/v2/{repo}/manifests/{reference}"))
        .header("accept", format!("{OCI_INDEX}, {OCI_MANIFEST}"))
        .send()
        .unwrap();
    let h = |n: &str| r.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
    let (status, digest, warning) = (r.status().as_u16(), h("docker-content-digest").unwrap_or_default(), h("warning"));
    (status, digest, warning, r.bytes().unwrap().to_vec())
}

fn blob(c: &Client, url: &str, repo: &str, digest: &str) -> Result<Vec<u8>, String> {
    let r = c.get(format!("{url}/v2/{repo}/blobs/{digest}")).send().map_err(|e| e.to_string())?;
    if r.status() != 200 {
        return Err(format!("{}", r.status()));
    }
    r.bytes().map(|b| b.to_vec()).map_err(|e| e.to_string())
}

#[test]
fn podman_pulls_through_the_mirror_and_every_region_serves_it_after_without_the_upstream() {
    let mut upstream = Distribution::start();
    let (amd64, arm64) = (image("amd64", 300 * 1024), image("arm64", 300 * 1024));
    upstream.push("team/app", "amd64", &amd64);
    upstream.push("team/app", "arm64", &arm64);
    let multi = index(&amd64, &arm64);
    upstream.put_manifest("team/app", "multi", OCI_INDEX, &multi);
    let secrets = tempfile::tempdir().unwrap();
    let password_file = secrets.path().join("upstream-password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let cfg = upstream_config(&upstream, &password_file);
    let cluster = TestCluster::start(bin(), &["us", "eu", "asia"], |_, c| {
        c.config.auth.anonymous = Action::ALL.to_vec();
        c.config.mirror.upstreams = vec![cfg.clone()];
    });
    let (us, eu, asia) = (cluster.region("us"), cluster.region("eu"), cluster.region("asia"));
    assert!(
        !std::fs::read_to_string(us.node().log_path()).unwrap().contains(PASSWORD),
        "the upstream's password is in the node's log"
    );

    // podman, with us as the mirror of the upstream: its registries.conf names no credentials
    // for the upstream itself, so the pull can only come through afreg.
    let podman = testkit::containers::Podman::new();
    let conf = secrets.path().join("registries.conf");
    std::fs::write(
        &conf,
        format!(
            "[[registry]]\nprefix = \"{up}\"\nlocation = \"{up}\"\n\n[[registry.mirror]]\nlocation = \"{us}/hub\"\ninsecure = true\n",
            up = upstream.host(),
            us = us.host()
        ),
    )
    .unwrap();
    let reference = format!("{}/team/app:multi", upstream.host());
    let out = podman.cmd().env("CONTAINERS_REGISTRIES_CONF", &conf).args(["pull", &reference]).output().unwrap();
    assert!(out.status.success(), "podman pull through the mirror:\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(podman.cmd().args(["image", "exists", &reference]).status().unwrap().success(), "podman has the image");
    assert_eq!(us.sql("SELECT count(*) FROM tags t JOIN repositories r ON r.id = t.repository_id WHERE r.name = 'hub/team/app' AND t.name = 'multi'"), "1");
    let asked = upstream.requests_of("team/app");
    assert!(asked > 0);

    // eu and asia: the index by tag, both platforms' manifests and every blob, byte for byte,
    // and not one request more to the upstream.
    let c = client();
    for region in [eu, asia] {
        within(Duration::from_secs(20), Duration::from_millis(200), "the mirrored tag replicated", || {
            manifest(&c, &region.url(), "hub/team/app", "multi").0 == 200
        });
        let (status, digest, _, body) = manifest(&c, &region.url(), "hub/team/app", "multi");
        assert_eq!((status, digest.as_str(), body.as_slice()), (200, sha256_digest(&multi).as_str(), multi.as_slice()));
    }
    // The arm64 half was never pulled: us fetches it now, once, for every region.
    for img in [&amd64, &arm64] {
        let (status, _, _, body) = manifest(&c, &us.url(), "hub/team/app", &img.digest);
        assert_eq!((status, body.as_slice()), (200, img.manifest.as_slice()));
        for (d, bytes) in &img.blobs {
            assert_eq!(blob(&c, &us.url(), "hub/team/app", d).as_ref(), Ok(bytes), "{d} through us");
        }
    }
    let asked = upstream.requests_of("team/app");
    for region in [eu, asia] {
        for img in [&amd64, &arm64] {
            let (status, _, _, body) = manifest(&c, &region.url(), "hub/team/app", &img.digest);
            assert_eq!((status, body.as_slice()), (200, img.manifest.as_slice()), "{}", region.name);
            for (d, bytes) in &img.blobs {
                assert_eq!(blob(&c, &region.url(), "hub/team/app", d).as_ref(), Ok(bytes), "{d} from {}", region.name);
            }
        }
    }
    assert_eq!(upstream.requests_of("team/app"), asked, "eu and asia asked the upstream");

    // Pushes into the mirror are refused, with the upstream named.
    let r = c
        .put(format!("{}/v2/hub/team/app/manifests/mine", us.url()))
        .header("content-type", OCI_MANIFEST)
        .body(amd64.manifest.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    let text = r.text().unwrap();
    assert!(text.contains("DENIED") && text.contains("pull-through mirror of up"), "{text}");
    let r = c.post(format!("{}/v2/hub/team/app/blobs/uploads/", us.url())).send().unwrap();
    assert_eq!(r.status(), 403);

    // The upstream gone: past the tag's TTL, the cached tag is served (with a Warning) and the
    // digests as before, in every region; what was never cached is a prompt 503.
    upstream.kill();
    std::thread::sleep(TAG_TTL + Duration::from_millis(500));
    for region in [us, eu, asia] {
        let (status, digest, warning, _) = manifest(&c, &region.url(), "hub/team/app", "multi");
        assert_eq!(
            (status, digest.as_str()),
            (200, sha256_digest(&multi).as_str()),
            "{} with the upstream down",
            region.name
        );
        assert!(warning.is_some_and(|w| w.starts_with("110")), "{}: no Warning on a stale tag", region.name);
        let (status, _, warning, _) = manifest(&c, &region.url(), "hub/team/app", &amd64.digest);
        assert_eq!((status, warning), (200, None));
        assert_eq!(blob(&c, &region.url(), "hub/team/app", &amd64.blobs[1].0).as_ref(), Ok(&amd64.blobs[1].1));
        let started = Instant::now();
        let (status, _, _, body) = manifest(&c, &region.url(), "hub/team/never", "v1");
        assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
        assert!(
            String::from_utf8_lossy(&body).contains("upstream up is unreachable"),
            "{}",
            String::from_utf8_lossy(&body)
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a pull of what was never cached hung: {:?}",
            started.elapsed()
        );
    }
    let metrics = c.get(us.node().metrics_url()).send().unwrap().text().unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("afreg_mirror_stale_total") && l.contains("upstream=\"up\"")),
        "no stale counter"
    );

    // containerd's `?ns=` names the upstream on a mirror of several registries.
    upstream.spawn();
    let (status, digest, _, _) = manifest(&c, &us.url(), "team/app", &format!("multi?ns={}", upstream.host()));
    assert_eq!((status, digest), (200, sha256_digest(&multi)));
}

#[test]
fn concurrent_cold_pulls_are_one_upstream_fetch_tags_follow_the_ttl_and_bad_bytes_are_not_kept() {
    let upstream = Distribution::start();
    let img = image("amd64", 2 * 1024 * 1024);
    upstream.push("team/cold", "v1", &img);
    let (_secrets, password_file) = password_file();
    let cfg = upstream_config(&upstream, &password_file);
    let cluster = TestCluster::start(bin(), &["us"], |_, c| {
        c.config.auth.anonymous = Action::ALL.to_vec();
        c.config.mirror.upstreams = vec![cfg.clone()];
    });
    let us = cluster.region("us").url();

    // 20 clients at once, each the tag, the manifest by digest and every blob.
    let pulls: Vec<_> = (0..20)
        .map(|_| {
            let (us, img) = (us.clone(), img.clone());
            std::thread::spawn(move || {
                let c = client();
                let (status, digest, _, body) = manifest(&c, &us, "hub/team/cold", "v1");
                assert_eq!(
                    (status, digest.as_str(), body.as_slice()),
                    (200, img.digest.as_str(), img.manifest.as_slice())
                );
                for (d, bytes) in &img.blobs {
                    assert_eq!(blob(&c, &us, "hub/team/cold", d).as_ref(), Ok(bytes), "{d}");
                }
            })
        })
        .collect();
    for p in pulls {
        p.join().unwrap();
    }
    assert_eq!(upstream.gets("/v2/team/cold/manifests/v1"), 1, "one upstream GET of the tag");
    for (d, _) in &img.blobs {
        assert_eq!(upstream.gets(&format!("/v2/team/cold/blobs/{d}")), 1, "one upstream GET of {d}");
    }

    // The tag moved upstream: the old digest until the TTL has passed, the new one after.
    let c = client();
    let moved = image("amd64", 64 * 1024);
    upstream.push("team/cold", "v1", &moved);
    let (_, digest, _, _) = manifest(&c, &us, "hub/team/cold", "v1");
    assert_eq!(digest, img.digest, "the tag was asked again before its TTL");
    std::thread::sleep(TAG_TTL + Duration::from_millis(500));
    let (status, digest, _, _) = manifest(&c, &us, "hub/team/cold", "v1");
    assert_eq!((status, digest), (200, moved.digest.clone()), "the moved tag after its TTL");

    // Bytes that do not match their digest: the upstream's file of a layer altered in place.
    let bad = image("amd64", 512 * 1024);
    upstream.push("team/bad", "v1", &bad);
    let (layer, bytes) = &bad.blobs[1];
    let mut altered = bytes.clone();
    let at = altered.len() - 100;
    altered[at] ^= 0xff;
    std::fs::write(upstream.blob_file(layer), &altered).unwrap();
    assert_eq!(manifest(&c, &us, "hub/team/bad", "v1").0, 200);
    let got = blob(&c, &us, "hub/team/bad", layer);
    assert!(
        got.as_ref().map_or(true, |b| b != bytes && b != &altered),
        "a client got the altered blob whole: {:?}",
        got.map(|b| b.len())
    );
    let region = cluster.region("us");
    within(Duration::from_secs(10), Duration::from_millis(200), "the failed fill settled", || {
        region.sql(&format!("SELECT count(*) FROM blobs WHERE digest = '{layer}'")) == "0"
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        region.sql(&format!("SELECT count(*) FROM blobs WHERE digest = '{layer}'")),
        "0",
        "the bad bytes were kept"
    );
}

#[test]
fn an_upstream_that_asks_for_the_docker_token_flow_is_answered_with_its_token() {
    // The upstream is a private afreg region: its 401 challenge names its /token realm.
    let upstream = TestCluster::start(bin(), &["up"], |_, c| c.config.auth.anonymous = vec![]);
    let up = upstream.region("up");
    up.node().add_user_with_grants(USER, PASSWORD, &["team/*:pull,push"]);
    let img = image("amd64", 128 * 1024);
    let pusher = up.client_as(USER, PASSWORD, "team/tok");
    testkit::oci::push(&pusher, &up.url(), "team/tok", "v1", &img).unwrap();

    let secrets = tempfile::tempdir().unwrap();
    let (good, bad) = (secrets.path().join("good"), secrets.path().join("bad"));
    std::fs::write(&good, PASSWORD).unwrap();
    std::fs::write(&bad, "not-the-password").unwrap();
    let upstream_of = |name: &str, destination: &str, password_file: &Path| Upstream {
        name: name.into(),
        url: up.url(),
        destination: destination.into(),
        username: USER.into(),
        password_file: Some(password_file.to_owned()),
        timeout: "5s".into(),
        ..Default::default()
    };
    let (right, wrong) = (upstream_of("tok", "tok", &good), upstream_of("nope", "nope", &bad));
    let cluster = TestCluster::start(bin(), &["us"], |_, c| {
        c.config.auth.anonymous = Action::ALL.to_vec();
        c.config.mirror.upstreams = vec![right.clone(), wrong.clone()];
    });
    let us = cluster.region("us").url();
    let c = client();
    let (status, digest, _, body) = manifest(&c, &us, "tok/team/tok", "v1");
    assert_eq!((status, digest.as_str()), (200, img.digest.as_str()), "{}", String::from_utf8_lossy(&body));
    for (d, bytes) in &img.blobs {
        assert_eq!(blob(&c, &us, "tok/team/tok", d).as_ref(), Ok(bytes), "{d} through the token flow");
    }
    // Credentials the upstream's token service refuses: a 503 that says so, nothing cached.
    let (status, _, _, body) = manifest(&c, &us, "nope/team/tok", "v1");
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("token service") && text.contains("refused the credentials"), "{text}");
}

/// The bytes an image holds once pulled: its manifest and every blob.
fn weight(img: &Image) -> u64 {
    (img.manifest.len() + img.blobs.iter().map(|(_, b)| b.len()).sum::<usize>()) as u64
}

/// The tag, then every blob, through `url`, byte for byte.
fn pull_all(c: &Client, url: &str, repo: &str, img: &Image) {
    let (status, digest, _, _) = manifest(c, url, repo, "v1");
    assert_eq!((status, digest.as_str()), (200, img.digest.as_str()), "{repo}:v1 from {url}");
    for (d, bytes) in &img.blobs {
        assert_eq!(blob(c, url, repo, d).as_ref(), Ok(bytes), "{d} of {repo} from {url}");
    }
}

#[test]
fn cached_images_unpulled_for_cache_ttl_or_past_max_bytes_are_evicted_in_every_region() {
    let mut upstream = Distribution::start();
    let images: Vec<(&str, Image)> =
        ["kept", "idle", "older", "newer"].into_iter().map(|n| (n, image("amd64", 256 * 1024))).collect();
    for (name, img) in &images {
        upstream.push(&format!("team/{name}"), "v1", img);
    }
    let img = |n: &str| &images.iter().find(|(m, _)| *m == n).unwrap().1;
    let (_secrets, password_file) = password_file();
    let base = upstream_config(&upstream, &password_file);
    const CACHE_TTL: Duration = Duration::from_secs(6);
    // "ttl" evicts what no region pulled for CACHE_TTL; "size" holds less than two images.
    let by_ttl = Upstream {
        name: "ttl".into(),
        destination: "ttl".into(),
        ns: vec![],
        cache_ttl: format!("{}s", CACHE_TTL.as_secs()),
        max_bytes: 0,
        ..base.clone()
    };
    let bound = weight(img("older")) + weight(img("newer")) - 1024;
    let by_size = Upstream {
        name: "size".into(),
        destination: "size".into(),
        ns: vec![],
        cache_ttl: "0s".into(),
        max_bytes: bound,
        ..base
    };
    let cluster = TestCluster::start(bin(), &["us", "eu", "asia"], |_, c| {
        c.config.auth.anonymous = Action::ALL.to_vec();
        c.config.mirror.upstreams = vec![by_ttl.clone(), by_size.clone()];
        c.config.mirror.eviction_interval = "1s".into();
    });
    let (us, eu, asia) = (cluster.region("us"), cluster.region("eu"), cluster.region("asia"));
    let c = client();
    pull_all(&c, &us.url(), "ttl/team/kept", img("kept"));
    pull_all(&c, &us.url(), "ttl/team/idle", img("idle"));
    pull_all(&c, &us.url(), "size/team/older", img("older"));
    std::thread::sleep(Duration::from_millis(1500));
    pull_all(&c, &us.url(), "size/team/newer", img("newer"));
    upstream.kill();

    // eu keeps pulling "kept" (by digest: tags go stale with the upstream down) past the TTL;
    // nobody pulls "idle".
    let manifests = |region: &testkit::cluster::ClusterMember, repo: &str| {
        region.sql(&format!(
            "SELECT count(*) FROM manifests m JOIN repositories r ON r.id = m.repository_id WHERE r.name = '{repo}'"
        ))
    };
    let until = Instant::now() + CACHE_TTL * 2;
    while Instant::now() < until {
        let (status, _, _, body) = manifest(&c, &eu.url(), "ttl/team/kept", &img("kept").digest);
        assert_eq!((status, body.as_slice()), (200, img("kept").manifest.as_slice()), "kept, pulled from eu");
        std::thread::sleep(Duration::from_millis(700));
    }
    for region in [us, eu, asia] {
        within(Duration::from_secs(15), Duration::from_millis(200), "idle and older evicted", || {
            manifests(region, "ttl/team/idle") == "0" && manifests(region, "size/team/older") == "0"
        });
        assert_eq!(manifests(region, "ttl/team/kept"), "1", "{}: kept, pulled in eu all along", region.name);
        assert_eq!(manifests(region, "size/team/newer"), "1", "{}: the image pulled last", region.name);
        // Their blobs went with them, without waiting for GC's grace.
        let (layer, _) = &img("idle").blobs[1];
        within(Duration::from_secs(15), Duration::from_millis(200), "the evicted layer collected", || {
            region.sql(&format!("SELECT count(*) FROM blobs WHERE digest = '{layer}'")) == "0"
        });
    }
    // What was evicted is asked of the upstream again (down: a 503), what was kept is served.
    let (status, _, _, body) = manifest(&c, &asia.url(), "ttl/team/idle", &img("idle").digest);
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert_eq!(blob(&c, &asia.url(), "ttl/team/kept", &img("kept").blobs[1].0).as_ref(), Ok(&img("kept").blobs[1].1));
    let leader = cluster.region(&cluster.wait_leader(Duration::from_secs(10)));
    let metrics = c.get(leader.node().metrics_url()).send().unwrap().text().unwrap();
    for reason in ["cache_ttl", "max_bytes"] {
        assert!(
            metrics.lines().any(|l| l.starts_with("afreg_mirror_evicted_total") && l.contains(reason)),
            "no eviction counted for {reason}"
        );
    }

    // Back up, the evicted image is fetched again on its next pull.
    upstream.spawn();
    pull_all(&c, &asia.url(), "ttl/team/idle", img("idle"));
}

#[test]
fn docker_with_afreg_as_its_registry_mirror_pulls_a_docker_hub_name_through_it() {
    // The upstream stands in for Docker Hub; docker asks its mirror for the name as it is
    // (destination ""). This machine reaches no Docker Hub, so a pull that succeeds came
    // through afreg.
    let upstream = Distribution::start();
    let img = image("amd64", 128 * 1024);
    upstream.push("afregtest/app", "v1", &img);
    let (_secrets, password_file) = password_file();
    let cfg = Upstream { destination: String::new(), ns: vec![], ..upstream_config(&upstream, &password_file) };
    let cluster = TestCluster::start(bin(), &["us"], |_, c| {
        c.config.auth.anonymous = Action::ALL.to_vec();
        c.config.mirror.upstreams = vec![cfg.clone()];
    });
    let us = cluster.region("us");
    let dockerd = testkit::containers::Dockerd::start_with(&[
        format!("--registry-mirror={}", us.url()),
        format!("--insecure-registry={}", us.host()),
    ]);
    let out = dockerd.docker().args(["pull", "afregtest/app:v1"]).output().unwrap();
    assert!(
        out.status.success(),
        "docker pull through its mirror:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let id = dockerd.docker().args(["image", "inspect", "-f", "{{.Id}}", "afregtest/app:v1"]).output().unwrap();
    assert!(id.status.success(), "docker has no afregtest/app:v1");
    assert_eq!(
        us.sql("SELECT count(*) FROM tags t JOIN repositories r ON r.id = t.repository_id WHERE r.name = 'afregtest/app' AND t.name = 'v1'"),
        "1",
        "the mirror stored what docker pulled"
    );
    assert!(upstream.gets("/v2/afregtest/app/manifests/v1") >= 1, "the upstream was asked");
}

#[test]
fn a_blob_fetched_through_the_mirror_is_served_from_its_blob_file_after() {
    let upstream = Distribution::start();
    let img = image("amd64", 1024 * 1024);
    upstream.push("team/files", "v1", &img);
    let (_secrets, password_file) = password_file();
    let cfg = upstream_config(&upstream, &password_file);
    let cluster = TestCluster::start(bin(), &["us"], |_, c| {
        c.config.auth.anonymous = Action::ALL.to_vec();
        c.config.mirror.upstreams = vec![cfg.clone()];
    });
    let us = cluster.region("us");
    let c = client();
    let (layer, bytes) = &img.blobs[1];
    assert_eq!(blob(&c, &us.url(), "hub/team/files", layer).as_ref(), Ok(bytes), "the cold pull");
    let name = layer.replace(':', "-");
    let dir = us.node().dir().join("blob-files");
    let found = |d: &Path| {
        let mut hit = false;
        for e in walkdir(d) {
            hit |= e.file_name().is_some_and(|n| n == name.as_str()) && !e.starts_with(d.join("tmp"));
        }
        hit
    };
    within(Duration::from_secs(20), Duration::from_millis(100), "the mirrored blob's file in place", || found(&dir));
    let hits = |c: &Client| {
        let v: serde_json::Value = c.get(format!("{}/status?scope=local", us.url())).send().unwrap().json().unwrap();
        v["blob_files"]["hits"].as_f64().unwrap_or_else(|| panic!("no blob_files.hits in {v}"))
    };
    let before = hits(&c);
    assert_eq!(blob(&c, &us.url(), "hub/team/files", layer).as_ref(), Ok(bytes), "the warm pull");
    assert_eq!(hits(&c), before + 1.0, "the warm pull was not served from the blob file");
    // /metrics says the same at once (its counters were set only when a file landed or went).
    let text = c.get(us.node().metrics_url()).send().unwrap().text().unwrap();
    let metric = text
        .lines()
        .find(|l| l.starts_with("afreg_blob_file_reads_total{result=\"hit\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert_eq!(metric, Some(before + 1.0), "/metrics' blob file hits");
}

fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walkdir(&p));
        } else {
            out.push(p);
        }
    }
    out
}
