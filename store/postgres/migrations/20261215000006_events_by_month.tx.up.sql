-- The archive becomes partitioned by month of occurred_at (UTC), so that an
-- expired month is dropped whole (DROP TABLE of its partition) instead of
-- deleted row by row. Monthly partitions are named events_pYYYYMM and cover
-- [first of the month, first of the next); the archiver creates them ahead
-- and on demand, and drops those past ARCHIVE_RETENTION.
--
-- visitor: the visitor hash the intake computed from the full address
-- before truncating it (IP_TRUNCATE), so that a rebuild counts visitors as
-- the rollup writers did. NULL: a rebuild hashes ip and user_agent.
ALTER TABLE events ADD COLUMN visitor bigint;

-- The table as it is becomes one partition, events_before, covering every
-- time before the first of the month after its newest row: nothing is
-- copied (attaching checks the bound in one scan and builds the new key's
-- index). It is dropped whole once that month is past the retention. An
-- empty table is simply dropped.
ALTER TABLE events RENAME TO events_before;
ALTER TABLE events_before RENAME CONSTRAINT events_pkey TO events_before_pkey;
ALTER INDEX events_ad_id_occurred_at RENAME TO events_before_ad_id_occurred_at;
ALTER INDEX IF EXISTS events_serving_id RENAME TO events_before_serving_id;

-- A unique key of a partitioned table must hold the partition key: the
-- dedup key is (event_id, occurred_at), which a redelivery or a retry
-- carries alike (see Archive.Insert).
CREATE TABLE events (
    event_id       text NOT NULL,
    type           text NOT NULL,
    ad_id          text NOT NULL,
    occurred_at    timestamptz NOT NULL,
    ip             inet,
    user_agent     text NOT NULL DEFAULT '',
    playback_ms    bigint NOT NULL DEFAULT 0,
    stream_seq     bigint NOT NULL,
    archived_at    timestamptz NOT NULL DEFAULT now(),
    partition      integer NOT NULL DEFAULT -1,
    serving_id     text,
    error_code     smallint,
    invalid_reason text,
    visitor        bigint,
    PRIMARY KEY (event_id, occurred_at)
) PARTITION BY RANGE (occurred_at);

CREATE INDEX events_ad_id_occurred_at ON events (ad_id, occurred_at);
CREATE INDEX events_serving_id ON events (serving_id) WHERE serving_id IS NOT NULL;

DO $$
DECLARE
    newest timestamptz;
    bound  timestamptz;
BEGIN
    SELECT max(occurred_at) INTO newest FROM events_before;
    IF newest IS NULL THEN
        DROP TABLE events_before;
        RETURN;
    END IF;
    bound := (date_trunc('month', newest AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC';
    -- The old key (event_id) gives way to the partitioned table's.
    ALTER TABLE events_before DROP CONSTRAINT events_before_pkey;
    EXECUTE format('ALTER TABLE events ATTACH PARTITION events_before FOR VALUES FROM (MINVALUE) TO (%L)', bound);
END
$$;
