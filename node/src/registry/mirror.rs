//! The pull-through cache (`[mirror]`): a repository under an upstream's `destination` is
//! served from the cluster's own copy, and fetched from the upstream on a miss, as
//! distribution's proxy and zot's on-demand sync do.
//!
//! - **What is fetched is stored like a push**, through Raft: every region has the manifest,
//!   tag and blob records at once and pins the blobs, so a pull in another region never asks
//!   the upstream again. A mirrored manifest's blobs are recorded as references that need not
//!   be present yet (the state machine's foreign references); each is fetched on its first
//!   pull. Replication is the only mode: a cache that stays in one region would be the
//!   regional node's own disk, which every region already has.
//! - **A digest** is fetched once and kept; its bytes are checked against it while they
//!   stream. **A tag** is trusted for `tag_ttl` after it was stored (the replicated tag time)
//!   or last found unchanged upstream (this process's own memory), then asked again.
//! - **The upstream down**, throttling or failing: the cached tag is served with a `Warning`
//!   header and `afreg_mirror_stale_total` counts it; what was never cached is a 503 naming
//!   the upstream, within its `timeout`.
//! - **Concurrent misses** of one manifest or blob are one upstream fetch: the first request
//!   fetches, the others wait (bounded) and then read the stored copy.
//! - **A blob streams to the client while it is stored**: one task reads the upstream and
//!   feeds both, the client through a bounded channel and the store through a spool on disk
//!   ([`super::spool`]), so nothing is held whole in memory and the client is not held to the
//!   store's pace (Kubo's `add` is slower than a fast upstream); it keeps the last piece
//!   back until the digest is checked and the store has finished, so a client of bytes that do
//!   not match gets a cut-off body, the store refuses them (nothing is kept), and a pull that
//!   has finished has its blob committed. A client that goes away does not stop the fill.
//! - **A miss catches up first** (a read barrier, bounded): what another region fetched a
//!   moment ago is read from the cluster, not fetched again.
//! - **Pushes** into a mirrored repository are refused (DENIED): its content is the upstream's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use reqwest::{header, Method};

use super::Registry;
use crate::hashing::Hasher;
use crate::oci::{Digest, ErrorCode, Reference, RegistryError, RepoName};
use crate::store::ManifestRow;
use crate::upstream::{UpstreamClient, UpstreamError};

/// The manifest media types asked for upstream (OCI and Docker, images and indexes).
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// How long a request waits for another's fetch of the same content.
const FETCH_WAIT: Duration = Duration::from_secs(600);

/// The longest a miss waits to catch up with the cluster before asking the upstream.
const CATCH_UP: Duration = Duration::from_secs(2);

/// Pieces in flight between the upstream reader and the client.
const PIECES: usize = 8;

/// The `Warning` sent with a tag served from the cache while its upstream could not be asked.
const STALE_WARNING: &str = "110 afreg \"Response is Stale: the upstream could not be reached\"";

/// A blob of the upstream's, as the handler answers with it: its length when the upstream
/// gave one, and its bytes for a `GET` (stored as they pass).
pub struct MirroredBlob {
    pub length: Option<u64>,
    pub body: Option<BlobBytes>,
}

/// A blob's bytes as they arrive.
pub type BlobBytes = std::pin::Pin<Box<dyn futures::Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// The upstreams and what this process knows of them.
pub struct Mirror {
    cfg: afreg_config::MirrorConfig,
    /// A client per upstream, in `cfg.upstreams`' order.
    clients: Vec<Arc<UpstreamClient>>,
    /// When this process last found a (repository, tag) unchanged upstream.
    checked: Mutex<HashMap<(String, String), Instant>>,
    /// One fetch at a time per manifest or blob.
    fetching: Fetching,
}

type Fetching = Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>;

impl Mirror {
    pub fn new(cfg: &afreg_config::MirrorConfig) -> anyhow::Result<Self> {
        let clients = cfg
            .upstreams
            .iter()
            .map(|u| UpstreamClient::new(u.clone()).map(Arc::new))
            .collect::<anyhow::Result<_>>()?;
        Ok(Mirror { cfg: cfg.clone(), clients, checked: Mutex::default(), fetching: Fetching::default() })
    }

    /// The upstream mirroring `repo`, and its name there.
    pub fn upstream_for(&self, repo: &RepoName) -> Option<(Arc<UpstreamClient>, String)> {
        let (i, name) = self.cfg.upstream_for(repo.as_str())?;
        Some((self.clients[i].clone(), name))
    }

    /// containerd's `?ns=` ([`afreg_config::MirrorConfig::in_namespace`]).
    pub fn with_namespace(&self, rest: &str, ns: Option<&str>) -> Option<String> {
        self.cfg.in_namespace(rest, ns?)
    }

