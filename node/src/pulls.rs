//! What this region serves, counted without slowing a pull: every manifest and blob `GET`
//! puts a [`Pull`] on a bounded queue (never waiting: a full queue drops the record and counts
//! it in `afreg_pull_records_dropped_total`), and one task writes the queue out once a second,
//! a batch at a time, as per-day counts (`pull_counts`, what `GET /v2/_afreg/usage` and the
//! console show) and, when an endpoint asked for them (`pulls = true`), as pull events
//! (`pull_events`, which [`crate::notifications`] sends from this region). Pulls are not
//! replicated: each region counts its own, and usage asks every region.
//!
//! Counts are figures, not records: a batch that cannot be written (Postgres down) is kept for
//! the next attempt while it stays under the queue's bound, then dropped and counted.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use afreg_replication::EventOrigin;
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::store::usage::{self, CountDelta, NewPullEvent};
use crate::store::Store;

/// Pulls queued at most between two writes.
const QUEUE: usize = 65_536;
/// How often the queue is written out.
const FLUSH: Duration = Duration::from_secs(1);
/// How often old pull events and counts are dropped.
const PRUNE: Duration = Duration::from_secs(60);
/// Pull events kept at most, sent or not, so that a receiver down for days cannot fill the
/// region's disk; the oldest go first, counted.
const KEEP_EVENTS: i64 = 1_000_000;
/// Days of counts kept.
const KEEP_DAYS: i64 = 400;

/// One `GET` served.
#[derive(Debug, Clone)]
pub struct Pull {
    pub at: DateTime<Utc>,
    pub repository: String,
    pub digest: String,
    /// The tag a manifest was asked by; empty for a digest and for blobs.
    pub tag: String,
    pub media_type: String,
    /// The manifest's or blob's size.
    pub size: i64,
    /// The bytes sent (a range's length).
    pub bytes: i64,
    /// A manifest (counted as a pull) or a blob.
    pub manifest: bool,
    /// The request, for a pull event; None when no endpoint takes pull events.
    pub origin: Option<EventOrigin>,
}

/// The queue's sending side, held by the registry.
pub struct Pulls {
    tx: mpsc::Sender<Pull>,
    rx: Mutex<Option<mpsc::Receiver<Pull>>>,
    /// Whether any enabled endpoint takes pull events.
    pub events: bool,
    /// Whether the region counts pulls (`usage.count_pulls`).
    pub counting: bool,
}

impl Pulls {
    pub fn new(events: bool, counting: bool) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Pulls { tx, rx: Mutex::new(Some(rx)), events, counting }
    }

    /// Whether a pull is recorded at all: counted, or an endpoint takes its event.
    pub fn wanted(&self) -> bool {
        self.counting || self.events
    }

    /// Queues `pull`, never waiting.
    pub fn record(&self, pull: Pull) {
        if !self.wanted() {
            return;
        }
        if self.tx.try_send(pull).is_err() {
            metrics::counter!("afreg_pull_records_dropped_total").increment(1);
        }
    }

    /// Starts the writer (once; None after the first call).
    pub fn spawn_writer(
        &self,
        store: Store,
        pull_endpoints: Vec<(String, Duration)>,
        stop: CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let rx = self.rx.lock().expect("pulls lock").take()?;
        Some(tokio::spawn(write(rx, store, pull_endpoints, self.counting, stop)))
    }
}

/// What one flush writes: counts summed per row, events in order.
#[derive(Default)]
struct Batch {
    counts: HashMap<(chrono::NaiveDate, String, String, String), CountDelta>,
    events: Vec<NewPullEvent>,
}

impl Batch {
    fn add(&mut self, p: Pull, counting: bool) {
        if !counting {
            self.add_event(p);
            return;
        }
        let day = p.at.date_naive();
        let key = (day, p.repository.clone(), p.digest.clone(), p.tag.clone());
        let c = self.counts.entry(key).or_insert_with(|| CountDelta {
            day,
            repository: p.repository.clone(),
            digest: p.digest.clone(),
            tag: p.tag.clone(),
            pulls: 0,
            blob_pulls: 0,
            bytes: 0,
            last_pull: p.at,
        });
        if p.manifest {
            c.pulls += 1;
        } else {
            c.blob_pulls += 1;
        }
        c.bytes += p.bytes;
        c.last_pull = c.last_pull.max(p.at);
        self.add_event(p);
    }

    /// The pull's event, if an endpoint takes it.
    fn add_event(&mut self, p: Pull) {
        if let Some(origin) = p.origin {
            self.events.push(NewPullEvent {
                at: p.at,
                repository: p.repository,
                digest: p.digest,
                media_type: p.media_type,
                size: p.size,
                tag: p.tag,
                origin,
            });
        }
    }

