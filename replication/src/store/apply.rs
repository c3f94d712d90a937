//! Applying one [`Command`] to the replicated metadata tables: the only SQL that writes them.
//!
//! Every function runs inside the state machine's transaction (under a savepoint per entry)
//! and must be deterministic: it reads only the rows earlier entries left, writes only values
//! from the command (times from `at`, never `now()`), and keys rows by name, looking up the
//! region-local `repositories.id` inside the transaction. Refusals that follow from the state
//! (missing blobs, unknown rows) are [`Applied`] values, decided identically in every region.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::types::{Applied, Command, Region};

type Result<T> = std::result::Result<T, sqlx::Error>;

/// Applies `cmd`, the entry at log index `index`, and says how it went. An `Err` is a
/// database error; the caller decides whether it is deterministic (a constraint) or a
/// storage failure.
pub(crate) async fn command(conn: &mut PgConnection, index: u64, cmd: &Command) -> Result<Applied> {
    match cmd {
        Command::WithOrigin { origin, at, command: inner } => {
            let Some(at) = millis(*at) else { return Ok(bad_time(*at)) };
            if matches!(**inner, Command::WithOrigin { .. }) {
                return Ok(Applied::Invalid { reason: "with_origin.v1 inside with_origin.v1".into() });
            }
            let reply = one(conn, inner).await?;
            super::events::record(conn, index, at, origin, inner, &reply).await?;
            Ok(reply)
        }
        other => one(conn, other).await,
    }
}

/// Applies one command that is not [`Command::WithOrigin`].
async fn one(conn: &mut PgConnection, cmd: &Command) -> Result<Applied> {
    match cmd {
        Command::WithOrigin { .. } => Ok(Applied::Invalid { reason: "nested with_origin.v1".into() }),
        Command::NotificationsDelivered { endpoint, delivered, dead, redelivered, at } => {
            let Some(at) = millis(*at) else { return Ok(bad_time(*at)) };
            super::events::delivered(conn, endpoint, *delivered, dead, redelivered, at).await
        }
        Command::NotificationsRetry { endpoint, event_ids } => super::events::retry(conn, endpoint, event_ids).await,
        Command::PutManifest {
            repo,
            digest,
            media_type,
            body,
            subject,
            artifact_type,
            annotations,
            blob_refs,
            foreign_refs,
            child_refs,
            tag,
            at,
        } => {
            let Some(at) = millis(*at) else { return Ok(bad_time(*at)) };
            let m = Manifest {
                digest,
                media_type,
                body,
                subject: subject.as_deref(),
                artifact_type: artifact_type.as_deref(),
                annotations: annotations.as_ref(),
                blob_refs,
                foreign_refs,
                child_refs,
            };
            put_manifest(conn, repo, &m, tag.as_deref(), at).await
        }
        Command::DeleteManifest { repo, digest } => delete_manifest(conn, repo, digest).await,
        Command::DeleteTag { repo, tag } => delete_tag(conn, repo, tag).await,
        Command::PutBlob { repo, digest, cid, size, origin_region, at } => {
            let Some(at) = millis(*at) else { return Ok(bad_time(*at)) };
            put_blob(conn, repo, digest, cid, *size, *origin_region, at).await
        }
        Command::LinkBlob { repo, digest, at } => {
            let Some(at) = millis(*at) else { return Ok(bad_time(*at)) };
            link_blob(conn, repo, digest, at).await
        }
        Command::UnlinkBlob { repo, digest } => unlink_blob(conn, repo, digest).await,
        Command::CollectLinks { links, linked_before } => {
            let Some(before) = millis(*linked_before) else { return Ok(bad_time(*linked_before)) };
            collect_links(conn, links, before).await
        }
        Command::PutUser { name, password_hash, grants, at } => {
            let Some(at) = millis(*at) else { return Ok(bad_time(*at)) };
            put_user(conn, name, password_hash, grants, at).await
        }
        Command::RemoveUser { name } => remove_user(conn, name).await,
        Command::PutRegion { id, region } => put_region(conn, *id, region).await,
        Command::RemoveRegion { id } => remove_region(conn, *id).await,
    }
}

