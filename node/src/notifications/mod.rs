//! Sends notification events to the configured endpoints (`[notifications]`), at least once.
//!
//! The events are written by every region's state machine as it applies the entries they
//! describe (`afreg_replication::store::events`). **The Raft leader's region delivers**: it is
//! the one region that can move the replicated cursor (`notifications_delivered.v1`) without
//! a relay, and there is exactly one at a time once an election settles; a region that becomes
//! leader resumes from the cursor. An event may so be sent twice (a cursor write lost with its
//! leader), never skipped: receivers deduplicate by its id, the entry's log index.
//!
//! **Pull events** (`pulls = true`) are not replicated: the region that served the pulls has
//! them ([`crate::pulls`]), and its seat holder sends them, with a cursor in its own Postgres.
//!
//! Per endpoint, in event order: a batch (distribution's envelope holds several events; a
//! CloudEvent is one) is sent within `timeout`; after `threshold` failures in a row the
//! endpoint waits `backoff` between attempts (distribution's breaker), doubled with each further
//! failure up to five minutes; an event still failing
//! after `max_attempts`, or older than `max_age`, goes to the dead letters and the next one is
//! sent. Nothing here is on a push's path: a slow or dead receiver delays only its own events.
//!
//! **Batched, so that a trickle of small pushes does not double the Raft writes.** A batch that
//! is not full waits [`GATHER`] for more events before it goes, and the replicated cursor is
//! written at most every [`CURSOR_EVERY`] (and as soon as the endpoint is idle, or a dead letter
//! is recorded): the loop remembers how far it sent in between. An event committed is never
//! rewritten, so that position stays true across terms; a leader lost before its cursor write
//! means the next leader sends those events again, which at-least-once allows.

pub mod payload;

use std::sync::Arc;
use std::time::Duration;

use afreg_replication::store::events::{self, EventRow};
use afreg_replication::{Command, DeadLetter, Role};
use tokio_util::sync::CancellationToken;

use crate::config::notifications::{Endpoint, Format};
use crate::registry::Registry;
use crate::store::usage;

/// Events per distribution envelope.
const BATCH: i64 = 32;
/// How often an idle endpoint (or a region that does not lead) looks again, besides being
/// woken by applied entries.
const IDLE: Duration = Duration::from_secs(1);
/// The pause after a failure before the breaker opens (`threshold` failures in a row).
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// How long a batch that is not full waits for more events before it is sent.
const GATHER: Duration = Duration::from_millis(50);
/// The least time between two writes of the replicated cursor while events keep coming.
const CURSOR_EVERY: Duration = Duration::from_millis(500);

/// The longest wait between attempts of a failing endpoint.
const MAX_WAIT: Duration = Duration::from_secs(300);

/// The wait once the breaker is open: `backoff`, doubled for each failure past the threshold,
/// up to [`MAX_WAIT`], so that `max_attempts` (20 by default) spans a receiver's outage of
/// minutes, not seconds.
fn breaker_wait(backoff: Duration, past_threshold: u32) -> Duration {
    backoff.saturating_mul(1 << past_threshold.min(16)).min(MAX_WAIT)
}

/// Where an endpoint's events come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The replicated events (pushes, deletes), which the leader's region sends.
    Replicated,
    /// This region's own pull events (`pulls = true`), which its seat holder sends: pulls are
    /// not replicated, so no other region has them.
    Pulls,
}

/// Starts one delivery task per enabled endpoint, and one more for its pull events.
pub fn spawn(registry: Arc<Registry>, stop: CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = vec![];
    for e in registry.cfg.notifications.endpoints.iter().filter(|e| !e.disabled) {
        tasks.push(tokio::spawn(deliver(registry.clone(), e.clone(), Source::Replicated, stop.clone())));
        if e.pulls {
            tasks.push(tokio::spawn(deliver(registry.clone(), e.clone(), Source::Pulls, stop.clone())));
        }
    }
    tasks
}

