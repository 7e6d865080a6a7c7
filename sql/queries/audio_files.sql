-- audio_files: one row per MP3 member of an archive, written by raw_archive, opus_files and
-- parquet_metadata. Every write also checks the row still belongs to the run's archive
-- version (archive_etag), on top of the transaction's fence on `archives`.

-- name: lock_rows_of_archive
SELECT id, original_filename, source_sha256, status, failed_stage, opus_path
FROM audio_files
WHERE archive_source = %(archive_key)s
ORDER BY id
FOR UPDATE

-- name: upsert_members
-- Identity of each member in this version; statuses are set separately (apply_row_changes),
-- so an unchanged member keeps the status it earned.
INSERT INTO audio_files AS a
    (archive_source, partition_key, archive_etag, original_filename, source_size_bytes, source_sha256)
VALUES %s
ON CONFLICT (archive_source, original_filename) DO UPDATE SET
    partition_key = EXCLUDED.partition_key,
    archive_etag = EXCLUDED.archive_etag,
    source_size_bytes = coalesce(EXCLUDED.source_size_bytes, a.source_size_bytes),
    source_sha256 = coalesce(EXCLUDED.source_sha256, a.source_sha256)
RETURNING id, original_filename

-- name: apply_row_changes
-- Status changes decided in Python (registration, definite failures). Rows of members the
-- version removed record which version removed them. A failure before upload (archive,
-- conversion) leaves no usable Opus object (clear_opus); a later one keeps it for a retry.
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

-- name: delete_model_outputs
-- Transcripts and scores of members whose bytes changed or that are now rejected: they
-- describe audio this version no longer has.
WITH dropped_transcripts AS (
    DELETE FROM transcripts WHERE audio_file_id = ANY(%(ids)s)
)
DELETE FROM classifications WHERE audio_file_id = ANY(%(ids)s)

-- name: conversion_state
SELECT id, original_filename, status, opus_path, opus_etag, s3_opus_path, duration_seconds,
       file_size_bytes
FROM audio_files
WHERE archive_source = %(archive_key)s AND archive_etag = %(etag)s

-- name: lock_rows_by_id
SELECT id, opus_path, status
FROM audio_files
WHERE id = ANY(%(ids)s) AND archive_etag = %(etag)s
ORDER BY id
FOR UPDATE

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

-- name: clear_metadata
-- Files without a parquet row in this version get NULL, not the previous version's row.
UPDATE audio_files
SET parquet_metadata = NULL, metadata_source = NULL
WHERE archive_source = %(archive_key)s AND parquet_metadata IS NOT NULL

-- name: store_metadata
UPDATE audio_files AS a
SET parquet_metadata = v.doc, metadata_source = v.source
FROM (VALUES %s) AS v (archive_source, name, source, doc)
WHERE a.archive_source = v.archive_source AND a.original_filename = v.name

-- name: statuses_of_archive
SELECT original_filename, status
FROM audio_files
WHERE archive_source = %(archive_key)s

-- name: opus_objects_of_archive
SELECT opus_path, file_size_bytes
FROM audio_files
WHERE archive_source = %(archive_key)s AND status IN ('converted', 'transcribed', 'classified')

-- name: bad_durations_of_archive
SELECT original_filename, duration_seconds
FROM audio_files
WHERE archive_source = %(archive_key)s
  AND status IN ('converted', 'transcribed', 'classified')
  AND (duration_seconds IS NULL OR duration_seconds <= 0)
ORDER BY original_filename

-- name: files_of_archive
SELECT *
FROM audio_files
WHERE archive_source = %(archive_key)s
ORDER BY original_filename
