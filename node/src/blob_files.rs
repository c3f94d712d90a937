//! Blob bytes as plain files on the region's volume. A pull through Kubo's gateway copies every
//! byte about five times as Kubo walks the blob's UnixFS DAG (docs/bench/profile.md); a pull of
//! a file this region holds is served from the page cache instead: the file is mapped and the
//! socket writes straight from the mapping. Kubo stays the store of record (pins, replication,
//! the swarm); a file is a verified copy that may be missing at any time.
//!
//! - **Layout** `<dir>/<shard>/<cid>/<algorithm>-<hex>`: the CID names what goes when its pin
//!   goes ([`BlobFiles::remove_cid`], on delete and GC), the digest what the scrub checks.
//! - **Filled while the bytes pass anyway**, never slowing the request: a monolithic upload
//!   (whose digest the upload itself verifies) and a whole-blob pull from Kubo (hashed as it is
//!   written). A writer thread takes the bytes from a queue; if the disk falls behind by
//!   [`MAX_QUEUED`], the fill is given up and the request goes on.
//! - **Visible only when whole**: written to a temporary file, hashed, fsynced, renamed. The
//!   temporary file is `flock`ed while it is written, so one fill per blob runs across every
//!   `afreg serve` on the volume, and one whose process died is seen unlocked and removed at
//!   start (a restart mid-fill serves nothing partial).
//! - **Checked when served**: a file whose size is not the blob's is removed, never served; a
//!   scrub re-hashes every file at a bounded rate and removes any whose bytes no longer match.
//! - **Bounded** by `storage.blob_cache_bytes`: the least recently used files are removed
//!   first. Each process keeps its own recency order (what it filled, served or found at start).
//!
//! Hand-written because no crate keeps a verified, size-bounded, multi-process file cache; the
//! parts come from crates: `lru` for the order, `memmap2` for the mapping, `nix` for `flock`.

use std::collections::HashSet;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{Stream, TryStreamExt as _};
use nix::fcntl::{Flock, FlockArg};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::hashing::Hasher;
use crate::oci::Digest;

/// A fill whose writer is this far behind the request is given up.
pub const MAX_QUEUED: u64 = 64 << 20;
/// Fills running at once in one process, pulls' and uploads' alike (each holds a blocking
/// thread while it runs, an upload session's between its requests too); past that, a miss
/// streams from Kubo and an upload goes on without filling.
const MAX_FILLS: usize = 16;
/// The mapping a pull reads through is this big at a time; the file's size is checked before
/// each window is mapped.
const WINDOW: u64 = 2 << 20;
/// The pieces of a window handed to the socket.
const PIECE: usize = 1 << 20;
const TMP: &str = "tmp";

/// Figures for `/status`, `afreg status` and `/metrics`.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct BlobFilesStatus {
    pub bytes: u64,
    pub files: u64,
    pub capacity_bytes: u64,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub fills: u64,
    /// Files removed because their size or bytes no longer matched.
    pub corrupt: u64,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    fills: AtomicU64,
    corrupt: AtomicU64,
}

struct Index {
    /// File → its size, least recently used first.
    order: lru::LruCache<PathBuf, u64>,
    bytes: u64,
}

pub struct BlobFiles {
    dir: PathBuf,
    capacity: u64,
    index: Mutex<Index>,
    /// Fills running in this process (by final path).
    filling: Mutex<HashSet<PathBuf>>,
    /// Writer threads running (at most [`MAX_FILLS`]).
    running: AtomicUsize,
    counters: Counters,
}

impl BlobFiles {
    /// Opens the directory (creating it), removes what crashed fills left, and indexes the
    /// files there, oldest first. `capacity` 0 turns the files off (`None`).
    pub fn open(dir: &Path, capacity: u64) -> std::io::Result<Option<Arc<BlobFiles>>> {
        if capacity == 0 {
            return Ok(None);
        }
        std::fs::create_dir_all(dir.join(TMP))?;
        for e in std::fs::read_dir(dir.join(TMP))? {
            let p = e?.path();
            // Unlocked: its writer is gone. Locked: another process is filling it now.
            if let Ok(f) = File::options().write(true).open(&p) {
                if let Ok(locked) = Flock::lock(f, FlockArg::LockExclusiveNonblock) {
                    let _ = std::fs::remove_file(&p);
                    drop(locked);
                }
            }
        }
        let mut found = vec![];
        for shard in std::fs::read_dir(dir)? {
            let shard = shard?;
            if shard.file_name() == TMP || !shard.file_type()?.is_dir() {
                continue;
            }
            for cid in std::fs::read_dir(shard.path())? {
                for f in std::fs::read_dir(cid?.path())? {
                    let f = f?;
                    let m = f.metadata()?;
                    found.push((m.modified().ok(), f.path(), m.len()));
                }
            }
        }
        found.sort();
        let files = Arc::new(BlobFiles {
            dir: dir.to_owned(),
            capacity,
            index: Mutex::new(Index { order: lru::LruCache::unbounded(), bytes: 0 }),
            filling: Default::default(),
            running: AtomicUsize::new(0),
            counters: Default::default(),
        });
        for (_, path, len) in found {
            files.insert(path, len);
        }
        files.publish();
        Ok(Some(files))
    }

