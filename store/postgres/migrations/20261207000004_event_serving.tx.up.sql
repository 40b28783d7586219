-- What VAST brings to an event: the AdServingId of the response it belongs
-- to (a serving's events join on it), an error event's VAST error code, and
-- why an event is not valid traffic (NULL when it is). Nothing is dropped:
-- invalid events are archived with their reason. Nullable columns without a
-- default: adding them rewrites nothing.
ALTER TABLE events ADD COLUMN serving_id text;
ALTER TABLE events ADD COLUMN error_code smallint;
ALTER TABLE events ADD COLUMN invalid_reason text;
