//! Keeps the pull-through cache bounded: every `mirror.eviction_interval`, the Raft leader's
//! region weighs each upstream's cached images against its `cache_ttl` (evict what no region
//! has pulled for that long) and `max_bytes` (past it, evict what was pulled longest ago), as
//! distribution's proxy `ttl` and zot's retention do. The next pull fetches an evicted image
//! again.
//!
//! - **An image is weighed whole**: a manifest that no other manifest of its repository
//!   references, with the manifests it references (an index's platforms). Its last use is the
//!   latest of its manifests' fetch times and their last pull in any region.
//! - **Pulls are every region's**: each region counts its own ([`crate::pulls`]), so a pass asks
//!   every region for its figures ([`crate::usage::cluster`]) and evicts nothing while one of
//!   them does not answer: an image asia keeps pulling is never evicted because asia was
//!   unreachable for a moment.
//! - **Eviction is a delete** of the image's manifests (with their tags) through Raft, named
//!   `mirror:<upstream>` in its notification events, followed by the collection of the blob
//!   links no manifest references any more (`collect_links.v1`, which checks again as it
//!   applies), so the bytes leave every region without waiting for GC's grace. The image used
//!   last is never evicted for size, so a bound smaller than one image does not evict the
//!   image being pulled.
//! - **Bytes are counted per repository** (a blob shared by two repositories counts in each),
//!   as `/v2/_afreg/usage` reports them, and shown as `afreg_mirror_bytes`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use afreg_replication::{Command, EventOrigin, Role};
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::auth::Visible;
use crate::config::mirror::Upstream;
use crate::oci::{Digest, Reference, RegistryError, RepoName};
use crate::registry::Registry;
use crate::store::mirror::Cached;

/// Why an image was evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Not pulled for `cache_ttl`.
    Unused,
    /// Its upstream's cache held more than `max_bytes`.
    Size,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::Unused => "cache_ttl",
            Reason::Size => "max_bytes",
        }
    }
}

/// An image as eviction weighs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub repository: String,
    /// Its top manifest first, then those it references.
    pub manifests: Vec<String>,
    pub blobs: Vec<String>,
    pub bytes: i64,
    pub last_use: DateTime<Utc>,
}

/// Starts the eviction loop if any upstream is configured.
pub fn spawn(reg: Arc<Registry>, stop: CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
    if reg.cfg.mirror.upstreams.is_empty() {
        return None;
    }
    Some(tokio::spawn(async move {
        let every = reg.cfg.mirror.eviction_interval();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if !reg.cluster.status().is_some_and(|s| s.role == Role::Leader) {
                continue;
            }
            if let Err(e) = pass(&reg).await {
                tracing::warn!(event = "mirror_eviction_failed", error = %e, "the pull-through cache's eviction paused");
            }
        }
    }))
}

