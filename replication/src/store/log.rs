//! The Raft log and vote in Postgres (`raft_log`, `raft_state`), so a region's Raft state lives
//! and is backed up with the rest of its metadata.
//!
//! Durability is what Raft's safety rests on: [`RaftLogStorage::save_vote`] returns and
//! [`RaftLogStorage::append`] calls its callback only after a synchronous commit (see
//! [`ensure_durable_commit`]). Openraft serialises all writes (`&mut self`); readers are clones
//! of the store sharing the pool, used by the replication tasks.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{CommittedLeaderId, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, Vote};
use sqlx::types::Json;
use sqlx::PgPool;

use super::{ensure_durable_commit, get_state, key, put_state, retrying, to_i64, to_u64, DbError, Fence};
use crate::{Entry, LogId, NodeId, StorageError, TypeConfig};

/// The Raft log of one region, in its Postgres.
#[derive(Clone)]
pub struct PgLogStore {
    pool: PgPool,
    fence: Fence,
}

impl PgLogStore {
    /// A log store over `pool`, whose database has `migrations/` applied, for the holder of
    /// the region's Raft seat at `fence`'s epoch: every write checks it.
    pub fn new(pool: PgPool, fence: Fence) -> Self {
        PgLogStore { pool, fence }
    }

    async fn read_entries(&self, lo: u64, hi_exclusive: u64) -> Result<Vec<Entry>, DbError> {
        if lo >= hi_exclusive {
            return Ok(Vec::new());
        }
        let rows: Vec<(i64, i64, i64, Json<EntryPayload<TypeConfig>>)> = sqlx::query_as(
            "SELECT log_index, term, leader_node, payload FROM raft_log
              WHERE log_index >= $1 AND log_index < $2 ORDER BY log_index",
        )
        .bind(to_i64(lo.min(i64::MAX as u64)))
        .bind(to_i64(hi_exclusive.min(i64::MAX as u64)))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(index, term, node, payload)| Entry { log_id: log_id(term, node, index), payload: payload.0 })
            .collect())
    }

    async fn log_state(&self) -> Result<LogState<TypeConfig>, DbError> {
        let mut conn = self.pool.acquire().await?;
        let last_purged: Option<LogId> = get_state(&mut conn, key::LAST_PURGED).await?;
        let last: Option<(i64, i64, i64)> =
            sqlx::query_as("SELECT log_index, term, leader_node FROM raft_log ORDER BY log_index DESC LIMIT 1")
                .fetch_optional(&mut *conn)
                .await?;
        let last_log_id = last.map(|(index, term, node)| log_id(term, node, index)).or(last_purged);
        Ok(LogState { last_purged_log_id: last_purged, last_log_id })
    }

    async fn write_vote(&self, vote: &Vote<NodeId>) -> Result<(), DbError> {
        let mut tx = self.pool.begin().await?;
        self.fence.check(&mut tx).await?;
        ensure_durable_commit(&mut tx).await?;
        put_state(&mut tx, key::VOTE, vote).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn read_key<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, DbError> {
        let mut conn = self.pool.acquire().await?;
        get_state(&mut conn, key).await
    }

    async fn write_committed(&self, committed: Option<LogId>) -> Result<(), DbError> {
        let mut tx = self.pool.begin().await?;
        self.fence.check(&mut tx).await?;
        put_state(&mut tx, key::COMMITTED, &committed).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Inserts the entries in one durable transaction. An index already present is
    /// overwritten: openraft truncates before appending a conflicting suffix, so this only
    /// matters for a retried append.
    async fn insert(&self, entries: Vec<Entry>) -> Result<(), DbError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut index = Vec::with_capacity(entries.len());
        let mut term = Vec::with_capacity(entries.len());
        let mut node = Vec::with_capacity(entries.len());
        let mut payload = Vec::with_capacity(entries.len());
        for e in &entries {
            index.push(to_i64(e.log_id.index));
            term.push(to_i64(e.log_id.leader_id.term));
            node.push(to_i64(e.log_id.leader_id.node_id));
            payload.push(serde_json::to_string(&e.payload)?);
        }
        let mut tx = self.pool.begin().await?;
        self.fence.check(&mut tx).await?;
        ensure_durable_commit(&mut tx).await?;
        sqlx::query(
            "INSERT INTO raft_log (log_index, term, leader_node, payload)
             SELECT i, t, n, p::jsonb FROM UNNEST($1::int8[], $2::int8[], $3::int8[], $4::text[]) AS u(i, t, n, p)
             ON CONFLICT (log_index) DO UPDATE
                SET term = EXCLUDED.term, leader_node = EXCLUDED.leader_node, payload = EXCLUDED.payload",
        )
        .bind(&index)
        .bind(&term)
        .bind(&node)
        .bind(&payload)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn delete_since(&self, index: u64) -> Result<(), DbError> {
        let mut tx = self.pool.begin().await?;
        self.fence.check(&mut tx).await?;
        ensure_durable_commit(&mut tx).await?;
        sqlx::query("DELETE FROM raft_log WHERE log_index >= $1").bind(to_i64(index)).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records `upto` as purged and deletes the entries up to it, in one transaction, so the
    /// log never has a hole between `last_purged` and the first entry.
    async fn delete_upto(&self, upto: LogId) -> Result<(), DbError> {
        let mut tx = self.pool.begin().await?;
        self.fence.check(&mut tx).await?;
        ensure_durable_commit(&mut tx).await?;
        put_state(&mut tx, key::LAST_PURGED, &upto).await?;
        sqlx::query("DELETE FROM raft_log WHERE log_index <= $1").bind(to_i64(upto.index)).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }
}

fn log_id(term: i64, node: i64, index: i64) -> LogId {
    LogId::new(CommittedLeaderId::new(to_u64(term), to_u64(node)), to_u64(index))
}

/// `[lo, hi)` of a range of log indexes.
fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let lo = match range.start_bound() {
        Bound::Included(&n) => n,
        Bound::Excluded(&n) => n.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let hi = match range.end_bound() {
        Bound::Included(&n) => n.saturating_add(1),
        Bound::Excluded(&n) => n,
        Bound::Unbounded => u64::MAX,
    };
    (lo, hi)
}

impl RaftLogReader<TypeConfig> for PgLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (lo, hi) = bounds(&range);
        retrying("read log", || self.read_entries(lo, hi)).await.map_err(|e| e.sto(ErrorSubject::Logs, ErrorVerb::Read))
    }
}