/// The entry's time as a timestamp; `None` when out of chrono's range.
fn millis(at: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(at)
}

fn bad_time(at: i64) -> Applied {
    Applied::Invalid { reason: format!("time {at} ms is out of range") }
}

struct Manifest<'a> {
    digest: &'a str,
    media_type: &'a str,
    body: &'a [u8],
    subject: Option<&'a str>,
    artifact_type: Option<&'a str>,
    annotations: Option<&'a serde_json::Value>,
    blob_refs: &'a [String],
    foreign_refs: &'a [String],
    child_refs: &'a [String],
}

async fn repo_id(conn: &mut PgConnection, repo: &str) -> Result<Option<i64>> {
    sqlx::query_scalar("SELECT id FROM repositories WHERE name = $1").bind(repo).fetch_optional(conn).await
}

/// The repository's local id, creating the row (created at `at`) if it is new.
async fn ensure_repo(conn: &mut PgConnection, repo: &str, at: DateTime<Utc>) -> Result<i64> {
    sqlx::query_scalar(
        "WITH ins AS (INSERT INTO repositories (name, created_at) VALUES ($1, $2)
                      ON CONFLICT (name) DO NOTHING RETURNING id)
         SELECT id FROM ins UNION ALL SELECT id FROM repositories WHERE name = $1 LIMIT 1",
    )
    .bind(repo)
    .bind(at)
    .fetch_one(conn)
    .await
}

/// `items` without repeats, first occurrence kept, order kept.
fn dedup(items: &[String]) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    items.iter().filter(|d| seen.insert(d.as_str())).cloned().collect()
}

async fn put_manifest(
    conn: &mut PgConnection,
    repo: &str,
    m: &Manifest<'_>,
    tag: Option<&str>,
    at: DateTime<Utc>,
) -> Result<Applied> {
    // Check before writing anything, so a refusal leaves no trace (not even the repository).
    let required = dedup(m.blob_refs);
    if !required.is_empty() {
        let present: Vec<String> = match repo_id(conn, repo).await? {
            Some(id) => {
                sqlx::query_scalar("SELECT digest FROM repository_blobs WHERE repository_id = $1 AND digest = ANY($2)")
                    .bind(id)
                    .bind(&required)
                    .fetch_all(&mut *conn)
                    .await?
            }
            None => Vec::new(),
        };
        let missing: Vec<String> = required.iter().filter(|d| !present.contains(d)).cloned().collect();
        if !missing.is_empty() {
            return Ok(Applied::MissingBlobs(missing));
        }
    }
    let repo_id = ensure_repo(conn, repo, at).await?;
    sqlx::query(
        "INSERT INTO manifests
             (repository_id, digest, media_type, body, size, subject, artifact_type, annotations, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (repository_id, digest) DO NOTHING",
    )
    .bind(repo_id)
    .bind(m.digest)
    .bind(m.media_type)
    .bind(m.body)
    .bind(m.body.len() as i64)
    .bind(m.subject)
    .bind(m.artifact_type)
    .bind(m.annotations)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    let mut refs: Vec<String> = required;
    refs.extend(m.foreign_refs.iter().cloned());
    let n_blobs = refs.len();
    refs.extend(m.child_refs.iter().cloned());
    if !refs.is_empty() {
        let is_manifest: Vec<bool> = (0..refs.len()).map(|i| i >= n_blobs).collect();
        sqlx::query(
            "INSERT INTO manifest_references (repository_id, manifest_digest, ref_digest, is_manifest)
             SELECT $1, $2, r, m FROM UNNEST($3::text[], $4::bool[]) AS u(r, m)
             ON CONFLICT DO NOTHING",
        )
        .bind(repo_id)
        .bind(m.digest)
        .bind(&refs)
        .bind(&is_manifest)
        .execute(&mut *conn)
        .await?;
    }
    if let Some(tag) = tag {
        sqlx::query(
            "INSERT INTO tags (repository_id, name, manifest_digest, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (repository_id, name)
             DO UPDATE SET manifest_digest = EXCLUDED.manifest_digest, updated_at = EXCLUDED.updated_at",
        )
        .bind(repo_id)
        .bind(tag)
        .bind(m.digest)
        .bind(at)
        .execute(&mut *conn)
        .await?;
    }
    Ok(Applied::Ok)
}

fn found(rows: u64) -> Applied {
    if rows > 0 {
        Applied::Ok
    } else {
        Applied::NotFound
    }
}

async fn delete_manifest(conn: &mut PgConnection, repo: &str, digest: &str) -> Result<Applied> {
    // Tags and references go with it (ON DELETE CASCADE).
    let r = sqlx::query(
        "DELETE FROM manifests m USING repositories r WHERE m.repository_id = r.id AND r.name = $1 AND m.digest = $2",
    )
    .bind(repo)
    .bind(digest)
    .execute(conn)
    .await?;
    Ok(found(r.rows_affected()))
}

async fn delete_tag(conn: &mut PgConnection, repo: &str, tag: &str) -> Result<Applied> {
    let r = sqlx::query(
        "DELETE FROM tags t USING repositories r WHERE t.repository_id = r.id AND r.name = $1 AND t.name = $2",
    )
    .bind(repo)
    .bind(tag)
    .execute(conn)
    .await?;
    Ok(found(r.rows_affected()))
}

async fn put_blob(
    conn: &mut PgConnection,
    repo: &str,
    digest: &str,
    cid: &str,
    size: i64,
    origin_region: u64,
    at: DateTime<Utc>,
) -> Result<Applied> {
    let kept: String = sqlx::query_scalar(
        "WITH ins AS (INSERT INTO blobs (digest, cid, size, origin_region, created_at) VALUES ($1, $2, $3, $4, $5)
                      ON CONFLICT (digest) DO NOTHING RETURNING cid)
         SELECT cid FROM ins UNION ALL SELECT cid FROM blobs WHERE digest = $1 LIMIT 1",
    )
    .bind(digest)
    .bind(cid)
    .bind(size)
    .bind(origin_region as i64)
    .bind(at)
    .fetch_one(&mut *conn)
    .await?;
    let repo_id = ensure_repo(conn, repo, at).await?;
    insert_link(conn, repo_id, digest, at).await?;
    Ok(Applied::BlobStored { cid: kept })
}

