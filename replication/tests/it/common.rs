//! Shared by the integration tests: fresh databases on a real PostgreSQL (from `testkit`),
//! and a dump of the replicated tables that is comparable across regions.
#![allow(dead_code)]

use std::collections::BTreeMap;

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

/// Creates database `name` on `pg`, connects, and applies `migrations/` (as the node does).
pub async fn fresh_db(pg: &testkit::Postgres, name: &str) -> PgPool {
    pg.psql(&format!("CREATE DATABASE {name}"));
    let pool = connect(pg, name).await;
    sqlx::migrate!("../migrations").run(&pool).await.expect("migrations");
    pool
}

/// A new pool on an existing database (a restarted region).
pub async fn connect(pg: &testkit::Postgres, name: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(4)
        .connect(&format!("postgres://postgres@127.0.0.1:{}/{name}", pg.port))
        .await
        .expect("connect")
}

/// Every replicated table (and the applied id and membership) as sorted JSON, with the
/// region-local `repositories.id` replaced by the repository name.
pub async fn dump(pool: &PgPool) -> BTreeMap<&'static str, String> {
    const TABLES: &[(&str, &str)] = &[
        ("repositories", "SELECT name, created_at FROM repositories"),
        ("blobs", "SELECT * FROM blobs"),
        (
            "repository_blobs",
            "SELECT r.name, rb.digest, rb.created_at FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id",
        ),
        (
            "manifests",
            "SELECT r.name, m.digest, m.media_type, m.body, m.size, m.subject, m.artifact_type, m.annotations, m.created_at
               FROM manifests m JOIN repositories r ON r.id = m.repository_id",
        ),
        (
            "manifest_references",
            "SELECT r.name, mr.manifest_digest, mr.ref_digest, mr.is_manifest
               FROM manifest_references mr JOIN repositories r ON r.id = mr.repository_id",
        ),
        (
            "tags",
            "SELECT r.name AS repo, t.name, t.manifest_digest, t.updated_at FROM tags t JOIN repositories r ON r.id = t.repository_id",
        ),
        ("users", "SELECT * FROM users"),
        ("user_grants", "SELECT * FROM user_grants"),
        ("regions", "SELECT * FROM regions"),
        ("raft_applied", "SELECT key, value FROM raft_state WHERE key IN ('last_applied', 'last_membership')"),
    ];
    let mut out = BTreeMap::new();
    for (name, q) in TABLES {
        let json: String =
            sqlx::query_scalar(&format!("SELECT coalesce(json_agg(t ORDER BY t::text), '[]')::text FROM ({q}) t"))
                .fetch_one(pool)
                .await
                .unwrap_or_else(|e| panic!("dump {name}: {e}"));
        out.insert(*name, json);
    }
    out
}

/// The fence of the seat's current epoch: these tests own their database alone.
pub async fn fence(pool: &PgPool) -> afreg_replication::Fence {
    let epoch: i64 = sqlx::query_scalar("SELECT epoch FROM raft_seat").fetch_one(pool).await.expect("seat epoch");
    afreg_replication::Fence(epoch as u64)
}

/// A state machine over `pool` at the seat's current epoch.
pub async fn state_machine(pool: &PgPool) -> afreg_replication::PgStateMachine {
    afreg_replication::PgStateMachine::new(pool.clone(), fence(pool).await)
}