impl RaftLogStorage<TypeConfig> for PgLogStore {
    type LogReader = PgLogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        retrying("log state", || self.log_state()).await.map_err(|e| e.sto(ErrorSubject::Logs, ErrorVerb::Read))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        retrying("save vote", || self.write_vote(vote)).await.map_err(|e| e.sto(ErrorSubject::Vote, ErrorVerb::Write))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        retrying("read vote", || self.read_key(key::VOTE)).await.map_err(|e| e.sto(ErrorSubject::Vote, ErrorVerb::Read))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        retrying("save committed", || self.write_committed(committed))
            .await
            .map_err(|e| e.sto(ErrorSubject::Store, ErrorVerb::Write))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed: Option<Option<LogId>> = retrying("read committed", || self.read_key(key::COMMITTED))
            .await
            .map_err(|e| e.sto(ErrorSubject::Store, ErrorVerb::Read))?;
        Ok(committed.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        match retrying("append", || self.insert(entries.clone())).await {
            // Committed synchronously: durable, so openraft may count this region's copy.
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e.sto(ErrorSubject::Logs, ErrorVerb::Write))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        retrying("truncate", || self.delete_since(log_id.index))
            .await
            .map_err(|e| e.sto(ErrorSubject::Logs, ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        retrying("purge", || self.delete_upto(log_id)).await.map_err(|e| e.sto(ErrorSubject::Logs, ErrorVerb::Delete))
    }
}

#[cfg(test)]
mod tests {
    use super::bounds;

    #[test]
    fn range_bounds_become_half_open() {
        assert_eq!(bounds(&(3..7)), (3, 7));
        assert_eq!(bounds(&(3..=7)), (3, 8));
        assert_eq!(bounds(&(5..)), (5, u64::MAX));
        assert_eq!(bounds(&(..)), (0, u64::MAX));
        assert_eq!(bounds(&(..=u64::MAX)), (0, u64::MAX));
    }
}
