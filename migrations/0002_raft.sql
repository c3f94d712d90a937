-- Replication (afreg-replication): each region keeps its Raft log and the state machine's
-- bookkeeping in its own Postgres, next to the metadata tables of 0001 that the state machine
-- writes. Nothing here is written outside the replication crate.

-- The Raft log. `payload` is openraft's EntryPayload as JSON: blank, membership, or a
-- versioned afreg Command. Written with synchronous commit before openraft is told.
CREATE TABLE raft_log (
    log_index    BIGINT PRIMARY KEY CHECK (log_index >= 0),
    term         BIGINT NOT NULL,
    leader_node  BIGINT NOT NULL,
    payload      JSONB NOT NULL
);

-- Small Raft state, one JSON value per key:
--   log store:     'vote', 'committed', 'last_purged'
--   state machine: 'last_applied', 'last_membership' (written in the transaction that applies)
CREATE TABLE raft_state (
    key    TEXT PRIMARY KEY,
    value  JSONB NOT NULL
);

-- The current snapshot (at most one row): built here, or installed from the leader.
CREATE TABLE raft_snapshot (
    only_row    BOOLEAN PRIMARY KEY DEFAULT true CHECK (only_row),
    last_index  BIGINT,            -- NULL for a snapshot of an empty state machine
    meta        JSONB NOT NULL,    -- openraft SnapshotMeta
    data        BYTEA NOT NULL     -- the versioned snapshot document (JSON)
);

-- The cluster's regions, as replicated by PutRegion/RemoveRegion. A removed region stays as a
-- tombstone: Raft node ids are never reused.
CREATE TABLE regions (
    id                BIGINT PRIMARY KEY,
    name              TEXT NOT NULL,
    raft_addr         TEXT NOT NULL,
    api_url           TEXT NOT NULL,
    kubo_peer_id      TEXT NOT NULL,
    kubo_swarm_addrs  TEXT[] NOT NULL,
    removed           BOOLEAN NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX regions_live_name ON regions (name) WHERE NOT removed;

-- The region whose Kubo first had a blob's bytes (where other regions fetch it from).
-- NULL for blobs recorded before replication.
ALTER TABLE blobs ADD COLUMN origin_region BIGINT;
