-- Flagged items first scored in the last 24 hours, highest score first, with what an RA needs
-- to review them: transcript, category, score, metadata, the Opus object key to presign and
-- the policy text the score was computed with. Items are defined once, in classified_items.sql.
-- classified_at is the first time the item was scored as it stands, so re-running an archive
-- does not put unchanged flags back in front of RAs. Files no longer in their archive, or not
-- (yet) classified in the current version, are left out.
-- security_barrier: the view's conditions run before any function in a reader's WHERE clause,
-- so such a function never sees rows the view hides.
CREATE OR REPLACE VIEW ra_queue WITH (security_barrier = true) AS
SELECT
    item_id             AS classification_id,
    audio_file_id,
    archive_source,
    original_filename,
    opus_key,
    s3_opus_path,
    duration_seconds,
    policy              AS flag_category,
    flag_score,
    classifier_model,
    content_truncated,
    transcript_text,
    language,
    transcript_confidence,
    parquet_metadata,
    classified_at,
    policy_version,
    policy_text
FROM flagged_items
WHERE classified_at >= now() - interval '24 hours'
ORDER BY flag_score DESC, classified_at DESC;

GRANT SELECT ON ra_queue TO ra_reader;
