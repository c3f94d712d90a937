//! Cross-region pinning: every region keeps every blob CID of the replicated `blobs` table
//! pinned in its own Kubo, fetching the bytes over IPFS from the region that has them, and
//! unpins CIDs whose blob was deleted or collected.
//!
//! The queue is the region-local `pins` table: triggers on `blobs` give every blob CID a row
//! there (`wanted` until pinned), whichever path writes `blobs` (an applied entry, a snapshot
//! install), so it survives restarts and installs, and a pass reads only the rows still to
//! do, not every blob the region holds. Each pin has
//! a timeout (Kubo's `pin/add` waits forever for content no peer has); a failed pin is retried
//! with exponential backoff. The pinner wakes when applied entries change the tables, when a
//! pin that was not due becomes due (`pins::next_due`: a retry, or an upload's hold ending),
//! and keeps its Kubo peered with every other region's Kubo so that blobs not pinned here yet are
//! still served, fetched from the peers through the local Kubo.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::store::{pins, regions};
use crate::NodeId;

/// Timeout of the second `pin/add` that confirms a pin under the CID's lock; the bytes are
/// local by then, so it only walks the DAG.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the pin gauges of `/metrics` are counted again.
const REPORT_EVERY: Duration = Duration::from_secs(2);

/// Why a reconcile pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError<E: std::fmt::Display> {
    #[error("listing Kubo's pins: {0}")]
    Ipfs(E),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// What the pinner needs from the region's Kubo.
pub trait Ipfs: Send + Sync + 'static {
    /// What a failed call reports (logged, and kept as the pin's last error).
    type Error: std::fmt::Display + Send;
    /// Pins `cid` recursively, fetching what is missing from connected peers; gives up after
    /// `timeout`.
    fn pin(&self, cid: &str, timeout: Duration) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// Removes the recursive pin (not pinned is success).
    fn unpin(&self, cid: &str) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// Keeps a connection to the peer at these multiaddrs (with `/p2p/<id>`).
    fn peer(&self, addrs: &[String]) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// Every CID with a recursive pin.
    fn pinned(&self) -> impl Future<Output = Result<Vec<String>, Self::Error>> + Send;
}

#[derive(Debug, Clone)]
pub struct PinnerOptions {
    /// Timeout of one `pin/add`.
    pub pin_timeout: Duration,
    /// Longest wait between retries of a failing pin.
    pub max_backoff: Duration,
    /// Pins in flight at once.
    pub concurrency: usize,
    /// How often Kubo's pins are reconciled with what the region needs (see [`reconcile`]).
    pub reconcile_every: Duration,
}

/// Runs until `stop`: pins what is due, unpins orphans, keeps peers connected.
pub async fn run<I: Ipfs>(
    pool: PgPool,
    me: NodeId,
    ipfs: Arc<I>,
    mut changed: tokio::sync::watch::Receiver<u64>,
    opts: PinnerOptions,
    stop: CancellationToken,
) {
    let mut peered: BTreeSet<String> = BTreeSet::new();
    let mut last_peering = std::time::Instant::now() - Duration::from_secs(3600);
    let mut last_reconcile = std::time::Instant::now();
    let mut suspects: BTreeSet<String> = BTreeSet::new();
    let mut last_report: Option<std::time::Instant> = None;
    loop {
        if last_reconcile.elapsed() >= opts.reconcile_every {
            if let Err(e) = reconcile(&pool, ipfs.as_ref(), &mut suspects).await {
                tracing::warn!(event = "pin_reconcile_failed", error = %e, "could not reconcile Kubo's pins");
            }
            last_reconcile = std::time::Instant::now();
        }
        // Every pass dials regions not dialed yet (one just announced itself); every 30 s all
        // of them again, in case a peer restarted. A pin must never wait for a peer it could
        // have dialed already.
        let refresh = last_peering.elapsed() > Duration::from_secs(30);
        peer_regions(&pool, me, ipfs.as_ref(), &mut peered, refresh).await;
        if refresh {
            last_peering = std::time::Instant::now();
        }
        changed.borrow_and_update();
        let busy = match pass(&pool, me, &ipfs, &opts).await {
            Ok(n) => n > 0,
            Err(e) => {
                tracing::warn!(event = "pinner_failed", error = %e, "pinner pass failed; retrying");
                false
            }
        };
        // The figures count every pin (work in proportion to the blobs held), so at most once
        // every REPORT_EVERY, not once a pass (a pass per push).
        if last_report.is_none_or(|t| t.elapsed() >= REPORT_EVERY) {
            report(&pool).await;
            last_report = Some(std::time::Instant::now());
        }
        if busy {
            continue;
        }
        let wait = match pins::next_due(&pool).await {
            Ok(Some(wait)) => wait.min(Duration::from_secs(30)),
            _ => Duration::from_secs(30),
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = changed.changed() => {}
            _ = tokio::time::sleep(wait.max(Duration::from_millis(50))) => {}
        }
    }
}

