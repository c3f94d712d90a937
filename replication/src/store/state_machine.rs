//! The Raft state machine: committed commands applied to the region's metadata tables, and
//! snapshots of those tables for regions that fell behind or join.
//!
//! One batch of entries is one transaction, which also records the last applied log id and
//! membership in `raft_state`: after a crash the tables and the applied id agree, and entries
//! at or below that id are skipped ([`Applied::AlreadyApplied`]). Each command runs under its
//! own savepoint, so one that breaks a constraint is refused ([`Applied::Invalid`]) in every
//! region alike instead of stopping the cluster.
//!
//! The current snapshot is kept in `raft_snapshot`, so it survives a restart and can still be
//! sent to a follower after the log it replaced was purged.

use std::io::Cursor;

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta};
use sqlx::types::Json;
use sqlx::{Connection, PgConnection, PgPool};

use super::snapshot::{self, SnapshotDoc, FORMAT_VERSION};
use super::{apply, get_state, key, put_state, retrying, DbError, Fence};
use crate::types::{Applied, Region};
use crate::{Entry, LogId, NodeId, StorageError, StoredMembership, TypeConfig};

type Meta = SnapshotMeta<NodeId, Region>;

/// The state machine of one region, over its Postgres.
#[derive(Clone)]
pub struct PgStateMachine {
    pool: PgPool,
    fence: Fence,
    /// Bumped after every committed batch or installed snapshot: the region's services that
    /// follow the replicated tables (the pinner, the token keys) wait on it.
    changed: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
    /// The same, counted synchronously before `apply` returns (so before any write it applied
    /// is acknowledged): what in-process read caches compare their entries against.
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Builds a snapshot from a consistent read of the tables; runs alongside `apply`.
pub struct PgSnapshotBuilder {
    pool: PgPool,
    fence: Fence,
}

impl PgStateMachine {
    /// A state machine over `pool`, whose database has `migrations/` applied, for the holder
    /// of the region's Raft seat at `fence`'s epoch: every write checks it.
    pub fn new(pool: PgPool, fence: Fence) -> Self {
        PgStateMachine {
            pool,
            fence,
            changed: std::sync::Arc::new(tokio::sync::watch::channel(0).0),
            generation: Default::default(),
        }
    }

    /// Counts applied changes into `generation` (which outlives this state machine).
    pub fn with_generation(self, generation: std::sync::Arc<std::sync::atomic::AtomicU64>) -> Self {
        PgStateMachine { generation, ..self }
    }

    /// A receiver that sees a new value each time applied entries or an installed snapshot
    /// changed the replicated tables.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(&self) {
        self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.changed.send_modify(|n| *n += 1);
    }

    async fn read_applied(&self) -> Result<(Option<LogId>, StoredMembership), DbError> {
        let mut conn = self.pool.acquire().await?;
        read_applied(&mut conn).await
    }

