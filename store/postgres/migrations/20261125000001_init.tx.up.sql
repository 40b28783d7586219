CREATE TABLE ads (
    id               text PRIMARY KEY,
    title            text NOT NULL,
    advertiser       text NOT NULL DEFAULT '',
    video_url        text NOT NULL DEFAULT '',
    click_url        text NOT NULL DEFAULT '',
    duration_seconds double precision NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

--bun:split

-- The archive of every accepted event. event_id is the dedup key: the archive
-- consumer inserts with ON CONFLICT (event_id) DO NOTHING, so a redelivered
-- message never adds a second row.
CREATE TABLE events (
    event_id    text PRIMARY KEY,
    type        text NOT NULL,
    ad_id       text NOT NULL,
    occurred_at timestamptz NOT NULL,
    ip          inet,
    user_agent  text NOT NULL DEFAULT '',
    playback_ms bigint NOT NULL DEFAULT 0,
    stream_seq  bigint NOT NULL,
    archived_at timestamptz NOT NULL DEFAULT now()
);

--bun:split

CREATE INDEX events_ad_id_occurred_at ON events (ad_id, occurred_at);
