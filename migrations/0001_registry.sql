-- The regional node's metadata. Blob bytes live in Kubo; this schema maps digests to CIDs,
-- records which repository may serve which blob, and keeps manifests byte for byte.

CREATE TABLE repositories (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One row per distinct content, shared by every repository that links it.
CREATE TABLE blobs (
    digest      TEXT PRIMARY KEY,
    cid         TEXT NOT NULL,
    size        BIGINT NOT NULL CHECK (size >= 0),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX blobs_cid ON blobs (cid);

-- A blob is served through a repository only if it was uploaded or mounted there.
CREATE TABLE repository_blobs (
    repository_id  BIGINT NOT NULL REFERENCES repositories (id) ON DELETE CASCADE,
    digest         TEXT NOT NULL REFERENCES blobs (digest),
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (repository_id, digest)
);
CREATE INDEX repository_blobs_digest ON repository_blobs (digest);

-- Manifests are stored per repository, exactly as pushed.
CREATE TABLE manifests (
    repository_id  BIGINT NOT NULL REFERENCES repositories (id) ON DELETE CASCADE,
    digest         TEXT NOT NULL,
    media_type     TEXT NOT NULL,
    body           BYTEA NOT NULL,
    size           BIGINT NOT NULL,
    subject        TEXT,
    artifact_type  TEXT,
    annotations    JSONB,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (repository_id, digest)
);
CREATE INDEX manifests_subject ON manifests (repository_id, subject) WHERE subject IS NOT NULL;

-- What a manifest points at: blobs (config, layers) and, for an index, child manifests.
CREATE TABLE manifest_references (
    repository_id    BIGINT NOT NULL,
    manifest_digest  TEXT NOT NULL,
    ref_digest       TEXT NOT NULL,
    is_manifest      BOOLEAN NOT NULL,
    PRIMARY KEY (repository_id, manifest_digest, ref_digest),
    FOREIGN KEY (repository_id, manifest_digest) REFERENCES manifests (repository_id, digest) ON DELETE CASCADE
);
CREATE INDEX manifest_references_ref ON manifest_references (ref_digest);

CREATE TABLE tags (
    repository_id    BIGINT NOT NULL,
    name             TEXT NOT NULL,
    manifest_digest  TEXT NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (repository_id, name),
    FOREIGN KEY (repository_id, manifest_digest) REFERENCES manifests (repository_id, digest) ON DELETE CASCADE
);
CREATE INDEX tags_manifest ON tags (repository_id, manifest_digest);

-- Upload sessions survive a restart: the bytes received so far are chunks in Kubo (pinned
-- while the session lives), listed here in order.
CREATE TABLE uploads (
    id          UUID PRIMARY KEY,
    repository  TEXT NOT NULL,
    size        BIGINT NOT NULL DEFAULT 0,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX uploads_updated ON uploads (updated_at);

CREATE TABLE upload_chunks (
    upload_id  UUID NOT NULL REFERENCES uploads (id) ON DELETE CASCADE,
    "offset"   BIGINT NOT NULL,
    length     BIGINT NOT NULL,
    cid        TEXT NOT NULL,
    PRIMARY KEY (upload_id, "offset")
);
CREATE INDEX upload_chunks_cid ON upload_chunks (cid);

CREATE TABLE users (
    username       TEXT PRIMARY KEY,
    password_hash  TEXT NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- What a user may do: actions on repositories whose name matches a pattern
-- (`*` for all, `team/*` for a prefix, or an exact name).
CREATE TABLE user_grants (
    username  TEXT NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    pattern   TEXT NOT NULL,
    actions   TEXT[] NOT NULL,
    PRIMARY KEY (username, pattern)
);