/// Each configured endpoint's backlog, for `/status` and `afreg status` (the tables are
/// replicated, so every region answers alike).
pub async fn status(reg: &Registry) -> Vec<serde_json::Value> {
    let pool = reg.store.pool();
    let mut out = vec![];
    for e in &reg.cfg.notifications.endpoints {
        let cursor = events::cursor(pool, &e.name).await.unwrap_or_default();
        let pending = events::pending(pool, cursor).await.ok();
        let dead = events::dead_letter_count(pool, &e.name).await.ok();
        let mut entry = serde_json::json!({"endpoint": e.name, "disabled": e.disabled, "delivered_up_to": cursor,
            "pending": pending, "dead_letters": dead});
        if e.pulls {
            // This region's own, unlike the rest.
            let cursor = usage::pull_cursor(pool, &e.name).await.unwrap_or_default();
            entry["pull_events_pending"] = serde_json::json!(usage::pull_events_pending(pool, cursor).await.ok());
        }
        out.push(entry);
    }
    out
}

/// Why a delivery failed.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    #[error("the receiver answered {0}")]
    Status(reqwest::StatusCode),
}

struct Sender {
    endpoint: Endpoint,
    http: reqwest::Client,
}

impl Sender {
    fn new(endpoint: Endpoint) -> Self {
        let http = reqwest::Client::builder()
            .timeout(endpoint.timeout())
            .connect_timeout(endpoint.timeout())
            .build()
            .expect("reqwest client");
        Sender { endpoint, http }
    }

    async fn post(&self, headers: Vec<(&str, String)>, body: Vec<u8>) -> Result<(), SendError> {
        let mut req = self.http.post(&self.endpoint.url);
        for (name, values) in &self.endpoint.headers {
            for v in values {
                req = req.header(name.as_str(), v.as_str());
            }
        }
        for (name, value) in headers {
            req = req.header(name, value);
        }
        let resp = req.body(body).send().await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(SendError::Status(resp.status()))
        }
    }

    /// Sends `batch` (all of it, or, on an error, none that counts: the cursor does not move).
    async fn send(&self, batch: &[&EventRow]) -> Result<(), SendError> {
        match self.endpoint.format {
            Format::Distribution => {
                self.post(vec![("content-type", payload::ENVELOPE_TYPE.to_owned())], payload::envelope(batch)).await
            }
            Format::Cloudevents => {
                for e in batch {
                    let (headers, body) = payload::cloudevent(e);
                    self.post(headers, body).await?;
                }
                Ok(())
            }
        }
    }
}

/// How far the leader's loop has sent, ahead of the replicated cursor it writes at most every
/// [`CURSOR_EVERY`].
#[derive(Debug)]
struct Progress {
    /// The last event id sent (or skipped), whether or not the cursor says so yet.
    sent_up_to: i64,
    /// The cursor write not made yet, if `sent_up_to` is ahead of the replicated cursor.
    unwritten: bool,
    /// When the cursor was last written.
    written_at: std::time::Instant,
}

