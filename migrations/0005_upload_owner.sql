-- Upload sessions per user (storage.max_uploads_per_user): who opened each session, a user
-- name or, without a signed-in user, the client's address. Sessions opened before this
-- migration have no owner and count against nobody.
ALTER TABLE uploads ADD COLUMN owner TEXT NOT NULL DEFAULT '';
CREATE INDEX uploads_owner ON uploads (owner);