    /// Waits for the right to fetch `key` (another request's fetch of it first).
    async fn turn(&self, key: String) -> Result<Turn, RegistryError> {
        let lock = self.fetching.lock().expect("fetch lock").entry(key.clone()).or_default().clone();
        let guard = tokio::time::timeout(FETCH_WAIT, lock.lock_owned()).await.map_err(|_| {
            RegistryError::unavailable("the pull-through cache", format!("{key} is still being fetched upstream"))
        })?;
        Ok(Turn { fetching: self.fetching.clone(), key, guard: Some(guard) })
    }

    fn checked_within(&self, repo: &RepoName, tag: &str, ttl: Duration) -> bool {
        let checked = self.checked.lock().expect("checked lock");
        checked.get(&(repo.to_string(), tag.to_owned())).is_some_and(|at| at.elapsed() < ttl)
    }

    /// Notes that the tag was known to agree with the upstream at `at`.
    fn mark_checked(&self, repo: &RepoName, tag: &str, at: Instant) {
        self.checked.lock().expect("checked lock").insert((repo.to_string(), tag.to_owned()), at);
    }
}

/// The right to fetch one key; the next waiter gets it when this is dropped.
struct Turn {
    fetching: Fetching,
    key: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.guard = None;
        let mut fetching = self.fetching.lock().expect("fetch lock");
        if fetching.get(&self.key).is_some_and(|l| Arc::strong_count(l) == 1) {
            fetching.remove(&self.key);
        }
    }
}

/// An upstream failure as the client sees it: `unknown` for a 404.
fn upstream_error(e: UpstreamError, unknown: impl FnOnce() -> RegistryError) -> RegistryError {
    match e {
        UpstreamError::NotFound { .. } => unknown(),
        e => RegistryError::unavailable("the pull-through cache's upstream", &e).with_source(e),
    }
}

fn is_unknown(e: &RegistryError) -> bool {
    matches!(e.code, ErrorCode::ManifestUnknown | ErrorCode::BlobUnknown)
}

impl Registry {
    /// A manifest of a mirrored repository: the stored copy, or the upstream's, stored now;
    /// with the `Warning` to send when the copy is served because the upstream failed.
    #[allow(clippy::too_many_arguments)]
    pub async fn mirrored_manifest(
        &self,
        upstream: &UpstreamClient,
        name: &str,
        repo: &RepoName,
        r: &Reference,
        with_body: bool,
        origin: afreg_replication::EventOrigin,
    ) -> Result<(Arc<ManifestRow>, Option<&'static str>), RegistryError> {
        let tag = match r {
            Reference::Tag(t) => Some(t.as_str()),
            Reference::Digest(_) => None,
        };
        if let Some(m) = self.local_manifest(repo, r, with_body).await? {
            if self.tag_fresh(upstream, repo, tag).await? {
                return Ok((m, None));
            }
        }
        let _turn = self.mirror.turn(format!("manifest {repo}:{r}")).await?;
        // Another request, here or in another region, may have fetched or checked it.
        self.catch_up().await;
        let cached = self.local_manifest(repo, r, with_body).await?;
        if let Some(m) = &cached {
            if self.tag_fresh(upstream, repo, tag).await? {
                return Ok((m.clone(), None));
            }
        }
        let fetched = upstream.fetch(Method::GET, name, &format!("manifests/{r}"), MANIFEST_TYPES).await;
        let resp = match fetched {
            Ok(resp) => resp,
            Err(e) if e.is_outage() && cached.is_some() => {
                metrics::counter!("afreg_mirror_stale_total", "upstream" => upstream.cfg.name.clone()).increment(1);
                tracing::warn!(event = "mirror_stale", upstream = %upstream.cfg.name, repository = %repo, reference = %r,
                    error = %e, "served the cached manifest: the upstream could not be asked");
                return Ok((cached.expect("checked"), Some(STALE_WARNING)));
            }
            Err(e) => return Err(upstream_error(e, || RegistryError::manifest_unknown(r))),
        };
        let content_type = resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let claimed = resp.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let max = self.cfg.storage.max_manifest_bytes;
        let body = read_limited(resp, max, &upstream.cfg.name)
            .await
            .map_err(|e| upstream_error(e, || RegistryError::manifest_unknown(r)))?;
        // Stored under the digest of the reference's algorithm (sha256 for a tag), as a push is.
        let mut h = Hasher::new(match r {
            Reference::Digest(d) => d.algorithm(),
            Reference::Tag(_) => crate::oci::Algorithm::Sha256,
        });
        h.update(&body);
        let digest = h.finish().to_string();
        let expected = match r {
            Reference::Digest(d) => Some(d.to_string()),
            Reference::Tag(_) => claimed.filter(|c| c.starts_with("sha256:")),
        };
        if let Some(want) = expected.filter(|w| *w != digest) {
            return Err(RegistryError::new(
                ErrorCode::DigestInvalid,
                format!(
                    "upstream {} sent a manifest whose digest is {digest}, not {want}; nothing was cached",
                    upstream.cfg.name
                ),
            ));
        }
        if let (Some(m), Some(t)) = (&cached, tag) {
            if m.digest == digest {
                self.mirror.mark_checked(repo, t, Instant::now());
                return Ok((m.clone(), None));
            }
        }
        self.put_manifest_as(repo, r, content_type.as_deref(), &body, mirror_origin(upstream, origin), true).await?;
        if let Some(t) = tag {
            self.mirror.mark_checked(repo, t, Instant::now());
        }
        tracing::info!(event = "mirror_fetched", upstream = %upstream.cfg.name, repository = %repo, reference = %r,
            digest = %digest, "manifest fetched from the upstream");
        let m = self.get_manifest(repo, r, with_body).await?;
        Ok((m, None))
    }

