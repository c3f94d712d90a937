//! All SQL lives here. The schema is owned by `migrations/`, applied at start-up; nothing else
//! in the crate builds a query. Functions that must share a transaction with a Kubo call take
//! a `&mut PgConnection`; the rest take the pool.
//!
//! Pins and rows: a CID is pinned before the row that needs it commits, and unpinned only
//! when no `blobs` or `upload_chunks` row names it. Both happen under a transaction-scoped
//! advisory lock on the CID ([`lock_cid`]), so a concurrent upload of the same bytes can never
//! lose its pin to a delete.

use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

use crate::config::DatabaseConfig;
use crate::oci::manifest::ParsedManifest;
use crate::oci::{Digest, Reference, RegistryError, RepoName};

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
    /// Empty for HEAD lookups, which never fetch the bytes.
    pub body: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct ReferrerRow {
    pub digest: String,
    pub media_type: String,
    pub size: i64,
    pub artifact_type: Option<String>,
    pub annotations: Option<serde_json::Value>,
}

#[derive(Debug, Clone)]
pub struct UploadRow {
    pub size: i64,
    /// `(offset, length, cid)` in order.
    pub chunks: Vec<(i64, i64, String)>,
}

fn observe(op: &'static str, started: Instant) {
    metrics::histogram!("afreg_postgres_query_seconds", "op" => op).record(started.elapsed().as_secs_f64());
}

impl Store {
    /// Connects, waiting up to `wait` for Postgres to come up, then applies migrations.
    pub async fn connect(cfg: &DatabaseConfig, wait: Duration) -> anyhow::Result<Store> {
        let opts: PgConnectOptions = cfg.url.parse()?;
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

    /// Links an already-stored blob into `repo` (cross-repository mount, or an upload of
    /// bytes the registry already has). Returns false when the blob is unknown.
    pub async fn link_blob(tx: &mut PgConnection, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let repo_id = ensure_repo(tx, repo).await?;
        let r = sqlx::query(
            "INSERT INTO repository_blobs (repository_id, digest)
             SELECT $1, digest FROM blobs WHERE digest = $2
             ON CONFLICT DO NOTHING",
        )
        .bind(repo_id)
        .bind(digest.as_str())
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 1 {
            return Ok(true);
        }
        Ok(sqlx::query("SELECT 1 FROM repository_blobs WHERE repository_id = $1 AND digest = $2")
            .bind(repo_id)
            .bind(digest.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .is_some())
    }

    /// Records a blob (if new) and links it into `repo`. Returns the CID the registry keeps
    /// for this digest, which is an older one if the digest was already stored.
    pub async fn record_blob(
        tx: &mut PgConnection,
        repo: &RepoName,
        digest: &Digest,
        cid: &str,
        size: i64,
    ) -> Result<String> {
        let kept: String = sqlx::query_scalar(
            "WITH ins AS (INSERT INTO blobs (digest, cid, size) VALUES ($1, $2, $3)
                          ON CONFLICT (digest) DO NOTHING RETURNING cid)
             SELECT cid FROM ins UNION ALL SELECT cid FROM blobs WHERE digest = $1 LIMIT 1",
        )
        .bind(digest.as_str())
        .bind(cid)
        .bind(size)
        .fetch_one(&mut *tx)
        .await?;
        Self::link_blob(tx, repo, digest).await?;
        Ok(kept)
    }

    /// Removes `repo`'s link to a blob. If no repository links it any more, the blob row goes
    /// too and its CID is returned so the caller can unpin it.
    pub async fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Option<Option<String>>> {
        let mut tx = self.begin().await?;
        let r = sqlx::query(
            "DELETE FROM repository_blobs rb USING repositories r
              WHERE rb.repository_id = r.id AND r.name = $1 AND rb.digest = $2",
        )
        .bind(repo.as_str())
        .bind(digest.as_str())
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            return Ok(None);
        }
        let orphan: Option<String> = sqlx::query_scalar(
            "DELETE FROM blobs b WHERE b.digest = $1
                AND NOT EXISTS (SELECT 1 FROM repository_blobs rb WHERE rb.digest = b.digest)
              RETURNING cid",
        )
        .bind(digest.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(orphan))
    }

    // ---- manifests -------------------------------------------------------------------

