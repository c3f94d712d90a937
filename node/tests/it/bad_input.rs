//! Bad input against a real node (real Postgres, real Kubo): every case must be refused with
//! the spec's HTTP status and OCI error code AND leave nothing behind — no new row in any
//! registry table, no new recursive pin in Kubo, no upload state. "Nothing behind" is checked
//! by snapshotting every table (via psql) and Kubo's recursive pins before and after.
//!
//! Content cases run with anonymous pull/push/delete so auth is not in the way; the token cases
//! run against a region with auth on and no anonymous access.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use reqwest::Method;
use serde_json::{json, Value};
use testkit::api::{Api, Resp};
use testkit::{random_bytes, random_hex, sha256_digest, Action, TestRegion};

use testkit::afreg_bin as bin;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// What these tests do on a node beyond [`Api`]'s requests.
trait Pushes {
    fn push_blob(&self, repo: &str, data: &[u8]) -> String;
}

fn api(region: &TestRegion) -> Api {
    Api::new(region.node.url(), Duration::from_secs(120))
}

impl Pushes for Api {
    /// Monolithic upload (`POST …/blobs/uploads/?digest=`); asserts 201.
    fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        self.post_blob(repo, data).expect_status(201);
        sha256_digest(data)
    }
}

// ---------------------------------------------------------------------------------------------
// What is stored
// ---------------------------------------------------------------------------------------------

/// Every registry table (as text rows) and Kubo's recursive pins.
#[derive(Debug, Clone, PartialEq)]
struct Stored {
    tables: BTreeMap<&'static str, Vec<String>>,
    pins: Vec<String>,
}

const TABLES: &[(&str, &str)] = &[
    ("repositories", "SELECT id, name FROM repositories ORDER BY 1"),
    ("blobs", "SELECT digest, cid, size FROM blobs ORDER BY 1"),
    ("repository_blobs", "SELECT repository_id, digest FROM repository_blobs ORDER BY 1, 2"),
    ("manifests", "SELECT repository_id, digest, media_type, size, md5(body) FROM manifests ORDER BY 1, 2"),
    (
        "manifest_references",
        "SELECT repository_id, manifest_digest, ref_digest, is_manifest FROM manifest_references ORDER BY 1, 2, 3",
    ),
    ("tags", "SELECT repository_id, name, manifest_digest FROM tags ORDER BY 1, 2"),
    ("uploads", "SELECT id, repository, size FROM uploads ORDER BY 1"),
    ("upload_chunks", "SELECT upload_id, \"offset\", length, cid FROM upload_chunks ORDER BY 1, 2"),
    ("blob_holds", "SELECT cid FROM blob_holds ORDER BY 1"),
    ("users", "SELECT username FROM users ORDER BY 1"),
    ("user_grants", "SELECT username, pattern, actions FROM user_grants ORDER BY 1, 2"),
];

fn stored(region: &TestRegion) -> Stored {
    let tables = TABLES.iter().map(|(t, sql)| (*t, region.pg.psql(sql).lines().map(str::to_owned).collect())).collect();
    Stored { tables, pins: region.kubo.pin_ls_recursive() }
}

fn count(region: &TestRegion, sql: &str) -> i64 {
    let out = region.pg.psql(sql);
    out.parse().unwrap_or_else(|e| panic!("{sql}: not a count ({e}): {out:?}"))
}

/// Asserts that nothing was stored since `before`: same rows in every table, same pins.
fn assert_unchanged(region: &TestRegion, before: &Stored, after_what: &str) {
    let after = stored(region);
    let mut diffs = String::new();
    for (t, rows) in &before.tables {
        let now = &after.tables[t];
        if rows != now {
            diffs.push_str(&format!("  table {t}:\n    before: {rows:?}\n    after:  {now:?}\n"));
        }
    }
    if before.pins != after.pins {
        diffs.push_str(&format!("  recursive pins:\n    before: {:?}\n    after:  {:?}\n", before.pins, after.pins));
    }
    assert!(diffs.is_empty(), "{after_what} left state behind:\n{diffs}");
}

// ---------------------------------------------------------------------------------------------
// Manifests
// ---------------------------------------------------------------------------------------------

/// An OCI image manifest over a config and layers (`(digest, size)`), with a `pad` annotation
/// of `pad` characters.
fn image_manifest(config: (&str, usize), layers: &[(&str, usize)], pad: usize) -> Vec<u8> {
    let layers: Vec<Value> =
        layers.iter().map(|(d, s)| json!({"mediaType": OCI_LAYER, "digest": d, "size": s})).collect();
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config.0, "size": config.1},
        "layers": layers,
        "annotations": {"org.afreg.test.pad": "p".repeat(pad)},
    }))
    .unwrap()
}

/// [`image_manifest`] padded to exactly `size` bytes.
fn manifest_of_size(config: (&str, usize), layers: &[(&str, usize)], size: usize) -> Vec<u8> {
    let base = image_manifest(config, layers, 0).len();
    assert!(size >= base, "a manifest cannot be smaller than {base} bytes");
    let m = image_manifest(config, layers, size - base);
    assert_eq!(m.len(), size);
    m
}

/// A region with auth on but anonymous pull, push and delete.
fn open_region(f: impl FnOnce(&mut testkit::NodeConfig)) -> TestRegion {
    TestRegion::start_with(bin(), |c| {
        c.config.auth.enabled = true;
        c.config.auth.anonymous = Action::ALL.to_vec();
        f(c);
    })
}

// ---------------------------------------------------------------------------------------------
// Names, tags, digests
// ---------------------------------------------------------------------------------------------

