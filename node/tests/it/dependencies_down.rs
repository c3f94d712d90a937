//! A node whose backends go away: with PostgreSQL or Kubo stopped, requests that need them are
//! answered promptly with 503 UNAVAILABLE naming what is down (never a hang), readiness says
//! not ready while liveness stays up, and once the backend is back nothing acknowledged before
//! the outage is lost and new writes work again. Real Postgres, real Kubo, real node.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;
use testkit::api::{Api, Resp};
use testkit::oci::image_of;
use testkit::{random_bytes, sha256_digest, Action, TestRegion};

use testkit::afreg_bin as bin;

/// The most a request may take while a backend is down: the node must answer, not hang.
const PROMPT: Duration = Duration::from_secs(15);
/// How long a backend that is back may take before the node serves again.
const RECOVERY: Duration = Duration::from_secs(30);

/// What an outage test asserts of an answer.
trait Prompt {
    fn expect_unavailable(&self, names: &str);
}

impl Prompt for Resp {
    /// Asserts 503 UNAVAILABLE, answered within [`PROMPT`], with a message containing `names`.
    fn expect_unavailable(&self, names: &str) {
        eprintln!("{}: {} after {:?}", self.what, self.status, self.elapsed);
        assert!(self.elapsed < PROMPT, "{}: took {:?} to answer while a backend is down", self.what, self.elapsed);
        let msg = self.expect_error(503, "UNAVAILABLE");
        assert!(msg.contains(names), "{}: the message should name {names:?}: {msg:?}", self.what);
        assert!(self.header("retry-after").is_some(), "{}: 503 without Retry-After", self.what);
    }
}

/// Well above PROMPT, so a hang shows up as a slow answer rather than a client timeout.
fn api(region: &TestRegion) -> Api {
    Api::new(region.node.url(), Duration::from_secs(60))
}

