-- Which version of each archive the sensor has requested a run for. The sensor's cursor then
-- only has to hold a LastModified watermark, however many archives a bucket holds or arrive
-- at once: "already requested?" is answered here, for the archives inside the look-back window.
ALTER TABLE archives
    ADD COLUMN IF NOT EXISTS requested_etag TEXT,        -- NULL: never requested by the sensor
    ADD COLUMN IF NOT EXISTS requested_at   TIMESTAMPTZ;

-- Archives from before: the version their results belong to was requested once.
UPDATE archives SET requested_etag = current_etag WHERE requested_etag IS NULL AND current_etag IS NOT NULL;
