-- What a VAST document needs of an ad's media file (its MIME type, pixel size
-- and delivery), and the third-party VAST tag an ad may point at instead of
-- hosting its media (AdMetric then answers a Wrapper around it).
ALTER TABLE ads ADD COLUMN video_type text NOT NULL DEFAULT 'video/mp4';
ALTER TABLE ads ADD COLUMN video_width integer NOT NULL DEFAULT 1280;
ALTER TABLE ads ADD COLUMN video_height integer NOT NULL DEFAULT 720;
ALTER TABLE ads ADD COLUMN video_delivery text NOT NULL DEFAULT 'progressive'
    CHECK (video_delivery IN ('progressive', 'streaming'));
ALTER TABLE ads ADD COLUMN vast_tag_url text NOT NULL DEFAULT '';