#[test]
fn invalid_repository_names_and_tags_are_refused_and_store_nothing() {
    let region = open_region(|_| {});
    let api = api(&region);

    // A manifest that is valid in every other respect for repository `tags/ok`.
    let config = b"{}".to_vec();
    let layer = random_bytes(2048);
    let config_d = api.push_blob("tags/ok", &config);
    let layer_d = api.push_blob("tags/ok", &layer);
    let manifest = image_manifest((&config_d, config.len()), &[(&layer_d, layer.len())], 0);

    let before = stored(&region);

    // Invalid repository names: 400 NAME_INVALID, no repositories row.
    api.put_manifest("UPPER/Case", "x", &manifest).expect_error(400, "NAME_INVALID");
    api.call(Method::POST, "/v2/bad..name/blobs/uploads/", |r| r).expect_error(400, "NAME_INVALID");
    let blob = random_bytes(100);
    let d = sha256_digest(&blob);
    api.call(Method::POST, &format!("/v2/bad..name/blobs/uploads/?digest={d}"), |r| r.body(blob.clone()))
        .expect_error(400, "NAME_INVALID");
    api.get(&format!("/v2/bad..name/blobs/{d}")).expect_error(400, "NAME_INVALID");
    assert_unchanged(&region, &before, "requests with invalid repository names");
    for name in ["UPPER/Case", "upper/case", "bad..name", "bad.name"] {
        assert_eq!(count(&region, &format!("SELECT count(*) FROM repositories WHERE name = '{name}'")), 0, "{name}");
    }

    // Invalid tags: a PUT is bad input (400 MANIFEST_INVALID); a read is simply unknown (404).
    let long_tag = "t".repeat(129);
    for tag in [".bad", "-bad", long_tag.as_str()] {
        api.put_manifest("tags/ok", tag, &manifest).expect_error(400, "MANIFEST_INVALID");
        api.get(&format!("/v2/tags/ok/manifests/{tag}")).expect_error(404, "MANIFEST_UNKNOWN");
        let head = api.call(Method::HEAD, &format!("/v2/tags/ok/manifests/{tag}"), |r| r);
        head.expect_status(404);
    }
    assert_unchanged(&region, &before, "manifest PUTs with invalid tags");
    assert_eq!(count(&region, "SELECT count(*) FROM manifests"), 0);
    assert_eq!(count(&region, "SELECT count(*) FROM tags"), 0);

    // Control: the very same manifest under a valid tag is accepted, so the refusals above
    // were for the tag alone.
    api.put_manifest("tags/ok", "good", &manifest).expect_status(201);
    let got = api.get("/v2/tags/ok/manifests/good");
    got.expect_status(200);
    assert_eq!(got.body, manifest);
}

#[test]
fn malformed_and_unsupported_digests_are_refused_and_store_nothing() {
    let region = open_region(|_| {});
    let api = api(&region);
    let repo = "dig/repo";
    let existing = random_bytes(1000);
    let existing_d = api.push_blob(repo, &existing);
    let session = api.start_upload(repo);
    let md5 = format!("md5:{}", random_hex(32));
    let body = random_bytes(10);

    let before = stored(&region);

    // Blob GET.
    api.get(&format!("/v2/{repo}/blobs/sha256:abc")).expect_error(400, "DIGEST_INVALID");
    let upper = format!("sha256:{}", "A".repeat(64));
    api.get(&format!("/v2/{repo}/blobs/{upper}")).expect_error(400, "DIGEST_INVALID");
    api.get(&format!("/v2/{repo}/blobs/{md5}")).expect_error(400, "UNSUPPORTED");

    // Finishing an upload with a malformed or unsupported digest.
    for (digest, code) in [("sha256:abc", "DIGEST_INVALID"), (md5.as_str(), "UNSUPPORTED")] {
        let b = body.clone();
        api.call(Method::PUT, &format!("{session}?digest={digest}"), |r| {
            r.header("content-type", "application/octet-stream").body(b)
        })
        .expect_error(400, code);
    }
    // A finishing PUT without any digest.
    api.call(Method::PUT, &session, |r| r.body(body.clone())).expect_error(400, "DIGEST_INVALID");

    // A monolithic upload with a malformed or unsupported digest.
    for (digest, code) in [("sha256:abc", "DIGEST_INVALID"), (md5.as_str(), "UNSUPPORTED")] {
        let b = body.clone();
        api.call(Method::POST, &format!("/v2/{repo}/blobs/uploads/?digest={digest}"), |r| r.body(b))
            .expect_error(400, code);
    }

    assert_unchanged(&region, &before, "requests with malformed or unsupported digests");
    // The session is untouched (still empty) and the existing blob still served.
    let st = api.get(&session);
    st.expect_status(204);
    assert_eq!(count(&region, "SELECT count(*) FROM upload_chunks"), 0);
    let got = api.get(&format!("/v2/{repo}/blobs/{existing_d}"));
    got.expect_status(200);
    assert!(got.body == existing, "existing blob bytes changed");
}

// ---------------------------------------------------------------------------------------------
// Digest mismatches
// ---------------------------------------------------------------------------------------------

