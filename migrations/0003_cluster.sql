-- The cluster (afreg-replication wiring): token verification keys in the region list, and the
-- region-local pin bookkeeping of the cross-region pinner.

-- Each region signs tokens with its own key and publishes the public half here (a JWK as
-- JSON text), so a token issued in one region is accepted in all of them. Replicated.
ALTER TABLE regions ADD COLUMN token_jwk TEXT NOT NULL DEFAULT '';

-- Which blob CIDs this region's Kubo holds pinned for the replicated `blobs` table, and the
-- pinner's retry state for those it could not pin yet. Local to the region, written only by
-- the pinner. The pin queue is not stored: it is every `blobs.cid` without a 'pinned' row
-- here, so it survives restarts and snapshot installs by construction.
CREATE TABLE pins (
    cid              TEXT PRIMARY KEY,
    state            TEXT NOT NULL CHECK (state IN ('pinned', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error       TEXT,
    -- Bytes fetched from another region to pin it (0 when the bytes were already local).
    fetched_bytes    BIGINT NOT NULL DEFAULT 0,
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