    fn path(&self, cid: &str, digest: &Digest) -> PathBuf {
        let shard = &cid[cid.len().saturating_sub(2)..];
        let name = digest.as_str().replace(':', "-");
        self.dir.join(shard).join(cid).join(name)
    }

    /// Records a file, then removes the least recently used ones past the capacity.
    fn insert(&self, path: PathBuf, len: u64) {
        let evicted = {
            let mut ix = self.index.lock().unwrap();
            if let Some(old) = ix.order.put(path, len) {
                ix.bytes -= old;
            }
            ix.bytes += len;
            let mut evicted = vec![];
            while ix.bytes > self.capacity {
                let Some((p, n)) = ix.order.pop_lru() else { break };
                ix.bytes -= n;
                evicted.push(p);
            }
            evicted
        };
        for p in evicted {
            self.counters.evictions.fetch_add(1, Ordering::Relaxed);
            remove_file_and_dir(&p);
        }
    }

    fn forget(&self, path: &Path) {
        let mut ix = self.index.lock().unwrap();
        if let Some(n) = ix.order.pop(path) {
            ix.bytes -= n;
        }
    }

    /// The blob's bytes (or those of `range`, inclusive) from its file, if this region holds
    /// one of the right size. A file of another size is removed.
    pub fn serve(
        &self,
        cid: &str,
        digest: &Digest,
        size: u64,
        range: Option<(u64, u64)>,
    ) -> Option<impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static> {
        let path = self.path(cid, digest);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(_) => {
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
        if len != size {
            tracing::warn!(event = "blob_file_corrupt", path = %path.display(), size, found = len,
                "a blob file has the wrong size; removed, serving from Kubo");
            self.counters.corrupt.fetch_add(1, Ordering::Relaxed);
            self.counters.misses.fetch_add(1, Ordering::Relaxed);
            self.forget(&path);
            let _ = std::fs::remove_file(&path);
            return None;
        }
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
        {
            let mut ix = self.index.lock().unwrap();
            if ix.order.get(&path).is_none() {
                // Filled by another process on the volume: this one counts it from now on.
                drop(ix);
                self.insert(path, len);
            }
        }
        let (start, end) = range.unwrap_or((0, size.saturating_sub(1)));
        let length = if size == 0 { 0 } else { end - start + 1 };
        Some(mapped(Arc::new(file), start, length, size))
    }

    /// Starts filling the blob's file from bytes the caller will pass to [`Fill::offer`] (a
    /// whole-blob pull from Kubo), unless the file exists, another fill of it runs (here or in
    /// another process), or too many run. The writer hashes the bytes and keeps them only if
    /// they match `digest`.
    pub fn fill(self: &Arc<Self>, cid: &str, digest: &Digest, size: u64) -> Option<Fill> {
        let path = self.path(cid, digest);
        if path.exists() {
            return None;
        }
        {
            let mut filling = self.filling.lock().unwrap();
            if !filling.insert(path.clone()) {
                return None;
            }
        }
        let name = format!("{cid}.{}", digest.as_str().replace(':', "-"));
        let fill = self.start(name, Some(digest), Some((path.clone(), size)));
        if fill.is_none() {
            self.filling.lock().unwrap().remove(&path);
        }
        fill
    }

    /// Starts filling a file from an upload's bytes, whose CID and digest (and so the file's
    /// name) are known only once the upload has them all and has checked them: finished with
    /// [`Fill::finish_upload`]. A session's fill goes on across its `PATCH`es.
    pub fn fill_upload(self: &Arc<Self>) -> Option<Fill> {
        self.start(format!("upload-{}", uuid::Uuid::new_v4()), None, None)
    }

    /// The temporary file `name`, locked, and the writer thread over it; with `check`, the
    /// writer hashes the bytes and keeps them only if they match.
    fn start(self: &Arc<Self>, name: String, check: Option<&Digest>, target: Option<(PathBuf, u64)>) -> Option<Fill> {
        let reserved =
            self.running.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < MAX_FILLS).then_some(n + 1));
        if reserved.is_err() {
            return None;
        }
        let tmp = self.dir.join(TMP).join(name);
        let opened = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&tmp)
            .ok()
            .and_then(|f| Flock::lock(f, FlockArg::LockExclusiveNonblock).ok())
            // The path must still name the file locked: a fill that just finished renamed it.
            .filter(|f| same_file(f, &tmp));
        let Some(file) = opened else {
            self.running.fetch_sub(1, Ordering::AcqRel);
            return None;
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            files: self.clone(),
            file,
            tmp,
            target,
            hasher: check.map(|d| (Hasher::new(d.algorithm()), d.clone())),
            queued: queued.clone(),
        };
        tokio::task::spawn_blocking(move || writer.run(rx));
        Some(Fill { tx: Some(tx), queued })
    }

    /// Removes the files of a CID whose pin went (a blob deleted or collected).
    pub fn remove_cid(&self, cid: &str) {
        let dir = self.dir.join(&cid[cid.len().saturating_sub(2)..]).join(cid);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                self.forget(&e.path());
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
        self.publish();
    }

    /// One pass over the files this process knows: each is hashed, at most `bytes_per_second`
    /// of them a second, and removed if its bytes do not match its name.
    pub async fn scrub(self: &Arc<Self>, bytes_per_second: u64) {
        let paths: Vec<PathBuf> = self.index.lock().unwrap().order.iter().map(|(p, _)| p.clone()).collect();
        for path in paths {
            let files = self.clone();
            let p = path.clone();
            let started = std::time::Instant::now();
            let checked = tokio::task::spawn_blocking(move || files.check(&p)).await;
            if let Ok(Some(n)) = checked {
                let due = std::time::Duration::from_secs_f64(n as f64 / bytes_per_second.max(1) as f64);
                tokio::time::sleep(due.saturating_sub(started.elapsed())).await;
            }
        }
    }

    /// Hashes one file; removes it if its bytes are not what its name says. The bytes read.
    fn check(&self, path: &Path) -> Option<u64> {
        let name = path.file_name()?.to_str()?.replacen('-', ":", 1);
        let want: Digest = name.parse().ok()?;
        let mut f = File::open(path).ok()?;
        let mut h = Hasher::new(want.algorithm());
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            match std::io::Read::read(&mut f, &mut buf) {
                Ok(0) => break,
                Ok(k) => {
                    h.update(&buf[..k]);
                    n += k as u64;
                }
                Err(_) => return None,
            }
        }
        if h.finish() != want {
            tracing::warn!(event = "blob_file_corrupt", path = %path.display(),
                "a blob file's bytes no longer match its digest; removed");
            self.counters.corrupt.fetch_add(1, Ordering::Relaxed);
            self.forget(path);
            remove_file_and_dir(path);
            self.publish();
        }
        Some(n)
    }

    pub fn status(&self) -> BlobFilesStatus {
        let (bytes, files) = {
            let ix = self.index.lock().unwrap();
            (ix.bytes, ix.order.len() as u64)
        };
        let c = &self.counters;
        BlobFilesStatus {
            bytes,
            files,
            capacity_bytes: self.capacity,
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            evictions: c.evictions.load(Ordering::Relaxed),
            fills: c.fills.load(Ordering::Relaxed),
            corrupt: c.corrupt.load(Ordering::Relaxed),
        }
    }

    /// Sets the `/metrics` figures from the counters.
    pub fn publish(&self) {
        let s = self.status();
        metrics::gauge!("afreg_blob_files_bytes").set(s.bytes as f64);
        metrics::gauge!("afreg_blob_files").set(s.files as f64);
        metrics::counter!("afreg_blob_file_reads_total", "result" => "hit").absolute(s.hits);
        metrics::counter!("afreg_blob_file_reads_total", "result" => "miss").absolute(s.misses);
        metrics::counter!("afreg_blob_files_evictions_total").absolute(s.evictions);
        metrics::counter!("afreg_blob_files_fills_total").absolute(s.fills);
        metrics::counter!("afreg_blob_files_corrupt_total").absolute(s.corrupt);
    }
}