    async fn apply_batch(&self, entries: Vec<Entry>) -> Result<Vec<Applied>, (Option<LogId>, DbError)> {
        let mut replies = Vec::with_capacity(entries.len());
        if entries.is_empty() {
            return Ok(replies);
        }
        let mut tx = self.pool.begin().await.map_err(|e| (None, e.into()))?;
        self.fence.check(&mut tx).await.map_err(|e| (None, e))?;
        let applied: Option<Option<LogId>> = get_state(&mut tx, key::LAST_APPLIED).await.map_err(|e| (None, e))?;
        let applied = applied.flatten();
        let mut last = None;
        let mut membership = None;
        for entry in entries {
            let log_id = entry.log_id;
            if applied.is_some_and(|a| log_id.index <= a.index) {
                replies.push(Applied::AlreadyApplied);
                continue;
            }
            let reply = match entry.payload {
                EntryPayload::Blank => Applied::Ok,
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(log_id), m));
                    Applied::Ok
                }
                EntryPayload::Normal(cmd) => {
                    let mut sp = tx.begin().await.map_err(|e| (Some(log_id), e.into()))?;
                    match apply::command(&mut sp, log_id.index, &cmd).await {
                        Ok(reply) => {
                            sp.commit().await.map_err(|e| (Some(log_id), e.into()))?;
                            reply
                        }
                        Err(e) => match refusal(&e) {
                            Some(reason) => {
                                sp.rollback().await.map_err(|e| (Some(log_id), e.into()))?;
                                tracing::warn!(event = "raft_apply_refused", log_id = %log_id, %reason);
                                Applied::Invalid { reason }
                            }
                            None => return Err((Some(log_id), e.into())),
                        },
                    }
                }
            };
            replies.push(reply);
            last = Some(log_id);
        }
        if let Some(last) = last {
            put_state(&mut tx, key::LAST_APPLIED, &last).await.map_err(|e| (Some(last), e))?;
        }
        if let Some(m) = membership {
            put_state(&mut tx, key::LAST_MEMBERSHIP, &m).await.map_err(|e| (last, e))?;
        }
        if last.is_some() {
            notify_applied(&mut tx).await.map_err(|e| (last, e))?;
        }
        tx.commit().await.map_err(|e| (last, e.into()))?;
        Ok(replies)
    }

    async fn install(&self, meta: &Meta, data: &[u8]) -> Result<(), DbError> {
        let doc = SnapshotDoc::decode(data)?;
        if doc.last_applied != meta.last_log_id || doc.last_membership != meta.last_membership {
            return Err(DbError::Corrupt(format!(
                "snapshot {} says applied {:?}, its meta says {:?}",
                meta.snapshot_id, doc.last_applied, meta.last_log_id
            )));
        }
        let mut tx = self.pool.begin().await?;
        self.fence.check(&mut tx).await?;
        snapshot::restore(&mut tx, &doc.tables).await?;
        put_state(&mut tx, key::LAST_APPLIED, &meta.last_log_id).await?;
        put_state(&mut tx, key::LAST_MEMBERSHIP, &meta.last_membership).await?;
        save_snapshot(&mut tx, meta, data, true).await?;
        notify_applied(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn current_snapshot(&self) -> Result<Option<Snapshot<TypeConfig>>, DbError> {
        let row: Option<(Json<Meta>, Vec<u8>)> =
            sqlx::query_as("SELECT meta, data FROM raft_snapshot").fetch_optional(&self.pool).await?;
        Ok(row.map(|(meta, data)| Snapshot { meta: meta.0, snapshot: Box::new(Cursor::new(data)) }))
    }
}

/// The channel on which every applied batch or installed snapshot is announced, on commit, to
/// the region's other processes (they follow the replicated tables without a state machine).
pub const APPLIED_CHANNEL: &str = "afreg_applied";

async fn notify_applied(tx: &mut PgConnection) -> Result<(), DbError> {
    sqlx::query("SELECT pg_notify($1, '')").bind(APPLIED_CHANNEL).execute(tx).await?;
    Ok(())
}

/// A database error that every region meets identically when applying the same entry to the
/// same state: a data exception (class 22) or a constraint violation (class 23). Anything
/// else (connection lost, disk full) is a storage failure, not a verdict on the command.
fn refusal(e: &sqlx::Error) -> Option<String> {
    let db = e.as_database_error()?;
    let code = db.code()?;
    (code.starts_with("22") || code.starts_with("23")).then(|| format!("{code}: {}", db.message()))
}

async fn read_applied(conn: &mut PgConnection) -> Result<(Option<LogId>, StoredMembership), DbError> {
    let applied: Option<Option<LogId>> = get_state(conn, key::LAST_APPLIED).await?;
    let membership: Option<StoredMembership> = get_state(conn, key::LAST_MEMBERSHIP).await?;
    Ok((applied.flatten(), membership.unwrap_or_default()))
}

/// Stores `meta`/`data` as the current snapshot. Unless `replace`, an existing snapshot that
/// covers more of the log is kept (a slow build must not overwrite a newer install).
async fn save_snapshot(conn: &mut PgConnection, meta: &Meta, data: &[u8], replace: bool) -> Result<(), DbError> {
    let last_index = meta.last_log_id.map(|l| super::to_i64(l.index));
    sqlx::query(
        "INSERT INTO raft_snapshot (only_row, last_index, meta, data) VALUES (true, $1, $2, $3)
         ON CONFLICT (only_row) DO UPDATE SET last_index = EXCLUDED.last_index, meta = EXCLUDED.meta, data = EXCLUDED.data
          WHERE $4 OR coalesce(raft_snapshot.last_index, -1) <= coalesce(EXCLUDED.last_index, -1)",
    )
    .bind(last_index)
    .bind(Json(meta))
    .bind(data)
    .bind(replace)
    .execute(conn)
    .await?;
    Ok(())
}

impl PgSnapshotBuilder {
    async fn build(&self) -> Result<Snapshot<TypeConfig>, DbError> {
        let mut tx = self.pool.begin().await?;
        // One MVCC snapshot for all the reads: the tables and the applied id agree even while
        // apply keeps committing.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
        let (last_applied, last_membership) = read_applied(&mut tx).await?;
        let tables = snapshot::dump(&mut tx).await?;
        tx.commit().await?;

        let doc = SnapshotDoc { version: FORMAT_VERSION, last_applied, last_membership, tables };
        let data = serde_json::to_vec(&doc)?;
        let snapshot_id = match last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.leader_id.node_id, l.index),
            None => "empty".to_owned(),
        };
        let meta = Meta { last_log_id: last_applied, last_membership: doc.last_membership, snapshot_id };
        let mut tx = self.pool.begin().await?;
        self.fence.check(&mut tx).await?;
        save_snapshot(&mut tx, &meta, &data, false).await?;
        tx.commit().await?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for PgSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        retrying("build snapshot", || self.build())
            .await
            .map_err(|e| e.sto(ErrorSubject::Snapshot(None), ErrorVerb::Write))
    }
}

