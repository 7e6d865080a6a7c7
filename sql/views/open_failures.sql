-- The dead letter as operators read it: failures no later run has resolved, newest first.
CREATE OR REPLACE VIEW open_failures WITH (security_barrier = true) AS
SELECT f.id, f.archive_source, f.partition_key, nullif(f.original_filename, '') AS original_filename,
       f.audio_file_id, f.stage, f.error, f.attempts, f.run_id, f.failed_at,
       f.retryable
FROM processing_failures AS f
WHERE f.resolved_at IS NULL
ORDER BY f.failed_at DESC;
