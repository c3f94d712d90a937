//! All SQL lives here. The schema is owned by `migrations/`, applied at start-up; nothing else
//! in the crate builds a query. Functions that must share a transaction with a Kubo call take
//! a `&mut PgConnection`; the rest take the pool.
//!
//! Pins and rows: a CID is pinned before the row that needs it commits, and unpinned only
//! when no `blobs`, `upload_chunks` or `blob_holds` row names it. Both happen under a
//! transaction-scoped advisory lock on the CID ([`lock_cid`]), so a concurrent upload of the
//! same bytes can never lose its pin to a delete.
//!
//! [`usage`] holds the SQL of what the region served (its own tables, not replicated).

use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

use crate::config::DatabaseConfig;
use crate::oci::{Digest, Reference, RegistryError, RepoName};

pub mod mirror;
pub mod usage;

pub type Tx = Transaction<'static, Postgres>;
type Result<T> = std::result::Result<T, RegistryError>;

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

#[derive(Debug, Clone)]
pub struct BlobRow {
    pub cid: String,
    pub size: i64,
}

#[derive(Debug, Clone)]
pub struct ManifestRow {
    pub digest: String,
    pub media_type: String,
    pub size: i64,
    /// Empty for HEAD lookups that do not fetch the bytes.
    pub body: bytes::Bytes,
}

#[derive(Debug, Clone)]
pub struct ReferrerRow {
    pub digest: String,
    pub media_type: String,
    pub size: i64,
    pub artifact_type: Option<String>,
    pub annotations: Option<serde_json::Value>,
}

/// A chunk to record: it covers `start .. start + length` of the blob, and may begin before
/// the session's current size (re-sending the unaligned tail of the chunk before it).
pub struct NewChunk<'a> {
    pub start: i64,
    pub length: i64,
    pub cid: &'a str,
}

/// What [`Store::append_chunk`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Recorded; `replaced` is the CID of an earlier chunk the new one holds whole.
    Appended { replaced: Option<String> },
    /// The session is gone, or another chunk got there first.
    Gone,
    /// The chunk would take its owner's open sessions past `storage.max_staged_bytes_per_user`.
    OverQuota,
}

/// An upload session: the bytes received, and the chunks that hold them.
#[derive(Debug, Clone)]
pub struct UploadRow {
    pub size: i64,
    /// Who opened the session (`storage.max_uploads_per_user`, `max_staged_bytes_per_user`).
    pub owner: String,
    /// The bytes all of the owner's open sessions hold, this one's included.
    pub owner_staged: i64,
    /// `(offset, length, cid)` in order. With a fixed-size chunker each starts at a multiple
    /// of the chunk size, and may overlap the one before it by that one's unaligned tail.
    pub chunks: Vec<(i64, i64, String)>,
}

/// Serializes what counts one owner's upload sessions (their number, their staged bytes),
/// until the transaction ends.
async fn lock_owner(tx: &mut PgConnection, owner: &str) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('afreg.upload_owner:' || $1, 0))")
        .bind(owner)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

fn observe(op: &'static str, started: Instant) {
    metrics::histogram!("afreg_postgres_query_seconds", "op" => op).record(started.elapsed().as_secs_f64());
}

impl Store {
    /// Connects, waiting up to `wait` for Postgres to come up, then applies migrations.
    /// `app` names the connections in Postgres (`application_name`, e.g. `afreg us-1`).
    pub async fn connect(cfg: &DatabaseConfig, wait: Duration, app: &str) -> anyhow::Result<Store> {
        let opts: PgConnectOptions = cfg.url.parse::<PgConnectOptions>()?.application_name(app);
        let pool = PgPoolOptions::new()
            .max_connections(cfg.max_connections)
            .acquire_timeout(Duration::from_secs(cfg.acquire_timeout_secs))
            .connect_lazy_with(opts);
        let deadline = Instant::now() + wait;
        loop {
            match sqlx::query("SELECT 1").execute(&pool).await {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    tracing::warn!(event = "postgres_wait", error = %e, "waiting for PostgreSQL");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(anyhow::anyhow!("PostgreSQL at {} is unreachable: {e}", redact(&cfg.url))),
            }
        }
        sqlx::migrate!("../migrations").run(&pool).await?;
        Ok(Store { pool })
    }

    /// The pool of the request path, shared with the pinner and the duties.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A separate pool on the same database for the Raft log and state machine
    /// (`raft_max_connections`), so that no burst of requests can take Raft's connections.
    pub fn raft_pool(cfg: &DatabaseConfig, app: &str) -> anyhow::Result<PgPool> {
        let opts: PgConnectOptions = cfg.url.parse::<PgConnectOptions>()?.application_name(app);
        Ok(PgPoolOptions::new()
            .max_connections(cfg.raft_max_connections.max(2))
            .acquire_timeout(Duration::from_secs(cfg.acquire_timeout_secs))
            .connect_lazy_with(opts))
    }