/// One pass over every upstream.
async fn pass(reg: &Registry) -> Result<(), RegistryError> {
    let mirror = &reg.cfg.mirror;
    let now = Utc::now();
    let longest = mirror.upstreams.iter().filter_map(Upstream::cache_ttl).max().unwrap_or_default();
    let days = (longest.as_secs() / 86_400 + 2).min(u64::from(crate::usage::MAX_DAYS)) as u32;
    let usage = crate::usage::cluster(reg, days, &Visible::All).await?;
    if !usage.unanswered.is_empty() {
        tracing::info!(event = "mirror_eviction_waits", unanswered = ?usage.unanswered,
            "the pull-through cache evicts nothing while a region's pulls are unknown");
        return Ok(());
    }
    let mut last_pull: HashMap<(&str, &str), DateTime<Utc>> = HashMap::new();
    for r in usage.regions.iter().flat_map(|r| &r.figures.references) {
        if let Some(at) = r.last_pull {
            let e = last_pull.entry((r.repository.as_str(), r.digest.as_str())).or_insert(at);
            *e = (*e).max(at);
        }
    }
    let stored: HashMap<&str, i64> =
        usage.repositories.iter().map(|r| (r.repository.as_str(), r.bytes_stored)).collect();
    // Links made after this (a fill racing the eviction) are kept.
    let linked_before = crate::registry::now_millis();
    for (i, up) in mirror.upstreams.iter().enumerate() {
        let mine = |repo: &str| mirror.upstream_for(repo).is_some_and(|(j, _)| j == i);
        let cached: Vec<Cached> = crate::store::mirror::cached(reg.store.pool(), &up.destination)
            .await
            .map_err(|e| RegistryError::unavailable("PostgreSQL", &e))?
            .into_iter()
            .filter(|c| mine(&c.repository))
            .collect();
        let total: i64 = stored.iter().filter(|(r, _)| mine(r)).map(|(_, b)| b).sum();
        metrics::gauge!("afreg_mirror_bytes", "upstream" => up.name.clone()).set(total as f64);
        let images = images(&cached, |repo, digest| last_pull.get(&(repo, digest)).copied());
        let chosen = choose(&images, now, up.cache_ttl(), up.max_bytes, total);
        if chosen.is_empty() {
            continue;
        }
        let kept: BTreeSet<(&str, &str)> = images
            .iter()
            .enumerate()
            .filter(|(n, _)| !chosen.iter().any(|(c, _)| c == n))
            .flat_map(|(_, im)| im.manifests.iter().map(|m| (im.repository.as_str(), m.as_str())))
            .collect();
        let mut links = vec![];
        for (n, reason) in chosen {
            let im = &images[n];
            evict(reg, up, im, &kept).await?;
            links.extend(im.blobs.iter().map(|b| (im.repository.clone(), b.clone())));
            metrics::counter!("afreg_mirror_evicted_total", "upstream" => up.name.clone(), "reason" => reason.as_str())
                .increment(1);
            tracing::info!(event = "mirror_evicted", upstream = %up.name, repository = %im.repository,
                digest = %im.manifests[0], bytes = im.bytes, reason = reason.as_str(), last_use = %im.last_use,
                "evicted an image from the pull-through cache");
        }
        links.sort();
        links.dedup();
        for batch in links.chunks(500) {
            reg.replicate(Command::CollectLinks { links: batch.to_vec(), linked_before }).await?;
        }
    }
    Ok(())
}

/// Deletes an image's manifests, its top one first, keeping those another image still uses.
async fn evict(reg: &Registry, up: &Upstream, im: &Image, kept: &BTreeSet<(&str, &str)>) -> Result<(), RegistryError> {
    let repo: RepoName = im.repository.parse()?;
    let origin = EventOrigin {
        request_id: uuid::Uuid::new_v4().to_string(),
        actor: format!("mirror:{}", up.name),
        region: reg.cfg.cluster.region.clone(),
        instance: reg.instance.clone(),
        url_base: reg.cfg.server.public_url.trim_end_matches('/').to_owned(),
        ..Default::default()
    };
    for m in im.manifests.iter().filter(|m| !kept.contains(&(im.repository.as_str(), m.as_str()))) {
        let reference = Reference::Digest(m.parse::<Digest>()?);
        match reg.delete_manifest(&repo, &reference, origin.clone()).await {
            Err(e) if e.code == crate::oci::ErrorCode::ManifestUnknown => {}
            other => other?,
        }
    }
    Ok(())
}

/// The images among `cached` (one repository's manifests next to each other or not): each
/// manifest no other references, with those it references, and its last use.
pub fn images(cached: &[Cached], last_pull: impl Fn(&str, &str) -> Option<DateTime<Utc>>) -> Vec<Image> {
    let by_key: HashMap<(&str, &str), &Cached> =
        cached.iter().map(|c| ((c.repository.as_str(), c.digest.as_str()), c)).collect();
    let mut out = vec![];
    for top in cached.iter().filter(|c| !c.is_child) {
        let mut members = vec![top];
        members.extend(top.children.iter().filter_map(|d| by_key.get(&(top.repository.as_str(), d.as_str())).copied()));
        let last_use = members
            .iter()
            .map(|m| last_pull(&m.repository, &m.digest).map_or(m.created_at, |p| p.max(m.created_at)))
            .max()
            .unwrap_or(top.created_at);
        let mut blobs: Vec<String> = members.iter().flat_map(|m| m.blobs.iter().cloned()).collect();
        blobs.sort();
        blobs.dedup();
        out.push(Image {
            repository: top.repository.clone(),
            manifests: members.iter().map(|m| m.digest.clone()).collect(),
            blobs,
            bytes: members.iter().map(|m| m.bytes).sum(),
            last_use,
        });
    }
    out
}