#[test]
fn digest_mismatch_on_upload_stores_nothing_and_releases_pins() {
    let region = open_region(|_| {});
    let api = api(&region);
    let repo = "mismatch/repo";
    let data = random_bytes(300 * 1024);
    let real = sha256_digest(&data);
    let wrong = sha256_digest(&random_bytes(64));

    // Monolithic.
    let before = stored(&region);
    let d = data.clone();
    let r = api.call(Method::POST, &format!("/v2/{repo}/blobs/uploads/?digest={wrong}"), |r| {
        r.header("content-type", "application/octet-stream").body(d)
    });
    r.expect_error(400, "DIGEST_INVALID");
    assert_unchanged(&region, &before, "a monolithic upload with the wrong digest");
    for dg in [&real, &wrong] {
        assert_eq!(count(&region, &format!("SELECT count(*) FROM blobs WHERE digest = '{dg}'")), 0);
        assert_eq!(count(&region, &format!("SELECT count(*) FROM repository_blobs WHERE digest = '{dg}'")), 0);
        api.get(&format!("/v2/{repo}/blobs/{dg}")).expect_error(404, "BLOB_UNKNOWN");
    }
    assert_eq!(count(&region, "SELECT count(*) FROM uploads"), 0);

    // Chunked: POST, PATCH one chunk, PUT ?digest=<wrong> with no body.
    let session = api.start_upload(repo);
    let d = data.clone();
    let n = data.len();
    let p = api.call(Method::PATCH, &session, |r| {
        r.header("content-type", "application/octet-stream").header("content-range", format!("0-{}", n - 1)).body(d)
    });
    p.expect_status(202);
    assert_eq!(p.header("range"), Some(format!("0-{}", n - 1).as_str()), "{}", p.what);
    // The accepted chunk is recorded and pinned while the session lives.
    assert_eq!(count(&region, "SELECT count(*) FROM upload_chunks"), 1);
    let pinned = region.kubo.pin_ls_recursive();
    assert_eq!(pinned.len(), before.pins.len() + 1, "the accepted chunk should hold one pin: {pinned:?}");
    let put = api.call(Method::PUT, &format!("{session}?digest={wrong}"), |r| r.body(Vec::new()));
    put.expect_error(400, "DIGEST_INVALID");
    assert_unchanged(&region, &before, "a chunked upload finished with the wrong digest");
    assert_eq!(count(&region, "SELECT count(*) FROM uploads"), 0);
    assert_eq!(count(&region, "SELECT count(*) FROM upload_chunks"), 0);
    assert_eq!(count(&region, "SELECT count(*) FROM blobs"), 0);
    api.get(&session).expect_error(404, "BLOB_UPLOAD_UNKNOWN");

    // Chunked, with the last chunk in the failing PUT itself: both chunks' pins are released.
    let session = api.start_upload(repo);
    let half = n / 2;
    let first = data[..half].to_vec();
    api.call(Method::PATCH, &session, |r| {
        r.header("content-type", "application/octet-stream")
            .header("content-range", format!("0-{}", half - 1))
            .body(first)
    })
    .expect_status(202);
    let rest = data[half..].to_vec();
    let put = api.call(Method::PUT, &format!("{session}?digest={wrong}"), |r| {
        r.header("content-type", "application/octet-stream")
            .header("content-range", format!("{half}-{}", n - 1))
            .body(rest)
    });
    put.expect_error(400, "DIGEST_INVALID");
    assert_unchanged(&region, &before, "a chunked upload whose final PUT carried data and the wrong digest");
    api.get(&session).expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    api.get(&format!("/v2/{repo}/blobs/{real}")).expect_error(404, "BLOB_UNKNOWN");
}

// ---------------------------------------------------------------------------------------------
// Manifests
// ---------------------------------------------------------------------------------------------

#[test]
fn manifests_with_unknown_blobs_or_invalid_json_store_nothing() {
    let region = open_region(|_| {});
    let api = api(&region);
    let config = b"{}".to_vec();
    let config_d = api.push_blob("man/repo", &config);
    let missing_layer = sha256_digest(&random_bytes(32));

    let before = stored(&region);

    // A repository that does not exist yet, and none of the blobs exist anywhere.
    let unknown_config = sha256_digest(&random_bytes(16));
    let m = image_manifest((&unknown_config, 16), &[(&missing_layer, 32)], 0);
    let msg = api.put_manifest("man/fresh", "v1", &m).expect_error(400, "MANIFEST_BLOB_UNKNOWN");
    assert!(msg.contains(&unknown_config), "the error should name the missing blob: {msg}");

    // The config exists, a layer does not.
    let m = image_manifest((&config_d, config.len()), &[(&missing_layer, 32)], 0);
    let msg = api.put_manifest("man/repo", "v1", &m).expect_error(400, "MANIFEST_BLOB_UNKNOWN");
    assert!(msg.contains(&missing_layer), "the error should name the missing layer: {msg}");
    // By digest, too.
    api.put_manifest("man/repo", &sha256_digest(&m), &m).expect_error(400, "MANIFEST_BLOB_UNKNOWN");

    // The config exists, but only in another repository: blobs are per repository.
    let m = image_manifest((&config_d, config.len()), &[], 0);
    api.put_manifest("man/fresh", "v1", &m).expect_error(400, "MANIFEST_BLOB_UNKNOWN");

    assert_unchanged(&region, &before, "manifests referencing unknown blobs");
    assert_eq!(count(&region, "SELECT count(*) FROM repositories WHERE name = 'man/fresh'"), 0);
    assert_eq!(count(&region, "SELECT count(*) FROM manifests"), 0);
    assert_eq!(count(&region, "SELECT count(*) FROM tags"), 0);
    assert_eq!(count(&region, "SELECT count(*) FROM manifest_references"), 0);

    // Not a manifest at all.
    let bad_bodies: Vec<(&str, Vec<u8>)> = vec![
        ("invalid JSON", b"{not json".to_vec()),
        ("truncated JSON", m[..m.len() - 1].to_vec()),
        ("a JSON array", b"[]".to_vec()),
        (
            "schemaVersion 1",
            br#"{"schemaVersion":1,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#.to_vec(),
        ),
        ("an empty body", Vec::new()),
    ];
    for (what, body) in &bad_bodies {
        for repo in ["man/repo", "man/fresh"] {
            let r = api.put_manifest(repo, "v1", body);
            assert_eq!(r.status, 400, "{what} in {repo}: {} {}", r.status, r.text());
            r.expect_error(400, "MANIFEST_INVALID");
        }
    }
    assert_unchanged(&region, &before, "invalid manifest bodies");
    api.get("/v2/man/repo/manifests/v1").expect_error(404, "MANIFEST_UNKNOWN");
    api.get("/v2/man/fresh/tags/list").expect_error(404, "NAME_UNKNOWN");

    // Control: a manifest over blobs the repository has is accepted.
    api.put_manifest("man/repo", "v1", &m).expect_status(201);
}

