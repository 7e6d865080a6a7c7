-- What the review console (role ra_app) reads: it has SELECT on these views and on no table.
-- security_barrier on every view that hides rows, so a function in a caller's WHERE clause
-- never sees a hidden row (tests/pipeline/test_security.py shows the attack).

-- Every item an RA can review: the flagged items, and the recall audit sample, i.e. the share
-- of classified, not flagged items set in recall_audit_settings, chosen by each item's own
-- random draw (audit_bucket, migration 021), so independently of the score, per policy and
-- day, and of anything an RA can read. One row per classification; what an item is comes from
-- classified_items.sql (reviewable_items).
-- No 24-hour window (unlike ra_queue): an item waits until it is decided.
-- double_coding_bucket: 0..99, the item's other draw; items whose bucket is below the
-- configured percentage go to two RAs. Stored, not random() here, so every query agrees.
-- `flagged` tells an audit item apart; the console never shows it (nor the score nor the
-- draws) to an RA in blind mode, so audit items look exactly like flagged ones.
CREATE OR REPLACE VIEW ra_review_items WITH (security_barrier = true) AS
SELECT
    item_id,
    audio_file_id,
    archive_source,
    original_filename,
    opus_key,
    duration_seconds,
    policy,
    classifier_model,
    policy_version,
    flag_score,
    threshold,
    content_truncated,
    classified_at       AS flagged_at,
    transcript_text,
    segments,
    language,
    parquet_metadata,
    double_coding_bucket,
    flagged,
    policy_text
FROM reviewable_items
JOIN (SELECT id, double_coding_bucket FROM classifications
      WHERE flagged OR audit_bucket < (SELECT (share_percent * 100)::int FROM recall_audit_settings)) AS drawn
  ON drawn.id = item_id;

-- Each RA's standing decision per item and flag version: the latest row wins (the log is
-- append-only, so correcting a decision means deciding again).
CREATE OR REPLACE VIEW ra_latest_decisions WITH (security_barrier = true) AS
SELECT DISTINCT ON (d.item_id, d.policy_version, d.ra_user_id)
    d.id AS decision_id, d.item_id, d.audio_file_id, d.policy, d.classifier_model, d.policy_version,
    d.flag_score, d.flagged_at, d.decision, d.reason, d.ra_user_id, u.username, d.decided_at,
    coalesce(d.flagged, true) AS flagged, d.threshold
FROM ra_decisions AS d
JOIN ra_users AS u ON u.id = d.ra_user_id
ORDER BY d.item_id, d.policy_version, d.ra_user_id, d.decided_at DESC, d.id DESC;

-- Claims still holding an item: not expired, and the RA has not decided the item since.
CREATE OR REPLACE VIEW ra_active_claims WITH (security_barrier = true) AS
SELECT cl.item_id, cl.ra_user_id, max(cl.claimed_at) AS claimed_at, max(cl.expires_at) AS expires_at
FROM ra_claims AS cl
WHERE cl.expires_at > now()
  AND NOT EXISTS (
      SELECT 1 FROM ra_decisions AS d
      WHERE d.item_id = cl.item_id AND d.ra_user_id = cl.ra_user_id AND d.decided_at >= cl.claimed_at
  )
GROUP BY cl.item_id, cl.ra_user_id;

-- Sign-in: the console reads a password hash by user name; disabled accounts are absent.
-- session_epoch goes into the session the sign-in starts (migration 015).
CREATE OR REPLACE VIEW ra_accounts WITH (security_barrier = true) AS
SELECT id, username, password_hash, session_epoch, role
FROM ra_users
WHERE NOT disabled;

-- Sessions that still sign someone in: not expired, not signed out, the account enabled and
-- its password unchanged since the session started (same epoch).
CREATE OR REPLACE VIEW ra_live_sessions WITH (security_barrier = true) AS
SELECT s.token_sha256, s.ra_user_id, u.username, s.csrf_token, s.expires_at,
       u.role, s.created_at, s.client_address, s.user_agent
FROM ra_sessions AS s
JOIN ra_users AS u ON u.id = s.ra_user_id
WHERE s.expires_at > now()
  AND NOT u.disabled
  AND s.session_epoch = u.session_epoch
  AND NOT EXISTS (SELECT 1 FROM ra_session_ends AS e WHERE e.token_sha256 = s.token_sha256);

