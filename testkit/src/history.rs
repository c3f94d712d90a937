//! The drills' history and checkers are `afreg_drill::history`; this adds the stronger
//! convergence check a test can make, reading each region's Postgres and Kubo directly.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

pub use afreg_drill::history::*;

use crate::cluster::ClusterMember;

/// Each region's tags as `repo tag digest` lines.
pub fn tag_map(r: &ClusterMember) -> String {
    r.sql("SELECT r.name || ' ' || t.name || ' ' || t.manifest_digest FROM tags t JOIN repositories r ON r.id = t.repository_id ORDER BY 1")
}

/// CIDs of blob records `r` holds that its Kubo has not pinned.
pub fn unpinned(r: &ClusterMember) -> Vec<String> {
    let pinned = r.kubo().pin_ls_recursive();
    r.sql("SELECT cid FROM blobs ORDER BY cid")
        .lines()
        .map(str::trim)
        .filter(|c| !c.is_empty() && !pinned.iter().any(|p| p == c))
        .map(String::from)
        .collect()
}

/// All regions hold identical tag maps, and every blob record of each is pinned in its own
/// Kubo, within `bound`. `Ok` gives how long it took.
pub fn check_converged(regions: &[&ClusterMember], bound: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        let maps: Vec<String> = regions.iter().map(|r| tag_map(r)).collect();
        let same = maps.windows(2).all(|w| w[0] == w[1]);
        let holes: Vec<(String, Vec<String>)> =
            regions.iter().map(|r| (r.name.clone(), unpinned(r))).filter(|(_, u)| !u.is_empty()).collect();
        if same && holes.is_empty() {
            return Ok(started.elapsed());
        }
        if started.elapsed() > bound {
            let mut why = String::new();
            if !same {
                for (r, m) in regions.iter().zip(&maps) {
                    let _ = writeln!(why, "{}: {} tags", r.name, m.lines().count());
                }
                let first: std::collections::BTreeSet<&str> = maps[0].lines().collect();
                for (r, m) in regions.iter().zip(&maps).skip(1) {
                    let other: std::collections::BTreeSet<&str> = m.lines().collect();
                    for d in first.symmetric_difference(&other).take(5) {
                        let _ = writeln!(why, "  differs ({} vs {}): {d}", regions[0].name, r.name);
                    }
                }
            }
            for (name, u) in &holes {
                let _ = writeln!(why, "{name}: {} blob records not pinned, e.g. {}", u.len(), u[0]);
            }
            return Err(format!("regions did not converge within {bound:?}:\n{why}"));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
