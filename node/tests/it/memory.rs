//! The node streams blobs: pushing and pulling a 1 GiB blob through a real node, Postgres and
//! Kubo leaves the node's peak RSS (VmHWM) under 150 MiB.

use futures::StreamExt;
use reqwest::{Client, StatusCode};
use sha2::Digest as _;
use testkit::{peak_rss_kib, Action, TestRegion};

const GIB: u64 = 1024 * 1024 * 1024;
const LIMIT_KIB: u64 = 150 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_push_and_pull_keeps_node_rss_flat() {
    let region = TestRegion::start_with(testkit::afreg_bin(), |c| {
        c.config.auth.anonymous = Action::ALL.to_vec();
    });
    let base = region.node.url();
    let c = Client::new();

    // Push: POST, one streamed PATCH of the whole GiB (202, Range 0-(1 GiB - 1)), PUT with the
    // digest hashed on the way (201).
    let digest = testkit::stream::push_streamed(&c, &base, "big/blob", 42, GIB).await;

    // Pull it back, hashing as it streams.
    let r = c.get(format!("{base}/v2/big/blob/blobs/{digest}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-length"], GIB.to_string().as_str());
    let mut got = sha2::Sha256::new();
    let mut n = 0u64;
    let mut s = r.bytes_stream();
    while let Some(b) = s.next().await {
        let b = b.unwrap();
        n += b.len() as u64;
        got.update(&b);
    }
    assert_eq!(n, GIB);
    assert_eq!(format!("sha256:{}", hex::encode(got.finalize())), digest);

    let peak = peak_rss_kib(region.node.pid());
    println!("node peak RSS after 1 GiB push and pull: {} MiB", peak / 1024);
    assert!(peak > 0, "could not read the node's VmHWM");
    assert!(peak < LIMIT_KIB, "node peak RSS {} KiB is over {} KiB", peak, LIMIT_KIB);
}
