//! A region's background duties towards the cluster, besides pinning: announcing itself in the
//! replicated region list, and (on the leader) garbage-collecting unreferenced blobs.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::cluster::Role;
use crate::store::{gc, regions};
use crate::{Applied, Command, Region};

/// Links listed per GC round, and per `collect_links.v1` entry.
const GC_LIST: i64 = 1000;
const GC_BATCH: usize = 100;

/// Writes this region's record (addresses, Kubo peer, token key) into the region list until
/// the list holds it, retrying while there is no leader. `me` is re-read on every try so a
/// region whose Kubo came up late announces its peer id once it knows it.
pub async fn announce<F, Fut>(pool: PgPool, cluster: Arc<Cluster>, me: F, stop: CancellationToken)
where
    F: Fn() -> Fut + Send,
    Fut: std::future::Future<Output = Region> + Send,
{
    let mut wait = Duration::from_millis(200);
    loop {
        let region = me().await;
        let stored = regions::region_row(&pool, cluster.id).await.ok().flatten();
        let complete = !region.kubo_peer_id.is_empty();
        if stored.as_ref() == Some(&region) && complete {
            return;
        }
        if stored.as_ref() != Some(&region) {
            match cluster.write(Command::PutRegion { id: cluster.id, region: region.clone() }).await {
                Ok(Applied::Ok) => {
                    tracing::info!(event = "region_announced", region = %region.name, kubo_peer_id = %region.kubo_peer_id,
                        "this region is in the region list");
                }
                Ok(Applied::RegionRetired) => {
                    tracing::error!(
                        event = "region_retired",
                        region_id = cluster.id,
                        "this region's id was removed from the cluster; it will not announce itself"
                    );
                    return;
                }
                Ok(other) => {
                    tracing::warn!(event = "region_announce_refused", reply = ?other, "region announcement refused")
                }
                Err(e) => tracing::debug!(event = "region_announce_retry", error = %e, "region announcement must wait"),
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(10));
    }
}

/// On the leader, every `interval`: lists links to blobs that no manifest of their repository
/// references and that were last linked more than `grace` ago, and proposes their collection.
/// The condition is checked again when each entry is applied, in every region alike, so a
/// manifest or a re-upload that commits after the listing keeps its blobs. When a blob loses
/// its last link its row goes, and every region's pinner unpins it.
pub async fn collect_garbage(
    pool: PgPool,
    cluster: Arc<Cluster>,
    grace: Duration,
    interval: Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        if cluster.status().is_none_or(|s| s.role != Role::Leader) {
            continue;
        }
        // Chosen once, here, and carried in the entries: every region applies the same cut-off.
        // It is this leader's clock, the one that stamped the links' times (`Command::stamp`),
        // and the entries are never forwarded: should leadership move meanwhile, the write is
        // refused rather than applied under another leader's clock.
        let linked_before = crate::types::now_millis() - grace.as_millis() as i64;
        let links = match gc::candidates(&pool, linked_before, GC_LIST).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(event = "gc_failed", error = %e, "garbage collection could not list blobs");
                continue;
            }
        };
        let (mut unlinked, mut blobs) = (0, 0);
        for batch in links.chunks(GC_BATCH) {
            let links = batch.iter().map(|l| (l.repo.clone(), l.digest.clone())).collect();
            match cluster.write_inner(Command::CollectLinks { links, linked_before }, false).await.map(|(_, a)| a) {
                Ok(Applied::Collected { unlinked: n, orphaned_cids }) => {
                    unlinked += n;
                    blobs += orphaned_cids.len();
                }
                Ok(other) => tracing::warn!(event = "gc_failed", reply = ?other, "garbage collection entry refused"),
                Err(e) => {
                    tracing::warn!(event = "gc_failed", error = %e, "garbage collection stopped early");
                    break;
                }
            }
        }
        if unlinked > 0 {
            tracing::info!(event = "gc", unlinked, blobs_removed = blobs, "collected unreferenced blobs");
        }
    }
}