    pub async fn begin(&self) -> Result<Tx> {
        Ok(self.pool.begin().await?)
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    // ---- blobs -----------------------------------------------------------------------

    /// The blob as served through `repo`: one round trip.
    pub async fn repo_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Option<BlobRow>> {
        let t = Instant::now();
        let row = sqlx::query(
            "SELECT b.cid, b.size FROM repositories r
               JOIN repository_blobs rb ON rb.repository_id = r.id
               JOIN blobs b ON b.digest = rb.digest
              WHERE r.name = $1 AND rb.digest = $2",
        )
        .bind(repo.as_str())
        .bind(digest.as_str())
        .fetch_optional(&self.pool)
        .await?;
        observe("repo_blob", t);
        Ok(row.map(|r| BlobRow { cid: r.get(0), size: r.get(1) }))
    }

    // ---- manifests -------------------------------------------------------------------

    /// The manifest for a tag or digest in one round trip; `with_body` false for HEAD.
    /// When `tag` of `repo` was last written (by a push, or by the pull-through cache).
    pub async fn tag_updated_at(&self, repo: &RepoName, tag: &str) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
        let t = Instant::now();
        let at = sqlx::query_scalar(
            "SELECT t.updated_at FROM repositories r JOIN tags t ON t.repository_id = r.id
              WHERE r.name = $1 AND t.name = $2",
        )
        .bind(repo.as_str())
        .bind(tag)
        .fetch_optional(&self.pool)
        .await?;
        observe("tag_updated_at", t);
        Ok(at)
    }

