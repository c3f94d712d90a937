//! How blobs live in Kubo and upload sessions in Postgres, against a real node: sessions that
//! survive a kill, stale sessions swept with their pins, identical blobs stored once but served
//! only through repositories that have them, CID = digest for one-chunk blobs, and Range reads.

use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use sha2::Digest as _;
use testkit::{random_bytes, Action, TestRegion};

use testkit::afreg_bin as bin;

fn open_region() -> TestRegion {
    TestRegion::start_with(bin(), |c| {
        c.config.auth.anonymous = Action::ALL.to_vec();
    })
}

fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

/// Recursive pins the node added: Kubo pins an empty directory of its own at `init`.
fn our_pins(region: &TestRegion) -> Vec<String> {
    const EMPTY_DIR: &str = "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn";
    region.kubo.pin_ls_recursive().into_iter().filter(|p| p != EMPTY_DIR).collect()
}

fn count(region: &TestRegion, sql: &str) -> i64 {
    region.pg.psql(sql).trim().parse().unwrap_or_else(|_| panic!("not a count from {sql:?}"))
}

async fn start_upload(c: &Client, base: &str, repo: &str) -> String {
    let r = c.post(format!("{base}/v2/{repo}/blobs/uploads/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    if loc.starts_with("http") {
        loc
    } else {
        format!("{base}{loc}")
    }
}

async fn patch(c: &Client, url: &str, start: usize, chunk: &[u8]) -> reqwest::Response {
    c.patch(url)
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("{}-{}", start, start + chunk.len() - 1))
        .body(chunk.to_vec())
        .send()
        .await
        .unwrap()
}

