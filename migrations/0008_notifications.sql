-- Notifications (replication/src/store/events.rs). Replicated: written only by the state
-- machine, identically in every region, and carried in snapshots.

-- One event per entry that pushed or deleted something; `id` is the entry's log index, so
-- every region (whichever delivers) gives an event the same id.
CREATE TABLE notification_events (
    id          BIGINT PRIMARY KEY,
    at          TIMESTAMPTZ NOT NULL,
    action      TEXT NOT NULL,
    repository  TEXT NOT NULL,
    digest      TEXT NOT NULL DEFAULT '',
    media_type  TEXT NOT NULL DEFAULT '',
    size        BIGINT NOT NULL DEFAULT 0,
    tag         TEXT NOT NULL DEFAULT '',
    origin      JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX notification_events_at ON notification_events (at);

-- Per endpoint (by its configured name): every event up to `delivered` was sent (or
-- dead-lettered). A region that starts delivering resumes here.
CREATE TABLE notification_cursors (
    endpoint    TEXT PRIMARY KEY,
    delivered   BIGINT NOT NULL
);

-- Events an endpoint never took within its bounds; `retry` marks those
-- `afreg notifications retry` asked to send again.
CREATE TABLE notification_dead_letters (
    endpoint    TEXT NOT NULL,
    event_id    BIGINT NOT NULL,
    error       TEXT NOT NULL,
    at          TIMESTAMPTZ NOT NULL,
    retry       BOOLEAN NOT NULL DEFAULT false,
    PRIMARY KEY (endpoint, event_id)
);
