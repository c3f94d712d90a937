//! The SQL of what this region served (migrations/0009_pulls.sql): pull counts per day,
//! written a batch at a time with one statement each, the pull events waiting for the
//! endpoints that asked for them, and their per-endpoint cursors. Region-local tables: never
//! replicated, never in a snapshot.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::PgPool;

use afreg_replication::store::events::EventRow;
use afreg_replication::EventOrigin;

type Result<T> = std::result::Result<T, sqlx::Error>;

/// One row's worth of counts, added to what the row holds.
#[derive(Debug, Clone, PartialEq)]
pub struct CountDelta {
    pub day: NaiveDate,
    pub repository: String,
    pub digest: String,
    pub tag: String,
    pub pulls: i64,
    pub blob_pulls: i64,
    pub bytes: i64,
    pub last_pull: DateTime<Utc>,
}

/// A pull event before it has its id.
#[derive(Debug, Clone, PartialEq)]
pub struct NewPullEvent {
    pub at: DateTime<Utc>,
    pub repository: String,
    pub digest: String,
    pub media_type: String,
    pub size: i64,
    pub tag: String,
    pub origin: EventOrigin,
}

/// Adds `deltas` to the counts, in one statement.
pub async fn add_counts(pool: &PgPool, deltas: &[CountDelta]) -> Result<()> {
    if deltas.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&CountDelta) -> String| deltas.iter().map(f).collect::<Vec<_>>();
    let num = |f: fn(&CountDelta) -> i64| deltas.iter().map(f).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO pull_counts (day, repository, digest, tag, pulls, blob_pulls, bytes, last_pull)
         SELECT * FROM UNNEST($1::date[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[], $7::int8[],
                              $8::timestamptz[])
         ON CONFLICT (repository, day, digest, tag) DO UPDATE SET
            pulls = pull_counts.pulls + EXCLUDED.pulls,
            blob_pulls = pull_counts.blob_pulls + EXCLUDED.blob_pulls,
            bytes = pull_counts.bytes + EXCLUDED.bytes,
            last_pull = greatest(pull_counts.last_pull, EXCLUDED.last_pull)",
    )
    .bind(deltas.iter().map(|d| d.day).collect::<Vec<_>>())
    .bind(col(|d| d.repository.clone()))
    .bind(col(|d| d.digest.clone()))
    .bind(col(|d| d.tag.clone()))
    .bind(num(|d| d.pulls))
    .bind(num(|d| d.blob_pulls))
    .bind(num(|d| d.bytes))
    .bind(deltas.iter().map(|d| d.last_pull).collect::<Vec<_>>())
    .execute(pool)
    .await?;
    Ok(())
}

/// Stores `events`, in one statement.
pub async fn add_pull_events(pool: &PgPool, events: &[NewPullEvent]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&NewPullEvent) -> String| events.iter().map(f).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO pull_events (at, repository, digest, media_type, size, tag, origin)
         SELECT * FROM UNNEST($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::text[],
                              $7::jsonb[])",
    )
    .bind(events.iter().map(|e| e.at).collect::<Vec<_>>())
    .bind(col(|e| e.repository.clone()))
    .bind(col(|e| e.digest.clone()))
    .bind(col(|e| e.media_type.clone()))
    .bind(events.iter().map(|e| e.size).collect::<Vec<_>>())
    .bind(col(|e| e.tag.clone()))
    .bind(events.iter().map(|e| sqlx::types::Json(e.origin.clone())).collect::<Vec<_>>())
    .execute(pool)
    .await?;
    Ok(())
}

/// Up to `limit` pull events after `cursor`, oldest first.
pub async fn pull_events_after(pool: &PgPool, cursor: i64, limit: i64) -> Result<Vec<EventRow>> {
    sqlx::query_as(
        "SELECT id, at, action, repository, digest, media_type, size, tag, origin FROM pull_events
         WHERE id > $1 ORDER BY id LIMIT $2",
    )
    .bind(cursor)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// How many pull events are after `cursor`.
pub async fn pull_events_pending(pool: &PgPool, cursor: i64) -> Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM pull_events WHERE id > $1").bind(cursor).fetch_one(pool).await
}

/// Where `endpoint`'s pull events stand (0: none sent yet).
pub async fn pull_cursor(pool: &PgPool, endpoint: &str) -> Result<i64> {
    let c: Option<i64> = sqlx::query_scalar("SELECT delivered FROM pull_event_cursors WHERE endpoint = $1")
        .bind(endpoint)
        .fetch_optional(pool)
        .await?;
    Ok(c.unwrap_or(0))
}

/// Moves `endpoint`'s cursor forward to `up_to` (never back).
pub async fn set_pull_cursor(pool: &PgPool, endpoint: &str, up_to: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO pull_event_cursors (endpoint, delivered) VALUES ($1, $2)
         ON CONFLICT (endpoint) DO UPDATE SET delivered = greatest(pull_event_cursors.delivered, EXCLUDED.delivered)",
    )
    .bind(endpoint)
    .bind(up_to)
    .execute(pool)
    .await?;
    Ok(())
}