#[test]
fn manifest_over_a_small_limit_is_413_and_the_limit_itself_is_accepted() {
    let region = open_region(|c| c.config.storage.max_manifest_bytes = 1024);
    let api = api(&region);
    let repo = "limit/small";
    let config = b"{}".to_vec();
    let config_d = api.push_blob(repo, &config);
    let over = manifest_of_size((&config_d, config.len()), &[], 1025);
    let at = manifest_of_size((&config_d, config.len()), &[], 1024);

    let before = stored(&region);
    let msg = api.put_manifest(repo, "big", &over).expect_error(413, "SIZE_INVALID");
    assert!(msg.contains("1024"), "the error should state the limit: {msg}");
    // By digest, and without a Content-Length (chunked transfer): the body limit itself holds.
    api.put_manifest(repo, &sha256_digest(&over), &over).expect_error(413, "SIZE_INVALID");
    let body = over.clone();
    api.call(Method::PUT, &format!("/v2/{repo}/manifests/chunked"), |r| {
        r.header("content-type", OCI_MANIFEST).body(reqwest::blocking::Body::new(std::io::Cursor::new(body)))
    })
    .expect_error(413, "SIZE_INVALID");
    assert_unchanged(&region, &before, "manifests over the size limit");
    api.get(&format!("/v2/{repo}/manifests/big")).expect_error(404, "MANIFEST_UNKNOWN");

    // Exactly the limit is accepted and served byte for byte.
    api.put_manifest(repo, "at-limit", &at).expect_status(201);
    let got = api.get(&format!("/v2/{repo}/manifests/at-limit"));
    got.expect_status(200);
    assert!(got.body == at, "manifest at the limit came back different");
}

#[test]
fn manifest_of_exactly_the_default_4_mib_limit_round_trips() {
    let region = open_region(|_| {});
    let api = api(&region);
    let repo = "limit/default";
    let config = b"{}".to_vec();
    let config_d = api.push_blob(repo, &config);
    let layer = random_bytes(4096);
    let layer_d = api.push_blob(repo, &layer);
    let limit = 4 * 1024 * 1024;
    let m = manifest_of_size((&config_d, config.len()), &[(&layer_d, layer.len())], limit);
    let digest = sha256_digest(&m);

    let put = api.put_manifest(repo, "huge", &m);
    put.expect_status(201);
    assert_eq!(put.header("docker-content-digest"), Some(digest.as_str()));
    for reference in ["huge", digest.as_str()] {
        let got = api.get(&format!("/v2/{repo}/manifests/{reference}"));
        got.expect_status(200);
        assert_eq!(got.body.len(), limit);
        assert!(got.body == m, "the 4 MiB manifest came back different");
        assert_eq!(got.header("docker-content-digest"), Some(digest.as_str()));
        assert_eq!(got.header("content-type"), Some(OCI_MANIFEST));
    }

    // One byte more is refused, and nothing is stored. The node reads the refused body (up to a
    // bound) before answering, so a client sending the whole 4 MiB + 1 gets the 413 itself
    // rather than a connection closed under its upload.
    let before = stored(&region);
    let mut too_big = m.clone();
    too_big.push(b' ');
    api.put_manifest(repo, "too-huge", &too_big).expect_error(413, "SIZE_INVALID");
    assert_unchanged(&region, &before, "a manifest one byte over 4 MiB");
    api.get(&format!("/v2/{repo}/manifests/too-huge")).expect_error(404, "MANIFEST_UNKNOWN");
}

// ---------------------------------------------------------------------------------------------
// Upload sessions
// ---------------------------------------------------------------------------------------------

#[test]
fn wrong_content_range_is_416_and_keeps_the_session() {
    let region = open_region(|_| {});
    let api = api(&region);
    let repo = "range/repo";
    let data = random_bytes(20);
    let session = api.start_upload(repo);
    let id = session.rsplit('/').next().unwrap().to_owned();

    let chunk = |range: &str, bytes: &[u8]| {
        let b = bytes.to_vec();
        let range = range.to_owned();
        api.call(Method::PATCH, &session, move |r| {
            r.header("content-type", "application/octet-stream").header("content-range", range).body(b)
        })
    };
    let ok = chunk("0-9", &data[..10]);
    ok.expect_status(202);
    assert_eq!(ok.header("range"), Some("0-9"));

    let before = stored(&region);
    assert_eq!(before.tables["upload_chunks"].len(), 1);
    chunk("20-29", &data[10..]).expect_error(416, "BLOB_UPLOAD_INVALID");
    chunk("5-14", &data[10..]).expect_error(416, "BLOB_UPLOAD_INVALID"); // overlaps what it has
    chunk("0-9", &data[10..]).expect_error(416, "BLOB_UPLOAD_INVALID"); // a replay
    chunk("10-29", &data[10..]).expect_error(416, "BLOB_UPLOAD_INVALID"); // length disagrees
    assert_unchanged(&region, &before, "PATCHes with a wrong Content-Range");

    let st = api.get(&session);
    st.expect_status(204);
    assert_eq!(st.header("range"), Some("0-9"), "the session must still report 0-9");
    assert_eq!(count(&region, &format!("SELECT count(*) FROM upload_chunks WHERE upload_id = '{id}'")), 1);
    assert_eq!(
        region.pg.psql(&format!("SELECT \"offset\", length FROM upload_chunks WHERE upload_id = '{id}'")),
        "0|10"
    );

    // The session is still usable: the right next chunk and the right digest complete it.
    let next = chunk("10-19", &data[10..]);
    next.expect_status(202);
    assert_eq!(next.header("range"), Some("0-19"));
    let digest = sha256_digest(&data);
    api.call(Method::PUT, &format!("{session}?digest={digest}"), |r| r.body(Vec::new())).expect_status(201);
    let got = api.get(&format!("/v2/{repo}/blobs/{digest}"));
    got.expect_status(200);
    assert!(got.body == data);
}

