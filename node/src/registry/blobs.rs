//! Reading and deleting blobs, and cross-repository mounts. Bytes come from Kubo as a stream;
//! a blob is served only through repositories that uploaded or mounted it.

use bytes::Bytes;
use futures::{Stream, StreamExt as _};

use super::Registry;
use crate::oci::{Digest, ErrorCode, RegistryError, RepoName};
use crate::store::BlobRow;
use afreg_replication::{Applied, Command};

/// A parsed `Range: bytes=…` request, resolved against the blob's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    /// Inclusive.
    pub end: u64,
}

/// A `Range` no byte of the blob satisfies: answered 416 with `Content-Range: bytes */size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsatisfiable;

/// Resolves a single-range `Range` header. `Ok(None)` means the whole blob (also for several
/// ranges, which RFC 9110 section 14.2 lets a server answer with the whole representation);
/// `Err(Unsatisfiable)` means unsatisfiable (416). A unit other than `bytes` is ignored (RFC 9110
/// section 14.2: the whole blob).
pub fn parse_range(header: &str, size: u64) -> Result<Option<ByteRange>, Unsatisfiable> {
    let Some(spec) = header.trim().strip_prefix("bytes=") else { return Ok(None) };
    if spec.contains(',') {
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(Unsatisfiable)?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| Unsatisfiable)?;
            if n == 0 || size == 0 {
                return Err(Unsatisfiable);
            }
            (size.saturating_sub(n), size - 1)
        }
        (s, "") => (s.parse().map_err(|_| Unsatisfiable)?, size.saturating_sub(1)),
        (s, e) => {
            let (s, e): (u64, u64) = (s.parse().map_err(|_| Unsatisfiable)?, e.parse().map_err(|_| Unsatisfiable)?);
            (s, e.min(size.saturating_sub(1)))
        }
    };
    if start >= size || start > end {
        return Err(Unsatisfiable);
    }
    Ok(Some(ByteRange { start, end }))
}

impl Registry {
    pub async fn blob_meta(&self, repo: &RepoName, digest: &Digest) -> Result<BlobRow, RegistryError> {
        self.store.repo_blob(repo, digest).await?.ok_or_else(|| RegistryError::blob_unknown(digest))
    }

    /// Streams a blob, or the part of it in `range`: from its file when this region holds
    /// one, else from Kubo, filling the file as a whole-blob read goes (see [`crate::blob_files`]).
    pub async fn blob_stream(
        &self,
        digest: &Digest,
        blob: &BlobRow,
        range: Option<ByteRange>,
    ) -> Result<impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static, RegistryError> {
        let size = blob.size as u64;
        if let Some(files) = &self.files {
            if let Some(s) = files.serve(&blob.cid, digest, size, range.map(|r| (r.start, r.end))) {
                return Ok(s.left_stream());
            }
        }
        let (offset, length) = match range {
            Some(r) => (r.start, Some(r.end - r.start + 1)),
            None => (0, None),
        };
        let from_kubo = self.kubo.cat(&blob.cid, offset, length).await?;
        let fill = match (&self.files, range) {
            (Some(files), None) => files.fill(&blob.cid, digest, size),
            _ => None,
        };
        Ok(tee(from_kubo, fill, size).right_stream())
    }

    /// Removes the blob from `repo`; the bytes are unpinned once no repository links them.
    pub async fn delete_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        origin: afreg_replication::EventOrigin,
    ) -> Result<(), RegistryError> {
        let cmd = Command::UnlinkBlob { repo: repo.to_string(), digest: digest.to_string() };
        match self.replicate(super::with_origin(origin, cmd)).await? {
            Applied::NotFound => Err(RegistryError::blob_unknown(digest)),
            orphan => {
                // Every region's pinner unpins an orphaned CID; this region does it at once.
                if let Applied::BlobUnlinked { orphaned_cid: Some(cid) } = orphan {
                    self.release_cid(&cid).await;
                }
                tracing::info!(event = "blob_delete", repository = %repo, digest = %digest, "blob deleted");
                Ok(())
            }
        }
    }

    /// Links a blob from `from` into `repo` if `from` has it. False means the client must
    /// upload it instead.
    pub async fn mount(
        &self,
        repo: &RepoName,
        from: &RepoName,
        digest: &Digest,
        origin: afreg_replication::EventOrigin,
    ) -> Result<bool, RegistryError> {
        if self.store.repo_blob(from, digest).await?.is_none() {
            return Ok(false);
        }
        let cmd = Command::LinkBlob { repo: repo.to_string(), digest: digest.to_string(), at: super::now_millis() };
        let linked = self.replicate(self.blob_event(origin, cmd)).await? != Applied::NotFound;
        if linked {
            tracing::info!(event = "blob_mount", repository = %repo, from = %from, digest = %digest, "blob mounted");
        }
        Ok(linked)
    }
}

/// Passes a stream of a `size`-byte blob on, offering each piece to `fill`, and finishing it
/// with the last byte (unverified: the fill's writer hashes the bytes). The HTTP server stops
/// polling a body once its `Content-Length` is sent, so the end is counted, not awaited. A
/// stream that fails or is dropped midway drops the fill, which then keeps nothing.
pub fn tee<S>(
    stream: S,
    fill: Option<crate::blob_files::Fill>,
    size: u64,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    let mut fill = fill;
    let mut seen = 0u64;
    if size == 0 {
        if let Some(f) = fill.take() {
            f.finish();
        }
    }
    stream.map(move |piece| {
        match &piece {
            Ok(b) => {
                if let Some(f) = &mut fill {
                    f.offer(b);
                }
                seen += b.len() as u64;
                if seen >= size {
                    if let Some(f) = fill.take() {
                        f.finish();
                    }
                }
            }
            Err(_) => fill = None,
        }
        piece
    })
}

/// 416 for a `Range` that cannot be served.
pub fn range_not_satisfiable() -> RegistryError {
    RegistryError::new(ErrorCode::RangeNotSatisfiable, "requested range is not satisfiable")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Ok(Some(ByteRange { start: 0, end: 9 })));
        assert_eq!(parse_range("bytes=90-", 100), Ok(Some(ByteRange { start: 90, end: 99 })));
        assert_eq!(parse_range("bytes=-10", 100), Ok(Some(ByteRange { start: 90, end: 99 })));
        assert_eq!(parse_range("bytes=50-1000", 100), Ok(Some(ByteRange { start: 50, end: 99 })));
        assert_eq!(parse_range("bytes=100-", 100), Err(Unsatisfiable));
        assert_eq!(parse_range("bytes=5-2", 100), Err(Unsatisfiable));
        assert_eq!(parse_range("bytes=0-1,3-4", 100), Ok(None), "several ranges: the whole blob");
        assert_eq!(parse_range("items=0-1", 100), Ok(None), "an unknown unit is ignored");
    }
}
