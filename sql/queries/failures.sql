-- processing_failures, the dead letter: one open row per (archive, member, stage); member ''
-- is the archive as a whole. A repeat failure updates the open row; a later success closes it.

-- name: record_failures
-- Rows: (archive_source, partition_key, original_filename, audio_file_id, stage, error, run_id,
-- retryable, attempts). attempts is 1 for a try that may have been the file's fault and 0 for a
-- service's failure (storage, database, scratch), which is never held against the file.
INSERT INTO processing_failures AS f
    (archive_source, partition_key, original_filename, audio_file_id, stage, error, run_id, retryable, attempts)
VALUES %s
ON CONFLICT (archive_source, original_filename, stage) WHERE resolved_at IS NULL
DO UPDATE SET
    error = EXCLUDED.error,
    run_id = EXCLUDED.run_id,
    audio_file_id = coalesce(EXCLUDED.audio_file_id, f.audio_file_id),
    retryable = EXCLUDED.retryable,
    attempts = f.attempts + EXCLUDED.attempts,
    failed_at = now()
RETURNING original_filename, stage, attempts

-- name: give_up_on_files
-- Rows: (archive_source, original_filename, stage, error): files tried as often as they may be;
-- their failure is now their outcome.
UPDATE processing_failures AS f
SET retryable = false, error = v.error
FROM (VALUES %s) AS v (archive_source, original_filename, stage, error)
WHERE f.resolved_at IS NULL
  AND f.archive_source = v.archive_source
  AND f.original_filename = v.original_filename
  AND f.stage = v.stage

-- name: lock_files
-- This version's rows among the ids, locked while their statuses are decided.
SELECT id, opus_path, status
FROM audio_files
WHERE id = ANY(%(ids)s) AND archive_etag = %(etag)s
ORDER BY id
FOR UPDATE

-- name: change_file_statuses
-- Status changes decided in Python (registration, a file's failure), each row moved to the
-- writing version. A failure before upload (archive, conversion) leaves no usable Opus object
-- (clear_opus); a later one keeps it for a retry.
UPDATE audio_files AS a SET
    archive_etag = v.etag,
    status = v.status,
    error = v.error,
    failed_stage = v.failed_stage,
    processed_at = now(),
    opus_path = CASE WHEN v.clear_opus THEN NULL ELSE a.opus_path END,
    s3_opus_path = CASE WHEN v.clear_opus THEN NULL ELSE a.s3_opus_path END,
    opus_etag = CASE WHEN v.clear_opus THEN NULL ELSE a.opus_etag END,
    duration_seconds = CASE WHEN v.clear_opus THEN NULL ELSE a.duration_seconds END,
    file_size_bytes = CASE WHEN v.clear_opus THEN NULL ELSE a.file_size_bytes END
FROM (VALUES %s) AS v (id, etag, status, error, failed_stage, clear_opus)
WHERE a.id = v.id

-- name: record_run_failure
-- From the dead-letter sensor. When the step already recorded its own (more specific) reason
-- for this run, that reason stays; another run's failure of the same stage counts an attempt.
INSERT INTO processing_failures AS f
    (archive_source, partition_key, original_filename, stage, error, run_id, retryable)
VALUES (%(archive_key)s, %(partition_key)s, '', %(stage)s, %(error)s, %(run_id)s, %(retryable)s)
ON CONFLICT (archive_source, original_filename, stage) WHERE resolved_at IS NULL
DO UPDATE SET
    error = CASE WHEN f.run_id = EXCLUDED.run_id THEN f.error ELSE EXCLUDED.error END,
    retryable = CASE WHEN f.run_id = EXCLUDED.run_id THEN f.retryable ELSE EXCLUDED.retryable END,
    attempts = f.attempts + CASE WHEN f.run_id IS DISTINCT FROM EXCLUDED.run_id THEN 1 ELSE 0 END,
    run_id = EXCLUDED.run_id,
    failed_at = CASE WHEN f.run_id = EXCLUDED.run_id THEN f.failed_at ELSE now() END

-- name: resolve_archive_stages
-- A step of the archive succeeded: its archive-level failures are over.
UPDATE processing_failures
SET resolved_at = now()
WHERE resolved_at IS NULL
  AND archive_source = %(archive_key)s
  AND original_filename = ''
  AND stage = ANY(%(stages)s)

-- name: resolve_file_stages
UPDATE processing_failures
SET resolved_at = now()
WHERE resolved_at IS NULL
  AND audio_file_id = ANY(%(ids)s)
  AND stage = ANY(%(stages)s)

-- name: resolve_members
-- Members no longer in the archive: nothing about them is still to be fixed.
UPDATE processing_failures
SET resolved_at = now()
WHERE resolved_at IS NULL
  AND archive_source = %(archive_key)s
  AND original_filename = ANY(%(names)s)

-- name: open_failures_of_archive
SELECT original_filename, stage, error, retryable, attempts, run_id
FROM processing_failures
WHERE archive_source = %(archive_key)s AND resolved_at IS NULL
ORDER BY original_filename, stage

-- name: failed_archives
-- For `audio-pipeline requeue`: archives with failed files or an open archive-level failure.
SELECT archive_source AS archive_key, partition_key, sum(failed_files)::int AS failed_files,
       max(archive_error) AS archive_error
FROM (
    SELECT archive_source, partition_key, count(*) AS failed_files, NULL AS archive_error
    FROM audio_files
    WHERE status = 'failed'
    GROUP BY archive_source, partition_key
    UNION ALL
    SELECT archive_source, partition_key, 0, stage || ': ' || error
    FROM processing_failures
    WHERE resolved_at IS NULL AND original_filename = ''
) AS failed
WHERE %(archive_key)s::text IS NULL OR archive_source = %(archive_key)s
GROUP BY archive_source, partition_key
ORDER BY archive_source

-- name: failed_file_count
SELECT count(*) AS n
FROM audio_files
WHERE archive_source = %(archive_key)s AND status = 'failed'
