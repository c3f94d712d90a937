//! A blob's bytes between one writer and one reader that runs at its own pace: the writer
//! appends to an unlinked temporary file and never waits for the reader, which follows the
//! writer's length and reads what is there. The pull-through cache feeds its client at the
//! upstream's speed this way while its store (Kubo's `add`, the blob file) takes the same bytes
//! more slowly; memory holds only the pieces in flight, the disk at most the one blob (and it
//! goes with the last handle). tokio has no such "follow a growing file" stream, nor does a
//! crate we trust for it, so it is written here: a `watch` of the length, positional reads.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

/// The most one read hands the reader.
const READ: u64 = 1 << 20;

/// How far the writer has got, and how it ended.
#[derive(Debug, Clone, Default)]
struct Progress {
    written: u64,
    /// `Some` once the writer is done: `Ok` at the end of the bytes, `Err` with why it broke.
    end: Option<Result<(), String>>,
}

/// The writing end.
pub struct Spool {
    file: Arc<File>,
    progress: watch::Sender<Progress>,
}

impl Spool {
    /// A spool in `dir` (a temporary file, unlinked at once), and the stream that reads it.
    pub fn create(
        dir: &Path,
    ) -> std::io::Result<(Spool, impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static)> {
        let file = Arc::new(tempfile::tempfile_in(dir)?);
        let (progress, seen) = watch::channel(Progress::default());
        let reader = futures::stream::unfold((file.clone(), seen, 0u64), read_next);
        Ok((Spool { file, progress }, reader))
    }

    /// Appends `piece`; the reader may take it from now on.
    pub async fn append(&self, piece: Bytes) -> std::io::Result<()> {
        let at = self.progress.borrow().written;
        let file = self.file.clone();
        let len = piece.len() as u64;
        tokio::task::spawn_blocking(move || file.write_all_at(&piece, at)).await.map_err(std::io::Error::other)??;
        self.progress.send_modify(|p| p.written += len);
        Ok(())
    }

    /// Ends the bytes: the reader ends once it has read them all, or, with `Err`, fails.
    pub fn finish(self, end: Result<(), String>) {
        self.progress.send_modify(|p| p.end = Some(end));
    }
}

impl Drop for Spool {
    /// A writer gone without `finish` (its task cancelled) breaks the reader rather than
    /// leaving it waiting.
    fn drop(&mut self) {
        self.progress.send_if_modified(|p| {
            let unfinished = p.end.is_none();
            if unfinished {
                p.end = Some(Err("the spool's writer went away".into()));
            }
            unfinished
        });
    }
}

type ReadState = (Arc<File>, watch::Receiver<Progress>, u64);

/// The next piece at `at`, waiting for the writer when it has nothing more yet.
async fn read_next((file, mut seen, at): ReadState) -> Option<(Result<Bytes, std::io::Error>, ReadState)> {
    loop {
        let now = seen.borrow_and_update().clone();
        if now.written > at {
            let n = (now.written - at).min(READ);
            let f = file.clone();
            let read = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; n as usize];
                f.read_exact_at(&mut buf, at).map(|_| Bytes::from(buf))
            })
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
            return Some(match read {
                Ok(piece) => (Ok(piece), (file, seen, at + n)),
                // After an error the stream ends: nothing is read past a hole.
                Err(e) => (Err(e), (file, seen, u64::MAX)),
            });
        }
        match now.end {
            Some(Ok(())) => return None,
            Some(Err(why)) if at != u64::MAX => return Some((Err(std::io::Error::other(why)), (file, seen, u64::MAX))),
            Some(Err(_)) => return None,
            // The writer drops only after `finish` or through `Drop`, which both mark the end.
            None => {
                if seen.changed().await.is_err() {
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn the_reader_gets_every_byte_in_order_at_its_own_pace() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, reader) = Spool::create(dir.path()).unwrap();
        let want: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let pieces: Vec<Bytes> = want.chunks(70_000).map(Bytes::copy_from_slice).collect();
        let writer = tokio::spawn(async move {
            for p in pieces {
                spool.append(p).await.unwrap();
            }
            spool.finish(Ok(()));
        });
        // The writer finishes without waiting for the reader.
        writer.await.unwrap();
        let got: Vec<Bytes> = reader.map(|r| r.unwrap()).collect().await;
        assert_eq!(got.concat(), want);
        assert!(got.iter().all(|p| p.len() as u64 <= READ));
    }

    #[tokio::test]
    async fn a_broken_writer_breaks_the_reader_after_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, reader) = Spool::create(dir.path()).unwrap();
        spool.append(Bytes::from_static(b"abc")).await.unwrap();
        spool.finish(Err("upstream went away".into()));
        let got: Vec<_> = reader.collect().await;
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].as_ref().unwrap().as_ref(), b"abc");
        assert!(got[1].as_ref().unwrap_err().to_string().contains("upstream went away"));

        let (spool, reader) = Spool::create(dir.path()).unwrap();
        drop(spool);
        let got: Vec<_> = reader.collect().await;
        assert!(got.len() == 1 && got[0].is_err(), "a writer dropped unfinished is an error");
    }
}
