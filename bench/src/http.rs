//! The client side of every registry workload, the same code for every target: blob pushes
//! (monolithic `POST` + `PUT`, afreg's single `POST ?digest=`, one streamed `PATCH`, and
//! `PATCH`es with `Content-Range`), pulls, manifest `HEAD`/`GET` load at a given number of
//! connections, listing tags and the catalog by following `Link`, and many clients pulling at
//! once. Bodies are generated as they are sent (fresh pseudo-random bytes every time, so no
//! store finds them already there). Every request to a target carries its bearer token, if it
//! has one ([`authorized`] takes a fresh one on a private registry), and a request a node
//! refuses with 429 is sent again after its `Retry-After`, as clients do, except in the
//! request-rate workload, which counts the refusals.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use futures::StreamExt;
use reqwest::{Client, Method, RequestBuilder, Response, StatusCode};
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

/// A request to `t`, with its bearer token if it has one.
fn request(c: &Client, t: &Target, method: Method, url: &str) -> RequestBuilder {
    let r = c.request(method, url);
    match &t.token {
        Some(token) => r.bearer_auth(token),
        None => r,
    }
}

/// How many times one request refused with 429 is sent again.
const RETRIES_AFTER_429: usize = 60;

/// Sends `req`, and again after the answer's `Retry-After` while it is 429 (a node at its
/// default request-rate limits; the peers have none), as registry clients do. A streamed body
/// cannot be sent twice, so such a request is sent once.
async fn send(req: RequestBuilder) -> Result<Response> {
    for _ in 0..RETRIES_AFTER_429 {
        let Some(again) = req.try_clone() else { break };
        let r = again.send().await?;
        if r.status() != StatusCode::TOO_MANY_REQUESTS {
            return Ok(r);
        }
        let wait = r.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(1);
        crate::progress(&format!("429 from {}; sending it again in {wait} s", r.url()));
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }
    Ok(req.send().await?)
}

/// The scope a workload asks for on `repo`: everything it may do there.
pub fn repository_scope(repo: &str) -> String {
    format!("repository:{repo}:pull,push,delete")
}

/// The scope of `GET /v2/_catalog`.
pub const CATALOG_SCOPE: &str = "registry:catalog:*";

/// A token for `scopes` from the node's `/token`, with the bench user's password.
pub async fn token(c: &Client, base: &str, (user, password): (&str, &str), scopes: &[String]) -> Result<String> {
    let mut query = vec![("service", "afreg")];
    query.extend(scopes.iter().map(|s| ("scope", s.as_str())));
    let r = send(c.get(format!("{base}/token")).query(&query).basic_auth(user, Some(password))).await?;
    let r = expect(r, StatusCode::OK, &format!("{base}: GET /token")).await?;
    let v: serde_json::Value = r.json().await?;
    Ok(v["token"].as_str().context("no token in /token's answer")?.to_owned())
}

/// `t` ready for a workload on `scopes`: with a fresh token from its `/token` where it has a
/// login (tokens last five minutes by default, so each workload takes its own), as it is
/// otherwise.
pub async fn authorized(c: &Client, t: &Target, scopes: &[String]) -> Result<Target> {
    let Some((user, password)) = &t.login else { return Ok(t.clone()) };
    let token = token(c, &t.url, (user, password), scopes).await?;
    Ok(Target { token: Some(token), ..t.clone() })
}

async fn start_upload(c: &Client, t: &Target, repo: &str) -> Result<String> {
    let r = send(request(c, t, Method::POST, &format!("{}/v2/{repo}/blobs/uploads/", t.url))).await?;
    let r = expect(r, StatusCode::ACCEPTED, &format!("{}: POST upload", t.url)).await?;
    let loc = r.headers().get("location").context("POST upload: no Location")?.to_str()?.to_owned();
    Ok(absolute(&t.url, &loc))
}

/// The `PUT ?digest=` without a body that closes an upload session.
async fn finish_upload(c: &Client, t: &Target, loc: &str, digest: &str) -> Result<()> {
    let r = send(request(c, t, Method::PUT, &with_digest(loc, digest))).await?;
    expect(r, StatusCode::CREATED, &format!("{}: PUT ?digest=", t.url)).await?;
    Ok(())
}

