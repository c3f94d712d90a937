//! A node whose backends go away: with PostgreSQL or Kubo stopped, requests that need them are
//! answered promptly with 503 UNAVAILABLE naming what is down (never a hang), readiness says
//! not ready while liveness stays up, and once the backend is back nothing acknowledged before
//! the outage is lost and new writes work again. Real Postgres, real Kubo, real node.

use std::time::{Duration, Instant};

use reqwest::blocking::{Client, RequestBuilder};
use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::{json, Value};
use testkit::{Action, random_bytes, sha256_digest, TestRegion};

use testkit::afreg_bin as bin;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// The most a request may take while a backend is down: the node must answer, not hang.
const PROMPT: Duration = Duration::from_secs(15);
/// How long a backend that is back may take before the node serves again.
const RECOVERY: Duration = Duration::from_secs(30);

struct Resp {
    what: String,
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
    elapsed: Duration,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn expect_status(&self, status: u16) -> &Self {
        assert_eq!(self.status, status, "{}: expected {status}, got {}: {}", self.what, self.status, self.text());
        self
    }

    /// Asserts 503 UNAVAILABLE, answered within [`PROMPT`], with a message containing `names`.
    fn expect_unavailable(&self, names: &str) {
        eprintln!("{}: {} after {:?}", self.what, self.status, self.elapsed);
        assert!(self.elapsed < PROMPT, "{}: took {:?} to answer while a backend is down", self.what, self.elapsed);
        self.expect_status(503);
        let v: Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{}: 503 body is not JSON ({e}): {}", self.what, self.text()));
        assert_eq!(v["errors"][0]["code"], "UNAVAILABLE", "{}: {v}", self.what);
        let msg = v["errors"][0]["message"].as_str().unwrap_or("");
        assert!(msg.contains(names), "{}: the message should name {names:?}: {msg:?}", self.what);
        assert!(self.header("retry-after").is_some(), "{}: 503 without Retry-After", self.what);
    }
}

struct Api {
    client: Client,
    base: String,
}

impl Api {
    fn new(region: &TestRegion) -> Api {
        // Well above PROMPT, so a hang shows up as a slow answer rather than a client timeout.
        let client = Client::builder().no_proxy().timeout(Duration::from_secs(60)).build().expect("reqwest client");
        Api { client, base: region.node.url() }
    }

    fn call(&self, method: Method, path: &str, f: impl FnOnce(RequestBuilder) -> RequestBuilder) -> Resp {
        let what = format!("{method} {path}");
        let started = Instant::now();
        let resp = f(self.client.request(method, format!("{}{path}", self.base)))
            .send()
            .unwrap_or_else(|e| panic!("{what}: request failed after {:?}: {e:?}", started.elapsed()));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().unwrap_or_else(|e| panic!("{what}: reading the body failed: {e}")).to_vec();
        Resp { what, status, headers, body, elapsed: started.elapsed() }
    }

    fn get(&self, path: &str) -> Resp {
        self.call(Method::GET, path, |r| r)
    }

    fn post_blob(&self, repo: &str, data: &[u8]) -> Resp {
        let digest = sha256_digest(data);
        let data = data.to_vec();
        self.call(Method::POST, &format!("/v2/{repo}/blobs/uploads/?digest={digest}"), |r| {
            r.header("content-type", "application/octet-stream").body(data)
        })
    }

    fn put_manifest(&self, repo: &str, tag: &str, body: &[u8]) -> Resp {
        let body = body.to_vec();
        self.call(Method::PUT, &format!("/v2/{repo}/manifests/{tag}"), |r| r.header("content-type", OCI_MANIFEST).body(body))
    }

    /// Pushes a config, a layer and a manifest tagged `tag`; returns the manifest bytes.
    fn push_image(&self, repo: &str, tag: &str) -> Vec<u8> {
        let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
        let layer = random_bytes(64 * 1024);
        self.post_blob(repo, &config).expect_status(201);
        self.post_blob(repo, &layer).expect_status(201);
        let m = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256_digest(&config), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256_digest(&layer), "size": layer.len()}],
        }))
        .unwrap();
        let r = self.put_manifest(repo, tag, &m);
        r.expect_status(201);
        assert_eq!(r.header("docker-content-digest"), Some(sha256_digest(&m).as_str()));
        m
    }
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
    let api = Api::new(&region);
    let repo = "outage/pg";
    let manifest = api.push_image(repo, "before");
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
    let first = until_recovered("first push after PostgreSQL restarted", || unless_503(api.post_blob(repo, &blob_after)));
    first.expect_status(201);
    let after = api.push_image(repo, "after");
    let got = api.get(&format!("/v2/{repo}/manifests/after"));
    got.expect_status(200);
    assert!(got.body == after);
    until_recovered("/readyz after PostgreSQL restarted", || unless_503(api.get("/readyz"))).expect_status(200);
}

#[test]
fn kubo_down_is_a_prompt_503_and_blobs_survive() {
    let mut region = open_region();
    let api = Api::new(&region);
    let repo = "outage/kubo";
    let blob = random_bytes(512 * 1024 + 17);
    let digest = sha256_digest(&blob);
    api.post_blob(repo, &blob).expect_status(201);
    let got = api.get(&format!("/v2/{repo}/blobs/{digest}"));
    got.expect_status(200);
    assert!(got.body == blob);
    let pins_before = region.kubo.pin_ls_recursive();

    region.kubo.stop();

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

    let got = until_recovered("GET blob after Kubo restarted", || unless_503(api.get(&format!("/v2/{repo}/blobs/{digest}"))));
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
