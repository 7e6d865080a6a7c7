-- classifications: one score per (file, policy, model), upserted chunk by chunk; files scored on
-- every policy move on to classified; the archive version is processed when the step ends.

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

-- name: scored_policies
-- What this model has scored, with the policy version, the transcript (row and md5 of its
-- text) and the threshold it was scored under.
SELECT audio_file_id, flag_category, policy_version, transcript_id, transcript_md5, threshold
FROM classifications
WHERE audio_file_id = ANY(%(ids)s) AND model = %(model)s

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

-- name: hold_thresholds_shared
-- Taken by the step's writing transaction; apply_threshold takes it exclusively (hold_thresholds),
-- so a threshold is applied either before a chunk's scores are written or after they are stored.
SELECT pg_advisory_xact_lock_shared(hashtext('policy_thresholds'))

-- name: upsert_classifications
-- Rows: (audio_file_id, flag_category, model, flag_score, threshold, content_truncated, reason,
-- policy_version, transcript_id, transcript_md5); `threshold` is the step's default. The
-- threshold recorded and flagged by is the one in force when the row is written (a chosen one,
-- current_policy_thresholds, wins), under hold_thresholds_shared: a threshold applied while the
-- step scored is never overwritten by the one it started with. created_at is when the item was
-- first scored (and flagged) as it stands: it moves only when the policy text, the flag or the
-- score (by more than 0.001) changed, so an unchanged flag never re-enters the RAs' 24-hour
-- queue, even when a new transcript was scored to the same result.
INSERT INTO classifications AS c
    (audio_file_id, flag_category, model, flag_score, flagged, threshold, content_truncated, reason,
     policy_version, transcript_id, transcript_md5)
SELECT v.audio_file_id, v.flag_category, v.model, v.flag_score, is_flagged(v.flag_score, t.threshold), t.threshold,
       v.content_truncated, v.reason, v.policy_version, v.transcript_id, v.transcript_md5
FROM (VALUES %s) AS v (audio_file_id, flag_category, model, flag_score, threshold, content_truncated, reason,
                       policy_version, transcript_id, transcript_md5)
CROSS JOIN LATERAL (
    SELECT coalesce(
        (SELECT p.threshold FROM current_policy_thresholds AS p WHERE p.policy = v.flag_category AND p.model = v.model),
        v.threshold) AS threshold
) AS t
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
RETURNING flag_category, flagged

-- name: advance_to_classified
UPDATE audio_files
SET status = 'classified', error = NULL, failed_stage = NULL, processed_at = now()
WHERE id = ANY(%(ids)s)
  AND archive_etag = %(etag)s
  AND (status IN ('converted', 'transcribed') OR (status = 'failed' AND failed_stage = 'classification'))

-- name: record_processed
-- The archive's run finished its last step for this version. Only the version results belong
-- to can be processed: a run of an older one changes nothing.
UPDATE archives
SET processed_etag = %(etag)s,
    processed_at = now()
WHERE archive_source = %(archive_key)s
  AND current_etag = %(etag)s

-- name: hold_thresholds
SELECT pg_advisory_xact_lock(hashtext('policy_thresholds'))

-- name: apply_threshold
-- Every stored score of the policy and model flagged again under the new threshold, which is
-- recorded on each row: nothing is scored again, and the pipeline's "already scored" check
-- (policy version, model, threshold) then finds these rows current. classified_at
-- (created_at) moves where the flag changed, as when the pipeline re-scores, so a newly
-- flagged item reaches the queue (and ra_queue's 24 hours) as new.
WITH before AS (
    SELECT id, flagged AS was_flagged
    FROM classifications
    WHERE flag_category = %(policy)s AND model = %(model)s
    FOR UPDATE
), updated AS (
    UPDATE classifications AS c
    SET flagged = is_flagged(c.flag_score, %(threshold)s),
        threshold = %(threshold)s,
        created_at = CASE WHEN c.flagged IS DISTINCT FROM is_flagged(c.flag_score, %(threshold)s)
                          THEN now() ELSE c.created_at END
    FROM before AS b
    WHERE c.id = b.id
    RETURNING c.flagged, b.was_flagged
)
SELECT count(*)                                         AS scores,
       count(*) FILTER (WHERE flagged)                  AS flagged,
       count(*) FILTER (WHERE flagged AND NOT was_flagged) AS newly_flagged,
       count(*) FILTER (WHERE was_flagged AND NOT flagged) AS no_longer_flagged
FROM updated

-- name: record_threshold
INSERT INTO policy_thresholds (policy, model, threshold, basis)
VALUES (%(policy)s, %(model)s, %(threshold)s, %(basis)s)