/// Drops the pull events every endpoint in `endpoints` has passed, those older than
/// `max_age`, and all but the newest `keep`; returns how many of those were not yet sent
/// to every endpoint (dropped by age or count).
pub async fn prune_pull_events(
    pool: &PgPool,
    endpoints: &[String],
    max_age: std::time::Duration,
    keep: i64,
) -> Result<u64> {
    let mut lowest: Option<i64> = None;
    for e in endpoints {
        let c = pull_cursor(pool, e).await?;
        lowest = Some(lowest.map_or(c, |l| l.min(c)));
    }
    let passed = lowest.unwrap_or(i64::MAX);
    sqlx::query("DELETE FROM pull_events WHERE id <= $1").bind(passed).execute(pool).await?;
    let unsent = sqlx::query(
        "DELETE FROM pull_events WHERE at < now() - make_interval(secs => $1)
            OR id <= (SELECT max(id) FROM pull_events) - $2",
    )
    .bind(max_age.as_secs_f64())
    .bind(keep)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(unsent)
}

/// Drops the counts of days before `before`.
pub async fn prune_counts(pool: &PgPool, before: NaiveDate) -> Result<u64> {
    Ok(sqlx::query("DELETE FROM pull_counts WHERE day < $1").bind(before).execute(pool).await?.rows_affected())
}

/// One repository's figures in this region.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, sqlx::FromRow)]
pub struct RepositoryUsage {
    pub repository: String,
    pub pulls: i64,
    pub blob_pulls: i64,
    pub bytes: i64,
    pub last_pull: Option<DateTime<Utc>>,
}

/// One day's figures of one repository in this region.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, sqlx::FromRow)]
pub struct DayUsage {
    pub day: NaiveDate,
    pub repository: String,
    pub pulls: i64,
    pub bytes: i64,
}

/// One tag's or digest's figures in this region.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, sqlx::FromRow)]
pub struct ReferenceUsage {
    pub repository: String,
    pub digest: String,
    pub tag: String,
    pub pulls: i64,
    pub bytes: i64,
    pub last_pull: Option<DateTime<Utc>>,
}

/// What this region served since `since` (a day, inclusive), per repository, per day and per
/// manifest reference. (The caller keeps the repositories its client may see.)
pub async fn usage(
    pool: &PgPool,
    since: NaiveDate,
) -> Result<(Vec<RepositoryUsage>, Vec<DayUsage>, Vec<ReferenceUsage>)> {
    let filter = "day >= $1";
    let repositories = sqlx::query_as(&format!(
        "SELECT repository, sum(pulls)::int8 AS pulls, sum(blob_pulls)::int8 AS blob_pulls, sum(bytes)::int8 AS bytes,
                max(last_pull) AS last_pull
         FROM pull_counts WHERE {filter} GROUP BY repository ORDER BY pulls DESC, repository"
    ))
    .bind(since)
    .fetch_all(pool)
    .await?;
    let days = sqlx::query_as(&format!(
        "SELECT day, repository, sum(pulls)::int8 AS pulls, sum(bytes)::int8 AS bytes
         FROM pull_counts WHERE {filter} GROUP BY day, repository ORDER BY day, repository"
    ))
    .bind(since)
    .fetch_all(pool)
    .await?;
    let references = sqlx::query_as(&format!(
        "SELECT repository, digest, tag, sum(pulls)::int8 AS pulls, sum(bytes)::int8 AS bytes, max(last_pull) AS last_pull
         FROM pull_counts WHERE {filter} AND pulls > 0 GROUP BY repository, digest, tag
         ORDER BY repository, pulls DESC, digest, tag"
    ))
    .bind(since)
    .fetch_all(pool)
    .await?;
    Ok((repositories, days, references))
}

/// What one repository holds: the bytes of the blobs its manifests reference (a blob shared
/// by several of them counted once) and of the manifests themselves, its tags and its last push.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, sqlx::FromRow)]
pub struct Stored {
    pub repository: String,
    pub bytes_stored: i64,
    pub tags: i64,
    pub manifests: i64,
    pub last_push: Option<DateTime<Utc>>,
}

/// Every repository's [`Stored`] figures (replicated data: every region has the same).
pub async fn stored(pool: &PgPool) -> Result<Vec<Stored>> {
    sqlx::query_as(
        "SELECT r.name AS repository,
                (coalesce((SELECT sum(b.size) FROM blobs b WHERE b.digest IN
                    (SELECT mr.ref_digest FROM manifest_references mr
                      WHERE mr.repository_id = r.id AND NOT mr.is_manifest)), 0)
                 + coalesce((SELECT sum(m.size) FROM manifests m WHERE m.repository_id = r.id), 0))::int8 AS bytes_stored,
                (SELECT count(*) FROM tags t WHERE t.repository_id = r.id) AS tags,
                (SELECT count(*) FROM manifests m WHERE m.repository_id = r.id) AS manifests,
                (SELECT max(m.created_at) FROM manifests m WHERE m.repository_id = r.id) AS last_push
         FROM repositories r ORDER BY r.name",
    )
    .fetch_all(pool)
    .await
}

/// One tag of a repository with its manifest, as the console lists them.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct TagDetail {
    pub tag: String,
    pub digest: String,
    pub media_type: String,
    pub size: i64,
    pub pushed_at: DateTime<Utc>,
}

/// Every tag of `repository`, newest push first.
pub async fn tag_details(pool: &PgPool, repository: &str) -> Result<Vec<TagDetail>> {
    sqlx::query_as(
        "SELECT t.name AS tag, m.digest, m.media_type, m.size, t.updated_at AS pushed_at
         FROM repositories r JOIN tags t ON t.repository_id = r.id
         JOIN manifests m ON m.repository_id = t.repository_id AND m.digest = t.manifest_digest
         WHERE r.name = $1 ORDER BY t.updated_at DESC, t.name",
    )
    .bind(repository)
    .fetch_all(pool)
    .await
}