#[test]
fn unknown_upload_sessions_are_404_blob_upload_unknown() {
    let region = open_region(|_| {});
    let api = api(&region);
    // A real session in another repository: its id is unknown to `a`.
    let elsewhere = api.start_upload("b");
    let elsewhere_id = elsewhere.rsplit('/').next().unwrap().to_owned();
    let before = stored(&region);

    let random_id = uuid::Uuid::new_v4().to_string();
    let body = random_bytes(3);
    let digest = sha256_digest(&body);
    for id in [random_id.as_str(), "not-a-uuid", elsewhere_id.as_str()] {
        let path = format!("/v2/a/blobs/uploads/{id}");
        api.get(&path).expect_error(404, "BLOB_UPLOAD_UNKNOWN");
        api.call(Method::PATCH, &path, |r| {
            r.header("content-type", "application/octet-stream").header("content-range", "0-2").body(body.clone())
        })
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
        api.call(Method::PATCH, &path, |r| r.body(body.clone())).expect_error(404, "BLOB_UPLOAD_UNKNOWN");
        api.call(Method::PUT, &format!("{path}?digest={digest}"), |r| r.body(body.clone()))
            .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
        api.call(Method::DELETE, &path, |r| r).expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    }
    assert_unchanged(&region, &before, "requests to unknown upload sessions");
    assert_eq!(count(&region, &format!("SELECT count(*) FROM blobs WHERE digest = '{digest}'")), 0);
    // The session in `b` was not disturbed.
    let st = api.get(&elsewhere);
    st.expect_status(204);
}

// ---------------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------------

const USER: &str = "alice";
const PASSWORD: &str = "correct-horse-battery-staple";

fn private_region() -> TestRegion {
    TestRegion::start_with(bin(), |c| {
        c.config.auth.enabled = true;
        c.config.auth.anonymous = vec![];
    })
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// `GET /token` with Basic auth; asserts 200 and returns the token.
fn get_token(api: &Api, user: &str, password: &str, scope: &str) -> String {
    let r =
        api.call(Method::GET, &format!("/token?service=afreg&scope={scope}"), |r| r.basic_auth(user, Some(password)));
    r.expect_status(200);
    let v: Value = serde_json::from_slice(&r.body).expect("token JSON");
    v["token"].as_str().unwrap_or_else(|| panic!("no token in {v}")).to_owned()
}

fn jwt_payload(token: &str) -> Value {
    let p = token.split('.').nth(1).expect("JWT has a payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).expect("base64url payload")).expect("JSON payload")
}

/// Claims as the node issues them, for `sub` with pull,push on `repo`.
fn claims(sub: &str, repo: &str, aud: &str, iat: u64, exp: u64) -> Value {
    json!({
        "iss": "afreg", "sub": sub, "aud": aud, "iat": iat, "nbf": iat, "exp": exp,
        "jti": uuid::Uuid::new_v4().to_string(),
        "access": [{"type": "repository", "name": repo, "actions": ["pull", "push"]}],
    })
}

fn sign(pem: &[u8], claims: &Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem).expect("RSA private key PEM");
    jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256), claims, &key).expect("sign JWT")
}

fn upload_with(api: &Api, repo: &str, token: &str) -> Resp {
    let auth = format!("Bearer {token}");
    api.call(Method::POST, &format!("/v2/{repo}/blobs/uploads/"), |r| r.header("authorization", auth))
}

/// Asserts a 401 UNAUTHORIZED with a Bearer challenge for `scope` (and RFC 6750's `error`
/// when a token was presented).
fn expect_challenge_error(r: &Resp, realm: &str, scope: &str, error: Option<&str>) {
    r.expect_error(401, "UNAUTHORIZED");
    let error = error.map(|e| format!(",error=\"{e}\"")).unwrap_or_default();
    let want = format!("Bearer realm=\"{realm}\",service=\"afreg\",scope=\"{scope}\"{error}");
    assert_eq!(r.header("www-authenticate"), Some(want.as_str()), "{}: challenge", r.what);
}

fn expect_challenge(r: &Resp, realm: &str, scope: &str) {
    expect_challenge_error(r, realm, scope, None)
}

fn expect_invalid_token(r: &Resp, realm: &str, scope: &str) {
    expect_challenge_error(r, realm, scope, Some("invalid_token"))
}

