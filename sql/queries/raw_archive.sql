-- raw_archive: the archive version's members registered as rows of audio_files, one per MP3
-- member (accepted or rejected). A row whose member changed (other bytes), came back or is now
-- rejected starts over; one the version no longer has is marked removed. Every write also
-- checks the row belongs to the run's version (archive_etag), on top of the run's fence.

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

-- name: delete_model_outputs
-- Transcripts and scores of members whose bytes changed or that are now rejected: they
-- describe audio this version no longer has.
WITH dropped_transcripts AS (
    DELETE FROM transcripts WHERE audio_file_id = ANY(%(ids)s)
)
DELETE FROM classifications WHERE audio_file_id = ANY(%(ids)s)
