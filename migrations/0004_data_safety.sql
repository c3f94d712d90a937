-- Data safety under concurrency (the node's upload path, GC and the pinner).

-- A blob upload holds its CID here, region-local, from the moment its bytes are pinned until
-- the blob record it proposed is applied in this region, or until `expires_at` when the
-- outcome of that write is unknown (a timeout: the record may still commit). A CID named here
-- is in use: no unpin may take it. Written only by the node's upload path and its sweeper.
-- This replaces holding a transaction and the CID's lock across the Raft round trip.
CREATE TABLE blob_holds (
    id          UUID PRIMARY KEY,
    cid         TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX blob_holds_cid ON blob_holds (cid);
CREATE INDEX blob_holds_expires ON blob_holds (expires_at);

-- Garbage collection's grace period counts from the blob's last link into the repository:
-- a re-upload or a re-mount refreshes it (put_blob.v1 and link_blob.v1 keep the later time).
COMMENT ON COLUMN repository_blobs.created_at IS
    'when the blob was last linked into the repository (upload or mount); GC grace counts from here';
