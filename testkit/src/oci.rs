//! The OCI test client and image fixture are `afreg_drill::oci` (the drills use them too);
//! this adds what needs a test region's Postgres and Kubo, and the tests' polling helpers.

use std::time::{Duration, Instant};

pub use afreg_drill::oci::*;

use crate::cluster::ClusterMember;

/// Polls every `every` until `f` holds or `bound` passes; returns how long it took.
pub fn within(bound: Duration, every: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    loop {
        if f() {
            return started.elapsed();
        }
        assert!(started.elapsed() < bound, "{what}: not within {bound:?}");
        std::thread::sleep(every);
    }
}

/// The CIDs `region` records for these blob digests.
pub fn cids_of(region: &ClusterMember, digests: &[&str]) -> Vec<String> {
    digests
        .iter()
        .map(|d| {
            let cid = region.sql(&format!("SELECT cid FROM blobs WHERE digest = '{d}'"));
            assert!(!cid.is_empty(), "no blob row for {d} in {}", region.name);
            cid
        })
        .collect()
}

/// Whether every CID is pinned (recursively) in `region`'s Kubo.
pub fn pinned_all(region: &ClusterMember, cids: &[String]) -> bool {
    let pinned = region.kubo().pin_ls_recursive();
    cids.iter().all(|c| pinned.contains(c))
}

/// p50 and max of some durations.
pub fn p50_max(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    if v.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    (v[v.len() / 2], *v.last().unwrap())
}
