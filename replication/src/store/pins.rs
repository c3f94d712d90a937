//! SQL of the pinner: the region-local `pins` table, which triggers on the replicated `blobs`
//! keep as the pin queue (migrations/0007_pin_queue.sql: a row per blob CID, `wanted` until it
//! is pinned here, `needed` while a blob row names it), and the per-CID lock that every pin and unpin decision of the region takes (the node's upload path
//! uses the same lock).
//!
//! The lock is held across calls to the region's own Kubo (`pin/add` of bytes already local,
//! `pin/rm`), and only those: Kubo has no transactions, so a CID's pin in Kubo and the rows
//! that say who needs it can only change together under one lock. These calls are local,
//! metadata-only and bounded by a timeout; nothing holds the lock across Raft, another region
//! or a transfer of bytes.

use sqlx::{PgConnection, PgPool};

type Result<T> = std::result::Result<T, sqlx::Error>;

/// A blob CID this region should hold pinned but does not yet.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PinJob {
    pub cid: String,
    pub size: i64,
    pub origin_region: Option<i64>,
    pub attempts: i32,
}

/// The pinner's figures for `/status` and metrics.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, sqlx::FromRow)]
pub struct PinStats {
    /// Blob CIDs not pinned here yet (the persisted queue).
    pub backlog: i64,
    /// Of those, how many failed at least once and wait for a retry.
    pub failing: i64,
    /// Blob CIDs pinned here.
    pub pinned: i64,
    /// Bytes fetched from other regions to pin them.
    pub replicated_bytes: i64,
}

/// The longest wait for a CID's lock (and any other lock the same transaction then waits
/// for); past it the statement fails with SQLSTATE 55P03 instead of waiting on.
pub const LOCK_TIMEOUT: &str = "30s";

/// Serialises pin and unpin decisions for one CID until the transaction ends. The wait is
/// bounded by [`LOCK_TIMEOUT`].
pub async fn lock_cid(tx: &mut PgConnection, cid: &str) -> Result<()> {
    sqlx::query("SELECT set_config('lock_timeout', $1, true)").bind(LOCK_TIMEOUT).execute(&mut *tx).await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))").bind(cid).execute(&mut *tx).await?;
    Ok(())
}

/// Whether a blob, an upload in progress or a blob commit in flight still needs `cid` pinned
/// (call under [`lock_cid`]).
pub async fn cid_in_use(tx: &mut PgConnection, cid: &str) -> Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM blobs WHERE cid = $1) OR EXISTS (SELECT 1 FROM upload_chunks WHERE cid = $1)
             OR EXISTS (SELECT 1 FROM blob_holds WHERE cid = $1)",
    )
    .bind(cid)
    .fetch_one(&mut *tx)
    .await
}

/// Up to `limit` CIDs to pin now: never tried, or failed and due for a retry. A CID that an
/// upload of this region holds is left to that upload, which records its pin itself when its
/// commit is decided (in the transaction that drops the hold) — for [`HOLD_DECIDES_SECS`].
/// A hold older than that belongs to an upload whose outcome was unknown (its write timed out,
/// or its process died) and that will never record the pin: its hold stays until it expires
/// (hours), so once the blob record is applied the pinner records the pin (the bytes are in
/// this Kubo already, pinned for the hold), or the region's pin backlog would show the blob
/// as missing all that time.
///
/// Only the queue's rows are read (the partial index `pins_work`), never every blob.
pub async fn due(pool: &PgPool, limit: i64) -> Result<Vec<PinJob>> {
    sqlx::query_as(
        "SELECT p.cid, b.size, b.origin_region, p.attempts
           FROM pins p
           CROSS JOIN LATERAL (SELECT max(size) AS size, min(origin_region) AS origin_region, min(created_at) AS created_at
                                 FROM blobs WHERE cid = p.cid) b
          WHERE (p.state <> 'pinned' OR NOT p.needed) AND p.needed
            AND (p.state = 'wanted' OR (p.state = 'failed' AND p.next_attempt_at <= now()))
            AND b.size IS NOT NULL
            AND NOT EXISTS (SELECT 1 FROM blob_holds h WHERE h.cid = p.cid
                              AND h.created_at > now() - make_interval(secs => $2))
          ORDER BY b.created_at
          LIMIT $1",
    )
    .bind(limit)
    .bind(HOLD_DECIDES_SECS)
    .fetch_all(pool)
    .await
}

/// How long an upload's hold leaves its CID's pin to the upload: past the longest a blob
/// commit can take to be decided (the cluster's write timeout, 10 s by default, plus the
/// upload's own bookkeeping).
pub const HOLD_DECIDES_SECS: f64 = 20.0;

