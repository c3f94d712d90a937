//! Streamed pushes for the tests and benchmarks whose blobs are too big to hold in memory: the
//! body is generated as it is sent and hashed on the way. Unlike the rest of testkit these are
//! async (reqwest's async client), so a GiB streams without a thread blocked on it.

use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use reqwest::{Client, StatusCode};
use sha2::Digest as _;

use crate::pseudo_random_frames;

/// Frames of the streamed bodies.
pub const FRAME: usize = 1024 * 1024;

/// `total` deterministic pseudo-random bytes as a body stream.
pub fn frames(seed: u64, total: u64) -> impl Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    futures::stream::iter(pseudo_random_frames(seed, total, FRAME).map(Ok))
}

/// Pushes `total` pseudo-random bytes to `repo` as one streamed upload: POST, one PATCH of the
/// whole body (hashed as it goes), PUT with that digest. Asserts 202 with the full `Range`,
/// then 201; returns the digest.
pub async fn push_streamed(c: &Client, base: &str, repo: &str, seed: u64, total: u64) -> String {
    let absolute = |loc: &str| if loc.starts_with("http") { loc.to_owned() } else { format!("{base}{loc}") };
    let hasher = Arc::new(Mutex::new(sha2::Sha256::new()));
    let h = hasher.clone();
    let body = frames(seed, total).map(move |f| {
        if let Ok(b) = &f {
            h.lock().unwrap().update(b);
        }
        f
    });
    let r = c.post(format!("{base}/v2/{repo}/blobs/uploads/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED, "{base}: POST upload");
    let loc = absolute(r.headers()["location"].to_str().unwrap());
    let r = c
        .patch(&loc)
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    let header = |name: &str| r.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    // A registry may move the session on each PATCH (distribution does): PUT where it says.
    let (range, next) = (header("range"), header("location"));
    assert_eq!(r.status(), StatusCode::ACCEPTED, "{base}: PATCH: {}", r.text().await.unwrap());
    assert_eq!(range.as_deref(), Some(format!("0-{}", total - 1).as_str()), "{base}: PATCH Range");
    let loc = next.map_or(loc, |l| absolute(&l));
    let digest = format!("sha256:{}", hex::encode(hasher.lock().unwrap().clone().finalize()));
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = c.put(format!("{loc}{sep}digest={digest}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{base}: PUT: {}", r.text().await.unwrap());
    digest
}
