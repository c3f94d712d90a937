//! Raft storage in the region's own PostgreSQL: the log ([`log`]) and the state machine
//! ([`state_machine`]), both on one `PgPool` over the tables of `migrations/`.
//!
//! All SQL of the crate lives under this module. The small helpers here are shared by the log
//! and the state machine: the `raft_state` key/value table, the durability guard, and the
//! mapping of database errors onto openraft's [`StorageError`], and the [`Fence`] every write
//! checks.

pub mod events;
pub mod gc;
pub mod log;
pub mod pins;
pub mod regions;
pub mod state_machine;

mod apply;
mod snapshot;

pub use log::PgLogStore;
pub use state_machine::{PgSnapshotBuilder, PgStateMachine};

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageIOError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::PgConnection;

use crate::{NodeId, StorageError};

/// Keys of `raft_state`.
pub(crate) mod key {
    pub const VOTE: &str = "vote";
    pub const COMMITTED: &str = "committed";
    pub const LAST_PURGED: &str = "last_purged";
    pub const LAST_APPLIED: &str = "last_applied";
    pub const LAST_MEMBERSHIP: &str = "last_membership";
}

/// Reads one `raft_state` value; `None` when the key was never written.
pub(crate) async fn get_state<T: DeserializeOwned>(conn: &mut PgConnection, key: &str) -> Result<Option<T>, DbError> {
    let v: Option<serde_json::Value> =
        sqlx::query_scalar("SELECT value FROM raft_state WHERE key = $1").bind(key).fetch_optional(conn).await?;
    Ok(v.map(serde_json::from_value).transpose()?)
}

/// Writes one `raft_state` value.
pub(crate) async fn put_state<T: Serialize>(conn: &mut PgConnection, key: &str, value: &T) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO raft_state (key, value) VALUES ($1, $2)
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
    )
    .bind(key)
    .bind(sqlx::types::Json(value))
    .execute(conn)
    .await?;
    Ok(())
}

/// Runs `op` again while PostgreSQL is unreachable (connection lost, pool timed out, server
/// shutting down). Openraft stops a node for good on any storage error, so an outage of the
/// region's database must pause its Raft node, not end it: it stops acknowledging, the other
/// regions carry on, and it catches up once the database is back. Any other error is returned.
pub(crate) async fn retrying<T, Fut>(what: &str, mut op: impl FnMut() -> Fut) -> Result<T, DbError>
where
    Fut: std::future::Future<Output = Result<T, DbError>>,
{
    let mut wait = std::time::Duration::from_millis(100);
    let mut warned = false;
    loop {
        match op().await {
            Err(DbError::Sql(e)) if is_outage(&e) => {
                if !warned {
                    tracing::warn!(event = "raft_storage_waiting", what, error = %e, "PostgreSQL is unreachable; raft storage waits for it");
                    warned = true;
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(2));
            }
            r => return r,
        }
    }
}

/// Whether a database error means "unreachable" rather than "this statement is wrong".
pub(crate) fn is_outage(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        _ => false,
    }
}

/// The epoch a Raft member's storage was started with ([`crate::seat`]): every write checks it
/// in its own transaction, so a process that lost the seat writes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence(pub u64);

impl Fence {
    /// Fails with [`DbError::Fenced`] unless the seat is still at this epoch. The row lock
    /// (`FOR KEY SHARE`) makes a takeover wait for this transaction, and this transaction wait
    /// for a takeover in progress and then see its epoch.
    pub(crate) async fn check(self, tx: &mut PgConnection) -> Result<(), DbError> {
        let now: i64 = sqlx::query_scalar("SELECT epoch FROM raft_seat FOR KEY SHARE").fetch_one(tx).await?;
        if to_u64(now) != self.0 {
            return Err(DbError::Fenced { ours: self.0, now: to_u64(now) });
        }
        Ok(())
    }
}

/// Makes the current transaction's commit durable even if the server or role was configured
/// with `synchronous_commit = off`, which could lose an acknowledged vote or log entry in a
/// crash and break Raft's safety. Any other level (`local`, `on`, `remote_*`) is left alone.
pub(crate) async fn ensure_durable_commit(tx: &mut PgConnection) -> Result<(), DbError> {
    sqlx::query(
        "SELECT set_config('synchronous_commit', 'on', true) WHERE current_setting('synchronous_commit') = 'off'",
    )
    .execute(tx)
    .await?;
    Ok(())
}

/// A failure talking to Postgres or (de)serialising what it holds. Always fatal for the Raft
/// node: openraft shuts down on any [`StorageError`].
#[derive(Debug)]
pub(crate) enum DbError {
    Sql(sqlx::Error),
    Json(serde_json::Error),
    /// A stored value that cannot be right, e.g. a snapshot of an unknown format version.
    Corrupt(String),
    /// Another process of the region took the Raft seat: this one may not write.
    Fenced {
        ours: u64,
        now: u64,
    },
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DbError::Sql(e) => write!(f, "postgres: {e}"),
            DbError::Json(e) => write!(f, "json: {e}"),
            DbError::Corrupt(what) => write!(f, "corrupt raft data: {what}"),
            DbError::Fenced { ours, now } => {
                write!(f, "fenced: this process's Raft seat epoch {ours} is over; another process holds epoch {now}")
            }
        }
    }
}

impl std::error::Error for DbError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DbError::Sql(e) => Some(e),
            DbError::Json(e) => Some(e),
            DbError::Corrupt(_) | DbError::Fenced { .. } => None,
        }
    }
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        DbError::Sql(e)
    }
}

impl From<serde_json::Error> for DbError {
    fn from(e: serde_json::Error) -> Self {
        DbError::Json(e)
    }
}

impl DbError {
    /// As openraft's error, saying what was being done to what.
    pub(crate) fn sto(self, subject: ErrorSubject<NodeId>, verb: ErrorVerb) -> StorageError {
        if let DbError::Fenced { ours, now } = self {
            tracing::warn!(
                event = "raft_fenced",
                epoch = ours,
                current_epoch = now,
                "a Raft storage write was refused: this process lost the seat"
            );
        }
        StorageIOError::new(subject, verb, AnyError::new(&self)).into()
    }
}

/// A `u64` Raft number (index, term, node id) as a BIGINT. Raft never gets near 2^63.
pub(crate) fn to_i64(n: u64) -> i64 {
    n as i64
}

/// A BIGINT back into a `u64` Raft number.
pub(crate) fn to_u64(n: i64) -> u64 {
    n as u64
}