/// How long until a pin that is not due now will be, if one will: a failed pin's next
/// attempt, or the end of the [`HOLD_DECIDES_SECS`] an upload's hold leaves a recorded blob's
/// pin to that upload (whose commit may have ended unknown, so nobody else records the pin).
/// The pinner sleeps until then at most, so neither waits out its idle sleep. Measured by
/// Postgres, whose clock set both times, not by this process's.
pub async fn next_due(pool: &PgPool) -> Result<Option<std::time::Duration>> {
    let secs: Option<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM least(
                (SELECT min(next_attempt_at) FROM pins WHERE (state <> 'pinned' OR NOT needed) AND state = 'failed' AND needed),
                (SELECT min(h.created_at) + make_interval(secs => $1) FROM blob_holds h
                  WHERE h.created_at > now() - make_interval(secs => $1)
                    AND EXISTS (SELECT 1 FROM blobs b WHERE b.cid = h.cid)
                    AND EXISTS (SELECT 1 FROM pins p WHERE p.cid = h.cid AND p.state <> 'pinned'))
              ) - now())::float8",
    )
    .bind(HOLD_DECIDES_SECS)
    .fetch_one(pool)
    .await?;
    Ok(secs.map(|s| std::time::Duration::from_secs_f64(s.clamp(0.0, 86_400.0))))
}

/// Records that this region's Kubo holds `cid` pinned: under [`lock_cid`] right after making
/// sure it does, or while a blob row or hold keeps the CID in use (no unpin can come between).
pub async fn mark_pinned(tx: &mut PgConnection, cid: &str, fetched_bytes: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO pins (cid, state, attempts, fetched_bytes, last_error, updated_at, needed)
         VALUES ($1, 'pinned', 0, $2, NULL, now(), EXISTS (SELECT 1 FROM blobs WHERE cid = $1))
         ON CONFLICT (cid) DO UPDATE SET state = 'pinned', fetched_bytes = EXCLUDED.fetched_bytes,
             last_error = NULL, updated_at = now()",
    )
    .bind(cid)
    .bind(fetched_bytes)
    .execute(tx)
    .await?;
    Ok(())
}

pub async fn mark_failed(pool: &PgPool, cid: &str, attempts: i32, retry_in_secs: f64, error: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO pins (cid, state, attempts, next_attempt_at, last_error, updated_at, needed)
         VALUES ($1, 'failed', $2, now() + make_interval(secs => $3), $4, now(), EXISTS (SELECT 1 FROM blobs WHERE cid = $1))
         ON CONFLICT (cid) DO UPDATE SET state = 'failed', attempts = EXCLUDED.attempts,
             next_attempt_at = EXCLUDED.next_attempt_at, last_error = EXCLUDED.last_error, updated_at = now()",
    )
    .bind(cid)
    .bind(attempts)
    .bind(retry_in_secs)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

/// CIDs this region has a record of for blobs that no longer exist (deleted or collected).
pub async fn orphans(pool: &PgPool, limit: i64) -> Result<Vec<String>> {
    sqlx::query_scalar("SELECT cid FROM pins WHERE (state <> 'pinned' OR NOT needed) AND NOT needed LIMIT $1")
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// Puts a CID whose record said pinned, and whose pin Kubo does not hold, back in the queue
/// (call under [`lock_cid`]).
pub async fn want_again(tx: &mut PgConnection, cid: &str) -> Result<()> {
    sqlx::query(
        "UPDATE pins SET state = 'wanted', attempts = 0, updated_at = now() WHERE cid = $1 AND state = 'pinned'",
    )
    .bind(cid)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Drops this region's pin record of `cid` (call under [`lock_cid`], when its pin goes and no
/// blob names it).
pub async fn forget(tx: &mut PgConnection, cid: &str) -> Result<()> {
    // A row a blob names is the queue's (it came back meanwhile): it stays.
    sqlx::query("DELETE FROM pins WHERE cid = $1 AND NOT needed").bind(cid).execute(&mut *tx).await?;
    Ok(())
}

pub async fn stats(pool: &PgPool) -> Result<PinStats> {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM pins WHERE (state <> 'pinned' OR NOT needed) AND state <> 'pinned' AND needed) AS backlog,
                (SELECT count(*) FROM pins WHERE (state <> 'pinned' OR NOT needed) AND state = 'failed' AND needed) AS failing,
                (SELECT count(*) FROM pins WHERE state = 'pinned') AS pinned,
                (SELECT coalesce(sum(fetched_bytes), 0)::bigint FROM pins WHERE state = 'pinned') AS replicated_bytes",
    )
    .fetch_one(pool)
    .await
}

/// Every CID something in this region needs pinned: blobs, upload chunks, holds.
pub async fn needed_cids(pool: &PgPool) -> Result<std::collections::BTreeSet<String>> {
    let v: Vec<String> = sqlx::query_scalar(
        "SELECT cid FROM blobs UNION SELECT cid FROM upload_chunks UNION SELECT cid FROM blob_holds",
    )
    .fetch_all(pool)
    .await?;
    Ok(v.into_iter().collect())
}

/// CIDs this region records as pinned.
pub async fn recorded_pinned(pool: &PgPool) -> Result<Vec<String>> {
    sqlx::query_scalar("SELECT cid FROM pins WHERE state = 'pinned'").fetch_all(pool).await
}