    pub async fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        with_body: bool,
    ) -> Result<Option<ManifestRow>> {
        let t = Instant::now();
        let body = if with_body { "m.body" } else { "''::bytea" };
        let sql = match reference {
            Reference::Tag(_) => format!(
                "SELECT m.digest, m.media_type, m.size, {body} FROM repositories r
                   JOIN tags t ON t.repository_id = r.id
                   JOIN manifests m ON m.repository_id = t.repository_id AND m.digest = t.manifest_digest
                  WHERE r.name = $1 AND t.name = $2"
            ),
            Reference::Digest(_) => format!(
                "SELECT m.digest, m.media_type, m.size, {body} FROM repositories r
                   JOIN manifests m ON m.repository_id = r.id
                  WHERE r.name = $1 AND m.digest = $2"
            ),
        };
        let row = sqlx::query(&sql).bind(repo.as_str()).bind(reference.to_string()).fetch_optional(&self.pool).await?;
        observe("manifest", t);
        Ok(row.map(|r| ManifestRow {
            digest: r.get(0),
            media_type: r.get(1),
            size: r.get(2),
            body: r.get::<Vec<u8>, _>(3).into(),
        }))
    }

    /// Tags in lexical order after `last`, at most `n`. `None` if the repository is unknown.
    pub async fn tags(&self, repo: &RepoName, n: Option<i64>, last: Option<&str>) -> Result<Option<Vec<String>>> {
        let rows: Vec<(Option<String>,)> = sqlx::query_as(
            "SELECT t.name FROM repositories r
               LEFT JOIN LATERAL (
                 SELECT name FROM tags WHERE repository_id = r.id AND ($2::text IS NULL OR name COLLATE \"C\" > $2)
                  ORDER BY name COLLATE \"C\" LIMIT $3) t ON true
              WHERE r.name = $1",
        )
        .bind(repo.as_str())
        .bind(last)
        .bind(n)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        Ok(Some(rows.into_iter().filter_map(|r| r.0).collect()))
    }

    /// Repository names in lexical order after `last`, at most `n`.
    pub async fn catalog(&self, n: Option<i64>, last: Option<&str>) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT name FROM repositories WHERE ($1::text IS NULL OR name COLLATE \"C\" > $1) ORDER BY name COLLATE \"C\" LIMIT $2",
        )
        .bind(last)
        .bind(n)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Manifests in `repo` whose subject is `subject`, optionally of one artifact type.
    /// One page of `subject`'s referrers in digest order: at most `limit`, after `last`.
    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
        last: Option<&str>,
        limit: i64,
    ) -> Result<Vec<ReferrerRow>> {
        let rows = sqlx::query(
            "SELECT m.digest, m.media_type, m.size, m.artifact_type, m.annotations
               FROM repositories r JOIN manifests m ON m.repository_id = r.id
              WHERE r.name = $1 AND m.subject = $2 AND ($3::text IS NULL OR m.artifact_type = $3)
                AND ($4::text IS NULL OR m.digest > $4)
              ORDER BY m.digest
              LIMIT $5",
        )
        .bind(repo.as_str())
        .bind(subject.as_str())
        .bind(artifact_type)
        .bind(last)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| ReferrerRow {
                digest: r.get(0),
                media_type: r.get(1),
                size: r.get(2),
                artifact_type: r.get(3),
                annotations: r.get(4),
            })
            .collect())
    }

    // ---- upload sessions -------------------------------------------------------------

    /// Opens an upload session for `owner` unless it has `max` open already (false). The
    /// owner's advisory lock, for this transaction only, makes the count and the insert one
    /// step, so concurrent starts cannot pass the limit together.
    pub async fn create_upload(&self, id: Uuid, repo: &RepoName, owner: &str, max: u32) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        lock_owner(&mut tx, owner).await?;
        let open: i64 =
            sqlx::query_scalar("SELECT count(*) FROM uploads WHERE owner = $1").bind(owner).fetch_one(&mut *tx).await?;
        if open >= max as i64 {
            return Ok(false);
        }
        sqlx::query("INSERT INTO uploads (id, repository, owner) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(repo.as_str())
            .bind(owner)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn upload(&self, id: Uuid, repo: &RepoName) -> Result<Option<UploadRow>> {
        let row: Option<(i64, String, i64)> = sqlx::query_as(
            "SELECT u.size, u.owner, (SELECT sum(o.size)::bigint FROM uploads o WHERE o.owner = u.owner) \
             FROM uploads u WHERE u.id = $1 AND u.repository = $2",
        )
        .bind(id)
        .bind(repo.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some((size, owner, owner_staged)) = row else { return Ok(None) };
        let chunks: Vec<(i64, i64, String)> = sqlx::query_as(
            "SELECT \"offset\", length, cid FROM upload_chunks WHERE upload_id = $1 ORDER BY \"offset\"",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(Some(UploadRow { size, owner, owner_staged, chunks }))
    }

    /// Records `chunk` in a session whose size is `size` (else `Gone`: the session ended or
    /// another chunk got there first); the session's size becomes the chunk's end. Unless that
    /// takes the bytes `owner`'s sessions stage past `max_staged` (then `OverQuota`, nothing
    /// written): checked under the owner's lock, so concurrent chunks cannot both squeeze in.
    pub async fn append_chunk(
        tx: &mut PgConnection,
        id: Uuid,
        size: i64,
        chunk: &NewChunk<'_>,
        owner: &str,
        max_staged: u64,
    ) -> Result<AppendOutcome> {
        lock_owner(tx, owner).await?;
        let others: i64 =
            sqlx::query_scalar("SELECT coalesce(sum(size), 0)::bigint FROM uploads WHERE owner = $1 AND id <> $2")
                .bind(owner)
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
        if (others + chunk.start + chunk.length) as u64 > max_staged {
            return Ok(AppendOutcome::OverQuota);
        }
        let r = sqlx::query("UPDATE uploads SET size = $3, updated_at = now() WHERE id = $1 AND size = $2")
            .bind(id)
            .bind(size)
            .bind(chunk.start + chunk.length)
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() == 0 {
            return Ok(AppendOutcome::Gone);
        }
        // A chunk that starts where an earlier one did holds all of it (the earlier one was the
        // unaligned tail, re-sent): the earlier one goes.
        let replaced: Option<String> =
            sqlx::query_scalar("DELETE FROM upload_chunks WHERE upload_id = $1 AND \"offset\" = $2 RETURNING cid")
                .bind(id)
                .bind(chunk.start)
                .fetch_optional(&mut *tx)
                .await?;
        sqlx::query("INSERT INTO upload_chunks (upload_id, \"offset\", length, cid) VALUES ($1, $2, $3, $4)")
            .bind(id)
            .bind(chunk.start)
            .bind(chunk.length)
            .bind(chunk.cid)
            .execute(&mut *tx)
            .await?;
        Ok(AppendOutcome::Appended { replaced })
    }

    /// Deletes a session; returns its chunks' CIDs, or `None` if it did not exist.
    pub async fn delete_upload(tx: &mut PgConnection, id: Uuid) -> Result<Option<Vec<String>>> {
        let cids: Vec<String> = sqlx::query_scalar("SELECT cid FROM upload_chunks WHERE upload_id = $1")
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
        let r = sqlx::query("DELETE FROM uploads WHERE id = $1").bind(id).execute(&mut *tx).await?;
        Ok((r.rows_affected() > 0).then_some(cids))
    }

    /// Sessions untouched for longer than `age`.
    pub async fn stale_uploads(&self, age: Duration) -> Result<Vec<Uuid>> {
        Ok(sqlx::query_scalar("SELECT id FROM uploads WHERE updated_at < now() - make_interval(secs => $1)")
            .bind(age.as_secs_f64())
            .fetch_all(&self.pool)
            .await?)
    }

    /// Which of `ids` are upload sessions that still exist (in any process of the region).
    pub async fn existing_uploads(&self, ids: &[Uuid]) -> Result<std::collections::HashSet<Uuid>> {
        let found: Vec<Uuid> =
            sqlx::query_scalar("SELECT id FROM uploads WHERE id = ANY($1)").bind(ids).fetch_all(&self.pool).await?;
        Ok(found.into_iter().collect())
    }

    /// The region's token signing key: `pem` becomes it unless one is already recorded, and
    /// the recorded one is returned. Every process of a region signs with it, so a token one
    /// issued verifies at all of them.
    pub async fn share_signing_key(&self, pem: &str) -> Result<String> {
        sqlx::query("INSERT INTO region_signing_key (pem) VALUES ($1) ON CONFLICT (only_row) DO NOTHING")
            .bind(pem)
            .execute(&self.pool)
            .await?;
        Ok(sqlx::query_scalar("SELECT pem FROM region_signing_key").fetch_one(&self.pool).await?)
    }

    pub async fn open_uploads(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM uploads").fetch_one(&self.pool).await?)
    }

    // ---- blob holds ------------------------------------------------------------------

    /// Holds `cid` for a blob commit in flight until `ttl` from now (call under its lock).
    pub async fn insert_hold(tx: &mut PgConnection, id: Uuid, cid: &str, ttl: Duration) -> Result<()> {
        sqlx::query("INSERT INTO blob_holds (id, cid, expires_at) VALUES ($1, $2, now() + make_interval(secs => $3))")
            .bind(id)
            .bind(cid)
            .bind(ttl.as_secs_f64())
            .execute(tx)
            .await?;
        Ok(())
    }

    /// Finishes a blob commit that was decided, in one transaction: drops its hold (if it had
    /// one); with `pinned`, records that this region's Kubo holds that CID pinned for the blob
    /// now recorded (so that a blob collected before the pinner came by still has its pin
    /// released); and with `session`, deletes the upload session the blob came from, returning
    /// its chunks' CIDs for release (`None`: the session was gone).
    pub async fn finish_commit(
        &self,
        hold: Option<Uuid>,
        pinned: Option<&str>,
        session: Option<Uuid>,
    ) -> Result<Option<Vec<String>>> {
        let mut tx = self.pool.begin().await?;
        if let Some(id) = hold {
            sqlx::query("DELETE FROM blob_holds WHERE id = $1").bind(id).execute(&mut *tx).await?;
        }
        if let Some(cid) = pinned {
            afreg_replication::store::pins::mark_pinned(&mut tx, cid, 0).await?;
        }
        let chunks = match session {
            Some(id) => Self::delete_upload(&mut tx, id).await?,
            None => Some(vec![]),
        };
        tx.commit().await?;
        Ok(chunks)
    }

    /// Deletes the holds past their expiry and returns their CIDs, for release.
    pub async fn take_expired_holds(&self) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar("DELETE FROM blob_holds WHERE expires_at < now() RETURNING cid")
            .fetch_all(&self.pool)
            .await?)
    }

    // ---- users -----------------------------------------------------------------------

    /// A user's password hash and grants, in one round trip.
    pub async fn user(&self, name: &str) -> Result<Option<UserRow>> {
        let rows: Vec<(String, Option<String>, Option<Vec<String>>)> = sqlx::query_as(
            "SELECT u.password_hash, g.pattern, g.actions FROM users u
               LEFT JOIN user_grants g ON g.username = u.username WHERE u.username = $1",
        )
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        let Some(first) = rows.first() else { return Ok(None) };
        let password_hash = first.0.clone();
        let grants = rows.into_iter().filter_map(|(_, p, a)| Some((p?, a?))).collect();
        Ok(Some(UserRow { password_hash, grants }))
    }

    pub async fn usernames(&self) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT username FROM users ORDER BY username").fetch_all(&self.pool).await?)
    }
}

pub use afreg_replication::store::pins::{cid_in_use, lock_cid};

/// A user as stored: the argon2 hash and the grants, `(pattern, actions)`.
#[derive(Debug, Clone)]
pub struct UserRow {
    pub password_hash: String,
    pub grants: Vec<(String, Vec<String>)>,
}

/// A database URL with its password replaced, for logs.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}