async fn expect(r: Response, want: StatusCode, what: &str) -> Result<Response> {
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
pub async fn push(c: &Client, t: &Target, repo: &str, how: Push, seed: u64, total: u64) -> Result<(Duration, String)> {
    let base = &t.url;
    let body = || reqwest::Body::wrap_stream(testkit::stream::frames(seed, total));
    match how {
        Push::Mono | Push::SinglePost => {
            let d = digest_of(seed, total);
            let started = Instant::now();
            let req = if how == Push::SinglePost {
                request(c, t, Method::POST, &format!("{base}/v2/{repo}/blobs/uploads/?digest={d}"))
            } else {
                let loc = start_upload(c, t, repo).await?;
                request(c, t, Method::PUT, &with_digest(&loc, &d))
            };
            let r = req.header("content-type", "application/octet-stream").body(body()).send().await?;
            expect(r, StatusCode::CREATED, &format!("{base}: {how:?} push")).await?;
            Ok((started.elapsed(), d))
        }
        Push::Streamed => {
            let started = Instant::now();
            let loc = start_upload(c, t, repo).await?;
            let hasher = Arc::new(Mutex::new(sha2::Sha256::new()));
            let hashing = hasher.clone();
            let body = testkit::stream::frames(seed, total).map(move |frame| {
                if let Ok(bytes) = &frame {
                    hashing.lock().unwrap().update(bytes);
                }
                frame
            });
            let r = request(c, t, Method::PATCH, &loc)
                .header("content-type", "application/octet-stream")
                .body(reqwest::Body::wrap_stream(body))
                .send()
                .await?;
            let r = expect(r, StatusCode::ACCEPTED, &format!("{base}: streamed PATCH")).await?;
            let header = |name: &str| r.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let range = header("range");
            ensure!(range == Some(format!("0-{}", total - 1)), "{base}: streamed PATCH answered Range {range:?}");
            // A registry may move the session on each PATCH (distribution does): PUT where it says.
            let loc = header("location").map_or(loc, |l| absolute(base, &l));
            let d = format!("sha256:{}", hex::encode(hasher.lock().unwrap().clone().finalize()));
            finish_upload(c, t, &loc, &d).await?;
            Ok((started.elapsed(), d))
        }
        Push::Chunked { chunk } => {
            let started = Instant::now();
            let mut loc = start_upload(c, t, repo).await?;
            let mut hasher = sha2::Sha256::new();
            let mut frames = testkit::pseudo_random_frames(seed, total, testkit::stream::FRAME);
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
                hasher.update(&buf);
                let end = start + buf.len() as u64 - 1;
                let r = request(c, t, Method::PATCH, &loc)
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
            let d = format!("sha256:{}", hex::encode(hasher.finalize()));
            finish_upload(c, t, &loc, &d).await?;
            Ok((started.elapsed(), d))
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

/// `GET` of a blob, every byte read and counted; returns the time to the last byte.
pub async fn pull(c: &Client, t: &Target, repo: &str, digest: &str, total: u64) -> Result<Duration> {
    let base = &t.url;
    let started = Instant::now();
    let r = send(request(c, t, Method::GET, &format!("{base}/v2/{repo}/blobs/{digest}"))).await?;
    let r = expect(r, StatusCode::OK, &format!("{base}: GET blob")).await?;
    let n = drain(r).await?;
    ensure!(n == total, "{base}: pulled {n} bytes of {total}");
    Ok(started.elapsed())
}

/// `DELETE` of a blob from `repo`.
pub async fn delete_blob(c: &Client, t: &Target, repo: &str, digest: &str) -> Result<()> {
    let base = &t.url;
    let r = send(request(c, t, Method::DELETE, &format!("{base}/v2/{repo}/blobs/{digest}"))).await?;
    expect(r, StatusCode::ACCEPTED, &format!("{base}: DELETE blob")).await?;
    Ok(())
}

/// `clients` pulls at once, each a task of its own on a connection of its own, client i pulling
/// `digests[i % digests.len()]` (each `total` bytes): every blob is read by several clients at
/// the same time, as when a fleet starts the same image. Returns the time from the first
/// request to the last byte of the last pull.
pub async fn pull_at_once(
    c: &Client,
    t: &Target,
    repo: &str,
    digests: &[String],
    total: u64,
    clients: usize,
) -> Result<Duration> {
    ensure!(!digests.is_empty(), "{}: nothing to pull", t.url);
    let started = Instant::now();
    let pulls: Vec<_> = (0..clients)
        .map(|i| {
            let (c, t, repo, digest) = (c.clone(), t.clone(), repo.to_owned(), digests[i % digests.len()].clone());
            tokio::spawn(async move { pull(&c, &t, &repo, &digest, total).await })
        })
        .collect();
    for p in pulls {
        p.await??;
    }
    Ok(started.elapsed())
}

pub fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1u64 << 20) as f64 / d.as_secs_f64()
}

/// Pushes a small image (a config blob and a manifest without layers) as `repo:tag`; returns
/// the manifest's bytes and digest.
pub async fn push_image(c: &Client, t: &Target, repo: &str, tag: &str) -> Result<(Vec<u8>, String)> {
    let cfg = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let d_cfg = testkit::sha256_digest(cfg);
    let loc = start_upload(c, t, repo).await?;
    let r = send(request(c, t, Method::PUT, &with_digest(&loc, &d_cfg)).body(cfg.to_vec())).await?;
    expect(r, StatusCode::CREATED, &format!("{}: PUT config blob", t.url)).await?;
    let manifest = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d_cfg, "size": cfg.len()},
        "layers": []}))?;
    let d = put_manifest(c, t, repo, tag, &manifest).await?;
    Ok((manifest, d))
}