-- Transcript search. Not a security_barrier view, on purpose: it hides no rows a reader may
-- not see (every current file's transcript), and a barrier would stop the planner from
-- pushing the non-leakproof @@ into the scan, i.e. from using transcripts_text_search_idx.
-- `document` is the indexed expression; query it with @@ websearch_to_tsquery('simple', ...).
CREATE OR REPLACE VIEW ra_transcript_search AS
SELECT
    t.audio_file_id,
    a.archive_source,
    a.original_filename,
    t.model AS transcript_model,
    t.language,
    t.transcript_text,
    to_tsvector('simple', t.transcript_text) AS document,
    t.created_at
FROM transcripts AS t
JOIN audio_files AS a ON a.id = t.audio_file_id
WHERE a.status <> 'removed';

-- Precision of the classifier's flags against RA decisions, per day of decision, policy and
-- model: of the decisions on flagged items that were "violates" or "does not violate", the
-- share that confirmed the flag, with its Wilson 95 % interval. "unsure" is counted but left
-- out of the ratio; recall-audit items (not flagged) are left out altogether (see ra_recall).
-- Each RA's standing decision counts once, so a double-coded item counts twice.
CREATE OR REPLACE VIEW ra_flag_precision WITH (security_barrier = true) AS
WITH counts AS (
    SELECT
        (decided_at AT TIME ZONE 'UTC')::date                 AS day,
        policy,
        classifier_model,
        count(*)                                              AS decisions,
        count(*) FILTER (WHERE decision = 'violates')         AS violates,
        count(*) FILTER (WHERE decision = 'does_not_violate') AS does_not_violate,
        count(*) FILTER (WHERE decision = 'unsure')           AS unsure
    FROM ra_latest_decisions
    WHERE flagged
    GROUP BY 1, 2, 3
)
SELECT
    day, policy, classifier_model, decisions, violates, does_not_violate, unsure,
    round(violates::numeric / nullif(violates + does_not_violate, 0), 4) AS precision,
    round(wilson_lower(violates::float8 / nullif(violates + does_not_violate, 0), violates + does_not_violate)::numeric, 4)
        AS precision_low,
    round(wilson_upper(violates::float8 / nullif(violates + does_not_violate, 0), violates + does_not_violate)::numeric, 4)
        AS precision_high
FROM counts;

-- Items decided by two different RAs (the double-coding sample), one row per item and flag
-- version: the two RAs in user-id order are coder 1 and coder 2.
CREATE OR REPLACE VIEW ra_double_coded_pairs WITH (security_barrier = true) AS
WITH ranked AS (
    SELECT d.*, row_number() OVER (PARTITION BY d.item_id, d.policy_version ORDER BY d.ra_user_id) AS coder
    FROM ra_latest_decisions AS d
)
SELECT
    item_id, policy, classifier_model, policy_version,
    max(decision) FILTER (WHERE coder = 1) AS first_decision,
    max(decision) FILTER (WHERE coder = 2) AS second_decision,
    max(decided_at)                        AS completed_at
FROM ranked
WHERE coder <= 2
GROUP BY item_id, policy, classifier_model, policy_version
HAVING count(*) = 2;

-- Inter-rater agreement per policy over the double-coded items: Cohen's kappa over the three
-- decisions, kappa = (p_o - p_e) / (1 - p_e), with p_e from each coder's marginal shares.
-- NULL when p_e = 1 (both coders always gave the same single answer: kappa is undefined).
CREATE OR REPLACE VIEW ra_agreement WITH (security_barrier = true) AS
WITH observed AS (
    SELECT policy, count(*) AS items, avg((first_decision = second_decision)::int) AS p_o
    FROM ra_double_coded_pairs
    GROUP BY policy
), marginals AS (
    SELECT p.policy, k.decision,
           avg((p.first_decision = k.decision)::int)  AS share_1,
           avg((p.second_decision = k.decision)::int) AS share_2
    FROM ra_double_coded_pairs AS p
    CROSS JOIN (VALUES ('violates'), ('does_not_violate'), ('unsure')) AS k (decision)
    GROUP BY p.policy, k.decision
), expected AS (
    SELECT policy, sum(share_1 * share_2) AS p_e FROM marginals GROUP BY policy
)
SELECT
    o.policy,
    o.items,
    round(o.p_o, 4) AS observed_agreement,
    round(e.p_e, 4) AS expected_agreement,
    CASE WHEN e.p_e < 1 THEN round((o.p_o - e.p_e) / (1 - e.p_e), 4) END AS kappa
FROM observed AS o
JOIN expected AS e USING (policy);

-- Decisions per RA and day (standing decisions, so a corrected decision counts once).
CREATE OR REPLACE VIEW ra_decisions_per_ra WITH (security_barrier = true) AS
SELECT
    (decided_at AT TIME ZONE 'UTC')::date                 AS day,
    username,
    count(*)                                              AS decisions,
    count(*) FILTER (WHERE decision = 'violates')         AS violates,
    count(*) FILTER (WHERE decision = 'does_not_violate') AS does_not_violate,
    count(*) FILTER (WHERE decision = 'unsure')           AS unsure
FROM ra_latest_decisions
GROUP BY 1, 2;

-- What the recall and calibration estimates rest on: each RA's standing decision ("violates"
-- or "does not violate") on an item's current version, with the item's current score, in one
-- of two strata: "flagged" (flagged now; every flagged item goes to the queue) and "audit"
-- (not flagged now, and decided as a recall-audit item: a random sample of the unflagged ones).
-- An item decided while flagged that a higher threshold has since unflagged is in neither: it
-- is no random sample of the unflagged items. Not security_barrier: only the views below read it.
CREATE OR REPLACE VIEW ra_estimation_decisions AS
SELECT d.item_id, d.ra_user_id, d.decision, i.policy, i.classifier_model, i.flag_score,
       CASE WHEN i.flagged THEN 'flagged' ELSE 'audit' END AS stratum
