//! The snapshot format: every replicated table plus the applied log id and membership, as one
//! versioned JSON document, dumped from one consistent read and restored in one transaction.
//!
//! Rows name their repository instead of carrying `repositories.id`, which is local to each
//! region; restoring assigns fresh ids. Rows are dumped in key order, so two regions with the
//! same state produce the same document.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use super::DbError;
use crate::types::base64_bytes;
use crate::{LogId, StoredMembership};

/// The only format this build writes and reads.
pub(crate) const FORMAT_VERSION: u32 = 1;

/// Rows per multi-row INSERT when restoring (manifests carry their bodies, so fewer).
const CHUNK: usize = 1000;
const MANIFEST_CHUNK: usize = 100;

/// The snapshot document.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SnapshotDoc {
    pub version: u32,
    pub last_applied: Option<LogId>,
    pub last_membership: StoredMembership,
    pub tables: Tables,
}

impl SnapshotDoc {
    /// Parses a received snapshot, refusing formats this build does not know.
    pub(crate) fn decode(bytes: &[u8]) -> Result<SnapshotDoc, DbError> {
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let v: Version = serde_json::from_slice(bytes)?;
        if v.version != FORMAT_VERSION {
            return Err(DbError::Corrupt(format!(
                "snapshot format version {} (this build reads {FORMAT_VERSION})",
                v.version
            )));
        }
        Ok(serde_json::from_slice(bytes)?)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Tables {
    repositories: Vec<RepositoryRow>,
    blobs: Vec<BlobRow>,
    repository_blobs: Vec<RepositoryBlobRow>,
    manifests: Vec<ManifestRow>,
    manifest_references: Vec<ReferenceRow>,
    tags: Vec<TagRow>,
    users: Vec<UserRow>,
    user_grants: Vec<GrantRow>,
    regions: Vec<RegionRow>,
    /// Added after format version 1 was published: absent in older snapshots.
    #[serde(default)]
    notifications: super::events::Tables,
}

#[derive(Debug, Serialize, Deserialize, sqlx::FromRow)]
struct RepositoryRow {
    name: String,
    created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize, sqlx::FromRow)]
struct BlobRow {
    digest: String,
    cid: String,
    size: i64,
    origin_region: Option<i64>,
    created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize, sqlx::FromRow)]
struct RepositoryBlobRow {
    repo: String,
    digest: String,
    created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize, sqlx::FromRow)]
struct ManifestRow {
    repo: String,
    digest: String,
    media_type: String,
    #[serde(with = "base64_bytes")]
    body: Vec<u8>,
    size: i64,
    subject: Option<String>,
    artifact_type: Option<String>,
    annotations: Option<serde_json::Value>,
    created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize, sqlx::FromRow)]
struct ReferenceRow {
    repo: String,
    manifest_digest: String,
    ref_digest: String,
    is_manifest: bool,
}

#[derive(Debug, Serialize, Deserialize, sqlx::FromRow)]
struct TagRow {
    repo: String,
    name: String,
    manifest_digest: String,
    updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize, sqlx::FromRow)]
struct UserRow {
    username: String,
    password_hash: String,
    created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize, sqlx::FromRow)]
struct GrantRow {
    username: String,
    pattern: String,
    actions: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize, sqlx::FromRow)]
struct RegionRow {
    id: i64,
    name: String,
    raft_addr: String,
    api_url: String,
    kubo_peer_id: String,
    kubo_swarm_addrs: Vec<String>,
    /// Added after format version 1 was published: absent in older snapshots.
    #[serde(default)]
    token_jwk: String,
    removed: bool,
}

/// Reads every replicated table. Call inside one REPEATABLE READ transaction so the tables
/// and the applied log id read with them are one state.
pub(crate) async fn dump(conn: &mut PgConnection) -> Result<Tables, DbError> {
    // `COLLATE "C"`: byte order, the same in every region whatever its default collation.
    Ok(Tables {
        repositories: sqlx::query_as("SELECT name, created_at FROM repositories ORDER BY name COLLATE \"C\"")
            .fetch_all(&mut *conn)
            .await?,
        blobs: sqlx::query_as(
            "SELECT digest, cid, size, origin_region, created_at FROM blobs ORDER BY digest COLLATE \"C\"",
        )
        .fetch_all(&mut *conn)
        .await?,
        repository_blobs: sqlx::query_as(
            "SELECT r.name AS repo, rb.digest, rb.created_at
               FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id
              ORDER BY r.name COLLATE \"C\", rb.digest COLLATE \"C\"",
        )
        .fetch_all(&mut *conn)
        .await?,
        manifests: sqlx::query_as(
            "SELECT r.name AS repo, m.digest, m.media_type, m.body, m.size, m.subject, m.artifact_type,
                    m.annotations, m.created_at
               FROM manifests m JOIN repositories r ON r.id = m.repository_id
              ORDER BY r.name COLLATE \"C\", m.digest COLLATE \"C\"",
        )
        .fetch_all(&mut *conn)
        .await?,
        manifest_references: sqlx::query_as(
            "SELECT r.name AS repo, mr.manifest_digest, mr.ref_digest, mr.is_manifest
               FROM manifest_references mr JOIN repositories r ON r.id = mr.repository_id
              ORDER BY r.name COLLATE \"C\", mr.manifest_digest COLLATE \"C\", mr.ref_digest COLLATE \"C\"",
        )
        .fetch_all(&mut *conn)
        .await?,
        tags: sqlx::query_as(
            "SELECT r.name AS repo, t.name, t.manifest_digest, t.updated_at
               FROM tags t JOIN repositories r ON r.id = t.repository_id
              ORDER BY r.name COLLATE \"C\", t.name COLLATE \"C\"",
        )
        .fetch_all(&mut *conn)
        .await?,
        users: sqlx::query_as("SELECT username, password_hash, created_at FROM users ORDER BY username COLLATE \"C\"")
            .fetch_all(&mut *conn)
            .await?,
        user_grants: sqlx::query_as(
            "SELECT username, pattern, actions FROM user_grants ORDER BY username COLLATE \"C\", pattern COLLATE \"C\"",
        )
        .fetch_all(&mut *conn)
        .await?,
        regions: sqlx::query_as(
            "SELECT id, name, raft_addr, api_url, kubo_peer_id, kubo_swarm_addrs, token_jwk, removed FROM regions ORDER BY id",
        )
        .fetch_all(&mut *conn)
        .await?,
        notifications: super::events::dump(conn).await?,
    })
}

