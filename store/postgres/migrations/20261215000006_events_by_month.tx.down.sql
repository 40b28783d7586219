-- Back to one table: every partition's rows are copied into it (a retry's
-- second row, same event_id at another time, is left out).
CREATE TABLE events_unpartitioned (
    event_id       text PRIMARY KEY,
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
    invalid_reason text
);
INSERT INTO events_unpartitioned
SELECT event_id, type, ad_id, occurred_at, ip, user_agent, playback_ms, stream_seq, archived_at,
       partition, serving_id, error_code, invalid_reason
FROM events ORDER BY occurred_at
ON CONFLICT (event_id) DO NOTHING;
DROP TABLE events;
ALTER TABLE events_unpartitioned RENAME TO events;
ALTER TABLE events RENAME CONSTRAINT events_unpartitioned_pkey TO events_pkey;
CREATE INDEX events_ad_id_occurred_at ON events (ad_id, occurred_at);
CREATE INDEX events_serving_id ON events (serving_id) WHERE serving_id IS NOT NULL;