/// Links the blob into the repository, or refreshes an existing link's time: `created_at` is
/// when the blob was last linked, which GC's grace period counts from.
async fn insert_link(conn: &mut PgConnection, repo_id: i64, digest: &str, at: DateTime<Utc>) -> Result<()> {
    sqlx::query(
        "INSERT INTO repository_blobs (repository_id, digest, created_at) VALUES ($1, $2, $3)
         ON CONFLICT (repository_id, digest)
         DO UPDATE SET created_at = GREATEST(repository_blobs.created_at, EXCLUDED.created_at)",
    )
    .bind(repo_id)
    .bind(digest)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

async fn link_blob(conn: &mut PgConnection, repo: &str, digest: &str, at: DateTime<Utc>) -> Result<Applied> {
    let known: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM blobs WHERE digest = $1").bind(digest).fetch_optional(&mut *conn).await?;
    if known.is_none() {
        return Ok(Applied::NotFound);
    }
    let repo_id = ensure_repo(conn, repo, at).await?;
    insert_link(conn, repo_id, digest, at).await?;
    Ok(Applied::Ok)
}

async fn unlink_blob(conn: &mut PgConnection, repo: &str, digest: &str) -> Result<Applied> {
    let r = sqlx::query(
        "DELETE FROM repository_blobs rb USING repositories r
          WHERE rb.repository_id = r.id AND r.name = $1 AND rb.digest = $2",
    )
    .bind(repo)
    .bind(digest)
    .execute(&mut *conn)
    .await?;
    if r.rows_affected() == 0 {
        return Ok(Applied::NotFound);
    }
    let orphaned_cid = drop_if_unlinked(conn, digest).await?;
    Ok(Applied::BlobUnlinked { orphaned_cid })
}

/// Deletes the blob row once no repository links it; returns its CID if it went.
async fn drop_if_unlinked(conn: &mut PgConnection, digest: &str) -> Result<Option<String>> {
    sqlx::query_scalar(
        "DELETE FROM blobs b WHERE b.digest = $1
            AND NOT EXISTS (SELECT 1 FROM repository_blobs rb WHERE rb.digest = b.digest)
          RETURNING cid",
    )
    .bind(digest)
    .fetch_optional(conn)
    .await
}

/// GC: unlinks each link that is still unreferenced and was last linked before `before`.
async fn collect_links(conn: &mut PgConnection, links: &[(String, String)], before: DateTime<Utc>) -> Result<Applied> {
    let (mut unlinked, mut orphaned_cids) = (0, Vec::new());
    for (repo, digest) in links {
        let r = sqlx::query(
            "DELETE FROM repository_blobs rb USING repositories r
              WHERE rb.repository_id = r.id AND r.name = $1 AND rb.digest = $2 AND rb.created_at < $3
                AND NOT EXISTS (SELECT 1 FROM manifest_references mr
                                 WHERE mr.repository_id = rb.repository_id AND mr.ref_digest = rb.digest)",
        )
        .bind(repo)
        .bind(digest)
        .bind(before)
        .execute(&mut *conn)
        .await?;
        if r.rows_affected() > 0 {
            unlinked += 1;
            orphaned_cids.extend(drop_if_unlinked(conn, digest).await?);
        }
    }
    Ok(Applied::Collected { unlinked, orphaned_cids })
}

async fn put_user(
    conn: &mut PgConnection,
    name: &str,
    password_hash: &str,
    grants: &[(String, Vec<String>)],
    at: DateTime<Utc>,
) -> Result<Applied> {
    sqlx::query(
        "INSERT INTO users (username, password_hash, created_at) VALUES ($1, $2, $3)
         ON CONFLICT (username) DO UPDATE SET password_hash = EXCLUDED.password_hash",
    )
    .bind(name)
    .bind(password_hash)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM user_grants WHERE username = $1").bind(name).execute(&mut *conn).await?;
    for (pattern, actions) in grants {
        sqlx::query(
            "INSERT INTO user_grants (username, pattern, actions) VALUES ($1, $2, $3)
             ON CONFLICT (username, pattern) DO UPDATE SET actions = EXCLUDED.actions",
        )
        .bind(name)
        .bind(pattern)
        .bind(actions)
        .execute(&mut *conn)
        .await?;
    }
    Ok(Applied::Ok)
}

async fn remove_user(conn: &mut PgConnection, name: &str) -> Result<Applied> {
    let r = sqlx::query("DELETE FROM users WHERE username = $1").bind(name).execute(conn).await?;
    Ok(found(r.rows_affected()))
}

async fn put_region(conn: &mut PgConnection, id: u64, region: &Region) -> Result<Applied> {
    let removed: Option<bool> = sqlx::query_scalar("SELECT removed FROM regions WHERE id = $1")
        .bind(id as i64)
        .fetch_optional(&mut *conn)
        .await?;
    if removed == Some(true) {
        return Ok(Applied::RegionRetired);
    }
    sqlx::query(
        "INSERT INTO regions (id, name, raft_addr, api_url, kubo_peer_id, kubo_swarm_addrs, token_jwk, removed)
         VALUES ($1, $2, $3, $4, $5, $6, $7, false)
         ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, raft_addr = EXCLUDED.raft_addr,
             api_url = EXCLUDED.api_url, kubo_peer_id = EXCLUDED.kubo_peer_id,
             kubo_swarm_addrs = EXCLUDED.kubo_swarm_addrs, token_jwk = EXCLUDED.token_jwk",
    )
    .bind(id as i64)
    .bind(&region.name)
    .bind(&region.raft_addr)
    .bind(&region.api_url)
    .bind(&region.kubo_peer_id)
    .bind(&region.kubo_swarm_addrs)
    .bind(&region.token_jwk)
    .execute(conn)
    .await?;
    Ok(Applied::Ok)
}

async fn remove_region(conn: &mut PgConnection, id: u64) -> Result<Applied> {
    let r = sqlx::query("UPDATE regions SET removed = true WHERE id = $1").bind(id as i64).execute(conn).await?;
    Ok(found(r.rows_affected()))
}