    fn len(&self) -> usize {
        self.counts.len() + self.events.len()
    }
}

async fn write(
    mut rx: mpsc::Receiver<Pull>,
    store: Store,
    pull_endpoints: Vec<(String, Duration)>,
    counting: bool,
    stop: CancellationToken,
) {
    let mut batch = Batch::default();
    let mut flush = tokio::time::interval(FLUSH);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut prune = tokio::time::interval(PRUNE);
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = stop.cancelled() => true,
            _ = flush.tick() => false,
            _ = prune.tick() => {
                prune_old(&store, &pull_endpoints).await;
                continue;
            }
        };
        while let Ok(p) = rx.try_recv() {
            batch.add(p, counting);
        }
        if batch.len() > 0 {
            match write_batch(&store, &batch).await {
                Ok(()) => batch = Batch::default(),
                Err(e) if batch.len() > QUEUE => {
                    tracing::warn!(event = "pull_records_dropped", error = %e, records = batch.len(),
                        "pull counts could not be written, and are dropped");
                    metrics::counter!("afreg_pull_records_dropped_total").increment(batch.len() as u64);
                    batch = Batch::default();
                }
                Err(e) => tracing::warn!(event = "pull_records_deferred", error = %e, records = batch.len(),
                    "pull counts could not be written; the next attempt is in a second"),
            }
        }
        if stopping {
            return;
        }
    }
}

async fn write_batch(store: &Store, batch: &Batch) -> Result<(), sqlx::Error> {
    let counts: Vec<CountDelta> = batch.counts.values().cloned().collect();
    usage::add_counts(store.pool(), &counts).await?;
    usage::add_pull_events(store.pool(), &batch.events).await?;
    Ok(())
}

async fn prune_old(store: &Store, pull_endpoints: &[(String, Duration)]) {
    let pool = store.pool();
    let names: Vec<String> = pull_endpoints.iter().map(|(n, _)| n.clone()).collect();
    let max_age = pull_endpoints.iter().map(|(_, a)| *a).max().unwrap_or(Duration::ZERO);
    match usage::prune_pull_events(pool, &names, max_age, KEEP_EVENTS).await {
        Ok(0) => {}
        Ok(n) => {
            tracing::warn!(
                event = "pull_events_dropped",
                events = n,
                "pull events past their age or the bound were dropped unsent"
            );
            metrics::counter!("afreg_notifications_total", "endpoint" => "", "result" => "dropped").increment(n);
        }
        Err(e) => tracing::warn!(event = "pull_prune_failed", error = %e, "old pull events stay until the next pass"),
    }
    let before = Utc::now().date_naive() - chrono::Days::new(KEEP_DAYS as u64);
    if let Err(e) = usage::prune_counts(pool, before).await {
        tracing::warn!(event = "pull_prune_failed", error = %e, "old pull counts stay until the next pass");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pull(repo: &str, tag: &str, manifest: bool, bytes: i64) -> Pull {
        Pull {
            at: Utc::now(),
            repository: repo.into(),
            digest: "sha256:aa".into(),
            tag: tag.into(),
            media_type: String::new(),
            size: bytes,
            bytes,
            manifest,
            origin: None,
        }
    }

    #[test]
    fn a_batch_sums_its_pulls_per_row_and_keeps_events_only_with_an_origin() {
        let mut b = Batch::default();
        b.add(pull("a", "v1", true, 10), true);
        b.add(pull("a", "v1", true, 10), true);
        b.add(pull("a", "", false, 100), true);
        assert_eq!(b.counts.len(), 2);
        let tagged = b.counts.values().find(|c| c.tag == "v1").unwrap();
        assert_eq!((tagged.pulls, tagged.blob_pulls, tagged.bytes), (2, 0, 20));
        let blob = b.counts.values().find(|c| c.tag.is_empty()).unwrap();
        assert_eq!((blob.pulls, blob.blob_pulls, blob.bytes), (0, 1, 100));
        assert!(b.events.is_empty());
    }

    #[test]
    fn with_counting_off_a_pull_is_queued_only_for_its_event() {
        let quiet = Pulls::new(false, false);
        quiet.record(pull("a", "v1", true, 10));
        assert_eq!(quiet.tx.capacity(), QUEUE, "a pull queued with nothing to count and no endpoint");
        let mut b = Batch::default();
        b.add(pull("a", "v1", true, 10), false);
        assert!(b.counts.is_empty());
    }

    #[test]
    fn a_full_queue_drops_instead_of_waiting() {
        let p = Pulls::new(false, true);
        for _ in 0..QUEUE + 10 {
            p.record(pull("a", "", false, 1));
        }
        assert_eq!(p.tx.capacity(), 0);
    }
}
