-- The pin queue, stored (it was derived: every `blobs.cid` without a 'pinned' row here, which
-- the pinner found with anti-joins over both tables on every pass, so a push cost work in
-- proportion to every blob the region holds).
--
-- Every CID of `blobs` has a `pins` row here, kept by the triggers below whichever path
-- writes `blobs` (an applied entry, a snapshot install): a new one is 'wanted', and `needed`
-- says whether any blob row still names it. The pinner's work is then the rows that are not
-- 'pinned' or not needed, found through a partial index, in time that does not grow with the
-- blobs pinned already.
ALTER TABLE pins DROP CONSTRAINT pins_state_check;
ALTER TABLE pins ADD CONSTRAINT pins_state_check CHECK (state IN ('wanted', 'pinned', 'failed'));
ALTER TABLE pins ADD COLUMN needed BOOLEAN NOT NULL DEFAULT true;

UPDATE pins p SET needed = EXISTS (SELECT 1 FROM blobs b WHERE b.cid = p.cid);
INSERT INTO pins (cid, state) SELECT DISTINCT b.cid, 'wanted' FROM blobs b ON CONFLICT (cid) DO NOTHING;

CREATE INDEX pins_work ON pins (cid) WHERE state <> 'pinned' OR NOT needed;

CREATE FUNCTION pins_blob_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pins (cid, state) VALUES (NEW.cid, 'wanted')
        ON CONFLICT (cid) DO UPDATE SET needed = true WHERE NOT pins.needed;
    RETURN NULL;
END $$;

CREATE FUNCTION pins_blob_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE pins SET needed = false
     WHERE cid = OLD.cid AND needed AND NOT EXISTS (SELECT 1 FROM blobs b WHERE b.cid = OLD.cid);
    RETURN NULL;
END $$;

CREATE TRIGGER pins_blob_inserted AFTER INSERT ON blobs FOR EACH ROW EXECUTE FUNCTION pins_blob_inserted();
CREATE TRIGGER pins_blob_deleted AFTER DELETE ON blobs FOR EACH ROW EXECUTE FUNCTION pins_blob_deleted();
