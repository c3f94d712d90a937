//! Blob uploads: monolithic, chunked and streamed. Bytes flow from the client straight into
//! Kubo `add` (pinned, so Kubo's GC cannot take them meanwhile) while they are hashed; nothing
//! is buffered whole. Each accepted chunk is recorded in Postgres with its pin before it is
//! acknowledged, so a session survives a restart. Chunks are stored from the chunker's
//! boundaries (see [`crate::unixfs`]), so finishing a chunked upload builds the blob's DAG over
//! the chunks' leaves instead of reading the bytes back. On completion the digest is checked: a
//! mismatch removes the session and releases its pins, and a match records the blob, links it
//! into the repository and keeps its final CID pinned. Everything received and not kept is
//! released, so Kubo's GC reclaims it.

use std::sync::{Arc, Mutex as StdMutex};

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use uuid::Uuid;

use super::Registry;
use crate::blob_files::Fill;
use crate::hashing::Hasher;
use crate::oci::{Algorithm, Digest, ErrorCode, RegistryError, RepoName};
use crate::store::{AppendOutcome, NewChunk, Store, UploadRow};
use crate::unixfs;
use afreg_replication::{Applied, Command, EventOrigin};

/// The in-memory half of a session: a sha256 over the bytes received so far, if it is known,
/// and the blob's file filling from them since the first byte (a streamed push: one `PATCH`
/// with the whole body, then `PUT`), if one is.
#[derive(Default)]
pub struct SessionState {
    hash: Option<(u64, Hasher)>,
    fill: Option<Fill>,
}

/// The upload session a blob is committed from: deleted once the blob is stored. `holds_cid`:
/// the blob is the session's one chunk, whose row keeps the CID pinned meanwhile.
struct FromSession {
    id: Uuid,
    holds_cid: bool,
}

/// Where a session stands, for `Range` and `Location` headers.
pub struct UploadStatus {
    pub id: Uuid,
    pub size: u64,
}

/// A `Content-Range: <start>-<end>` header (inclusive, no unit), as the spec defines for PATCH.
pub fn parse_content_range(h: &str) -> Option<(u64, u64)> {
    let h = h.trim();
    let h = h.strip_prefix("bytes ").or_else(|| h.strip_prefix("bytes=")).unwrap_or(h);
    let (a, b) = h.split_once('-')?;
    let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.split('/').next()?.trim().parse().ok()?);
    // The chunk's length, `b - a + 1`, must be a u64 too.
    (a <= b && b - a < u64::MAX).then_some((a, b))
}

fn range_error(msg: String) -> RegistryError {
    RegistryError::new(ErrorCode::UploadRangeInvalid, msg)
}

/// What [`tap`] saw: the bytes counted and hashed so far, and whether the body went past its
/// limit (and was cut off there).
struct Tapped {
    n: u64,
    hasher: Hasher,
    over: bool,
    /// The blob's file being filled from the same bytes, when the body is the whole blob.
    fill: Option<Fill>,
}

/// Counts and hashes the bytes of a body stream as they pass, and records bytes in. A body
/// that goes past `limit` bytes ends in an error there, so nothing past the limit is stored.
fn tap<S>(
    body: S,
    hasher: Hasher,
    limit: u64,
    fill: Option<Fill>,
) -> (impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static, Arc<StdMutex<Tapped>>)
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    let state = Arc::new(StdMutex::new(Tapped { n: 0, hasher, over: false, fill }));
    let s2 = state.clone();
    let stream = body.map(move |b| {
        let b = b?;
        let mut g = s2.lock().unwrap();
        if g.n + b.len() as u64 > limit {
            g.over = true;
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the blob is larger than storage.max_blob_bytes",
            ));
        }
        g.n += b.len() as u64;
        g.hasher.update(&b);
        if let Some(f) = &mut g.fill {
            f.offer(&b);
        }
        metrics::counter!("afreg_blob_received_bytes_total").increment(b.len() as u64);
        Ok(b)
    });
    (stream, state)
}

fn take(state: Arc<StdMutex<Tapped>>) -> Tapped {
    match Arc::try_unwrap(state) {
        Ok(m) => m.into_inner().unwrap(),
        Err(a) => {
            let mut g = a.lock().unwrap();
            Tapped { n: g.n, hasher: g.hasher.clone(), over: g.over, fill: g.fill.take() }
        }
    }
}

