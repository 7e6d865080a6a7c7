-- transcripts and classifications: one transcript per (file, model), one score per
-- (file, policy, model). Writers upsert, and statuses only move forward.

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

-- name: transcripts_of_files
SELECT t.audio_file_id, t.id, t.transcript_text
FROM transcripts AS t
WHERE t.audio_file_id = ANY(%(ids)s) AND t.model = %(model)s

-- name: transcript_identities
-- Which transcript of each file a score would be computed from now: its row and an md5 of its
-- text (what a classification records; see scored_policies).
SELECT t.audio_file_id, t.id, md5(t.transcript_text) AS transcript_md5
FROM transcripts AS t
WHERE t.audio_file_id = ANY(%(ids)s) AND t.model = %(model)s

-- name: transcripts_of_archive
-- Every transcript of the archive's files, by member name (benchmarks compare them with bare WhisperX).
SELECT a.original_filename, t.transcript_text
FROM transcripts AS t
JOIN audio_files AS a ON a.id = t.audio_file_id
WHERE a.archive_source = %(archive_key)s

-- name: scored_policies
-- What this model has scored, with the policy version, the transcript (row and md5 of its
-- text) and the threshold it was scored under.
SELECT audio_file_id, flag_category, policy_version, transcript_id, transcript_md5, threshold
FROM classifications
WHERE audio_file_id = ANY(%(ids)s) AND model = %(model)s

-- name: upsert_classifications
-- Rows: (audio_file_id, flag_category, model, flag_score, flagged, threshold, content_truncated,
-- reason, policy_version, transcript_id, transcript_md5). created_at is when the item was
-- first scored (and flagged) as it stands: it moves only when the policy text, the flag or the
-- score (by more than 0.001) changed, so an unchanged flag never re-enters the RAs' 24-hour
-- queue, even when a new transcript was scored to the same result.
INSERT INTO classifications AS c
    (audio_file_id, flag_category, model, flag_score, flagged, threshold, content_truncated, reason,
     policy_version, transcript_id, transcript_md5)
VALUES %s
ON CONFLICT (audio_file_id, flag_category, model) DO UPDATE SET
    created_at = CASE
        WHEN c.policy_version IS DISTINCT FROM EXCLUDED.policy_version
          OR c.flagged IS DISTINCT FROM EXCLUDED.flagged
          OR (c.flag_score IS NULL) <> (EXCLUDED.flag_score IS NULL)
          OR abs(c.flag_score - EXCLUDED.flag_score) > 0.001
        THEN now() ELSE c.created_at END,
    flag_score = EXCLUDED.flag_score,
    flagged = EXCLUDED.flagged,
    threshold = EXCLUDED.threshold,
    content_truncated = EXCLUDED.content_truncated,
    reason = EXCLUDED.reason,
    policy_version = EXCLUDED.policy_version,
    transcript_id = EXCLUDED.transcript_id,
    transcript_md5 = EXCLUDED.transcript_md5,
    scored_at = now()

-- name: advance_to_classified
UPDATE audio_files
SET status = 'classified', error = NULL, failed_stage = NULL, processed_at = now()
WHERE id = ANY(%(ids)s)
  AND archive_etag = %(etag)s
  AND (status IN ('converted', 'transcribed') OR (status = 'failed' AND failed_stage = 'classification'))

-- name: policy_thresholds
-- Thresholds chosen per policy for this model (`audio-pipeline review-thresholds`, table
-- policy_thresholds); a policy without one is flagged at the configured FLAG_THRESHOLD.
SELECT policy, threshold FROM current_policy_thresholds WHERE model = %(model)s

-- name: keep_policy_texts
-- Rows: (policy, policy_version, policy_text). The text each score is computed with, kept by
-- version so reviewers see the text an item was scored under (sql/views/classified_items.sql).
INSERT INTO policy_texts (policy, policy_version, policy_text)
VALUES %s
ON CONFLICT (policy, policy_version) DO NOTHING