/// One round: unpin orphans, then pin a batch of due CIDs. Returns how many pins it tried.
async fn pass<I: Ipfs>(pool: &PgPool, me: NodeId, ipfs: &Arc<I>, opts: &PinnerOptions) -> Result<usize, sqlx::Error> {
    for cid in pins::orphans(pool, 256).await? {
        let mut tx = pool.begin().await?;
        pins::lock_cid(&mut tx, &cid).await?;
        if !pins::cid_in_use(&mut tx, &cid).await? {
            if let Err(e) = ipfs.unpin(&cid).await {
                tracing::warn!(event = "unpin_failed", ipfs_cid = %cid, error = %e, "could not unpin a deleted blob");
                continue;
            }
            tracing::info!(event = "blob_unpinned", ipfs_cid = %cid, "unpinned a deleted blob");
        }
        pins::forget(&mut tx, &cid).await?;
        tx.commit().await?;
    }
    let jobs = pins::due(pool, (opts.concurrency * 4) as i64).await?;
    let n = jobs.len();
    let results: Vec<Result<(), sqlx::Error>> = futures::stream::iter(jobs)
        .map(|job| pin_one(pool, me, ipfs, opts, job))
        .buffer_unordered(opts.concurrency.max(1))
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>, _>>()?;
    Ok(n)
}

async fn pin_one<I: Ipfs>(
    pool: &PgPool,
    me: NodeId,
    ipfs: &Arc<I>,
    opts: &PinnerOptions,
    job: pins::PinJob,
) -> Result<(), sqlx::Error> {
    let started = std::time::Instant::now();
    let remote = job.origin_region.is_some_and(|o| o as u64 != me);
    // The fetch runs without the CID's lock (it may take minutes); the record is then written
    // under the lock, after confirming the pin there: an unpin of a deleted blob may have
    // slipped in meanwhile, and a re-push may have brought the blob back since.
    let fetched = tokio::select! {
        r = ipfs.pin(&job.cid, opts.pin_timeout) => Some(r),
        () = no_longer_needed(pool, &job.cid) => None,
    };
    let Some(fetched) = fetched else {
        // Deleted while it was being fetched (its bytes may be gone from every region): the
        // fetch is dropped, which cancels Kubo's pin/add.
        tracing::info!(event = "pin_abandoned", ipfs_cid = %job.cid, "stopped fetching a blob that was deleted meanwhile");
        return Ok(());
    };
    let pinned = match fetched {
        Ok(()) => {
            let mut tx = pool.begin().await?;
            pins::lock_cid(&mut tx, &job.cid).await?;
            let r = if pins::cid_in_use(&mut tx, &job.cid).await? {
                match ipfs.pin(&job.cid, CONFIRM_TIMEOUT).await {
                    Ok(()) => {
                        pins::mark_pinned(&mut tx, &job.cid, if remote { job.size } else { 0 }).await.map(|_| Ok(true))
                    }
                    Err(e) => Ok(Err(e)),
                }
            } else {
                // Deleted while it was being fetched: nothing needs the pin any more.
                if let Err(e) = ipfs.unpin(&job.cid).await {
                    tracing::warn!(event = "unpin_failed", ipfs_cid = %job.cid, error = %e, "could not unpin a deleted blob");
                }
                Ok(Ok(false))
            };
            tx.commit().await?;
            r?
        }
        Err(e) => Err(e),
    };
    match pinned {
        Ok(false) => {}
        Ok(true) => {
            let fetched = if remote { job.size } else { 0 };
            metrics::counter!("afreg_pins_total", "result" => "pinned").increment(1);
            metrics::counter!("afreg_replicated_bytes_total").increment(fetched.max(0) as u64);
            tracing::info!(event = "blob_pinned", ipfs_cid = %job.cid, size = job.size, origin_region = job.origin_region,
                duration_ms = started.elapsed().as_millis() as u64, "pinned a blob");
        }
        Err(e) => {
            let attempts = job.attempts + 1;
            let backoff = backoff(attempts, opts.max_backoff);
            pins::mark_failed(pool, &job.cid, attempts, backoff.as_secs_f64(), &e.to_string()).await?;
            metrics::counter!("afreg_pins_total", "result" => "failed").increment(1);
            tracing::warn!(event = "pin_failed", ipfs_cid = %job.cid, attempts, retry_in_ms = backoff.as_millis() as u64,
                error = %e, "pin failed; will retry");
        }
    }
    Ok(())
}