/// 413 `SIZE_INVALID`: the blob would be larger than `storage.max_blob_bytes`.
fn too_large(max: u64) -> RegistryError {
    RegistryError::new(ErrorCode::TooLarge, format!("the blob is larger than this registry accepts ({max} bytes)"))
}

/// 429 `TOOMANYREQUESTS`: the owner's open sessions would stage more than
/// `storage.max_staged_bytes_per_user`.
fn over_quota(max: u64) -> RegistryError {
    RegistryError::too_many_requests(
        format!("this user's open uploads would stage more than {max} bytes; finish or cancel one first"),
        10,
    )
}

fn upload_id(s: &str) -> Result<Uuid, RegistryError> {
    Uuid::parse_str(s).map_err(|_| RegistryError::upload_unknown())
}

impl Registry {
    fn session(&self, id: Uuid) -> Arc<tokio::sync::Mutex<SessionState>> {
        let mut map = self.sessions.lock().unwrap();
        let s = map.entry(id).or_default().clone();
        metrics::gauge!("afreg_upload_sessions_in_memory").set(map.len() as f64);
        s
    }
    fn forget_session(&self, id: Uuid) {
        let mut map = self.sessions.lock().unwrap();
        map.remove(&id);
        metrics::gauge!("afreg_upload_sessions_in_memory").set(map.len() as f64);
    }

    /// The session's lock and its row; `BLOB_UPLOAD_UNKNOWN`, leaving nothing in memory, for a
    /// session that does not exist (never did, finished, cancelled or expired).
    async fn open_session(
        &self,
        id: Uuid,
        repo: &RepoName,
    ) -> Result<(tokio::sync::OwnedMutexGuard<SessionState>, UploadRow), RegistryError> {
        let state = self.session(id).lock_owned().await;
        match self.store.upload(id, repo).await {
            Ok(Some(row)) => Ok((state, row)),
            Ok(None) => {
                drop(state);
                self.forget_session(id);
                Err(RegistryError::upload_unknown())
            }
            Err(e) => Err(e),
        }
    }

