-- Flagged items first scored in the last 24 hours, highest score first, with what an RA needs
-- to review them: transcript, category, score, metadata and the Opus object key to presign.
-- created_at is the first time the item was scored as it stands, so re-running an archive
-- does not put unchanged flags back in front of RAs. Files no longer in their archive, or not
-- (yet) classified in the current version, are left out.
-- security_barrier: the view's conditions run before any function in a reader's WHERE clause,
-- so such a function never sees rows the view hides.
CREATE OR REPLACE VIEW ra_queue WITH (security_barrier = true) AS
SELECT
    c.id                AS classification_id,
    a.id                AS audio_file_id,
    a.archive_source,
    a.original_filename,
    a.opus_path         AS opus_key,
    a.s3_opus_path,
    a.duration_seconds,
    c.flag_category,
    c.flag_score,
    c.model             AS classifier_model,
    c.content_truncated,
    t.transcript_text,
    t.language,
    t.confidence        AS transcript_confidence,
    a.parquet_metadata,
    c.created_at        AS classified_at,
    c.policy_version
FROM classifications AS c
JOIN audio_files AS a ON a.id = c.audio_file_id
LEFT JOIN LATERAL (
    SELECT tr.transcript_text, tr.language, tr.confidence
    FROM transcripts AS tr
    WHERE tr.audio_file_id = a.id
    ORDER BY tr.created_at DESC
    LIMIT 1
) AS t ON true
WHERE c.flagged
  AND a.status = 'classified'
  AND c.created_at >= now() - interval '24 hours'
ORDER BY c.flag_score DESC, c.created_at DESC;

GRANT SELECT ON ra_queue TO ra_reader;
