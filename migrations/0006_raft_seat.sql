-- Several afreg processes may serve one region; exactly one of them runs the region's Raft
-- member. It holds the seat: the advisory lock (classid 1634103911, objid 1) on a session it
-- keeps open, and this row, whose epoch it bumped when it took the seat. Every Raft storage
-- write checks the epoch in its own transaction (FOR KEY SHARE; a takeover locks the row FOR
-- UPDATE), so a process that lost the seat can no longer write the log, the vote or the tables.
CREATE TABLE raft_seat (
    only_row   BOOLEAN PRIMARY KEY DEFAULT true CHECK (only_row),
    epoch      BIGINT NOT NULL DEFAULT 0,
    -- The holder: its process name, its own internal URL (and the address that URL's host
    -- resolves to, when set), the backend pid of its seat session.
    holder     TEXT NOT NULL DEFAULT '',
    holder_url TEXT NOT NULL DEFAULT '',
    holder_addr TEXT,
    holder_pid INTEGER,
    taken_at   TIMESTAMPTZ,
    -- The holder's lease, renewed on its seat session (Postgres' clock). NULL: released.
    renewed_at TIMESTAMPTZ
);
INSERT INTO raft_seat DEFAULT VALUES;

-- Every process of the region, as it last reported itself (for /status and the relays).
CREATE TABLE region_processes (
    name       TEXT PRIMARY KEY,
    url        TEXT NOT NULL,
    public_url TEXT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    seen_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The region's token signing key, shared by its processes (each may have its own volume).
CREATE TABLE region_signing_key (
    only_row BOOLEAN PRIMARY KEY DEFAULT true CHECK (only_row),
    pem      TEXT NOT NULL
);
