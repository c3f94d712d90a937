//! Notification events: written by the state machine in the transaction that applies the
//! entry they describe ([`crate::Command::WithOrigin`]), so every region holds the same ones,
//! with the entry's log index as their id; and the per-endpoint cursors and dead letters that
//! `notifications_delivered.v1` and `notifications_retry.v1` move, replicated the same way. The
//! delivering region (the node's `notifications`) reads them from its own Postgres; a region
//! that takes over resumes from the cursor, so an event may be sent twice, never skipped.
//!
//! Events stay until every endpoint's cursor has passed them (a dead letter keeps its event),
//! and at most [`RETENTION_HOURS`] after they happened, counted in the entries' own times.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};

use crate::types::{Applied, Command, DeadLetter, EventOrigin};

type Result<T> = std::result::Result<T, sqlx::Error>;

/// How long an event is kept whatever the cursors say (an endpoint removed from the
/// configuration keeps its cursor, which would otherwise hold every event after it).
pub const RETENTION_HOURS: i64 = 24 * 7;

/// One event as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct EventRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// `push`, `mount`, `delete` (or, for a region's own pull events, `pull`).
    pub action: String,
    pub repository: String,
    pub digest: String,
    pub media_type: String,
    pub size: i64,
    pub tag: String,
    pub origin: sqlx::types::Json<EventOrigin>,
}

/// The media type of a blob's events, as distribution gives them.
const BLOB_MEDIA_TYPE: &str = "application/octet-stream";

/// What `cmd`, applied as `reply`, is an event of: `(action, digest, media type, size, tag)`.
fn describe<'a>(cmd: &'a Command, reply: &Applied) -> Option<(&'static str, &'a str, &'a str, i64, &'a str)> {
    match (cmd, reply) {
        (Command::PutManifest { digest, media_type, body, tag, .. }, Applied::Ok) => {
            Some(("push", digest, media_type, body.len() as i64, tag.as_deref().unwrap_or("")))
        }
        (Command::DeleteManifest { digest, .. }, Applied::Ok) => Some(("delete", digest, "", 0, "")),
        (Command::DeleteTag { tag, .. }, Applied::Ok) => Some(("delete", "", "", 0, tag)),
        (Command::UnlinkBlob { digest, .. }, Applied::BlobUnlinked { .. }) => {
            Some(("delete", digest, BLOB_MEDIA_TYPE, 0, ""))
        }
        (Command::PutBlob { digest, size, .. }, Applied::BlobStored { .. }) => {
            Some(("push", digest, BLOB_MEDIA_TYPE, *size, ""))
        }
        (Command::LinkBlob { digest, .. }, Applied::Ok) => Some(("mount", digest, BLOB_MEDIA_TYPE, 0, "")),
        _ => None,
    }
}

fn repository(cmd: &Command) -> &str {
    match cmd {
        Command::PutManifest { repo, .. }
        | Command::DeleteManifest { repo, .. }
        | Command::DeleteTag { repo, .. }
        | Command::UnlinkBlob { repo, .. }
        | Command::PutBlob { repo, .. }
        | Command::LinkBlob { repo, .. } => repo,
        _ => "",
    }
}

/// Records the event of the entry at `index` (its command `cmd`, applied as `reply`), if it
/// is one, and drops events past the retention.
pub(crate) async fn record(
    conn: &mut PgConnection,
    index: u64,
    at: DateTime<Utc>,
    origin: &EventOrigin,
    cmd: &Command,
    reply: &Applied,
) -> Result<()> {
    let Some((action, digest, media_type, size, tag)) = describe(cmd, reply) else { return Ok(()) };
    sqlx::query(
        "INSERT INTO notification_events (id, at, action, repository, digest, media_type, size, tag, origin)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING",
    )
    .bind(index as i64)
    .bind(at)
    .bind(action)
    .bind(repository(cmd))
    .bind(digest)
    .bind(media_type)
    .bind(size)
    .bind(tag)
    .bind(sqlx::types::Json(origin))
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "DELETE FROM notification_events e WHERE e.at < $1 - make_interval(hours => $2)
            AND NOT EXISTS (SELECT 1 FROM notification_dead_letters d WHERE d.event_id = e.id)",
    )
    .bind(at)
    .bind(RETENTION_HOURS as i32)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Applies `notifications_delivered.v1`.
pub(crate) async fn delivered(
    conn: &mut PgConnection,
    endpoint: &str,
    up_to: i64,
    dead: &[DeadLetter],
    redelivered: &[i64],
    at: DateTime<Utc>,
) -> Result<Applied> {
    sqlx::query(
        "INSERT INTO notification_cursors (endpoint, delivered) VALUES ($1, $2)
         ON CONFLICT (endpoint) DO UPDATE SET delivered = greatest(notification_cursors.delivered, EXCLUDED.delivered)",
    )
    .bind(endpoint)
    .bind(up_to)
    .execute(&mut *conn)
    .await?;
    for d in dead {
        sqlx::query(
            "INSERT INTO notification_dead_letters (endpoint, event_id, error, at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (endpoint, event_id) DO UPDATE SET error = EXCLUDED.error, at = EXCLUDED.at, retry = false",
        )
        .bind(endpoint)
        .bind(d.event_id)
        .bind(&d.error)
        .bind(at)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query("DELETE FROM notification_dead_letters WHERE endpoint = $1 AND event_id = ANY($2) AND retry")
        .bind(endpoint)
        .bind(redelivered)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "DELETE FROM notification_events e WHERE e.id <= (SELECT min(delivered) FROM notification_cursors)
            AND NOT EXISTS (SELECT 1 FROM notification_dead_letters d WHERE d.event_id = e.id)",
    )
    .execute(&mut *conn)
    .await?;
    Ok(Applied::Ok)
}

