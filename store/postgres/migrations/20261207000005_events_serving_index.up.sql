-- Outside a transaction, so that the index is built without blocking the
-- archive's inserts on a large events table.
CREATE INDEX CONCURRENTLY IF NOT EXISTS events_serving_id ON events (serving_id) WHERE serving_id IS NOT NULL;