    /// The manifest for a tag or digest in one round trip; `with_body` false for HEAD.
    pub async fn manifest(&self, repo: &RepoName, reference: &Reference, with_body: bool) -> Result<Option<ManifestRow>> {
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
        let row = sqlx::query(&sql)
            .bind(repo.as_str())
            .bind(reference.to_string())
            .fetch_optional(&self.pool)
            .await?;
        observe("manifest", t);
        Ok(row.map(|r| ManifestRow { digest: r.get(0), media_type: r.get(1), size: r.get(2), body: r.get(3) }))
    }

    /// Stores a manifest and, optionally, points a tag at it, in one transaction. Fails with
    /// the list of missing blobs, leaving nothing written, if any required blob is not linked
    /// into the repository.
    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        parsed: &ParsedManifest,
        body: &[u8],
        tag: Option<&str>,
    ) -> Result<std::result::Result<(), Vec<String>>> {
        let t = Instant::now();
        let mut tx = self.begin().await?;
        let repo_id = ensure_repo(&mut tx, repo).await?;
        let required: Vec<String> = parsed.blobs.iter().map(|d| d.to_string()).collect();
        if !required.is_empty() {
            let present: Vec<String> =
                sqlx::query_scalar("SELECT digest FROM repository_blobs WHERE repository_id = $1 AND digest = ANY($2)")
                    .bind(repo_id)
                    .bind(&required)
                    .fetch_all(&mut *tx)
                    .await?;
            let missing: Vec<String> = required.iter().filter(|d| !present.contains(d)).cloned().collect();
            if !missing.is_empty() {
                tx.rollback().await?;
                return Ok(Err(missing));
            }
        }
        sqlx::query(
            "INSERT INTO manifests (repository_id, digest, media_type, body, size, subject, artifact_type, annotations)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (repository_id, digest) DO NOTHING",
        )
        .bind(repo_id)
        .bind(digest.as_str())
        .bind(&parsed.media_type)
        .bind(body)
        .bind(body.len() as i64)
        .bind(parsed.subject.as_ref().map(|d| d.as_str()))
        .bind(parsed.artifact_type.as_deref())
        .bind(parsed.annotations.as_ref())
        .execute(&mut *tx)
        .await?;
        let mut refs: Vec<String> = required;
        refs.extend(parsed.foreign_blobs.iter().map(|d| d.to_string()));
        let n_blobs = refs.len();
        refs.extend(parsed.children.iter().map(|d| d.to_string()));
        let is_manifest: Vec<bool> = (0..refs.len()).map(|i| i >= n_blobs).collect();
        if !refs.is_empty() {
            sqlx::query(
                "INSERT INTO manifest_references (repository_id, manifest_digest, ref_digest, is_manifest)
                 SELECT $1, $2, r, m FROM UNNEST($3::text[], $4::bool[]) AS u(r, m)
                 ON CONFLICT DO NOTHING",
            )
            .bind(repo_id)
            .bind(digest.as_str())
            .bind(&refs)
            .bind(&is_manifest)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(tag) = tag {
            sqlx::query(
                "INSERT INTO tags (repository_id, name, manifest_digest) VALUES ($1, $2, $3)
                 ON CONFLICT (repository_id, name) DO UPDATE SET manifest_digest = EXCLUDED.manifest_digest, updated_at = now()",
            )
            .bind(repo_id)
            .bind(tag)
            .bind(digest.as_str())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        observe("put_manifest", t);
        Ok(Ok(()))
    }

    /// Deletes a manifest (and every tag pointing at it). False if it was not there.
    pub async fn delete_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let r = sqlx::query(
            "DELETE FROM manifests m USING repositories r WHERE m.repository_id = r.id AND r.name = $1 AND m.digest = $2",
        )
        .bind(repo.as_str())
        .bind(digest.as_str())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Deletes a tag, leaving its manifest. False if it was not there.
    pub async fn delete_tag(&self, repo: &RepoName, tag: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM tags t USING repositories r WHERE t.repository_id = r.id AND r.name = $1 AND t.name = $2")
            .bind(repo.as_str())
            .bind(tag)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
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
    pub async fn referrers(&self, repo: &RepoName, subject: &Digest, artifact_type: Option<&str>) -> Result<Vec<ReferrerRow>> {
        let rows = sqlx::query(
            "SELECT m.digest, m.media_type, m.size, m.artifact_type, m.annotations
               FROM repositories r JOIN manifests m ON m.repository_id = r.id
              WHERE r.name = $1 AND m.subject = $2 AND ($3::text IS NULL OR m.artifact_type = $3)
              ORDER BY m.created_at, m.digest",
        )
        .bind(repo.as_str())
        .bind(subject.as_str())
        .bind(artifact_type)
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

    pub async fn create_upload(&self, id: Uuid, repo: &RepoName) -> Result<()> {
        sqlx::query("INSERT INTO uploads (id, repository) VALUES ($1, $2)")
            .bind(id)
            .bind(repo.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn upload(&self, id: Uuid, repo: &RepoName) -> Result<Option<UploadRow>> {
        let size: Option<i64> = sqlx::query_scalar("SELECT size FROM uploads WHERE id = $1 AND repository = $2")
            .bind(id)
            .bind(repo.as_str())
            .fetch_optional(&self.pool)
            .await?;
        let Some(size) = size else { return Ok(None) };
        let chunks: Vec<(i64, i64, String)> =
            sqlx::query_as("SELECT \"offset\", length, cid FROM upload_chunks WHERE upload_id = $1 ORDER BY \"offset\"")
                .bind(id)
                .fetch_all(&self.pool)
                .await?;
        Ok(Some(UploadRow { size, chunks }))
    }

    /// Appends a chunk at `offset`, which must be the session's current size. False if the
    /// session is gone or moved on.
    pub async fn append_chunk(tx: &mut PgConnection, id: Uuid, offset: i64, length: i64, cid: &str) -> Result<bool> {
        let r = sqlx::query("UPDATE uploads SET size = size + $3, updated_at = now() WHERE id = $1 AND size = $2")
            .bind(id)
            .bind(offset)
            .bind(length)
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query("INSERT INTO upload_chunks (upload_id, \"offset\", length, cid) VALUES ($1, $2, $3, $4)")
            .bind(id)
            .bind(offset)
            .bind(length)
            .bind(cid)
            .execute(&mut *tx)
            .await?;
        Ok(true)
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

    pub async fn open_uploads(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM uploads").fetch_one(&self.pool).await?)
    }

    // ---- users -----------------------------------------------------------------------

    /// Creates or replaces a user with its grants.
    pub async fn put_user(&self, name: &str, password_hash: &str, grants: &[(String, Vec<String>)]) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO users (username, password_hash) VALUES ($1, $2)
             ON CONFLICT (username) DO UPDATE SET password_hash = EXCLUDED.password_hash",
        )
        .bind(name)
        .bind(password_hash)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM user_grants WHERE username = $1").bind(name).execute(&mut *tx).await?;
        for (pattern, actions) in grants {
            sqlx::query("INSERT INTO user_grants (username, pattern, actions) VALUES ($1, $2, $3)")
                .bind(name)
                .bind(pattern)
                .bind(actions)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn remove_user(&self, name: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM users WHERE username = $1").bind(name).execute(&self.pool).await?;
        Ok(r.rows_affected() > 0)
    }

    /// A user's password hash and grants, in one round trip.
    pub async fn user(&self, name: &str) -> Result<Option<(String, Vec<(String, Vec<String>)>)>> {
        let rows: Vec<(String, Option<String>, Option<Vec<String>>)> = sqlx::query_as(
            "SELECT u.password_hash, g.pattern, g.actions FROM users u
               LEFT JOIN user_grants g ON g.username = u.username WHERE u.username = $1",
        )
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        let Some(first) = rows.first() else { return Ok(None) };
        let hash = first.0.clone();
        let grants = rows.into_iter().filter_map(|(_, p, a)| Some((p?, a?))).collect();
        Ok(Some((hash, grants)))
    }

    pub async fn usernames(&self) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT username FROM users ORDER BY username").fetch_all(&self.pool).await?)
    }
}

/// Serialises pin and unpin decisions for one CID until the transaction ends.
pub async fn lock_cid(tx: &mut PgConnection, cid: &str) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))").bind(cid).execute(&mut *tx).await?;
    Ok(())
}

/// Whether any blob or upload chunk still needs `cid` pinned (call under [`lock_cid`]).
pub async fn cid_in_use(tx: &mut PgConnection, cid: &str) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM blobs WHERE cid = $1) OR EXISTS (SELECT 1 FROM upload_chunks WHERE cid = $1)",
    )
    .bind(cid)
    .fetch_one(&mut *tx)
    .await?)
}

async fn ensure_repo(tx: &mut PgConnection, repo: &RepoName) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "WITH ins AS (INSERT INTO repositories (name) VALUES ($1) ON CONFLICT (name) DO NOTHING RETURNING id)
         SELECT id FROM ins UNION ALL SELECT id FROM repositories WHERE name = $1 LIMIT 1",
    )
    .bind(repo.as_str())
    .fetch_one(&mut *tx)
    .await?)
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
