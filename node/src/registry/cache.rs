//! Manifests in memory, so that a pull's manifest GET and HEAD need no Postgres round trip.
//!
//! Entries are keyed by (repository, tag or digest) and stamped with the cluster's applied
//! generation at the moment their lookup began ([`Cluster::applied_generation`]). An entry is
//! served only while the generation is still the same: any write this process applies (a tag
//! moved, a manifest deleted, GC) moves it on before the write is acknowledged, so nothing
//! stale is ever served, and a lookup racing a write stores an entry that is already dead.
//! Only the process serving the region's Raft member with a valid lease caches: a standby
//! does not see writes as they apply, and reads Postgres. Whole-cache invalidation is coarse,
//! but exact; pulls between pushes are the common case it serves.
//!
//! Bounded by the bytes of the bodies it holds (`storage.manifest_cache_bytes`), by
//! quick_cache's weighter.

use std::sync::Arc;

use afreg_replication::Cluster;

use crate::oci::{Reference, RepoName};
use crate::store::ManifestRow;

#[derive(Clone)]
struct Weigh;

impl quick_cache::Weighter<(String, String), (u64, Arc<ManifestRow>)> for Weigh {
    fn weight(&self, k: &(String, String), v: &(u64, Arc<ManifestRow>)) -> u64 {
        (k.0.len() + k.1.len() + v.1.body.len() + v.1.digest.len() + v.1.media_type.len() + 64) as u64
    }
}

/// (repository, reference) → (the applied generation it was read at, the row).
type Key = (String, String);
type Entry = (u64, Arc<ManifestRow>);

pub struct ManifestCache {
    cache: Option<quick_cache::sync::Cache<Key, Entry, Weigh>>,
    cluster: Arc<Cluster>,
}

/// A lookup that missed: where to store what Postgres answers.
pub struct Miss {
    key: (String, String),
    generation: u64,
}

impl ManifestCache {
    pub fn new(bytes: u64, cluster: Arc<Cluster>) -> Self {
        // Estimated items: manifests of a few KiB each.
        let cache =
            (bytes > 0).then(|| quick_cache::sync::Cache::with_weighter((bytes / 4096).max(16) as usize, bytes, Weigh));
        ManifestCache { cache, cluster }
    }

    /// The cached manifest, or what to pass to [`ManifestCache::fill`] (`Err(None)`: do not cache).
    pub fn get(&self, repo: &RepoName, r: &Reference) -> Result<Arc<ManifestRow>, Option<Miss>> {
        let (Some(cache), Some(generation)) = (&self.cache, self.cluster.applied_generation()) else {
            return Err(None);
        };
        let key = (repo.to_string(), r.to_string());
        match cache.get(&key) {
            Some((g, row)) if g == generation => {
                metrics::counter!("afreg_manifest_cache_total", "result" => "hit").increment(1);
                Ok(row)
            }
            _ => {
                metrics::counter!("afreg_manifest_cache_total", "result" => "miss").increment(1);
                Err(Some(Miss { key, generation }))
            }
        }
    }

    /// Stores what a missed lookup found.
    pub fn fill(&self, miss: Miss, row: &ManifestRow) {
        if let Some(cache) = &self.cache {
            cache.insert(miss.key, (miss.generation, Arc::new(row.clone())));
        }
    }
}
