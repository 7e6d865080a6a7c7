-- opus_files: which files of the version still need an Opus object, and each converted file's
-- object committed on its row (the asset checks read them back).

-- name: conversion_state
SELECT id, original_filename, status, failed_stage, opus_path, opus_etag, s3_opus_path, duration_seconds,
       file_size_bytes
FROM audio_files
WHERE archive_source = %(archive_key)s AND archive_etag = %(etag)s

-- name: mark_converted
-- Statuses only move forward: a file already transcribed or classified stays so when the
-- same member is converted again.
UPDATE audio_files AS a SET
    opus_path = v.opus_key,
    s3_opus_path = v.s3_uri,
    opus_etag = v.opus_etag,
    duration_seconds = v.duration,
    file_size_bytes = v.size,
    status = CASE WHEN a.status IN ('pending', 'failed') THEN 'converted' ELSE a.status END,
    error = NULL,
    failed_stage = NULL,
    processed_at = CASE WHEN a.status IN ('pending', 'failed') THEN now() ELSE a.processed_at END
FROM (VALUES %s) AS v (id, opus_key, s3_uri, opus_etag, duration, size)
WHERE a.id = v.id

-- name: statuses_of_archive
SELECT original_filename, status
FROM audio_files
WHERE archive_source = %(archive_key)s

-- name: opus_objects_of_archive
SELECT original_filename, opus_path, opus_etag, file_size_bytes
FROM audio_files
WHERE archive_source = %(archive_key)s AND status IN ('converted', 'transcribed', 'classified')

-- name: bad_durations_of_archive
SELECT original_filename, duration_seconds
FROM audio_files
WHERE archive_source = %(archive_key)s
  AND status IN ('converted', 'transcribed', 'classified')
  AND (duration_seconds IS NULL OR duration_seconds <= 0)
ORDER BY original_filename
