//! The client side of every registry workload, the same code for every target: blob pushes
//! (monolithic `POST` + `PUT`, afreg's single `POST ?digest=`, one streamed `PATCH`, and
//! `PATCH`es with `Content-Range`), pulls, manifest `HEAD`/`GET` load at a given number of
//! connections, and listing tags and the catalog by following `Link`. Bodies are generated as
//! they are sent (fresh pseudo-random bytes every time, so no store finds them already there).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use futures::StreamExt;
use reqwest::{Client, Method, StatusCode};
use sha2::Digest as _;

use crate::targets::Target;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

pub fn client() -> Client {
    Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(256)
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(900))
        .build()
        .expect("http client")
}

/// The digest of the bytes `frames(seed, total)` will give (computed before a monolithic push,
/// outside its timing).
pub fn digest_of(seed: u64, total: u64) -> String {
    let mut h = sha2::Sha256::new();
    for f in testkit::pseudo_random_frames(seed, total, testkit::stream::FRAME) {
        h.update(&f);
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

fn absolute(base: &str, loc: &str) -> String {
    if loc.starts_with("http") {
        loc.to_owned()
    } else {
        format!("{base}{loc}")
    }
}

fn with_digest(loc: &str, digest: &str) -> String {
    let sep = if loc.contains('?') { '&' } else { '?' };
    format!("{loc}{sep}digest={digest}")
}

async fn start_upload(c: &Client, base: &str, repo: &str) -> Result<String> {
    let r = c.post(format!("{base}/v2/{repo}/blobs/uploads/")).send().await?;
    ensure!(r.status() == StatusCode::ACCEPTED, "POST upload: {} {}", r.status(), r.text().await.unwrap_or_default());
    let loc = r.headers().get("location").context("POST upload: no Location")?.to_str()?.to_owned();
    Ok(absolute(base, &loc))
}

async fn expect(r: reqwest::Response, want: StatusCode, what: &str) -> Result<reqwest::Response> {
    if r.status() != want {
        let s = r.status();
        bail!("{what}: {s}: {}", r.text().await.unwrap_or_default());
    }
    Ok(r)
}

/// The ways a blob is pushed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Push {
    /// `POST`, then one `PUT ?digest=` with the whole body: the monolithic upload every
    /// registry implements.
    Mono,
    /// One `POST ?digest=` with the whole body (afreg; optional in the spec).
    SinglePost,
    /// `POST`, one `PATCH` with the whole body, `PUT ?digest=`: what docker and containerd do.
    Streamed,
    /// `POST`, `PATCH`es of `chunk` bytes with `Content-Range`, `PUT ?digest=`.
    Chunked { chunk: u64 },
}

impl Push {
    pub fn workload(&self) -> &'static str {
        match self {
            Push::Mono => "push-mono",
            Push::SinglePost => "push-single-post",
            Push::Streamed => "push-streamed",
            Push::Chunked { .. } => "push-chunked",
        }
    }
}

/// Pushes `total` fresh bytes one way; returns the time from the first request to the 201,
/// and the digest.
pub async fn push(c: &Client, base: &str, repo: &str, how: Push, seed: u64, total: u64) -> Result<(Duration, String)> {
    let body = || reqwest::Body::wrap_stream(testkit::stream::frames(seed, total));
    match how {
        Push::Mono | Push::SinglePost => {
            let d = digest_of(seed, total);
            let t = Instant::now();
            let r = if how == Push::SinglePost {
                c.post(format!("{base}/v2/{repo}/blobs/uploads/?digest={d}"))
                    .header("content-type", "application/octet-stream")
                    .body(body())
                    .send()
                    .await?
            } else {
                let loc = start_upload(c, base, repo).await?;
                c.put(with_digest(&loc, &d))
                    .header("content-type", "application/octet-stream")
                    .body(body())
                    .send()
                    .await?
            };
            expect(r, StatusCode::CREATED, &format!("{base}: {how:?} push")).await?;
            Ok((t.elapsed(), d))
        }
        Push::Streamed => {
            let t = Instant::now();
            let d = testkit::stream::push_streamed(c, base, repo, seed, total).await;
            Ok((t.elapsed(), d))
        }
        Push::Chunked { chunk } => {
            let t = Instant::now();
            let mut loc = start_upload(c, base, repo).await?;
            let hasher = Arc::new(Mutex::new(sha2::Sha256::new()));
            let mut frames = testkit::pseudo_random_frames(seed, total, testkit::stream::FRAME).peekable();
            let mut carry: Vec<u8> = vec![];
            let mut start = 0u64;
            while start < total {
                let len = chunk.min(total - start) as usize;
                let mut buf = std::mem::take(&mut carry);
                while buf.len() < len {
                    match frames.next() {
                        Some(f) => buf.extend_from_slice(&f),
                        None => break,
                    }
                }
                if buf.len() > len {
                    carry = buf.split_off(len);
                }
                hasher.lock().unwrap().update(&buf);
                let end = start + buf.len() as u64 - 1;
                let r = c
                    .patch(&loc)
                    .header("content-type", "application/octet-stream")
                    .header("content-range", format!("{start}-{end}"))
                    .body(buf)
                    .send()
                    .await?;
                let r = expect(r, StatusCode::ACCEPTED, &format!("{base}: PATCH {start}-{end}")).await?;
                if let Some(l) = r.headers().get("location") {
                    loc = absolute(base, l.to_str()?);
                }
                start = end + 1;
            }
            let d = format!("sha256:{}", hex::encode(hasher.lock().unwrap().clone().finalize()));
            let r = c.put(with_digest(&loc, &d)).send().await?;
            expect(r, StatusCode::CREATED, &format!("{base}: chunked PUT")).await?;
            Ok((t.elapsed(), d))
        }
    }
}