/// Pushes a config, a layer and a manifest tagged `tag`; returns the manifest bytes.
fn push_image(api: &Api, repo: &str, tag: &str) -> Vec<u8> {
    let img = image_of(br#"{"architecture":"amd64","os":"linux"}"#.to_vec(), random_bytes(64 * 1024));
    for (_, blob) in &img.blobs {
        api.post_blob(repo, blob).expect_status(201);
    }
    let r = api.put_manifest(repo, tag, &img.manifest);
    r.expect_status(201);
    assert_eq!(r.header("docker-content-digest"), Some(img.digest.as_str()));
    img.manifest
}

/// Repeats `attempt` until it returns `Some`, for at most [`RECOVERY`]. `attempt` must itself
/// fail the test on any outcome other than success or a 503 (the backend still coming back).
fn until_recovered<T>(what: &str, mut attempt: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + RECOVERY;
    loop {
        if let Some(v) = attempt() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: still 503 {RECOVERY:?} after the backend came back");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `Some(resp)` unless it is a 503.
fn unless_503(r: Resp) -> Option<Resp> {
    (r.status != 503).then_some(r)
}

fn open_region() -> TestRegion {
    TestRegion::start_with(bin(), |c| {
        c.config.auth.enabled = true;
        c.config.auth.anonymous = Action::ALL.to_vec();
    })
}

fn count(region: &TestRegion, sql: &str) -> i64 {
    let out = region.pg.psql(sql);
    out.parse().unwrap_or_else(|e| panic!("{sql}: not a count ({e}): {out:?}"))
}

#[test]
fn postgres_down_is_a_prompt_503_and_nothing_acknowledged_is_lost() {
    let mut region = open_region();
    let api = api(&region);
    let repo = "outage/pg";
    let manifest = push_image(&api, repo, "before");
    let digest = sha256_digest(&manifest);
    api.get("/readyz").expect_status(200);

    region.pg.stop();

    let r = api.get(&format!("/v2/{repo}/manifests/before"));
    r.expect_unavailable("PostgreSQL");
    let r = api.call(Method::HEAD, &format!("/v2/{repo}/manifests/{digest}"), |r| r);
    assert!(r.elapsed < PROMPT, "{}: took {:?}", r.what, r.elapsed);
    r.expect_status(503);
    let r = api.call(Method::POST, &format!("/v2/{repo}/blobs/uploads/"), |r| r);
    r.expect_unavailable("PostgreSQL");
    // Asked again, once the pool holds no live connection at all: still prompt.
    api.get(&format!("/v2/{repo}/manifests/before")).expect_unavailable("PostgreSQL");
    let blob = random_bytes(1000);
    api.post_blob(repo, &blob).expect_unavailable("PostgreSQL");
    api.put_manifest(repo, "during", &manifest).expect_unavailable("PostgreSQL");

    let ready = api.get("/readyz");
    assert!(ready.elapsed < PROMPT, "/readyz took {:?}", ready.elapsed);
    ready.expect_status(503);
    let v: Value = serde_json::from_slice(&ready.body).expect("/readyz JSON");
    assert_eq!(v["ready"], false, "{v}");
    assert_ne!(v["postgres"], "ok", "{v}");
    assert_eq!(v["kubo"], "ok", "{v}");
    let live = api.get("/healthz");
    live.expect_status(200);
    assert!(live.elapsed < PROMPT);

    region.pg.start_again();

    // What was acknowledged before the outage is served, byte for byte.
    let got = until_recovered("GET manifest after PostgreSQL restarted", || {
        unless_503(api.get(&format!("/v2/{repo}/manifests/before")))
    });
    got.expect_status(200);
    assert!(got.body == manifest, "the manifest pushed before the outage came back different");
    assert_eq!(got.header("docker-content-digest"), Some(digest.as_str()));
    let by_digest = api.get(&format!("/v2/{repo}/manifests/{digest}"));
    by_digest.expect_status(200);
    assert!(by_digest.body == manifest);
    // Nothing from the refused requests was recorded.
    assert_eq!(count(&region, "SELECT count(*) FROM uploads"), 0);
    assert_eq!(count(&region, &format!("SELECT count(*) FROM blobs WHERE digest = '{}'", sha256_digest(&blob))), 0);
    assert_eq!(count(&region, "SELECT count(*) FROM tags WHERE name = 'during'"), 0);

    // New pushes work again.
    let blob_after = random_bytes(2000);
    let first =
        until_recovered("first push after PostgreSQL restarted", || unless_503(api.post_blob(repo, &blob_after)));
    first.expect_status(201);
    let after = push_image(&api, repo, "after");
    let got = api.get(&format!("/v2/{repo}/manifests/after"));
    got.expect_status(200);
    assert!(got.body == after);
    until_recovered("/readyz after PostgreSQL restarted", || unless_503(api.get("/readyz"))).expect_status(200);
}

#[test]
fn kubo_down_is_a_prompt_503_and_blobs_survive() {
    let mut region = open_region();
    let api = api(&region);
    let repo = "outage/kubo";
    let blob = random_bytes(512 * 1024 + 17);
    let digest = sha256_digest(&blob);
    api.post_blob(repo, &blob).expect_status(201);
    let got = api.get(&format!("/v2/{repo}/blobs/{digest}"));
    got.expect_status(200);
    assert!(got.body == blob);
    let pins_before = region.kubo.pin_ls_recursive();
    // The push's file lands just after its 201 (fsync, rename, off the request's path).
    let name = digest.replace(':', "-");
    let files = region.node.dir().join("blob-files");
    testkit::oci::within(Duration::from_secs(20), Duration::from_millis(50), "the blob's file in place", || {
        std::fs::read_dir(&files).into_iter().flatten().flatten().any(|shard| {
            std::fs::read_dir(shard.path()).into_iter().flatten().flatten().any(|cid| cid.path().join(&name).is_file())
        })
    });

    region.kubo.stop();

    // The blob's verified file (filled by its push) serves it while Kubo is down, ranges too.
    let got = api.get(&format!("/v2/{repo}/blobs/{digest}"));
    got.expect_status(200);
    assert!(got.body == blob, "the blob's file served other bytes");
    let ranged = api.call(Method::GET, &format!("/v2/{repo}/blobs/{digest}"), |r| r.header("range", "bytes=0-99"));
    ranged.expect_status(206);
    assert!(ranged.body == blob[..100]);
    // Without its file, a blob needs Kubo: a prompt 503 naming blob storage.
    std::fs::remove_dir_all(region.node.dir().join("blob-files")).unwrap();
    api.get(&format!("/v2/{repo}/blobs/{digest}")).expect_unavailable("blob storage");
    let ranged = api.call(Method::GET, &format!("/v2/{repo}/blobs/{digest}"), |r| r.header("range", "bytes=0-99"));
    ranged.expect_unavailable("blob storage");
    // Metadata alone does not need Kubo.
    let head = api.call(Method::HEAD, &format!("/v2/{repo}/blobs/{digest}"), |r| r);
    head.expect_status(200);
    assert_eq!(head.header("content-length"), Some(blob.len().to_string().as_str()));

    let new_blob = random_bytes(200 * 1024);
    let new_digest = sha256_digest(&new_blob);
    api.post_blob(repo, &new_blob).expect_unavailable("blob storage");
    assert_eq!(count(&region, &format!("SELECT count(*) FROM blobs WHERE digest = '{new_digest}'")), 0);
    assert_eq!(count(&region, &format!("SELECT count(*) FROM repository_blobs WHERE digest = '{new_digest}'")), 0);
    assert_eq!(count(&region, "SELECT count(*) FROM uploads"), 0);

    let ready = api.get("/readyz");
    assert!(ready.elapsed < PROMPT, "/readyz took {:?}", ready.elapsed);
    ready.expect_status(503);
    let v: Value = serde_json::from_slice(&ready.body).expect("/readyz JSON");
    assert_eq!(v["ready"], false, "{v}");
    assert_eq!(v["postgres"], "ok", "{v}");
    assert_ne!(v["kubo"], "ok", "{v}");
    api.get("/healthz").expect_status(200);

    region.kubo.start_again();

    let got =
        until_recovered("GET blob after Kubo restarted", || unless_503(api.get(&format!("/v2/{repo}/blobs/{digest}"))));
    got.expect_status(200);
    assert_eq!(got.body.len(), blob.len());
    assert!(got.body == blob, "the blob uploaded before the outage came back different");
    assert_eq!(region.kubo.pin_ls_recursive(), pins_before, "pins changed across the outage");

    // The refused upload succeeds now.
    let r = until_recovered("upload after Kubo restarted", || unless_503(api.post_blob(repo, &new_blob)));
    r.expect_status(201);
    let got = api.get(&format!("/v2/{repo}/blobs/{new_digest}"));
    got.expect_status(200);
    assert!(got.body == new_blob);
    until_recovered("/readyz after Kubo restarted", || unless_503(api.get("/readyz"))).expect_status(200);
}