    /// Applies here everything the cluster committed before a miss goes upstream, so that
    /// what another region fetched a moment ago is read, not fetched again. Bounded; without
    /// a quorum the miss goes upstream as it would have (nothing could be stored anyway, but
    /// a stale tag may be served).
    async fn catch_up(&self) {
        if let Err(e) = tokio::time::timeout(CATCH_UP, self.cluster.read_barrier()).await.unwrap_or(Ok(())) {
            tracing::debug!(event = "mirror_catch_up_failed", error = %e, "a mirror miss goes upstream unsynced");
        }
    }

    async fn local_manifest(
        &self,
        repo: &RepoName,
        r: &Reference,
        with_body: bool,
    ) -> Result<Option<Arc<ManifestRow>>, RegistryError> {
        match self.get_manifest(repo, r, with_body).await {
            Ok(m) => Ok(Some(m)),
            Err(e) if is_unknown(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether a tag (none: a digest, always fresh) may be served without asking upstream:
    /// stored (in any region) or found unchanged (by this process) within `tag_ttl`. The
    /// stored time, once read, is remembered like a check, so a warm tag costs no query.
    async fn tag_fresh(
        &self,
        upstream: &UpstreamClient,
        repo: &RepoName,
        tag: Option<&str>,
    ) -> Result<bool, RegistryError> {
        let Some(t) = tag else { return Ok(true) };
        let ttl = upstream.cfg.tag_ttl();
        if self.mirror.checked_within(repo, t, ttl) {
            return Ok(true);
        }
        let Some(stored) = self.store.tag_updated_at(repo, t).await? else { return Ok(false) };
        let age = (chrono::Utc::now() - stored).to_std().unwrap_or_default();
        match Instant::now().checked_sub(age) {
            Some(at) if age < ttl => {
                self.mirror.mark_checked(repo, t, at);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// A blob of a mirrored repository this region does not have linked: `None` when another
    /// request stored it meanwhile (serve the local copy); else the upstream's answer, the
    /// bytes stored as they stream to the client.
    pub async fn mirrored_blob(
        self: &Arc<Self>,
        upstream: Arc<UpstreamClient>,
        name: String,
        repo: &RepoName,
        d: &Digest,
        with_body: bool,
        origin: afreg_replication::EventOrigin,
    ) -> Result<Option<MirroredBlob>, RegistryError> {
        let blob_error = |e| upstream_error(e, || RegistryError::blob_unknown(d));
        if !with_body {
            let resp = upstream.fetch(Method::HEAD, &name, &format!("blobs/{d}"), &[]).await.map_err(blob_error)?;
            let length =
                resp.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
            return Ok(Some(MirroredBlob { length, body: None }));
        }
        let turn = self.mirror.turn(format!("blob {d}")).await?;
        self.catch_up().await;
        match self.blob_meta(repo, d).await {
            Ok(_) => return Ok(None),
            Err(e) if is_unknown(&e) => {}
            Err(e) => return Err(e),
        }
        let resp = upstream.fetch(Method::GET, &name, &format!("blobs/{d}"), &[]).await.map_err(blob_error)?;
        let length = resp.content_length();
        if length.is_some_and(|n| n > self.cfg.storage.max_blob_bytes) {
            return Err(RegistryError::new(
                ErrorCode::SizeInvalid,
                format!("upstream blob {d} is larger than storage.max_blob_bytes"),
            ));
        }
        // The store follows at its own pace through a spool on disk (beside the blob files
        // when they are on), so the client is fed as fast as the upstream sends.
        let dir = if self.files.is_some() { self.cfg.storage.blob_cache_dir.clone() } else { std::env::temp_dir() };
        let (spool, store_body) = super::spool::Spool::create(&dir).map_err(|e| {
            RegistryError::unavailable("the pull-through cache's spool", format!("{}: {e}", dir.display()))
        })?;
        let (to_client, client_rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(PIECES);
        let reg = self.clone();
        let (repo, digest) = (repo.clone(), d.clone());
        let origin = mirror_origin(&upstream, origin);
        // The turn goes with the fill: waiters read the copy once it is stored (or try again).
        tokio::spawn(async move {
            let _turn = turn;
            let store = reg.upload_monolithic(&repo, &digest, length, store_body, origin);
            let feed = feed(resp, &digest, spool, &to_client);
            let (stored, fed) = tokio::join!(store, feed);
            // The client's last piece once the blob is committed (or failed to be), so that a
            // pull that has finished finds the blob in every region that catches up.
            if let Ok(Some(last)) = &fed {
                let _ = to_client.send(Ok(last.clone())).await;
            }
            match (stored, fed.map(|_| ())) {
                (Ok(()), Ok(())) => tracing::info!(event = "mirror_fetched", upstream = %upstream.cfg.name,
                    repository = %repo, digest = %digest, "blob fetched from the upstream and stored"),
                (stored, fed) => tracing::warn!(event = "mirror_fetch_failed", upstream = %upstream.cfg.name,
                    repository = %repo, digest = %digest, store = ?stored.err().map(|e| e.message),
                    upstream_error = ?fed.err(), "a blob from the upstream was not stored"),
            }
        });
        Ok(Some(MirroredBlob { length, body: Some(Box::pin(received(client_rx))) }))
    }
}

/// Reads the upstream's blob once, into the spool the store reads and to the client, all but
/// the last piece, which it returns once the digest is checked. A client gone stops nothing; a
/// spool that failed stops only the store's copy (which then fails).
async fn feed(
    resp: reqwest::Response,
    d: &Digest,
    spool: super::spool::Spool,
    to_client: &tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> Result<Option<Bytes>, String> {
    let mut hash = Hasher::new(d.algorithm());
    let mut held: Option<Bytes> = None;
    let mut pieces = resp.bytes_stream();
    let (mut spooled, mut client_open) = (Ok(()), true);
    while let Some(piece) = pieces.next().await {
        let piece = match piece {
            Ok(p) => p,
            Err(e) => {
                let why = format!("the upstream's blob stream broke: {e}");
                let _ = to_client.send(Err(std::io::Error::other(why.clone()))).await;
                spool.finish(Err(why.clone()));
                return Err(why);
            }
        };
        hash.update(&piece);
        if spooled.is_ok() {
            spooled = spool.append(piece.clone()).await.map_err(|e| format!("the spool: {e}"));
        }
        if let Some(prev) = held.replace(piece) {
            if client_open && to_client.send(Ok(prev)).await.is_err() {
                client_open = false;
            }
        }
    }
    let got = hash.finish();
    if got != *d {
        let why = format!("the upstream sent bytes whose digest is {got}, not {d}");
        let _ = to_client.send(Err(std::io::Error::other(why.clone()))).await;
        spool.finish(Err(why.clone()));
        return Err(why);
    }
    spool.finish(spooled);
    Ok(held)
}

/// At most `max` bytes of upstream `name`'s answer, or an error.
async fn read_limited(resp: reqwest::Response, max: usize, name: &str) -> Result<Vec<u8>, UpstreamError> {
    let mut out = Vec::new();
    let mut pieces = resp.bytes_stream();
    while let Some(p) = pieces.next().await {
        let p = p.map_err(|e| UpstreamError::Unreachable { name: name.to_owned(), why: e.to_string() })?;
        if out.len() + p.len() > max {
            return Err(UpstreamError::Refused {
                name: name.to_owned(),
                status: 413,
                why: format!("a manifest larger than storage.max_manifest_bytes ({max})"),
            });
        }
        out.extend_from_slice(&p);
    }
    Ok(out)
}

/// The writes a fetch makes, as notification events name them: the pull that caused them,
/// by the mirror of that upstream.
fn mirror_origin(upstream: &UpstreamClient, pull: afreg_replication::EventOrigin) -> afreg_replication::EventOrigin {
    afreg_replication::EventOrigin { actor: format!("mirror:{}", upstream.cfg.name), ..pull }
}

/// What a channel receives, as a stream.
fn received<T: Send + 'static>(rx: tokio::sync::mpsc::Receiver<T>) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
}