    /// `POST …/blobs/uploads/?digest=` with the whole blob as the body.
    pub async fn upload_monolithic<S>(
        &self,
        repo: &RepoName,
        digest: &Digest,
        content_length: Option<u64>,
        body: S,
        origin: EventOrigin,
    ) -> Result<(), RegistryError>
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        self.store_whole(repo, digest, content_length, body, None, origin).await
    }

    /// Stores a body that is the whole blob: into Kubo while it is hashed, then, if the digest
    /// matches, commits it. With `session` (a `PUT` carrying the whole blob into a session that
    /// has received nothing), that session is deleted in the transaction that finishes the
    /// commit, and a digest mismatch cancels it; its bytes are never recorded as a chunk, since
    /// a failed `PUT` of the whole blob is retried whole.
    async fn store_whole<S>(
        &self,
        repo: &RepoName,
        digest: &Digest,
        content_length: Option<u64>,
        body: S,
        session: Option<Uuid>,
        origin: EventOrigin,
    ) -> Result<(), RegistryError>
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        let started = std::time::Instant::now();
        let max = self.cfg.storage.max_blob_bytes;
        if content_length.is_some_and(|n| n > max) {
            return Err(too_large(max));
        }
        // The file's name needs the CID, which only Kubo's answer gives: the bytes are written
        // to the fill's temporary file as they pass and named once the CID is known.
        let fill = self.files.as_ref().and_then(|f| f.fill_upload());
        let (stream, state) = tap(body, Hasher::new(digest.algorithm()), max, fill);
        let added = self.kubo.add(stream).await;
        let tapped = take(state);
        if tapped.over {
            if let Ok(a) = &added {
                self.release_cid(&a.cid).await;
            }
            return Err(too_large(max));
        }
        let added = added?;
        let (size, got) = (tapped.n, tapped.hasher.finish());
        if let Some(n) = content_length.filter(|n| *n != size) {
            self.release_cid(&added.cid).await;
            return Err(RegistryError::new(
                ErrorCode::BlobUploadInvalid,
                format!("the body declared {n} bytes but carried {size}"),
            ));
        }
        if &got != digest {
            self.release_cid(&added.cid).await;
            if let Some(id) = session {
                self.cancel(id).await?;
            }
            return Err(digest_mismatch(digest, &got));
        }
        let from = session.map(|id| FromSession { id, holds_cid: false });
        let kept = self.commit_blob(repo, digest, &added.cid, size as i64, from, origin).await?;
        if let Some(f) = tapped.fill {
            f.finish_upload(&kept, digest, size);
        }
        tracing::info!(event = "blob_upload", repository = %repo, digest = %digest, ipfs_cid = %kept, size,
            duration_ms = started.elapsed().as_millis() as u64, "blob uploaded");
        Ok(())
    }

    /// Records the blob (this region as its origin), links it into `repo`, and keeps its CID
    /// pinned here; returns the CID the registry keeps for the digest (an older one if the
    /// digest was already stored, and then ours is released).
    ///
    /// The CID is held before the record is proposed, by a `blob_holds` row (pinned, under its
    /// lock), or by the session's chunk when the blob is that one chunk. No transaction or lock
    /// is held while Raft commits it: a burst of commits never ties up connections that Raft
    /// or other requests need. Once the record is applied here the blob row keeps the CID in
    /// use, and one transaction drops the hold and the session. If the write's outcome is
    /// unknown (a timeout: the record may still commit) the hold and the session stay until
    /// they expire, so the bytes are still here when the record applies.
    async fn commit_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        cid: &str,
        size: i64,
        session: Option<FromSession>,
        origin: EventOrigin,
    ) -> Result<String, RegistryError> {
        let held_by_session = session.as_ref().is_some_and(|s| s.holds_cid);
        let hold = if held_by_session {
            None
        } else {
            let hold = Uuid::new_v4();
            let ttl = std::time::Duration::from_secs(self.cfg.storage.upload_ttl_secs);
            let held = cid.to_owned();
            let record = self
                .pin_and_record(cid, move |tx| Box::pin(async move { Store::insert_hold(tx, hold, &held, ttl).await }));
            if let Err(e) = record.await {
                self.release_cid(cid).await;
                return Err(e);
            }
            Some(hold)
        };
        let cmd = Command::PutBlob {
            repo: repo.to_string(),
            digest: digest.to_string(),
            cid: cid.to_owned(),
            size,
            origin_region: self.region_id(),
            at: super::now_millis(),
        };
        let outcome = match self.propose(self.blob_event(origin, cmd)).await {
            Err(e) if e.outcome_unknown() => {
                tracing::warn!(event = "blob_commit_unknown", repository = %repo, digest = %digest, ipfs_cid = %cid,
                    "the blob record may still commit; its pin is held until the hold expires");
                return Err(e.into());
            }
            decided => decided,
        };
        let kept = match outcome {
            Ok(Applied::BlobStored { cid: kept }) => kept,
            other => {
                // Decided, and not stored: the hold's work is done, and the session stays for
                // the client to retry.
                if let Err(e) = self.store.finish_commit(hold, None, None).await {
                    tracing::warn!(event = "hold_release_failed", ipfs_cid = %cid, error = %e, "the hold stays until it expires");
                }
                if !held_by_session {
                    self.release_cid(cid).await;
                }
                return match other {
                    Ok(Applied::Invalid { reason }) => {
                        Err(RegistryError::internal(format!("the cluster refused the blob: {reason}")))
                    }
                    Ok(a) => Err(RegistryError::internal(format!("blob record: unexpected outcome {a:?}"))),
                    Err(e) => Err(e.into()),
                };
            }
        };
        // Stored: the blob row keeps the CID in use; this region records the pin its upload
        // made (as its pinner would), and the session is done.
        let pinned = (kept == cid).then_some(cid);
        let released = match self.store.finish_commit(hold, pinned, session.as_ref().map(|s| s.id)).await {
            Ok(Some(chunks)) => chunks,
            Ok(None) => return Err(RegistryError::upload_unknown()),
            Err(e) if session.is_some() => return Err(e),
            Err(e) => {
                tracing::warn!(event = "hold_release_failed", ipfs_cid = %cid, error = %e, "the hold stays until it expires");
                vec![]
            }
        };
        if let Some(s) = &session {
            self.forget_session(s.id);
            metrics::gauge!("afreg_upload_sessions_open").decrement(1.0);
        }
        let theirs = (kept != cid).then_some(cid.to_owned());
        for c in released.into_iter().chain(theirs).filter(|c| *c != kept) {
            self.release_cid(&c).await;
        }
        Ok(kept)
    }

    /// Opens an upload session for `owner` (a user, or a client address), within
    /// `storage.max_uploads_per_user`.
    pub async fn start_upload(&self, repo: &RepoName, owner: &str) -> Result<UploadStatus, RegistryError> {
        let id = Uuid::new_v4();
        let max = self.cfg.storage.max_uploads_per_user;
        if !self.store.create_upload(id, repo, owner, max).await? {
            return Err(RegistryError::too_many_requests(
                format!("{max} uploads are open for this user already; finish or cancel one first"),
                10,
            ));
        }
        metrics::gauge!("afreg_upload_sessions_open").increment(1.0);
        Ok(UploadStatus { id, size: 0 })
    }

    pub async fn upload_status(&self, repo: &RepoName, id: &str) -> Result<UploadStatus, RegistryError> {
        let id = upload_id(id)?;
        let row = self.store.upload(id, repo).await?.ok_or_else(RegistryError::upload_unknown)?;
        Ok(UploadStatus { id, size: row.size as u64 })
    }

    /// `PATCH`: appends a chunk. `content_range` must start at the session's current size.
    pub async fn upload_chunk<S>(
        &self,
        repo: &RepoName,
        id: &str,
        content_range: Option<(u64, u64)>,
        content_length: Option<u64>,
        body: S,
    ) -> Result<UploadStatus, RegistryError>
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        let id = upload_id(id)?;
        let (mut state, row) = self.open_session(id, repo).await?;
        let size = self.append(id, &row, &mut state, content_range, content_length, body).await?;
        Ok(UploadStatus { id, size })
    }

    async fn append<S>(
        &self,
        id: Uuid,
        row: &UploadRow,
        state: &mut SessionState,
        content_range: Option<(u64, u64)>,
        content_length: Option<u64>,
        body: S,
    ) -> Result<u64, RegistryError>
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        let offset = row.size as u64;
        if let Some((start, end)) = content_range {
            if start != offset {
                return Err(range_error(format!("chunk starts at {start}, but the upload has {offset} bytes")));
            }
            if let Some(len) = content_length {
                if end - start + 1 != len {
                    return Err(range_error(format!(
                        "Content-Range {start}-{end} does not match Content-Length {len}"
                    )));
                }
            }
        }
        if content_length == Some(0) {
            return Ok(offset);
        }
        let max = self.cfg.storage.max_blob_bytes;
        let max_staged = self.cfg.storage.max_staged_bytes_per_user;
        let blob_room = max.saturating_sub(offset);
        let staged_room = max_staged.saturating_sub(row.owner_staged.max(0) as u64);
        let room = blob_room.min(staged_room);
        let refused = || if blob_room <= staged_room { too_large(max) } else { over_quota(max_staged) };
        let declared = content_range.map(|(s, e)| e - s + 1).or(content_length);
        if declared.is_some_and(|n| n > room) {
            return Err(refused());
        }
        // Hash speculatively on a copy: the chunk counts only once it is recorded.
        let base = match state.hash.take() {
            Some((n, h)) if n == offset => h,
            _ => self.rehash(row, Algorithm::Sha256).await?,
        };
        // The file fills from the session's first byte on; any chunk that fails ends it.
        let fill = match offset {
            0 => self.files.as_ref().and_then(|f| f.fill_upload()),
            _ => state.fill.take(),
        };
        let (stream, tapped) = tap(body, base.clone(), room, fill);
        // With a fixed-size chunker, the chunk is stored from the last chunk boundary at or
        // before `offset`: the bytes since then (under one chunk, the unaligned tail of the
        // chunk before) are sent again first, so this chunk's leaves are the blob's own and
        // finishing the upload needs no second pass over the bytes.
        let tail = self.unaligned_tail(row, offset);
        let start = tail.as_ref().map_or(offset, |(start, _, _)| *start);
        let added = match &tail {
            Some((start, cid, from)) => match self.kubo.cat(cid, *from, Some(offset - start)).await {
                Ok(prefix) => self.kubo.add(prefix.chain(stream)).await,
                Err(e) => Err(e),
            },
            None => self.kubo.add(stream).await,
        };
        let Tapped { n: len, hasher, over, fill } = take(tapped);
        if over {
            state.hash = Some((offset, base));
            if let Ok(a) = &added {
                self.release_cid(&a.cid).await;
            }
            return Err(refused());
        }
        let added = match added {
            Ok(a) => a,
            Err(e) => {
                state.hash = Some((offset, base));
                return Err(e.into());
            }
        };
        let expected = content_range.map(|(s, e)| e - s + 1).or(content_length);
        if expected.is_some_and(|n| n != len) || len == 0 {
            state.hash = Some((offset, base));
            // `add` pinned what it received; none of it is kept.
            self.release_cid(&added.cid).await;
            if len == 0 {
                // An empty body (a closing PUT without Content-Length): the fill goes on.
                state.fill = fill;
                return Ok(offset);
            }
            return Err(RegistryError::new(
                ErrorCode::BlobUploadInvalid,
                format!("chunk declared {} bytes but carried {len}", expected.unwrap_or(0)),
            ));
        }
        let cid = added.cid.clone();
        let length = (offset + len - start) as i64;
        let owner = row.owner.clone();
        let appended = self
            .pin_and_record(&cid, move |tx| {
                Box::pin(async move {
                    let chunk = NewChunk { start: start as i64, length, cid: &added.cid };
                    Store::append_chunk(tx, id, offset as i64, &chunk, &owner, max_staged).await
                })
            })
            .await;
        match appended {
            Ok(AppendOutcome::Appended { replaced }) => {
                state.hash = Some((offset + len, hasher));
                if let Some(old) = replaced.filter(|old| *old != cid) {
                    self.release_cid(&old).await;
                }
                state.fill = fill;
                Ok(offset + len)
            }
            Ok(AppendOutcome::Gone) => {
                self.release_cid(&cid).await;
                Err(RegistryError::upload_unknown())
            }
            Ok(AppendOutcome::OverQuota) => {
                state.hash = Some((offset, base));
                self.release_cid(&cid).await;
                Err(over_quota(max_staged))
            }
            Err(e) => {
                state.hash = Some((offset, base));
                self.release_cid(&cid).await;
                Err(e)
            }
        }
    }

    /// Where a chunk appended at `offset` must start to keep the chunks' leaves the blob's:
    /// `(the chunk boundary, the CID of the last chunk, the boundary's place in it)`, or `None`
    /// when `offset` is on a boundary (or the chunker is not fixed-size, or the last chunk
    /// predates aligned chunks).
    fn unaligned_tail(&self, row: &UploadRow, offset: u64) -> Option<(u64, String, u64)> {
        let size = unixfs::fixed_chunk_size(&self.cfg.kubo.chunker)?;
        let boundary = offset - offset % size;
        let (last_start, _, cid) = row.chunks.last()?;
        let last_start = *last_start as u64;
        (boundary != offset && last_start <= boundary && last_start.is_multiple_of(size))
            .then(|| (boundary, cid.clone(), boundary - last_start))
    }

    /// The part of the blob each chunk contributes, in order: `(cid, length)`, where a chunk
    /// that the next one overlaps gives only the bytes before it.
    fn contributions(row: &UploadRow) -> Vec<(String, u64)> {
        let mut out = Vec::with_capacity(row.chunks.len());
        for (i, (start, len, cid)) in row.chunks.iter().enumerate() {
            let end = row.chunks.get(i + 1).map_or(start + len, |next| next.0);
            if end > *start {
                out.push((cid.clone(), (end - start) as u64));
            }
        }
        out
    }

    /// The blob's CID from its chunks' leaves, without reading the bytes: the chunks must be
    /// aligned to a fixed-size chunker (see [`Self::unaligned_tail`]); `None` otherwise, and
    /// the caller adds the bytes again.
    async fn dag_from_chunks(&self, row: &UploadRow) -> Result<Option<String>, RegistryError> {
        let Some(size) = unixfs::fixed_chunk_size(&self.cfg.kubo.chunker) else { return Ok(None) };
        if row.chunks.iter().any(|(start, _, _)| !(*start as u64).is_multiple_of(size)) {
            return Ok(None);
        }
        let parts = Self::contributions(row);
        let mut leaves = Vec::new();
        let mut covered = 0u64;
        for (i, (cid, len)) in parts.iter().enumerate() {
            let cids = if unixfs::is_raw(cid) { vec![cid.clone()] } else { self.kubo.raw_leaves(cid).await? };
            let want = len.div_ceil(size) as usize;
            if cids.len() < want || (i + 1 < parts.len() && len % size != 0) {
                return Ok(None);
            }
            for c in cids.into_iter().take(want) {
                let n = size.min(row.size as u64 - covered);
                leaves.push(unixfs::Node { cid: c, file_size: n, tsize: n });
                covered += n;
            }
        }
        if covered != row.size as u64 {
            return Ok(None);
        }
        let Some((root, blocks)) = unixfs::balanced(&leaves) else { return Ok(None) };
        // Each node is stored pinned, children first, so that Kubo's GC cannot take one before
        // its parent holds it; once the root is stored, its pin holds them all and the others'
        // pins go (unless something else uses that CID too).
        let mut stored = Vec::with_capacity(blocks.len());
        let mut failed = None;
        for b in blocks {
            match self.kubo.block_put(b.bytes).await {
                Ok(put) if put == b.cid => stored.push(put),
                Ok(put) => {
                    stored.push(put.clone());
                    failed =
                        Some(RegistryError::internal(format!("Kubo stored a DAG node as {put}, expected {}", b.cid)));
                    break;
                }
                Err(e) => {
                    failed = Some(e.into());
                    break;
                }
            }
        }
        for cid in stored.iter().filter(|c| failed.is_some() || **c != root.cid) {
            self.release_cid(cid).await;
        }
        if let Some(e) = failed {
            return Err(e);
        }
        Ok(Some(root.cid))
    }

    /// Recomputes the hash of everything a session has received, from Kubo (after a restart,
    /// or when the client finishes with a digest other than sha256).
    async fn rehash(&self, row: &UploadRow, alg: Algorithm) -> Result<Hasher, RegistryError> {
        let mut h = Hasher::new(alg);
        let mut s = Box::pin(self.chunk_bytes(row));
        while let Some(b) = s.next().await {
            h.update(&b.map_err(|e| RegistryError::unavailable("blob storage", &e).with_source(e))?);
        }
        Ok(h)
    }

    /// The bytes a session has received, read back from its chunks.
    fn chunk_bytes(&self, row: &UploadRow) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
        let kubo = self.kubo.clone();
        futures::stream::iter(Self::contributions(row))
            .then(move |(cid, len)| {
                let kubo = kubo.clone();
                async move { kubo.cat(&cid, 0, Some(len)).await.map_err(std::io::Error::other) }
            })
            .try_flatten()
    }

    /// `PUT …?digest=`: appends an optional last chunk, checks the digest and commits.
    #[allow(clippy::too_many_arguments)]
    pub async fn finish_upload<S>(
        &self,
        repo: &RepoName,
        id: &str,
        digest: &Digest,
        content_range: Option<(u64, u64)>,
        content_length: Option<u64>,
        body: S,
        origin: EventOrigin,
    ) -> Result<(), RegistryError>
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        let started = std::time::Instant::now();
        let id = upload_id(id)?;
        let (mut state, mut row) = self.open_session(id, repo).await?;
        if row.size == 0 && content_range.is_none() && content_length != Some(0) {
            // The whole blob in the `PUT` (`POST`, then `PUT` with the body, as a monolithic
            // push without `?digest=` on the `POST` goes).
            let r = self.store_whole(repo, digest, content_length, body, Some(id), origin).await;
            drop(state);
            return r;
        }
        if content_length != Some(0) {
            let before = row.size;
            let size = self.append(id, &row, &mut state, content_range, content_length, body).await?;
            if size as i64 != before {
                row = self.store.upload(id, repo).await?.ok_or_else(RegistryError::upload_unknown)?;
            }
        }
        let got = match (digest.algorithm(), state.hash.take()) {
            (Algorithm::Sha256, Some((n, h))) if n == row.size as u64 => h.finish(),
            (alg, _) => self.rehash(&row, alg).await?.finish(),
        };
        if &got != digest {
            drop(state);
            self.cancel(id).await?;
            return Err(digest_mismatch(digest, &got));
        }
        let (cid, holds_cid) = match row.chunks.as_slice() {
            [(_, _, cid)] => (cid.clone(), true),
            _ => match self.dag_from_chunks(&row).await? {
                Some(cid) => (cid, false),
                // Zero chunks (an empty blob), or chunks not on the chunker's boundaries (a
                // content-defined chunker, or a session begun before aligned chunks): add the
                // bytes again as one file.
                _ => (self.kubo.add(self.chunk_bytes(&row)).await?.cid, false),
            },
        };
        let kept = self.commit_blob(repo, digest, &cid, row.size, Some(FromSession { id, holds_cid }), origin).await?;
        if let Some(f) = state.fill.take() {
            f.finish_upload(&kept, digest, row.size as u64);
        }
        drop(state);
        tracing::info!(event = "blob_upload", repository = %repo, digest = %digest, ipfs_cid = %kept, size = row.size,
            duration_ms = started.elapsed().as_millis() as u64, "blob uploaded");
        Ok(())
    }

    /// `DELETE` of an upload, and the sweeper: drops the session and its chunks' pins.
    pub async fn cancel_upload(&self, repo: &RepoName, id: &str) -> Result<(), RegistryError> {
        let id = upload_id(id)?;
        self.store.upload(id, repo).await?.ok_or_else(RegistryError::upload_unknown)?;
        let lock = self.session(id);
        let _g = lock.lock().await;
        self.cancel(id).await
    }

    async fn cancel(&self, id: Uuid) -> Result<(), RegistryError> {
        let mut tx = self.store.begin().await?;
        let cids = Store::delete_upload(&mut tx, id).await?;
        tx.commit().await?;
        self.forget_session(id);
        if let Some(cids) = cids {
            metrics::gauge!("afreg_upload_sessions_open").decrement(1.0);
            for c in cids {
                self.release_cid(&c).await;
            }
        }
        Ok(())
    }

    /// Forgets the in-memory state of sessions that no longer exist: a region's processes share
    /// its sessions, so one that served a chunk keeps an entry that another process's `PUT`,
    /// `DELETE` or expiry ended. Entries in use (locked) are left to their request.
    async fn forget_ended_sessions(&self) -> Result<usize, RegistryError> {
        let idle: Vec<Uuid> = {
            let map = self.sessions.lock().unwrap();
            map.iter().filter(|(_, s)| s.try_lock().is_ok()).map(|(id, _)| *id).collect()
        };
        if idle.is_empty() {
            return Ok(0);
        }
        let live = self.store.existing_uploads(&idle).await?;
        let mut map = self.sessions.lock().unwrap();
        let before = map.len();
        for id in idle.iter().filter(|id| !live.contains(id)) {
            if map.get(id).is_some_and(|s| s.try_lock().is_ok()) {
                map.remove(id);
            }
        }
        metrics::gauge!("afreg_upload_sessions_in_memory").set(map.len() as f64);
        Ok(before - map.len())
    }

    /// Removes sessions untouched for longer than the configured age, and expired holds of
    /// blob commits whose outcome was unknown (releasing their pins unless a record applied),
    /// and forgets the in-memory state of sessions that ended elsewhere.
    pub async fn sweep_uploads(&self) -> Result<usize, RegistryError> {
        let stale = self.store.stale_uploads(std::time::Duration::from_secs(self.cfg.storage.upload_ttl_secs)).await?;
        for id in &stale {
            self.cancel(*id).await?;
            tracing::info!(event = "upload_expired", upload = %id, "removed a stale upload session");
        }
        for cid in self.store.take_expired_holds().await? {
            self.release_cid(&cid).await;
            tracing::info!(event = "hold_expired", ipfs_cid = %cid, "released the hold of a blob commit with an unknown outcome");
        }
        self.forget_ended_sessions().await?;
        Ok(stale.len())
    }
}

fn digest_mismatch(want: &Digest, got: &Digest) -> RegistryError {
    RegistryError::new(
        ErrorCode::DigestInvalid,
        format!("digest mismatch: the client said {want}, the content is {got}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("0-99"), Some((0, 99)));
        assert_eq!(parse_content_range("bytes 100-199/*"), Some((100, 199)));
        assert_eq!(parse_content_range("9-1"), None);
        assert_eq!(parse_content_range("x"), None);
        // Found by fuzz/ (target range): the length of 0-(2^64-1) overflows a u64.
        assert_eq!(parse_content_range("0-18446744073709551615"), None);
        assert_eq!(parse_content_range("1-18446744073709551615"), Some((1, u64::MAX)));
        assert_eq!(parse_content_range("0-18446744073709551614"), Some((0, u64::MAX - 1)));
    }
}