FROM ra_latest_decisions AS d
JOIN classified_items AS i ON i.item_id = d.item_id AND i.policy_version = d.policy_version
WHERE d.decision <> 'unsure'
  AND (i.flagged OR NOT d.flagged);

-- The population the samples stand for, per policy and model: how many items are flagged and
-- not, their top scores (to tell which thresholds the samples cover) and the threshold most
-- rows were flagged with.
CREATE OR REPLACE VIEW ra_item_population AS
SELECT
    policy,
    classifier_model,
    count(*) FILTER (WHERE flagged)               AS flagged_items,
    count(*) FILTER (WHERE NOT flagged)           AS unflagged_items,
    max(flag_score) FILTER (WHERE flagged)        AS top_flagged_score,
    max(flag_score) FILTER (WHERE NOT flagged)    AS top_unflagged_score,
    mode() WITHIN GROUP (ORDER BY threshold)      AS threshold
FROM classified_items
GROUP BY policy, classifier_model;

-- Recall of the flags per policy and model, from the two samples: precision p of the flags
-- (flagged decisions) and the miss rate q, the share of unflagged items that violate (audit
-- decisions). Estimated violating items: p x flagged_items found, q x unflagged_items missed;
-- recall = found / (found + missed), false-negative rate = 1 - recall. p and q carry Wilson
-- 95 % intervals; recall's interval combines their ends (lowest p with highest q, and the
-- reverse), so it is conservative. NULL until both samples have decisions.
CREATE OR REPLACE VIEW ra_recall WITH (security_barrier = true) AS
WITH sample AS (
    SELECT
        policy,
        classifier_model,
        count(*) FILTER (WHERE stratum = 'flagged')                          AS flag_decisions,
        count(*) FILTER (WHERE stratum = 'flagged' AND decision = 'violates') AS flag_violates,
        count(*) FILTER (WHERE stratum = 'audit')                            AS audit_decisions,
        count(*) FILTER (WHERE stratum = 'audit' AND decision = 'violates')   AS audit_violates
    FROM ra_estimation_decisions
    GROUP BY policy, classifier_model
), rates AS (
    SELECT
        p.policy, p.classifier_model, p.threshold, p.flagged_items, p.unflagged_items,
        coalesce(s.flag_decisions, 0)  AS flag_decisions,
        coalesce(s.flag_violates, 0)   AS flag_violates,
        coalesce(s.audit_decisions, 0) AS audit_decisions,
        coalesce(s.audit_violates, 0)  AS audit_violates,
        s.flag_violates::float8 / nullif(s.flag_decisions, 0)   AS p,
        s.audit_violates::float8 / nullif(s.audit_decisions, 0) AS q
    FROM ra_item_population AS p
    LEFT JOIN sample AS s USING (policy, classifier_model)
), bounds AS (
    SELECT r.*,
           wilson_lower(p, flag_decisions) AS p_low, wilson_upper(p, flag_decisions) AS p_high,
           wilson_lower(q, audit_decisions) AS q_low, wilson_upper(q, audit_decisions) AS q_high
    FROM rates AS r
), recall AS (
    SELECT b.*,
           estimated_recall(p, q, flagged_items, unflagged_items)           AS r,
           estimated_recall(p_low, q_high, flagged_items, unflagged_items)  AS r_low,
           estimated_recall(p_high, q_low, flagged_items, unflagged_items)  AS r_high
    FROM bounds AS b
)
SELECT
    policy, classifier_model, threshold, flagged_items, unflagged_items,
    flag_decisions, flag_violates,
    round(p::numeric, 4)      AS precision,
    round(p_low::numeric, 4)  AS precision_low,
    round(p_high::numeric, 4) AS precision_high,
    audit_decisions, audit_violates,
    round(q::numeric, 4)      AS miss_rate,
    round(q_low::numeric, 4)  AS miss_rate_low,
    round(q_high::numeric, 4) AS miss_rate_high,
    round(r::numeric, 4)      AS recall,
    round(r_low::numeric, 4)  AS recall_low,
    round(r_high::numeric, 4) AS recall_high,
    round((1 - r)::numeric, 4)      AS false_negative_rate,
    round((1 - r_high)::numeric, 4) AS false_negative_rate_low,
    round((1 - r_low)::numeric, 4)  AS false_negative_rate_high
