-- No version silently skipped, and scores that follow their transcripts (issue 18).

-- requested_run_seen_at: when the sensor saw a Dagster run for requested_etag. The sensor marks
-- a version requested before the daemon stores the tick's runs; a request that still has no
-- run after a grace period (the daemon died in between) is forgotten and offered again.
-- processed_etag: the version the archive's last successful run processed (its classifications
-- step finished); the catch-up schedule re-requests archives whose object is another version.
ALTER TABLE archives
    ADD COLUMN IF NOT EXISTS requested_run_seen_at TIMESTAMPTZ,
    ADD COLUMN IF NOT EXISTS processed_etag        TEXT,
    ADD COLUMN IF NOT EXISTS processed_at          TIMESTAMPTZ;

-- Requests from before: their runs were stored (the sensor could not tell otherwise).
UPDATE archives SET requested_run_seen_at = requested_at
WHERE requested_etag IS NOT NULL AND requested_run_seen_at IS NULL;

-- Archives from before whose current version has no file left in flight were processed.
UPDATE archives AS a SET processed_etag = a.current_etag, processed_at = a.claimed_at
WHERE a.current_etag IS NOT NULL
  AND a.processed_etag IS NULL
  AND NOT EXISTS (
      SELECT 1 FROM audio_files AS f
      WHERE f.archive_source = a.archive_source AND f.status IN ('pending', 'converted', 'transcribed'));

-- The sensor reads the requests still waiting for a run, oldest first, every tick.
CREATE INDEX IF NOT EXISTS archives_unconfirmed_requests_idx ON archives (requested_at)
    WHERE requested_etag IS NOT NULL AND requested_run_seen_at IS NULL;

-- The transcript a score was computed from: its row and an md5 of its text. The "already
-- scored" key includes both, so a new transcript (another Whisper model or language, or new
-- text) makes its scores stale; the RA views show the transcript the score belongs to.
ALTER TABLE classifications
    ADD COLUMN IF NOT EXISTS transcript_id  BIGINT REFERENCES transcripts (id) ON DELETE SET NULL,
    ADD COLUMN IF NOT EXISTS transcript_md5 TEXT;

-- Scores from before: the latest transcript of the file that existed when it was scored.
UPDATE classifications AS c
SET transcript_id = (
    SELECT tr.id
    FROM transcripts AS tr
    WHERE tr.audio_file_id = c.audio_file_id AND tr.created_at <= c.scored_at
    ORDER BY tr.created_at DESC
    LIMIT 1)
WHERE c.transcript_id IS NULL;
UPDATE classifications AS c
SET transcript_md5 = md5(t.transcript_text)
FROM transcripts AS t
WHERE t.id = c.transcript_id AND c.transcript_md5 IS NULL;
