//! SQL of garbage collection on the leader: which repository links to list as candidates.
//! Whether a candidate is really collected is decided again when its `collect_links.v1` entry
//! is applied (`apply.rs`), in every region alike.

use sqlx::PgPool;

type Result<T> = std::result::Result<T, sqlx::Error>;

/// A repository's link to a blob.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Link {
    pub repo: String,
    pub digest: String,
}

/// Up to `limit` links to blobs that no manifest of their repository references, last linked
/// before `linked_before` (Unix milliseconds, the cut-off the entry carries: the leader's clock,
/// not its Postgres's), oldest first: candidates for `collect_links.v1`.
pub async fn candidates(pool: &PgPool, linked_before: i64, limit: i64) -> Result<Vec<Link>> {
    sqlx::query_as(
        "SELECT r.name AS repo, rb.digest FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id
          WHERE rb.created_at < to_timestamp($1 / 1000.0)
            AND NOT EXISTS (SELECT 1 FROM manifest_references mr
                             WHERE mr.repository_id = rb.repository_id AND mr.ref_digest = rb.digest)
          ORDER BY rb.created_at LIMIT $2",
    )
    .bind(linked_before as f64)
    .bind(limit)
    .fetch_all(pool)
    .await
}