impl RaftStateMachine<TypeConfig> for PgStateMachine {
    type SnapshotBuilder = PgSnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        retrying("applied state", || self.read_applied())
            .await
            .map_err(|e| e.sto(ErrorSubject::StateMachine, ErrorVerb::Read))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let mut wait = std::time::Duration::from_millis(100);
        let replies = loop {
            match self.apply_batch(entries.clone()).await {
                Err((_, DbError::Sql(e))) if super::is_outage(&e) => {
                    tracing::warn!(event = "raft_storage_waiting", what = "apply", error = %e, "PostgreSQL is unreachable; apply waits for it");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(std::time::Duration::from_secs(2));
                }
                r => break r,
            }
        };
        let replies = replies.map_err(|(log_id, e)| match log_id {
            Some(id) => e.sto(ErrorSubject::Apply(id), ErrorVerb::Write),
            None => e.sto(ErrorSubject::StateMachine, ErrorVerb::Write),
        })?;
        self.bump();
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        PgSnapshotBuilder { pool: self.pool.clone(), fence: self.fence }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(&mut self, meta: &Meta, snapshot: Box<Cursor<Vec<u8>>>) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        retrying("install snapshot", || self.install(meta, &data))
            .await
            .map_err(|e| e.sto(ErrorSubject::Snapshot(Some(meta.signature())), ErrorVerb::Write))?;
        self.bump();
        tracing::info!(event = "raft_snapshot_installed", last_log = ?meta.last_log_id, bytes = data.len(), "installed the leader's snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        retrying("read snapshot", || self.current_snapshot())
            .await
            .map_err(|e| e.sto(ErrorSubject::Snapshot(None), ErrorVerb::Read))
    }
}