/// Applies `notifications_retry.v1`: how many dead letters will be sent again.
pub(crate) async fn retry(conn: &mut PgConnection, endpoint: &str, ids: &[i64]) -> Result<Applied> {
    let r = sqlx::query(
        "UPDATE notification_dead_letters SET retry = true
          WHERE endpoint = $1 AND (cardinality($2::int8[]) = 0 OR event_id = ANY($2))",
    )
    .bind(endpoint)
    .bind(ids)
    .execute(&mut *conn)
    .await?;
    Ok(if r.rows_affected() == 0 { Applied::NotFound } else { Applied::Ok })
}

// ---- reads of the delivering region and the CLI ----------------------------------------

/// Where `endpoint` stands: every event up to this id was delivered (0: none yet).
pub async fn cursor(pool: &PgPool, endpoint: &str) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT delivered FROM notification_cursors WHERE endpoint = $1")
        .bind(endpoint)
        .fetch_optional(pool)
        .await?
        .unwrap_or(0))
}

/// Up to `limit` events after `cursor`, in order.
pub async fn after(pool: &PgPool, cursor: i64, limit: i64) -> Result<Vec<EventRow>> {
    sqlx::query_as("SELECT * FROM notification_events WHERE id > $1 ORDER BY id LIMIT $2")
        .bind(cursor)
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// Events after `cursor`: the endpoint's backlog.
pub async fn pending(pool: &PgPool, cursor: i64) -> Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM notification_events WHERE id > $1").bind(cursor).fetch_one(pool).await
}

/// A dead letter, with its event.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct DeadRow {
    pub endpoint: String,
    pub error: String,
    pub dead_at: DateTime<Utc>,
    pub retry: bool,
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub event: EventRow,
}

/// The dead letters (of `endpoint`, or all), oldest event first; with `retry`, only those
/// marked to be sent again.
pub async fn dead_letters(pool: &PgPool, endpoint: Option<&str>, retry_only: bool) -> Result<Vec<DeadRow>> {
    sqlx::query_as(
        "SELECT d.endpoint, d.error, d.at AS dead_at, d.retry, e.*
           FROM notification_dead_letters d JOIN notification_events e ON e.id = d.event_id
          WHERE ($1::text IS NULL OR d.endpoint = $1) AND (NOT $2 OR d.retry)
          ORDER BY e.id, d.endpoint",
    )
    .bind(endpoint)
    .bind(retry_only)
    .fetch_all(pool)
    .await
}

pub async fn dead_letter_count(pool: &PgPool, endpoint: &str) -> Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM notification_dead_letters WHERE endpoint = $1")
        .bind(endpoint)
        .fetch_one(pool)
        .await
}

// ---- snapshots --------------------------------------------------------------------------

/// The three tables, as rows in JSON, for the snapshot document.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Tables {
    events: Vec<serde_json::Value>,
    cursors: Vec<serde_json::Value>,
    dead_letters: Vec<serde_json::Value>,
}

const TABLES: [(&str, &str); 3] = [
    ("notification_events", "id"),
    ("notification_cursors", "endpoint COLLATE \"C\""),
    ("notification_dead_letters", "endpoint COLLATE \"C\", event_id"),
];

pub(crate) async fn dump(conn: &mut PgConnection) -> Result<Tables> {
    let mut rows = Vec::new();
    for (table, order) in TABLES {
        let q = format!("SELECT to_jsonb(t) FROM {table} t ORDER BY {order}");
        rows.push(sqlx::query_scalar::<_, serde_json::Value>(&q).fetch_all(&mut *conn).await?);
    }
    let [events, cursors, dead_letters] = <[Vec<serde_json::Value>; 3]>::try_from(rows).expect("three tables");
    Ok(Tables { events, cursors, dead_letters })
}

/// Replaces the three tables with `t` (inside the install's transaction).
pub(crate) async fn restore(conn: &mut PgConnection, t: &Tables) -> Result<()> {
    for (table, _) in TABLES.iter().rev() {
        sqlx::query(&format!("DELETE FROM {table}")).execute(&mut *conn).await?;
    }
    for ((table, _), rows) in TABLES.iter().zip([&t.events, &t.cursors, &t.dead_letters]) {
        let q = format!("INSERT INTO {table} SELECT * FROM jsonb_populate_recordset(NULL::{table}, $1)");
        sqlx::query(&q).bind(serde_json::Value::Array(rows.to_vec())).execute(&mut *conn).await?;
    }
    Ok(())
}
