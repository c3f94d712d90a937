-- What this region served (node/src/pulls.rs). Region-local, never replicated nor carried in
-- snapshots: each region counts its own pulls, in batches written off the pull's path, and
-- `GET /v2/_afreg/usage` asks every region for its figures.

-- Per day, repository, digest and the tag it was asked by ('' for a digest): manifest GETs
-- (`pulls`), blob GETs (`blob_pulls`), the bytes of both sent, and the last of them.
CREATE TABLE pull_counts (
    day         DATE NOT NULL,
    repository  TEXT NOT NULL,
    digest      TEXT NOT NULL,
    tag         TEXT NOT NULL DEFAULT '',
    pulls       BIGINT NOT NULL DEFAULT 0,
    blob_pulls  BIGINT NOT NULL DEFAULT 0,
    bytes       BIGINT NOT NULL DEFAULT 0,
    last_pull   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (repository, day, digest, tag)
);
CREATE INDEX pull_counts_day ON pull_counts (day);

-- Pull events for the endpoints that ask for them (`pulls = true`), this region's own, sent
-- by this region's seat holder. Columns as `notification_events`; the id is local, so events
-- name it with the region (`us-pull-42`).
CREATE TABLE pull_events (
    id          BIGSERIAL PRIMARY KEY,
    at          TIMESTAMPTZ NOT NULL,
    action      TEXT NOT NULL DEFAULT 'pull',
    repository  TEXT NOT NULL,
    digest      TEXT NOT NULL DEFAULT '',
    media_type  TEXT NOT NULL DEFAULT '',
    size        BIGINT NOT NULL DEFAULT 0,
    tag         TEXT NOT NULL DEFAULT '',
    origin      JSONB NOT NULL DEFAULT '{}'
);

-- Per endpoint: every pull event up to `delivered` was sent (or given up on).
CREATE TABLE pull_event_cursors (
    endpoint    TEXT PRIMARY KEY,
    delivered   BIGINT NOT NULL
);
