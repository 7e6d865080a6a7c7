-- parquet_metadata: each MP3's parquet row on audio_files.parquet_metadata, and the open
-- metadata rows of the dead letter for the parquet members (every run re-reads them all).

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

-- name: resolve_other_members_of_stage
-- The step re-read every parquet member: member rows of stage metadata it did not record again
-- are over (the duplicate removed, the file fixed).
UPDATE processing_failures
SET resolved_at = now()
WHERE resolved_at IS NULL
  AND archive_source = %(archive_key)s
  AND stage = 'metadata'
  AND original_filename <> ''
  AND NOT (original_filename = ANY(%(still_open)s))