fn same_file(f: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (f.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Removes a file, and its CID's directory if that is now empty.
fn remove_file_and_dir(p: &Path) {
    let _ = std::fs::remove_file(p);
    if let Some(d) = p.parent() {
        let _ = std::fs::remove_dir(d);
    }
}

/// `length` bytes from `start`, through mappings of [`WINDOW`] bytes, each mapped only after
/// the file's size is checked again (a file is never changed in place by afreg; this narrows
/// what an outside truncation could reach).
fn mapped(
    file: Arc<File>,
    start: u64,
    length: u64,
    size: u64,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    futures::stream::try_unfold((start, length), move |(pos, left)| {
        let file = file.clone();
        async move {
            if left == 0 {
                return Ok::<_, std::io::Error>(None);
            }
            let n = left.min(WINDOW - pos % WINDOW);
            let window = tokio::task::spawn_blocking(move || -> std::io::Result<Bytes> {
                if file.metadata()?.len() != size {
                    return Err(std::io::Error::other("the blob file changed size while it was read"));
                }
                // SAFETY: afreg never writes a blob file once it is renamed into place (a new
                // fill replaces the name, eviction unlinks it), and the size was checked.
                let map = unsafe { memmap2::MmapOptions::new().offset(pos).len(n as usize).populate().map(&*file)? };
                Ok(Bytes::from_owner(map))
            })
            .await
            .map_err(std::io::Error::other)??;
            Ok(Some((futures::stream::iter(pieces(window).map(Ok)), (pos + n, left - n))))
        }
    })
    .try_flatten()
}

fn pieces(b: Bytes) -> impl Iterator<Item = Bytes> {
    (0..b.len()).step_by(PIECE).map(move |i| b.slice(i..(i + PIECE).min(b.len())))
}

/// The sending half of a fill: bytes in order, then [`Fill::finish`]. Dropped unfinished (an
/// upload that failed, a client that went away), the temporary file is removed.
pub struct Fill {
    tx: Option<mpsc::UnboundedSender<Piece>>,
    queued: Arc<AtomicU64>,
}

enum Piece {
    Bytes(Bytes),
    /// Everything was sent; for an upload, its CID, digest (verified) and size.
    End(Option<(String, Digest, u64)>),
}

impl Fill {
    /// Queues a copy (a reference count) of the bytes; gives the fill up if the writer is
    /// [`MAX_QUEUED`] behind.
    pub fn offer(&mut self, b: &Bytes) {
        let Some(tx) = &self.tx else { return };
        let q = self.queued.fetch_add(b.len() as u64, Ordering::Relaxed);
        if q > MAX_QUEUED || tx.send(Piece::Bytes(b.clone())).is_err() {
            self.tx = None;
        }
    }

    /// All bytes of a pull were offered.
    pub fn finish(mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Piece::End(None));
        }
    }

    /// All bytes of an upload were offered, its digest matched, and the registry keeps it as
    /// `cid`.
    pub fn finish_upload(mut self, cid: &str, digest: &Digest, size: u64) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Piece::End(Some((cid.to_owned(), digest.clone(), size))));
        }
    }
}