/// Which images to evict (their indexes in `images`), and why: those unused for `ttl`, then,
/// while the upstream's `total` bytes exceed `max_bytes` (0: no bound), the least recently
/// used, never the most recently used one.
pub fn choose(
    images: &[Image],
    now: DateTime<Utc>,
    ttl: Option<Duration>,
    max_bytes: u64,
    total: i64,
) -> Vec<(usize, Reason)> {
    let mut order: Vec<usize> = (0..images.len()).collect();
    order.sort_by_key(|&n| images[n].last_use);
    let mut chosen = vec![];
    let mut left = total;
    let unused = |im: &Image| ttl.is_some_and(|t| (now - im.last_use).to_std().unwrap_or_default() > t);
    for &n in &order {
        if unused(&images[n]) {
            chosen.push((n, Reason::Unused));
            left -= images[n].bytes;
        }
    }
    if max_bytes > 0 {
        let newest = order.last().copied();
        for &n in &order {
            if left <= max_bytes as i64 {
                break;
            }
            if Some(n) == newest || chosen.iter().any(|(c, _)| *c == n) {
                continue;
            }
            chosen.push((n, Reason::Size));
            left -= images[n].bytes;
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn cached(digest: &str, created: i64, bytes: i64, children: &[&str], is_child: bool) -> Cached {
        Cached {
            repository: "hub/app".into(),
            digest: digest.into(),
            created_at: at(created),
            bytes,
            blobs: vec![format!("blob-of-{digest}")],
            children: children.iter().map(|c| c.to_string()).collect(),
            is_child,
        }
    }

    #[test]
    fn an_index_is_one_image_used_when_any_of_its_platforms_was_pulled() {
        let rows = [
            cached("index", 0, 1, &["amd64", "arm64"], false),
            cached("amd64", 0, 10, &[], true),
            cached("arm64", 0, 20, &[], true),
            cached("alone", 5, 7, &[], false),
        ];
        let pulls = |_: &str, d: &str| (d == "arm64").then(|| at(100));
        let images = images(&rows, pulls);
        assert_eq!(images.len(), 2);
        assert_eq!(images[0].manifests, ["index", "amd64", "arm64"]);
        assert_eq!((images[0].bytes, images[0].last_use), (31, at(100)));
        assert_eq!(images[0].blobs, ["blob-of-amd64", "blob-of-arm64", "blob-of-index"]);
        assert_eq!((images[1].bytes, images[1].last_use), (7, at(5)));
    }

    fn image(last_use: i64, bytes: i64) -> Image {
        Image { repository: "r".into(), manifests: vec![], blobs: vec![], bytes, last_use: at(last_use) }
    }

    #[test]
    fn unused_images_go_then_the_least_recently_used_until_the_bound_holds_but_never_the_newest() {
        let images = [image(0, 10), image(50, 10), image(90, 10), image(100, 10)];
        let ttl = Some(Duration::from_secs(60));
        // At 110: only the first is unused for more than 60 s.
        assert_eq!(choose(&images, at(110), ttl, 0, 40), [(0, Reason::Unused)]);
        // A bound of 15 bytes: the next two by age go too, never the newest.
        assert_eq!(choose(&images, at(110), ttl, 15, 40), [(0, Reason::Unused), (1, Reason::Size), (2, Reason::Size)]);
        assert_eq!(choose(&images, at(110), None, 5, 40), [(0, Reason::Size), (1, Reason::Size), (2, Reason::Size)]);
        assert_eq!(choose(&images, at(110), None, 0, 40), []);
        assert_eq!(choose(&images, at(110), None, 40, 40), []);
    }
}