async fn deliver(reg: Arc<Registry>, endpoint: Endpoint, source: Source, stop: CancellationToken) {
    let name = endpoint.name.clone();
    let sender = Sender::new(endpoint);
    let mut changed = reg.cluster.subscribe();
    let mut failures_in_row = 0u32;
    let mut head_attempts = (0i64, 0u32);
    let mut progress = Progress { sent_up_to: 0, unwritten: false, written_at: std::time::Instant::now() };
    loop {
        let stepped = match source {
            Source::Replicated => step(&reg, &sender, &mut failures_in_row, &mut head_attempts, &mut progress).await,
            Source::Pulls => step_pulls(&reg, &sender, &mut failures_in_row, &mut head_attempts).await,
        };
        let wait = match stepped {
            Ok(Step::More) => continue,
            Ok(Step::Partial) => GATHER,
            Ok(Step::Idle) => IDLE,
            Ok(Step::Failed) if failures_in_row >= sender.endpoint.threshold => {
                breaker_wait(sender.endpoint.backoff(), failures_in_row - sender.endpoint.threshold)
            }
            Ok(Step::Failed) => RETRY_PAUSE,
            Err(e) => {
                tracing::warn!(event = "notifications_failed", endpoint = %name, error = %e, "notification delivery paused");
                IDLE
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            // A closed channel (the cluster stopping) answers at once: then wait out the bound.
            r = changed.changed(), if wait == IDLE => if r.is_err() { tokio::time::sleep(wait).await },
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

enum Step {
    /// Sent (or skipped) a full batch; look again at once.
    More,
    /// Sent less than a full batch; gather for a moment before the next one.
    Partial,
    /// Nothing to send here now.
    Idle,
    /// The receiver failed.
    Failed,
}

async fn step(
    reg: &Registry,
    sender: &Sender,
    failures_in_row: &mut u32,
    head_attempts: &mut (i64, u32),
    progress: &mut Progress,
) -> Result<Step, crate::oci::RegistryError> {
    let ep = &sender.endpoint;
    let pool = reg.store.pool();
    if !reg.cluster.status().is_some_and(|s| s.role == Role::Leader) {
        // Sent but not written: the next leader sends those again.
        progress.unwritten = false;
        return Ok(Step::Idle);
    }
    let cursor = events::cursor(pool, &ep.name).await?.max(progress.sent_up_to);
    let pending = events::pending(pool, cursor).await?;
    metrics::gauge!("afreg_notifications_pending", "endpoint" => ep.name.clone()).set(pending as f64);
    // Dead letters an operator asked to send again come first.
    let again = events::dead_letters(pool, Some(&ep.name), true).await?;
    if !again.is_empty() {
        let batch: Vec<&EventRow> = again.iter().map(|d| &d.event).collect();
        let sent = sender.send(&batch).await;
        let ids = again.iter().map(|d| d.event.id).collect();
        let write = Write { up_to: cursor, dead: vec![], redelivered: ids };
        return settle(reg, sender, failures_in_row, sent.map(|_| batch.len()), write, progress).await;
    }
    let events = events::after(pool, cursor, BATCH).await?;
    let Some(last) = events.last().map(|e| e.id) else {
        if progress.unwritten {
            write_cursor(reg, &ep.name, Write::up_to(progress.sent_up_to), progress).await?;
        }
        return Ok(Step::Idle);
    };
    let full = events.len() as i64 >= BATCH;
    let batch: Vec<&EventRow> = events.iter().filter(|e| ep.wants(&e.action, &e.media_type)).collect();
    if batch.is_empty() {
        return settle(reg, sender, failures_in_row, Ok(0), Write::up_to(last), progress).await.map(|s| {
            if full {
                s
            } else {
                Step::Partial
            }
        });
    }
    let sent = sender.send(&batch).await;
    if let Err(e) = &sent {
        let head = batch[0];
        if given_up(ep, head, head_attempts) {
            tracing::warn!(event = "notification_dead_lettered", endpoint = %ep.name, event_id = head.id,
                attempts = head_attempts.1, error = %e, "a notification went to the dead letters");
            let dead = vec![DeadLetter { event_id: head.id, error: e.to_string() }];
            metrics::counter!("afreg_notifications_total", "endpoint" => ep.name.clone(), "result" => "dead_lettered")
                .increment(1);
            let write = Write { up_to: head.id, dead, redelivered: vec![] };
            return settle(reg, sender, failures_in_row, Ok(0), write, progress).await;
        }
    }
    let stepped = settle(reg, sender, failures_in_row, sent.map(|_| batch.len()), Write::up_to(last), progress).await;
    stepped.map(|s| if matches!(s, Step::More) && !full { Step::Partial } else { s })
}

/// Whether the endpoint gives up on `head`, the first event of a batch that just failed (the
/// one that holds the endpoint up): counted in `head_attempts`, against `max_attempts` and
/// `max_age`.
fn given_up(ep: &Endpoint, head: &EventRow, head_attempts: &mut (i64, u32)) -> bool {
    *head_attempts = if head_attempts.0 == head.id { (head.id, head_attempts.1 + 1) } else { (head.id, 1) };
    let age = (chrono::Utc::now() - head.at).to_std().unwrap_or_default();
    head_attempts.1 >= ep.max_attempts || age > ep.max_age()
}

/// One step of sending this region's pull events to `sender`'s endpoint: as [`step`], with the
/// cursor in this region's own Postgres. A pull event given up on is dropped (logged and
/// counted as `dead_lettered`): pull events are figures of high volume, not records a
/// receiver must replay.
async fn step_pulls(
    reg: &Registry,
    sender: &Sender,
    failures_in_row: &mut u32,
    head_attempts: &mut (i64, u32),
) -> Result<Step, crate::oci::RegistryError> {
    let ep = &sender.endpoint;
    let pool = reg.store.pool();
    if !reg.cluster.seat().holds() {
        return Ok(Step::Idle);
    }
    let cursor = usage::pull_cursor(pool, &ep.name).await?;
    let events = usage::pull_events_after(pool, cursor, BATCH).await?;
    metrics::gauge!("afreg_notifications_pull_events_pending", "endpoint" => ep.name.clone())
        .set(usage::pull_events_pending(pool, cursor).await? as f64);
    let Some(last) = events.last().map(|e| e.id) else { return Ok(Step::Idle) };
    let batch: Vec<&EventRow> = events.iter().filter(|e| ep.wants(&e.action, &e.media_type)).collect();
    let sent = if batch.is_empty() { Ok(()) } else { sender.send(&batch).await };
    let up_to = match &sent {
        Ok(()) => last,
        Err(e) if given_up(ep, batch[0], head_attempts) => {
            tracing::warn!(event = "notification_dead_lettered", endpoint = %ep.name, pull_event_id = batch[0].id,
                attempts = head_attempts.1, error = %e, "a pull event was given up on");
            metrics::counter!("afreg_notifications_total", "endpoint" => ep.name.clone(), "result" => "dead_lettered")
                .increment(1);
            batch[0].id
        }
        Err(e) => {
            *failures_in_row += 1;
            metrics::counter!("afreg_notifications_total", "endpoint" => ep.name.clone(), "result" => "failed")
                .increment(1);
            tracing::debug!(event = "notification_failed", endpoint = %ep.name, failures_in_row = *failures_in_row,
                error = %e, "a receiver did not take its pull events");
            return Ok(Step::Failed);
        }
    };
    *failures_in_row = 0;
    usage::set_pull_cursor(pool, &ep.name, up_to).await?;
    if sent.is_ok() {
        metrics::counter!("afreg_notifications_total", "endpoint" => ep.name.clone(), "result" => "delivered")
            .increment(batch.len() as u64);
    }
    Ok(Step::More)
}

/// A write of the replicated cursor: up to which event, with the dead letters recorded and the
/// ones sent again.
struct Write {
    up_to: i64,
    dead: Vec<DeadLetter>,
    redelivered: Vec<i64>,
}

impl Write {
    fn up_to(up_to: i64) -> Self {
        Write { up_to, dead: vec![], redelivered: vec![] }
    }
}

/// Moves the cursor after a success (`sent`: how many events went), at once if `write` records
/// dead letters or events sent again, else at most every [`CURSOR_EVERY`]; or counts the failure.
async fn settle(
    reg: &Registry,
    sender: &Sender,
    failures_in_row: &mut u32,
    sent: Result<usize, SendError>,
    write: Write,
    progress: &mut Progress,
) -> Result<Step, crate::oci::RegistryError> {
    let name = &sender.endpoint.name;
    let n = match sent {
        Ok(n) => n,
        Err(e) => {
            *failures_in_row += 1;
            metrics::counter!("afreg_notifications_total", "endpoint" => name.clone(), "result" => "failed")
                .increment(1);
            tracing::debug!(event = "notification_failed", endpoint = %name, failures_in_row = *failures_in_row, error = %e,
                "a receiver did not take its events");
            return Ok(Step::Failed);
        }
    };
    *failures_in_row = 0;
    metrics::counter!("afreg_notifications_total", "endpoint" => name.clone(), "result" => "delivered")
        .increment(n as u64);
    progress.sent_up_to = progress.sent_up_to.max(write.up_to);
    if write.dead.is_empty() && write.redelivered.is_empty() && progress.written_at.elapsed() < CURSOR_EVERY {
        progress.unwritten = true;
    } else {
        write_cursor(reg, name, write, progress).await?;
    }
    Ok(Step::More)
}

/// Writes the replicated cursor (through Raft), up to the furthest event sent.
async fn write_cursor(
    reg: &Registry,
    endpoint: &str,
    write: Write,
    progress: &mut Progress,
) -> Result<(), crate::oci::RegistryError> {
    let cmd = Command::NotificationsDelivered {
        endpoint: endpoint.to_owned(),
        delivered: write.up_to.max(progress.sent_up_to),
        dead: write.dead,
        redelivered: write.redelivered,
        at: crate::registry::now_millis(),
    };
    reg.replicate(cmd).await?;
    progress.unwritten = false;
    progress.written_at = std::time::Instant::now();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_doubles_its_wait_up_to_five_minutes() {
        let b = Duration::from_secs(1);
        assert_eq!(breaker_wait(b, 0), b);
        assert_eq!(breaker_wait(b, 3), Duration::from_secs(8));
        assert_eq!(breaker_wait(b, 40), MAX_WAIT);
    }
}