/// Reads a whole response body, counting bytes.
pub async fn drain(r: reqwest::Response) -> Result<u64> {
    let mut n = 0;
    let mut s = r.bytes_stream();
    while let Some(b) = s.next().await {
        n += b?.len() as u64;
    }
    Ok(n)
}

pub async fn pull(c: &Client, base: &str, repo: &str, digest: &str, total: u64) -> Result<Duration> {
    let t = Instant::now();
    let r = c.get(format!("{base}/v2/{repo}/blobs/{digest}")).send().await?;
    let r = expect(r, StatusCode::OK, &format!("{base}: GET blob")).await?;
    let n = drain(r).await?;
    ensure!(n == total, "{base}: pulled {n} bytes of {total}");
    Ok(t.elapsed())
}

pub fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1u64 << 20) as f64 / d.as_secs_f64()
}

/// Pushes a small image (a config blob and a manifest without layers) as `repo:tag`; returns
/// the manifest's bytes and digest.
pub async fn push_image(c: &Client, base: &str, repo: &str, tag: &str) -> Result<(Vec<u8>, String)> {
    let cfg = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let d_cfg = testkit::sha256_digest(cfg);
    let loc = start_upload(c, base, repo).await?;
    let r = c.put(with_digest(&loc, &d_cfg)).body(cfg.to_vec()).send().await?;
    expect(r, StatusCode::CREATED, &format!("{base}: PUT config blob")).await?;
    let manifest = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d_cfg, "size": cfg.len()},
        "layers": []}))?;
    let d = put_manifest(c, base, repo, tag, &manifest).await?;
    Ok((manifest, d))
}

pub async fn put_manifest(c: &Client, base: &str, repo: &str, reference: &str, body: &[u8]) -> Result<String> {
    let r = c
        .put(format!("{base}/v2/{repo}/manifests/{reference}"))
        .header("content-type", OCI_MANIFEST)
        .body(body.to_vec())
        .send()
        .await?;
    let r = expect(r, StatusCode::CREATED, &format!("{base}: PUT manifest {repo}:{reference}")).await?;
    Ok(r.headers().get("docker-content-digest").context("no Docker-Content-Digest")?.to_str()?.to_owned())
}

/// Mounts `digest` from `from` into `repo` (cross-repository mount; 201).
pub async fn mount(c: &Client, base: &str, repo: &str, from: &str, digest: &str) -> Result<()> {
    let r = c.post(format!("{base}/v2/{repo}/blobs/uploads/?mount={digest}&from={from}")).send().await?;
    expect(r, StatusCode::CREATED, &format!("{base}: mount {digest} into {repo}")).await?;
    Ok(())
}

/// Requests per second of `method` on `url` from `conns` connections, each sending its next
/// request when the previous answer is read, for `dur`. Every answer must be 200.
pub async fn request_rate(
    c: &Client,
    t: &Target,
    url: &str,
    method: Method,
    conns: usize,
    dur: Duration,
) -> Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let stop = start + dur;
    let mut tasks = vec![];
    for _ in 0..conns {
        let (c, url, done, method, token) = (c.clone(), url.to_owned(), done.clone(), method.clone(), t.token.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < stop {
                let mut req = c.request(method.clone(), &url).header("accept", OCI_MANIFEST);
                if let Some(tok) = &token {
                    req = req.bearer_auth(tok);
                }
                let r = req.send().await?;
                ensure!(r.status() == StatusCode::OK, "{method} {url}: {}", r.status());
                r.bytes().await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// Follows `Link: <…>; rel="next"` from `first`, summing the array `field` of every page;
/// returns (entries, time).
pub async fn list_all(c: &Client, base: &str, first: &str, field: &str) -> Result<(usize, Duration)> {
    let t = Instant::now();
    let (mut entries, mut pages) = (0, 0);
    let mut next = Some(format!("{base}{first}"));
    while let Some(url) = next.take() {
        let r = c.get(&url).send().await?;
        let r = expect(r, StatusCode::OK, &format!("GET {url}")).await?;
        next = r
            .headers()
            .get("link")
            .and_then(|l| l.to_str().ok())
            .and_then(|l| l.split(';').next())
            .map(|l| l.trim().trim_start_matches('<').trim_end_matches('>').to_owned())
            .map(|l| absolute(base, &l));
        let v: serde_json::Value = r.json().await?;
        entries += v[field].as_array().map_or(0, |a| a.len());
        pages += 1;
        ensure!(pages < 100_000, "{base}: more than 100,000 pages");
    }
    Ok((entries, t.elapsed()))
}