struct Writer {
    files: Arc<BlobFiles>,
    file: Flock<File>,
    tmp: PathBuf,
    /// The file's path and size, when known at the start (a pull).
    target: Option<(PathBuf, u64)>,
    /// For a pull: the running hash and the digest it must come to.
    hasher: Option<(Hasher, Digest)>,
    queued: Arc<AtomicU64>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Piece>) {
        let preset = self.target.clone();
        match self.write(&mut rx) {
            Ok(Some((path, size))) => {
                self.files.counters.fills.fetch_add(1, Ordering::Relaxed);
                self.files.insert(path, size);
            }
            Ok(None) => {
                let _ = std::fs::remove_file(&self.tmp);
            }
            Err(e) => {
                tracing::warn!(event = "blob_file_fill_failed", file = %self.tmp.display(), error = %e,
                    "could not write a blob file; pulls of it go on through Kubo");
                let _ = std::fs::remove_file(&self.tmp);
            }
        }
        if let Some((path, _)) = preset {
            self.files.filling.lock().unwrap().remove(&path);
        }
        self.files.running.fetch_sub(1, Ordering::AcqRel);
        self.files.publish();
    }

    /// Writes what comes; the file's path and size once it is renamed into place.
    fn write(&mut self, rx: &mut mpsc::UnboundedReceiver<Piece>) -> std::io::Result<Option<(PathBuf, u64)>> {
        self.file.set_len(0)?;
        let mut n = 0u64;
        let upload = loop {
            match rx.blocking_recv() {
                Some(Piece::Bytes(b)) => {
                    self.queued.fetch_sub(b.len() as u64, Ordering::Relaxed);
                    self.file.write_all(&b)?;
                    if let Some((h, _)) = &mut self.hasher {
                        h.update(&b);
                    }
                    n += b.len() as u64;
                }
                Some(Piece::End(upload)) => break upload,
                // Given up, or the request failed.
                None => return Ok(None),
            }
        };
        let (path, size) = match (upload, self.target.take()) {
            (Some((cid, digest, size)), _) => (self.files.path(&cid, &digest), size),
            (None, Some(t)) => t,
            (None, None) => return Ok(None),
        };
        if let Some((h, want)) = self.hasher.take() {
            if h.finish() != want {
                return Ok(None);
            }
        }
        if n != size {
            return Ok(None);
        }
        self.file.sync_all()?;
        std::fs::create_dir_all(path.parent().expect("a blob file has a directory"))?;
        std::fs::rename(&self.tmp, &path)?;
        Ok(Some((path, size)))
    }
}