#[test]
fn missing_expired_foreign_forged_and_tampered_tokens_are_401() {
    let region = private_region();
    region.node.add_user(USER, PASSWORD);
    let api = api(&region);
    let realm = format!("{}/token", region.node.url());
    let repo = "mine/x";
    let push_scope = format!("repository:{repo}:pull,push");
    let key_path = region.node.dir().join("key.pem");
    let pem =
        std::fs::read(&key_path).unwrap_or_else(|e| panic!("read the node's signing key {}: {e}", key_path.display()));

    let before = stored(&region);

    // No token at all.
    let r = api.call(Method::POST, &format!("/v2/{repo}/blobs/uploads/"), |r| r);
    expect_challenge(&r, &realm, &push_scope);
    let r = api.get(&format!("/v2/{repo}/manifests/latest"));
    expect_challenge(&r, &realm, &format!("repository:{repo}:pull"));
    // Basic credentials are for /token, not for the API.
    let r = api.call(Method::POST, &format!("/v2/{repo}/blobs/uploads/"), |r| r.basic_auth(USER, Some(PASSWORD)));
    expect_challenge(&r, &realm, &push_scope);

    // Expired (well past the node's leeway), otherwise perfect.
    let t = now();
    let expired = sign(&pem, &claims(USER, repo, "afreg", t - 3600, t - 600));
    expect_invalid_token(&upload_with(&api, repo, &expired), &realm, &push_scope);

    // For another audience.
    let foreign = sign(&pem, &claims(USER, repo, "other", t, t + 300));
    expect_invalid_token(&upload_with(&api, repo, &foreign), &realm, &push_scope);

    // Signed with a key that is not the node's.
    let forger = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("generate RSA key");
    let forger_pem = rsa::pkcs8::EncodePrivateKey::to_pkcs8_pem(&forger, rsa::pkcs8::LineEnding::LF).unwrap();
    let forged = sign(forger_pem.as_bytes(), &claims(USER, repo, "afreg", t, t + 300));
    expect_invalid_token(&upload_with(&api, repo, &forged), &realm, &push_scope);

    // A real token for pull only, with its payload rewritten to grant push.
    let pull_only = get_token(&api, USER, PASSWORD, &format!("repository:{repo}:pull"));
    let mut payload = jwt_payload(&pull_only);
    assert_eq!(payload["access"][0]["actions"], json!(["pull"]), "issued token: {payload}");
    payload["access"][0]["actions"] = json!(["pull", "push"]);
    let parts: Vec<&str> = pull_only.split('.').collect();
    let new_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).unwrap());
    let tampered = format!("{}.{new_payload}.{}", parts[0], parts[2]);
    expect_invalid_token(&upload_with(&api, repo, &tampered), &realm, &push_scope);

    // Garbage.
    expect_invalid_token(&upload_with(&api, repo, "not.a.jwt"), &realm, &push_scope);

    assert_unchanged(&region, &before, "requests with missing or invalid tokens");
    assert_eq!(count(&region, "SELECT count(*) FROM uploads"), 0);

    // Controls: the same claims signed with the node's key and still valid are accepted, and
    // so is a token from /token — the refusals above were for expiry, audience and signature.
    let valid = sign(&pem, &claims(USER, repo, "afreg", t, t + 300));
    upload_with(&api, repo, &valid).expect_status(202);
    let issued = get_token(&api, USER, PASSWORD, &push_scope);
    upload_with(&api, repo, &issued).expect_status(202);
    assert_eq!(count(&region, "SELECT count(*) FROM uploads"), 2);
}

#[test]
fn insufficient_scope_is_403_and_a_wrong_password_gets_no_token() {
    let region = private_region();
    let (user, password) = ("limited", "only-pulls-other");
    region.node.add_user_with_grants(user, password, &["other/*:pull"]);
    assert_eq!(
        region.pg.psql(&format!("SELECT pattern, actions FROM user_grants WHERE username = '{user}'")),
        "other/*|{pull}"
    );
    let api = api(&region);

    // Wrong password, unknown user: no token.
    for (u, p) in [(user, "wrong-password"), ("nobody", password)] {
        let r = api
            .call(Method::GET, "/token?service=afreg&scope=repository:mine/x:pull,push", |r| r.basic_auth(u, Some(p)));
        r.expect_error(401, "UNAUTHORIZED");
        assert!(!r.text().contains("\"token\""), "{}: {}", r.what, r.text());
    }

    let before = stored(&region);

    // The token is issued but grants nothing on mine/x.
    let token = get_token(&api, user, password, "repository:mine/x:pull,push");
    let payload = jwt_payload(&token);
    assert_eq!(payload["sub"], user);
    let access = payload["access"].as_array().expect("access");
    assert!(
        access.iter().all(|a| a["actions"].as_array().is_some_and(|x| x.is_empty())),
        "a user with other/*:pull got {access:?} on mine/x"
    );
    let r = upload_with(&api, "mine/x", &token);
    r.expect_error(403, "DENIED");
    let auth = format!("Bearer {token}");
    api.call(Method::GET, "/v2/mine/x/manifests/latest", |r| r.header("authorization", auth))
        .expect_error(403, "DENIED");

    // Pull on other/y is granted, push is not.
    let token = get_token(&api, user, password, "repository:other/y:pull,push");
    assert_eq!(jwt_payload(&token)["access"][0]["actions"], json!(["pull"]));
    upload_with(&api, "other/y", &token).expect_error(403, "DENIED");
    let auth = format!("Bearer {token}");
    // Pull is allowed through: the repository simply does not exist.
    api.call(Method::GET, "/v2/other/y/tags/list", |r| r.header("authorization", auth))
        .expect_error(404, "NAME_UNKNOWN");

    assert_unchanged(&region, &before, "pushes without the push grant");
    assert_eq!(count(&region, "SELECT count(*) FROM uploads"), 0);

    // The header form of Basic auth with a wrong password is refused too (STANDARD base64).
    let basic = format!("Basic {}", STANDARD.encode(format!("{user}:nope")));
    api.call(Method::GET, "/token?service=afreg", |r| r.header("authorization", basic))
        .expect_error(401, "UNAUTHORIZED");
}