/// Replaces the contents of every replicated table with `t`. Call inside the transaction
/// that also records the snapshot's applied log id and membership.
pub(crate) async fn restore(conn: &mut PgConnection, t: &Tables) -> Result<(), DbError> {
    // Children first; TRUNCATE would block readers for the whole install, DELETE does not.
    for table in [
        "tags",
        "manifest_references",
        "manifests",
        "repository_blobs",
        "repositories",
        "blobs",
        "user_grants",
        "users",
        "regions",
    ] {
        sqlx::query(&format!("DELETE FROM {table}")).execute(&mut *conn).await?;
    }

    for c in t.repositories.chunks(CHUNK) {
        sqlx::query("INSERT INTO repositories (name, created_at) SELECT * FROM UNNEST($1::text[], $2::timestamptz[])")
            .bind(c.iter().map(|r| r.name.as_str()).collect::<Vec<_>>())
            .bind(c.iter().map(|r| r.created_at).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
    }
    for c in t.blobs.chunks(CHUNK) {
        sqlx::query(
            "INSERT INTO blobs (digest, cid, size, origin_region, created_at)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::timestamptz[])",
        )
        .bind(c.iter().map(|r| r.digest.as_str()).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.cid.as_str()).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.size).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.origin_region).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.created_at).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    for c in t.repository_blobs.chunks(CHUNK) {
        sqlx::query(
            "INSERT INTO repository_blobs (repository_id, digest, created_at)
             SELECT r.id, u.digest, u.created_at
               FROM UNNEST($1::text[], $2::text[], $3::timestamptz[]) AS u(repo, digest, created_at)
               JOIN repositories r ON r.name = u.repo",
        )
        .bind(c.iter().map(|r| r.repo.as_str()).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.digest.as_str()).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.created_at).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    for c in t.manifests.chunks(MANIFEST_CHUNK) {
        sqlx::query(
            "INSERT INTO manifests
                 (repository_id, digest, media_type, body, size, subject, artifact_type, annotations, created_at)
             SELECT r.id, u.digest, u.media_type, u.body, u.size, u.subject, u.artifact_type, u.annotations, u.created_at
               FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bytea[], $5::int8[], $6::text[], $7::text[],
                           $8::jsonb[], $9::timestamptz[])
                    AS u(repo, digest, media_type, body, size, subject, artifact_type, annotations, created_at)
               JOIN repositories r ON r.name = u.repo",
        )
        .bind(c.iter().map(|r| r.repo.as_str()).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.digest.as_str()).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.media_type.as_str()).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.body.as_slice()).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.size).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.subject.as_deref()).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.artifact_type.as_deref()).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.annotations.clone()).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.created_at).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    for c in t.manifest_references.chunks(CHUNK) {
        sqlx::query(
            "INSERT INTO manifest_references (repository_id, manifest_digest, ref_digest, is_manifest)
             SELECT r.id, u.manifest_digest, u.ref_digest, u.is_manifest
               FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bool[]) AS u(repo, manifest_digest, ref_digest, is_manifest)
               JOIN repositories r ON r.name = u.repo",
        )
        .bind(c.iter().map(|r| r.repo.as_str()).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.manifest_digest.as_str()).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.ref_digest.as_str()).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.is_manifest).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    for c in t.tags.chunks(CHUNK) {
        sqlx::query(
            "INSERT INTO tags (repository_id, name, manifest_digest, updated_at)
             SELECT r.id, u.name, u.manifest_digest, u.updated_at
               FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[]) AS u(repo, name, manifest_digest, updated_at)
               JOIN repositories r ON r.name = u.repo",
        )
        .bind(c.iter().map(|r| r.repo.as_str()).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.name.as_str()).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.manifest_digest.as_str()).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.updated_at).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    for c in t.users.chunks(CHUNK) {
        sqlx::query(
            "INSERT INTO users (username, password_hash, created_at)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[])",
        )
        .bind(c.iter().map(|r| r.username.as_str()).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.password_hash.as_str()).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.created_at).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    // TEXT[] columns: UNNEST would flatten an array of arrays, so these go row by row (both
    // tables are small).
    for g in &t.user_grants {
        sqlx::query("INSERT INTO user_grants (username, pattern, actions) VALUES ($1, $2, $3)")
            .bind(&g.username)
            .bind(&g.pattern)
            .bind(&g.actions)
            .execute(&mut *conn)
            .await?;
    }
    for r in &t.regions {
        sqlx::query(
            "INSERT INTO regions (id, name, raft_addr, api_url, kubo_peer_id, kubo_swarm_addrs, token_jwk, removed)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(r.id)
        .bind(&r.name)
        .bind(&r.raft_addr)
        .bind(&r.api_url)
        .bind(&r.kubo_peer_id)
        .bind(&r.kubo_swarm_addrs)
        .bind(&r.token_jwk)
        .bind(r.removed)
        .execute(&mut *conn)
        .await?;
    }
    super::events::restore(conn, &t.notifications).await?;
    Ok(())
}