pub async fn put_manifest(c: &Client, t: &Target, repo: &str, reference: &str, body: &[u8]) -> Result<String> {
    let url = format!("{}/v2/{repo}/manifests/{reference}", t.url);
    let r = send(request(c, t, Method::PUT, &url).header("content-type", OCI_MANIFEST).body(body.to_vec())).await?;
    let r = expect(r, StatusCode::CREATED, &format!("{}: PUT manifest {repo}:{reference}", t.url)).await?;
    Ok(r.headers().get("docker-content-digest").context("no Docker-Content-Digest")?.to_str()?.to_owned())
}

/// Mounts `digest` from `from` into `repo` (cross-repository mount; 201).
pub async fn mount(c: &Client, t: &Target, repo: &str, from: &str, digest: &str) -> Result<()> {
    let url = format!("{}/v2/{repo}/blobs/uploads/?mount={digest}&from={from}", t.url);
    let r = send(request(c, t, Method::POST, &url)).await?;
    expect(r, StatusCode::CREATED, &format!("{}: mount {digest} into {repo}", t.url)).await?;
    Ok(())
}

/// What a request-rate workload got: answers served (200) per second, and how many answers
/// were refusals (429, a node's request-rate limits).
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    pub per_second: f64,
    pub served: u64,
    pub refused: u64,
}

impl Rate {
    /// Refusals as a percentage of the answers.
    pub fn refused_percent(&self) -> f64 {
        100.0 * self.refused as f64 / (self.served + self.refused).max(1) as f64
    }
}

/// Requests per second of `method` on `url` from `conns` connections, each sending its next
/// request when the previous answer is read, for `dur`. Every answer must be 200, or 429 from a
/// rate-limited target (counted, not served; the next request follows at once, as a client
/// that does not wait would send it).
pub async fn request_rate(
    c: &Client,
    t: &Target,
    url: &str,
    method: Method,
    conns: usize,
    dur: Duration,
) -> Result<Rate> {
    let served = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let stop = start + dur;
    let mut tasks = vec![];
    for _ in 0..conns {
        let (c, t, url, method) = (c.clone(), t.clone(), url.to_owned(), method.clone());
        let (served, refused) = (served.clone(), refused.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < stop {
                let r = request(&c, &t, method.clone(), &url).header("accept", OCI_MANIFEST).send().await?;
                match r.status() {
                    StatusCode::OK => served.fetch_add(1, Ordering::Relaxed),
                    StatusCode::TOO_MANY_REQUESTS if t.rate_limited => refused.fetch_add(1, Ordering::Relaxed),
                    s => bail!("{method} {url}: {s}"),
                };
                r.bytes().await?;
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let served = served.load(Ordering::Relaxed);
    Ok(Rate {
        per_second: served as f64 / start.elapsed().as_secs_f64(),
        served,
        refused: refused.load(Ordering::Relaxed),
    })
}

/// Follows `Link: <…>; rel="next"` from `first`, summing the array `field` of every page;
/// returns (entries, time).
pub async fn list_all(c: &Client, t: &Target, first: &str, field: &str) -> Result<(usize, Duration)> {
    let base = &t.url;
    let started = Instant::now();
    let (mut entries, mut pages) = (0, 0);
    let mut next = Some(format!("{base}{first}"));
    while let Some(url) = next.take() {
        let r = send(request(c, t, Method::GET, &url)).await?;
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
    Ok((entries, started.elapsed()))
}