// ---------------------------------------------------------------------------------------------
// Attacks on tokens and grants
// ---------------------------------------------------------------------------------------------

/// A request written on the socket as given (no client normalizes `..` or `%2e` away):
/// the status code.
fn raw_status(region: &TestRegion, method: &str, path: &str, token: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(region.node.host()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    std::str::from_utf8(&head[9..12]).unwrap().parse().unwrap()
}

/// The node's public key as an attacker gets it (its JWKS), in PEM: SPKI and PKCS#1.
fn public_key_pems(api: &Api) -> Vec<String> {
    use rsa::pkcs1::EncodeRsaPublicKey;
    use rsa::pkcs8::EncodePublicKey;
    let jwks: Value = serde_json::from_slice(&api.get("/token/jwks.json").body).unwrap();
    let k = &jwks["keys"][0];
    let n = rsa::BigUint::from_bytes_be(&URL_SAFE_NO_PAD.decode(k["n"].as_str().unwrap()).unwrap());
    let e = rsa::BigUint::from_bytes_be(&URL_SAFE_NO_PAD.decode(k["e"].as_str().unwrap()).unwrap());
    let public = rsa::RsaPublicKey::new(n, e).unwrap();
    vec![
        public.to_public_key_pem(rsa::pkcs8::LineEnding::LF).unwrap(),
        public.to_pkcs1_pem(rsa::pkcs8::LineEnding::LF).unwrap(),
    ]
}

#[test]
fn forged_algorithms_and_claims_are_401() {
    let region = private_region();
    region.node.add_user(USER, PASSWORD);
    let api = api(&region);
    let realm = format!("{}/token", region.node.url());
    let repo = "mine/x";
    let push_scope = format!("repository:{repo}:pull,push");
    let pem = std::fs::read(region.node.dir().join("key.pem")).unwrap();
    let t = now();
    let good = claims(USER, repo, "afreg", t, t + 300);
    let before = stored(&region);

    // alg "none", with and without a signature part.
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&good).unwrap());
    for none in [format!("{header}.{payload}."), format!("{header}.{payload}")] {
        expect_invalid_token(&upload_with(&api, repo, &none), &realm, &push_scope);
    }
    // HS256 keyed with the node's public RSA key (the algorithm-confusion attack).
    for public in public_key_pems(&api) {
        let hs = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &good,
            &jsonwebtoken::EncodingKey::from_secret(public.as_bytes()),
        )
        .unwrap();
        expect_invalid_token(&upload_with(&api, repo, &hs), &realm, &push_scope);
    }
    // Not valid yet (well past the leeway), and from another issuer: signed with the node's key.
    let mut later = good.clone();
    later["nbf"] = json!(t + 3600);
    later["iat"] = json!(t + 3600);
    later["exp"] = json!(t + 7200);
    expect_invalid_token(&upload_with(&api, repo, &sign(&pem, &later)), &realm, &push_scope);
    let mut other_issuer = good.clone();
    other_issuer["iss"] = json!("evil");
    expect_invalid_token(&upload_with(&api, repo, &sign(&pem, &other_issuer)), &realm, &push_scope);
    // Without the claims the node requires.
    for missing in ["exp", "aud", "iss"] {
        let mut c = good.clone();
        c.as_object_mut().unwrap().remove(missing);
        expect_invalid_token(&upload_with(&api, repo, &sign(&pem, &c)), &realm, &push_scope);
    }
    assert_unchanged(&region, &before, "forged tokens");
    // The control: the same claims, RS256 with the node's key, are accepted.
    upload_with(&api, repo, &sign(&pem, &good)).expect_status(202);
}

