//! The SQL of the pull-through cache's eviction ([`crate::mirror_eviction`]): the manifests a
//! mirrored destination holds, each with what it weighs and what it references. Replicated
//! tables, read only: every region would answer alike.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

type Result<T> = std::result::Result<T, sqlx::Error>;

/// One manifest of a mirrored repository, as eviction weighs it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Cached {
    pub repository: String,
    pub digest: String,
    /// When it was fetched from the upstream.
    pub created_at: DateTime<Utc>,
    /// Its own size and that of every blob it references that the cluster holds.
    pub bytes: i64,
    /// The blobs it references (present or not).
    pub blobs: Vec<String>,
    /// The manifests it references (an index's), in the same repository.
    pub children: Vec<String>,
    /// Whether another manifest of its repository references it.
    pub is_child: bool,
}

/// Every manifest of the repositories under `destination` (every repository when it is empty).
pub async fn cached(pool: &PgPool, destination: &str) -> Result<Vec<Cached>> {
    sqlx::query_as(
        "SELECT r.name AS repository, m.digest, m.created_at,
                (m.size + coalesce((SELECT sum(b.size) FROM manifest_references mr JOIN blobs b ON b.digest = mr.ref_digest
                                     WHERE mr.repository_id = m.repository_id AND mr.manifest_digest = m.digest
                                       AND NOT mr.is_manifest), 0))::int8 AS bytes,
                array(SELECT mr.ref_digest FROM manifest_references mr
                       WHERE mr.repository_id = m.repository_id AND mr.manifest_digest = m.digest
                         AND NOT mr.is_manifest) AS blobs,
                array(SELECT mr.ref_digest FROM manifest_references mr
                       WHERE mr.repository_id = m.repository_id AND mr.manifest_digest = m.digest
                         AND mr.is_manifest) AS children,
                EXISTS (SELECT 1 FROM manifest_references mr
                         WHERE mr.repository_id = m.repository_id AND mr.ref_digest = m.digest AND mr.is_manifest) AS is_child
           FROM manifests m JOIN repositories r ON r.id = m.repository_id
          WHERE $1 = '' OR starts_with(r.name, $1 || '/')
          ORDER BY r.name, m.digest",
    )
    .bind(destination)
    .fetch_all(pool)
    .await
}
