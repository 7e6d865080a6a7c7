-- Calibration of flag thresholds from RA decisions (views ra_calibration, ra_recall), and the
-- recall audit share. The console (ra_app) runs only the first two; `audio-pipeline
-- review-thresholds` / `review-audit` run the rest as the owner. Applying a threshold is the
-- pipeline's write (sql/queries/classifications.sql, apply_threshold).

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

-- name: audit_share
SELECT share_percent, changed_at FROM recall_audit_settings

-- name: set_audit_share
UPDATE recall_audit_settings SET share_percent = %(percent)s, changed_at = now()