async fn push_monolithic(c: &Client, base: &str, repo: &str, blob: &[u8]) -> StatusCode {
    c.post(format!("{base}/v2/{repo}/blobs/uploads/?digest={}", digest(blob)))
        .header("content-type", "application/octet-stream")
        .body(blob.to_vec())
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_session_survives_a_killed_node() {
    let mut region = open_region();
    let c = Client::new();
    let base = region.node.url();
    // Two chunks, each larger than Kubo's 1 MiB chunker, so the blob is composed from both.
    let first = random_bytes(3 * 1024 * 1024 + 17);
    let second = random_bytes(2 * 1024 * 1024 + 5);
    let whole: Vec<u8> = [first.clone(), second.clone()].concat();

    let url = start_upload(&c, &base, "durable/app").await;
    let r = patch(&c, &url, 0, &first).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.headers()["range"], format!("0-{}", first.len() - 1).as_str());

    region.node.kill();
    region.node.restart();

    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT, "the session must survive the restart");
    assert_eq!(r.headers()["range"], format!("0-{}", first.len() - 1).as_str());

    let r = patch(&c, &url, first.len(), &second).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = c.put(format!("{url}?digest={}", digest(&whole))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());

    let got = c.get(format!("{base}/v2/durable/app/blobs/{}", digest(&whole))).send().await.unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    let body = got.bytes().await.unwrap();
    assert_eq!(digest(&body), digest(&whole));
    assert_eq!(count(&region, "SELECT count(*) FROM uploads"), 0);
    assert_eq!(count(&region, "SELECT count(*) FROM upload_chunks"), 0);
    // Only the composed blob stays pinned; the two chunk pins were released.
    let cid = region.pg.psql(&format!("SELECT cid FROM blobs WHERE digest = '{}'", digest(&whole))).trim().to_owned();
    let pins = our_pins(&region);
    assert!(pins.contains(&cid), "blob CID {cid} must be pinned: {pins:?}");
    assert_eq!(pins.len(), 1, "chunk pins must be released: {pins:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_upload_sessions_are_swept_with_their_pins() {
    let region = TestRegion::start_with(bin(), |c| {
        c.config.auth.anonymous = Action::ALL.to_vec();
        c.config.storage.upload_ttl_secs = 1;
        c.config.storage.upload_sweep_interval_secs = 1;
    });
    let c = Client::new();
    let base = region.node.url();
    let url = start_upload(&c, &base, "stale/app").await;
    assert_eq!(patch(&c, &url, 0, &random_bytes(4096)).await.status(), StatusCode::ACCEPTED);
    assert_eq!(our_pins(&region).len(), 1, "the received chunk is pinned while the session lives");

    let deadline = Instant::now() + Duration::from_secs(20);
    while count(&region, "SELECT count(*) FROM uploads") > 0 {
        assert!(Instant::now() < deadline, "stale session was not swept within 20 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "BLOB_UPLOAD_UNKNOWN");
    assert_eq!(count(&region, "SELECT count(*) FROM upload_chunks"), 0);
    assert!(our_pins(&region).is_empty(), "the swept session's chunk must be unpinned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_blobs_are_stored_once_and_served_only_where_linked() {
    let region = open_region();
    let c = Client::new();
    let base = region.node.url();
    let blob = random_bytes(100_000);
    let d = digest(&blob);
    assert_eq!(push_monolithic(&c, &base, "team/a", &blob).await, StatusCode::CREATED);
    assert_eq!(push_monolithic(&c, &base, "team/b", &blob).await, StatusCode::CREATED);
    assert_eq!(count(&region, "SELECT count(*) FROM blobs"), 1);
    assert_eq!(count(&region, "SELECT count(*) FROM repository_blobs"), 2);
    assert_eq!(our_pins(&region).len(), 1);

    // A one-chunk blob's CID is its sha256, as a raw CIDv1.
    let cid = region.pg.psql("SELECT cid FROM blobs").trim().to_owned();
    let hash: [u8; 32] = sha2::Sha256::digest(&blob).into();
    assert_eq!(cid, afreg_node::kubo::raw_cid_for_sha256(&hash));

    // Not served through a repository that never uploaded or mounted it.
    let r = c.get(format!("{base}/v2/team/c/blobs/{d}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "BLOB_UNKNOWN");

    // Deleting it from one repository keeps it in the other, and pinned.
    assert_eq!(c.delete(format!("{base}/v2/team/a/blobs/{d}")).send().await.unwrap().status(), StatusCode::ACCEPTED);
    assert_eq!(c.get(format!("{base}/v2/team/a/blobs/{d}")).send().await.unwrap().status(), StatusCode::NOT_FOUND);
    let r = c.get(format!("{base}/v2/team/b/blobs/{d}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), blob.as_slice());
    assert!(region.kubo.is_pinned(&cid));

    // Deleting the last link removes the record and the pin.
    assert_eq!(c.delete(format!("{base}/v2/team/b/blobs/{d}")).send().await.unwrap().status(), StatusCode::ACCEPTED);
    assert_eq!(count(&region, "SELECT count(*) FROM blobs"), 0);
    assert!(!region.kubo.is_pinned(&cid), "the last delete must unpin {cid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_reads_and_sha512_blobs() {
    let region = open_region();
    let c = Client::new();
    let base = region.node.url();
    let blob = random_bytes(3 * 1024 * 1024);
    assert_eq!(push_monolithic(&c, &base, "ranged/app", &blob).await, StatusCode::CREATED);
    let url = format!("{base}/v2/ranged/app/blobs/{}", digest(&blob));

    let r = c.get(&url).header("range", "bytes=1048570-2097160").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()["content-range"], format!("bytes 1048570-2097160/{}", blob.len()).as_str());
    assert_eq!(r.bytes().await.unwrap().as_ref(), &blob[1048570..=2097160]);

    let r = c.get(&url).header("range", "bytes=-10").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &blob[blob.len() - 10..]);

    let r = c.get(&url).header("range", format!("bytes={}-", blob.len())).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);

    let r = c.head(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-length"], blob.len().to_string().as_str());
    assert_eq!(r.headers()["docker-content-digest"], digest(&blob).as_str());

    // sha512, chunked: the node re-hashes the session in the requested algorithm.
    let small = random_bytes(70_000);
    let d512 = format!("sha512:{}", hex::encode(sha2::Sha512::digest(&small)));
    let up = start_upload(&c, &base, "ranged/app").await;
    assert_eq!(patch(&c, &up, 0, &small).await.status(), StatusCode::ACCEPTED);
    let r = c.put(format!("{up}?digest={d512}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
    let r = c.get(format!("{base}/v2/ranged/app/blobs/{d512}")).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), small.as_slice());
}

/// How many times the node has called `cmd` on Kubo, from its `/metrics`.
async fn kubo_calls(region: &TestRegion, cmd: &str) -> f64 {
    let text = Client::new().get(region.node.metrics_url()).send().await.unwrap().text().await.unwrap();
    super::hostile::metric_value(&text, "afreg_kubo_call_seconds_count", &[&format!("cmd=\"{cmd}\"")])
}

/// Pushes `chunks` as PATCHes (the last as the PUT's body) and returns the CID the blob got.
async fn push_chunked(region: &TestRegion, repo: &str, chunks: &[Vec<u8>]) -> String {
    let (c, base) = (Client::new(), region.node.url());
    let whole: Vec<u8> = chunks.concat();
    let url = start_upload(&c, &base, repo).await;
    let mut at = 0;
    let (last, patches) = chunks.split_last().unwrap();
    for chunk in patches {
        let r = patch(&c, &url, at, chunk).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{}", r.text().await.unwrap());
        at += chunk.len();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    let r = c.put(format!("{url}{sep}digest={}", digest(&whole))).body(last.clone()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
    let got = c.get(format!("{base}/v2/{repo}/blobs/{}", digest(&whole))).send().await.unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(digest(&got.bytes().await.unwrap()), digest(&whole), "the blob reads back as pushed");
    region.pg.psql(&format!("SELECT cid FROM blobs WHERE digest = '{}'", digest(&whole))).trim().to_owned()
}

/// The CID `add` gives the bytes with the node's options and `chunker`, without storing them.
fn cid_of(region: &TestRegion, bytes: &[u8], chunker: &str) -> String {
    let q =
        [("cid-version", "1"), ("raw-leaves", "true"), ("chunker", chunker), ("only-hash", "true"), ("pin", "false")];
    region.kubo.add_bytes_with(bytes, &q)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_upload_gets_the_cid_add_gives_without_adding_its_bytes_again() {
    let region = open_region();
    // Chunks off the 1 MiB boundaries, as clients send them: one that ends just past a
    // boundary, one inside the next chunk, a tiny one after it, one across two boundaries,
    // and the PUT's own body.
    let chunks = vec![
        random_bytes((1 << 20) + 17),
        random_bytes(300_000),
        random_bytes(50),
        random_bytes((2 << 20) + 5),
        random_bytes(1000),
    ];
    let adds = kubo_calls(&region, "add").await;
    let cid = push_chunked(&region, "aligned/app", &chunks).await;
    assert_eq!(cid, cid_of(&region, &chunks.concat(), "size-1048576"), "the same CID as add of the whole blob");
    assert_eq!(
        kubo_calls(&region, "add").await - adds,
        chunks.len() as f64,
        "one add per chunk, and none when the upload finishes"
    );
    assert!(kubo_calls(&region, "block/put").await >= 1.0, "the DAG's root was stored from the chunks' leaves");
    assert_eq!(count(&region, "SELECT count(*) FROM upload_chunks"), 0);
    let pins = our_pins(&region);
    assert_eq!(pins, vec![cid.clone()], "only the blob stays pinned: no chunk and no inner node of the DAG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_upload_deeper_than_one_level_gets_the_cid_add_gives() {
    // A 1 KiB chunker: 401 leaves, more than the 174 one node links, so the DAG has two
    // levels under its root, as a blob of more than 174 MiB has with the default chunker.
    let region = TestRegion::start_with(bin(), |c| {
        c.config.auth.anonymous = Action::ALL.to_vec();
        c.config.kubo.chunker = "size-1024".into();
    });
    let chunks = vec![random_bytes(150_000), random_bytes(1), random_bytes(200_003), random_bytes(60_000)];
    let cid = push_chunked(&region, "deep/app", &chunks).await;
    assert_eq!(cid, cid_of(&region, &chunks.concat(), "size-1024"));
    assert_eq!(our_pins(&region), vec![cid]);
}
