-- transcripts: one transcript per (file, model), upserted chunk by chunk; files move on to
-- transcribed (statuses only move forward).

-- name: files_with_transcript
SELECT audio_file_id
FROM transcripts
WHERE audio_file_id = ANY(%(ids)s) AND model = %(model)s

-- name: upsert_transcripts
-- Rows: (audio_file_id, model, transcript_text, language, confidence, segments).
-- created_at is when this text was first produced; re-transcribing to the same text keeps it.
INSERT INTO transcripts AS t (audio_file_id, model, transcript_text, language, confidence, segments)
VALUES %s
ON CONFLICT (audio_file_id, model) DO UPDATE SET
    created_at = CASE WHEN t.transcript_text IS DISTINCT FROM EXCLUDED.transcript_text
                      THEN now() ELSE t.created_at END,
    transcript_text = EXCLUDED.transcript_text,
    language = EXCLUDED.language,
    confidence = EXCLUDED.confidence,
    segments = EXCLUDED.segments

-- name: advance_to_transcribed
UPDATE audio_files
SET status = 'transcribed', error = NULL, failed_stage = NULL, processed_at = now()
WHERE id = ANY(%(ids)s)
  AND archive_etag = %(etag)s
  AND (status = 'converted' OR (status = 'failed' AND failed_stage = 'transcription'))

-- name: transcripts_of_archive
-- Every transcript of the archive's files, by member name (benchmarks compare them with bare WhisperX).
SELECT a.original_filename, t.transcript_text
FROM transcripts AS t
JOIN audio_files AS a ON a.id = t.audio_file_id
WHERE a.archive_source = %(archive_key)s