/// Resolves once nothing needs `cid` (checked every second). A fetch of a blob deleted
/// meanwhile must not wait out the pin timeout: no region may have its bytes any more, and
/// while one `pin/add` waits, Kubo's GC queues for the pin lock and every later pin queues
/// behind it, so the whole region would stop pinning until the timeout.
async fn no_longer_needed(pool: &PgPool, cid: &str) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let Ok(mut conn) = pool.acquire().await else { continue };
        if let Ok(false) = pins::cid_in_use(&mut conn, cid).await {
            return;
        }
    }
}

/// Brings Kubo's pins and the region's pin records back in line, whatever slipped between
/// them (a blob collected before this region's pinner recorded the pin its upload made, a
/// process killed between a pin and its record, a Kubo repository restored from an older
/// copy):
///
/// - a CIDv1 pinned in Kubo that no blob, upload chunk or hold needs is unpinned, under its
///   lock and after checking again, once it was seen unneeded on two passes in a row (an
///   upload's `add` pins its bytes a moment before it records them);
/// - a `pinned` record whose CID Kubo does not hold is put back in the queue (dropped if no
///   blob names it), so the pinner pins it again.
///
/// CIDv0 pins (`Qm…`, such as the empty directory Kubo pins itself) are never the registry's.
pub async fn reconcile<I: Ipfs>(
    pool: &PgPool,
    ipfs: &I,
    suspects: &mut BTreeSet<String>,
) -> Result<(), ReconcileError<I::Error>> {
    let in_kubo: BTreeSet<String> =
        ipfs.pinned().await.map_err(ReconcileError::Ipfs)?.into_iter().filter(|c| c.starts_with('b')).collect();
    let needed = pins::needed_cids(pool).await?;
    let stray: BTreeSet<String> = in_kubo.difference(&needed).cloned().collect();
    let mut unpinned = 0;
    for cid in stray.intersection(suspects) {
        let mut tx = pool.begin().await?;
        pins::lock_cid(&mut tx, cid).await?;
        if !pins::cid_in_use(&mut tx, cid).await? {
            ipfs.unpin(cid).await.map_err(ReconcileError::Ipfs)?;
            pins::forget(&mut tx, cid).await?;
            unpinned += 1;
        }
        tx.commit().await?;
    }
    *suspects = stray;
    let mut dropped = 0;
    for cid in pins::recorded_pinned(pool).await? {
        if !in_kubo.contains(&cid) {
            let mut tx = pool.begin().await?;
            pins::lock_cid(&mut tx, &cid).await?;
            pins::want_again(&mut tx, &cid).await?;
            pins::forget(&mut tx, &cid).await?;
            tx.commit().await?;
            dropped += 1;
        }
    }
    if unpinned + dropped > 0 {
        tracing::info!(
            event = "pins_reconciled",
            unpinned,
            records_dropped = dropped,
            "Kubo's pins and the pin records were brought back in line"
        );
    }
    Ok(())
}

/// 1 s, 2 s, 4 s … capped at `max`.
pub fn backoff(attempts: i32, max: Duration) -> Duration {
    let exp = attempts.clamp(1, 20) as u32 - 1;
    Duration::from_secs(1u64 << exp).min(max)
}

/// Connects to every other region's Kubo; addresses already peered are skipped unless
/// `refresh` (a periodic reconnect after a peer restarted).
async fn peer_regions<I: Ipfs>(pool: &PgPool, me: NodeId, ipfs: &I, peered: &mut BTreeSet<String>, refresh: bool) {
    let Ok(regions) = regions::region_peers(pool).await else { return };
    for regions::KuboPeer { region_id: id, addrs } in regions {
        if id as u64 == me || addrs.is_empty() {
            continue;
        }
        let key = addrs.join(",");
        if !refresh && peered.contains(&key) {
            continue;
        }
        match ipfs.peer(&addrs).await {
            Ok(()) => {
                peered.insert(key);
            }
            Err(e) => {
                tracing::warn!(event = "kubo_peer_failed", region_id = id, error = %e, "could not connect to a region's Kubo")
            }
        }
    }
}

async fn report(pool: &PgPool) {
    if let Ok(s) = pins::stats(pool).await {
        metrics::gauge!("afreg_pin_backlog").set(s.backlog as f64);
        metrics::gauge!("afreg_pins_failing").set(s.failing as f64);
        metrics::gauge!("afreg_pinned_blobs").set(s.pinned as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let max = Duration::from_secs(60);
        assert_eq!(backoff(1, max), Duration::from_secs(1));
        assert_eq!(backoff(2, max), Duration::from_secs(2));
        assert_eq!(backoff(5, max), Duration::from_secs(16));
        assert_eq!(backoff(9, max), max);
        assert_eq!(backoff(1000, max), max);
    }
}
