-- The stream partition an event was stored in (-1: not known), so that a
-- rebuild can read that partition's rollup checkpoints.
ALTER TABLE events ADD COLUMN partition integer NOT NULL DEFAULT -1;
