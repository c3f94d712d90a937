//! Workloads that run while a test injects faults. [`Workload`] is a push workload whose
//! checks run on its history afterwards: every acknowledged push reads back byte-identical
//! everywhere, and the regions' Raft logs never disagree on an entry. [`Mixed`] is the drills'
//! concurrent workload of every kind of operation on every region (`afreg_drill::workload`),
//! recorded for the checkers of [`crate::history`]. Shared by the node's tests and the chaos
//! scenarios.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use afreg_drill::workload::{Mixed, MixedConfig};

use crate::cluster::ClusterMember;
use crate::oci::{check_pulls, new_image, push, Image};

/// One acknowledged push: every request of it answered 201.
#[derive(Clone)]
pub struct Ack {
    /// The URL it was pushed through.
    pub via: String,
    pub repo: String,
    pub tag: String,
    pub image: Image,
    /// When it was acknowledged, since the workload started.
    pub at: Duration,
}

/// What the writers saw.
#[derive(Default)]
pub struct History {
    pub acked: Vec<Ack>,
    /// Pushes refused with a 4xx (nothing was written).
    pub refused: usize,
    /// Pushes that got a 5xx or no answer: they may or may not have applied.
    pub unknown: usize,
}

/// Writers pushing small images with new tags, one thread per URL, until [`Workload::stop`].
pub struct Workload {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<History>>,
}

impl Workload {
    /// One writer per URL in `via`, each pushing images (a 4 KiB layer) as `repo:w{i}-{n}`
    /// with a pause of `every` between pushes.
    pub fn start(via: &[String], repo: &str, every: Duration) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let threads = via
            .iter()
            .enumerate()
            .map(|(i, url)| {
                let (stop, url, repo) = (stop.clone(), url.clone(), repo.to_owned());
                std::thread::spawn(move || {
                    let c = reqwest::blocking::Client::builder()
                        .no_proxy()
                        .timeout(Duration::from_secs(30))
                        .build()
                        .unwrap();
                    let mut h = History::default();
                    let mut n = 0;
                    while !stop.load(Ordering::SeqCst) {
                        let (tag, image) = (format!("w{i}-{n}"), new_image(4096));
                        n += 1;
                        match push(&c, &url, &repo, &tag, &image) {
                            Ok(()) => h.acked.push(Ack {
                                via: url.clone(),
                                repo: repo.clone(),
                                tag,
                                image,
                                at: started.elapsed(),
                            }),
                            Err(r) if (400..500).contains(&r.status) => h.refused += 1,
                            Err(_) => h.unknown += 1,
                        }
                        std::thread::sleep(every);
                    }
                    h
                })
            })
            .collect();
        Workload { stop, threads }
    }

    /// Stops the writers and returns their history, merged.
    pub fn stop(self) -> History {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = History::default();
        for t in self.threads {
            let h = t.join().expect("workload writer panicked");
            all.acked.extend(h.acked);
            all.refused += h.refused;
            all.unknown += h.unknown;
        }
        all.acked.sort_by_key(|a| a.at);
        all
    }
}

/// Every acknowledged push reads back byte-identical (its manifest by tag, every blob checked
/// against its digest) from every URL in `from`, each within `bound` of the check starting
/// (replication lag). Returns how long the slowest took.
pub fn assert_acked_readable(h: &History, from: &[String], bound: Duration) -> Duration {
    let c = crate::oci::client();
    let started = Instant::now();
    for url in from {
        for a in &h.acked {
            loop {
                match check_pulls(&c, url, &a.repo, &a.tag, &a.image) {
                    Ok(()) => break,
                    Err(e) if started.elapsed() > bound => {
                        panic!(
                            "acknowledged push {}:{} (through {}, at {:?}) is lost at {url}: {e}",
                            a.repo, a.tag, a.via, a.at
                        )
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        }
    }
    started.elapsed()
}

/// No two regions' Raft logs hold entries of different terms at one index (Raft's log
/// matching, checked across the durable logs in each region's Postgres). Returns the number of
/// indexes compared.
pub fn assert_logs_agree(regions: &[&ClusterMember]) -> usize {
    let mut seen: BTreeMap<u64, (u64, String)> = BTreeMap::new();
    let mut compared = 0;
    for r in regions {
        let rows = r.pg().psql("SELECT log_index || ':' || term FROM raft_log ORDER BY log_index");
        for line in rows.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (i, t) = line.split_once(':').expect("index:term");
            let (i, t): (u64, u64) = (i.parse().unwrap(), t.parse().unwrap());
            match seen.get(&i) {
                Some((term, other)) => {
                    compared += 1;
                    assert_eq!(*term, t, "log index {i}: term {term} in {other}'s log but {t} in {}'s", r.name);
                }
                None => {
                    seen.insert(i, (t, r.name.clone()));
                }
            }
        }
    }
    compared
}
