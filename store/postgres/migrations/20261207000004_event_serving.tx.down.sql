DROP INDEX IF EXISTS events_serving_id;
ALTER TABLE events DROP COLUMN IF EXISTS invalid_reason;
ALTER TABLE events DROP COLUMN IF EXISTS error_code;
ALTER TABLE events DROP COLUMN IF EXISTS serving_id;
