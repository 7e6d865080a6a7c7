-- Calibration of flag thresholds from RA decisions (views ra_calibration, ra_recall), and the
-- operator's statements that act on it: applying a per-policy threshold (re-flags stored
-- scores, no model call) and the recall audit share. The console (ra_app) runs only the
-- first two; `audio-pipeline review-thresholds` / `review-audit` run the rest as the owner.

-- name: calibration
SELECT policy, classifier_model, threshold, decisions, precision, precision_low, precision_high, recall,
       effective_decisions, threshold_in_effect
FROM ra_calibration
ORDER BY policy, classifier_model, threshold

-- name: recommended_thresholds
-- Per policy and model, the lowest threshold whose estimated precision reaches the target,
-- with its interval and the decisions it rests on. Pairs where none does are absent.
SELECT DISTINCT ON (policy, classifier_model)
       policy, classifier_model, threshold, decisions, precision, precision_low, precision_high, recall,
       threshold_in_effect
FROM ra_calibration
WHERE precision >= %(target)s
ORDER BY policy, classifier_model, threshold

-- name: current_thresholds
SELECT policy, model, threshold, basis, set_at FROM current_policy_thresholds ORDER BY policy, model

-- name: record_threshold
INSERT INTO policy_thresholds (policy, model, threshold, basis)
VALUES (%(policy)s, %(model)s, %(threshold)s, %(basis)s)

-- name: reflag_scores
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
    SET flagged = c.flag_score IS NOT NULL AND c.flag_score >= %(threshold)s,
        threshold = %(threshold)s,
        created_at = CASE WHEN c.flagged IS DISTINCT FROM (c.flag_score IS NOT NULL AND c.flag_score >= %(threshold)s)
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

-- name: audit_share
SELECT share_percent, changed_at FROM recall_audit_settings

-- name: set_audit_share
UPDATE recall_audit_settings SET share_percent = %(percent)s, changed_at = now()