#[test]
fn tokens_are_bound_to_their_repository_and_actions_and_grant_patterns_cannot_be_stretched() {
    let region = private_region();
    let (user, password) = ("teamer", "team-passw0rd");
    region.node.add_user_with_grants(user, password, &["team/*:pull,push"]);
    region.node.add_user_with_grants("root", "root-passw0rd", &["*:pull,push,delete"]);
    let api = api(&region);
    let img = testkit::oci::new_image(100);
    let root = get_token(&api, "root", "root-passw0rd", "repository:team/a:pull,push,delete");
    let c = testkit::oci::client();
    let with = |t: &str| {
        let t = t.to_owned();
        move |r: reqwest::blocking::RequestBuilder| r.header("authorization", format!("Bearer {t}"))
    };
    for (d, data) in &img.blobs {
        let r = c
            .post(format!("{}/v2/team/a/blobs/uploads/?digest={d}", region.node.url()))
            .bearer_auth(&root)
            .body(data.clone())
            .send()
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let r = c
        .put(format!("{}/v2/team/a/manifests/v1", region.node.url()))
        .bearer_auth(&root)
        .header("content-type", OCI_MANIFEST)
        .body(img.manifest.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let before = stored(&region);

    // A token for team/a used on team/b: not granted there.
    let a = get_token(&api, user, password, "repository:team/a:pull,push");
    let r = api.call(Method::POST, "/v2/team/b/blobs/uploads/", with(&a));
    r.expect_error(401, "UNAUTHORIZED");
    assert!(r.header("www-authenticate").unwrap().contains("insufficient_scope"));
    // A pull token used to push or to delete.
    let pull = get_token(&api, user, password, "repository:team/a:pull");
    api.call(Method::POST, "/v2/team/a/blobs/uploads/", with(&pull)).expect_error(403, "DENIED");
    api.call(Method::DELETE, &format!("/v2/team/a/manifests/{}", img.digest), with(&pull)).expect_error(403, "DENIED");
    api.call(Method::DELETE, &format!("/v2/team/a/blobs/{}", img.blobs[1].0), with(&pull)).expect_error(403, "DENIED");
    // Delete was never granted to this user, whatever the token asks for.
    let all = get_token(&api, user, password, "repository:team/a:*");
    assert_eq!(jwt_payload(&all)["access"][0]["actions"], json!(["pull", "push"]));
    api.call(Method::DELETE, &format!("/v2/team/a/manifests/{}", img.digest), with(&all)).expect_error(403, "DENIED");

    // team/* does not reach team2/x, nor names that only look inside team/.
    for name in ["team2/x", "team/../x", "team/./x", "team//x", "TEAM/x", "Team/x", "team/X"] {
        let t = get_token(&api, user, password, &format!("repository:{name}:pull,push"));
        let access = jwt_payload(&t)["access"].clone();
        assert!(
            access.as_array().unwrap().iter().all(|a| a["actions"].as_array().unwrap().is_empty()),
            "scope {name} was granted: {access}"
        );
    }
    let overlong = format!("team/{}", "a".repeat(300));
    let t = get_token(&api, user, password, &format!("repository:{overlong}:push"));
    assert!(jwt_payload(&t)["access"][0]["actions"].as_array().unwrap().is_empty(), "an overlong name was granted");
    // On the wire, with a token that does carry push on team/ names: the path forms that
    // would resolve elsewhere are refused as names, not routed.
    let push = get_token(&api, user, password, "repository:team/a:pull,push");
    for path in [
        "/v2/team/../x/blobs/uploads/",
        "/v2/team/%2e%2e/x/blobs/uploads/",
        "/v2/team/%2E%2E/x/blobs/uploads/",
        "/v2/team/a/%2e%2e/%2e%2e/x/blobs/uploads/",
        "/v2/TEAM/a/blobs/uploads/",
        &format!("/v2/{overlong}/blobs/uploads/"),
    ] {
        let status = raw_status(&region, "POST", path, &push);
        assert!(status == 400 || status == 404 || status == 401, "{path}: {status}");
        assert_ne!(status / 100, 2, "{path} was accepted");
    }
    assert_unchanged(&region, &before, "stretched grants");
    assert_eq!(count(&region, "SELECT count(*) FROM repositories WHERE name <> 'team/a'"), 0);
}

#[test]
fn blobs_and_upload_sessions_are_reachable_only_through_their_own_repository() {
    let region = private_region();
    region.node.add_user_with_grants("teamer", "team-passw0rd", &["team/*:pull,push"]);
    region.node.add_user_with_grants("root", "root-passw0rd", &["*:pull,push"]);
    let api = api(&region);
    let secret = random_bytes(1000);
    let d = sha256_digest(&secret);
    let root = get_token(&api, "root", "root-passw0rd", "repository:secret/x:pull,push");
    api.call(Method::POST, &format!("/v2/secret/x/blobs/uploads/?digest={d}"), |r| {
        r.bearer_auth(&root).body(secret.clone())
    })
    .expect_status(201);
    // Team members push something of their own to team/b.
    let mine = random_bytes(500);
    let md = sha256_digest(&mine);
    let t = get_token(&api, "teamer", "team-passw0rd", "repository:team/a:pull,push repository:team/b:pull,push");
    api.call(Method::POST, &format!("/v2/team/b/blobs/uploads/?digest={md}"), |r| r.bearer_auth(&t).body(mine.clone()))
        .expect_status(201);
    let before = stored(&region);

    // Read through a repository that never linked it: unknown, though the caller may pull there.
    api.call(Method::GET, &format!("/v2/team/a/blobs/{d}"), |r| r.bearer_auth(&t)).expect_error(404, "BLOB_UNKNOWN");
    api.call(Method::HEAD, &format!("/v2/team/a/blobs/{d}"), |r| r.bearer_auth(&t)).expect_status(404);
    api.call(Method::GET, &format!("/v2/team/a/blobs/{md}"), |r| r.bearer_auth(&t)).expect_error(404, "BLOB_UNKNOWN");
    // Mount from a repository the caller may not read: no mount, a plain upload session instead.
    // (team/b the caller may read, but it never linked the secret.)
    for from in ["secret/x", "team/b"] {
        let r =
            api.call(Method::POST, &format!("/v2/team/a/blobs/uploads/?mount={d}&from={from}"), |r| r.bearer_auth(&t));
        r.expect_status(202);
        api.call(Method::DELETE, r.header("location").unwrap(), |r| r.bearer_auth(&t)).expect_status(204);
    }
    assert_unchanged(&region, &before, "reads and mounts through repositories that never linked the blob");

    // An upload session opened in team/a, used under team/b (where the caller may push too).
    let r = api.call(Method::POST, "/v2/team/a/blobs/uploads/", |r| r.bearer_auth(&t));
    r.expect_status(202);
    let id = r.header("location").unwrap().rsplit('/').next().unwrap().to_owned();
    let elsewhere = format!("/v2/team/b/blobs/uploads/{id}");
    api.call(Method::GET, &elsewhere, |r| r.bearer_auth(&t)).expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    api.call(Method::PATCH, &elsewhere, |r| r.bearer_auth(&t).body(mine.clone()))
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    api.call(Method::PUT, &format!("{elsewhere}?digest={md}"), |r| r.bearer_auth(&t).body(mine.clone()))
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    api.call(Method::DELETE, &elsewhere, |r| r.bearer_auth(&t)).expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    assert_eq!(
        count(&region, &format!("SELECT size FROM uploads WHERE id = '{id}'")),
        0,
        "the session in team/a is untouched"
    );
}