FROM recall;

-- Calibration per policy and model: precision and recall if the threshold were t, for
-- t = 0.01 ... 0.99, from the same two strata. Each decision stands for the items of its
-- stratum (weight = stratum items / stratum decisions), so a threshold below the one in force
-- is judged by the audit sample of the unflagged items. precision(t) = weighted violating /
-- weighted decided among scores >= t, with a Wilson interval over Kish's effective number of
-- decisions (the plain count when all come from one stratum); recall(t) = weighted violating
-- above t / all weighted violating. NULL where a stratum the threshold reaches has no
-- decisions yet. `decisions` is how many decisions a row rests on.
CREATE OR REPLACE VIEW ra_calibration WITH (security_barrier = true) AS
WITH sample AS (
    SELECT policy, classifier_model,
           count(*) FILTER (WHERE stratum = 'flagged') AS flag_decisions,
           count(*) FILTER (WHERE stratum = 'audit')   AS audit_decisions
    FROM ra_estimation_decisions
    GROUP BY policy, classifier_model
), weighted AS (
    SELECT e.policy, e.classifier_model, e.flag_score, e.decision = 'violates' AS violates,
           CASE e.stratum WHEN 'flagged' THEN p.flagged_items::float8 / s.flag_decisions
                          ELSE p.unflagged_items::float8 / s.audit_decisions END AS weight
    FROM ra_estimation_decisions AS e
    JOIN sample AS s USING (policy, classifier_model)
    JOIN ra_item_population AS p USING (policy, classifier_model)
), grid AS (
    SELECT (step / 100.0)::numeric(3, 2) AS threshold FROM generate_series(1, 99) AS step
), sums AS (
    SELECT w.policy, w.classifier_model, g.threshold,
           count(*) FILTER (WHERE w.flag_score >= g.threshold)                     AS decisions,
           sum(w.weight) FILTER (WHERE w.flag_score >= g.threshold)                AS above,
           sum(w.weight ^ 2) FILTER (WHERE w.flag_score >= g.threshold)            AS above_squared,
           sum(w.weight) FILTER (WHERE w.flag_score >= g.threshold AND w.violates) AS above_violating,
           sum(w.weight) FILTER (WHERE w.violates)                                 AS violating
    FROM weighted AS w
    CROSS JOIN grid AS g
    GROUP BY w.policy, w.classifier_model, g.threshold
), estimates AS (
    SELECT x.policy, x.classifier_model, x.threshold, x.decisions, p.threshold AS threshold_in_effect,
           CASE WHEN x.above > 0
                 AND NOT (s.audit_decisions = 0 AND coalesce(p.top_unflagged_score >= x.threshold, false))
                 AND NOT (s.flag_decisions = 0 AND coalesce(p.top_flagged_score >= x.threshold, false))
                THEN coalesce(x.above_violating, 0) / x.above END AS precision,
           x.above ^ 2 / nullif(x.above_squared, 0) AS effective_decisions,
           CASE WHEN x.violating > 0
                 AND NOT (s.audit_decisions = 0 AND p.unflagged_items > 0)
                 AND NOT (s.flag_decisions = 0 AND p.flagged_items > 0)
                THEN coalesce(x.above_violating, 0) / x.violating END AS recall
    FROM sums AS x
    JOIN sample AS s USING (policy, classifier_model)
    JOIN ra_item_population AS p USING (policy, classifier_model)
)
SELECT
    policy, classifier_model, threshold, decisions,
    round(precision::numeric, 4)                                          AS precision,
    round(wilson_lower(precision, effective_decisions)::numeric, 4)       AS precision_low,
    round(wilson_upper(precision, effective_decisions)::numeric, 4)       AS precision_high,
    round(recall::numeric, 4)                                             AS recall,
    round(effective_decisions::numeric, 1)                                AS effective_decisions,
    threshold_in_effect
FROM estimates;

GRANT SELECT ON ra_review_items, ra_latest_decisions, ra_active_claims, ra_accounts, ra_live_sessions,
    ra_transcript_search, ra_flag_precision, ra_double_coded_pairs, ra_agreement, ra_decisions_per_ra,
    ra_recall, ra_calibration
    TO ra_app;
-- RAs reading SQL directly get the figures and the items, not accounts or sessions.
GRANT SELECT ON ra_review_items, ra_transcript_search, ra_flag_precision, ra_agreement, ra_decisions_per_ra,
    ra_recall, ra_calibration
    TO ra_reader;
