-- What the review console (role ra_app) reads: it has SELECT on these views and on no table.
-- security_barrier on every view that hides rows, so a function in a caller's WHERE clause
-- never sees a hidden row (tests/pipeline/test_security.py shows the attack).

-- Every flagged item an RA can review: one row per flag (file x policy x model), with the
-- audio key, the latest transcript with its timed segments, and the parquet metadata.
-- No 24-hour window (unlike ra_queue): an item waits until it is decided.
-- double_coding_bucket: 0..99 from a hash of the item id; items whose bucket is below the
-- configured percentage go to two RAs. A hash, not random(), so every query agrees.
CREATE OR REPLACE VIEW ra_review_items WITH (security_barrier = true) AS
SELECT
    c.id                AS item_id,
    a.id                AS audio_file_id,
    a.archive_source,
    a.original_filename,
    a.opus_path         AS opus_key,
    a.duration_seconds,
    c.flag_category     AS policy,
    c.model             AS classifier_model,
    c.policy_version,
    c.flag_score,
    c.threshold,
    c.content_truncated,
    c.created_at        AS flagged_at,
    t.transcript_text,
    t.segments,
    t.language,
    a.parquet_metadata,
    ('x' || left(md5('ra-double-coding:' || c.id::text), 7))::bit(28)::int % 100 AS double_coding_bucket
FROM classifications AS c
JOIN audio_files AS a ON a.id = c.audio_file_id
LEFT JOIN LATERAL (
    SELECT tr.transcript_text, tr.segments, tr.language
    FROM transcripts AS tr
    WHERE tr.audio_file_id = a.id
    ORDER BY tr.created_at DESC
    LIMIT 1
) AS t ON true
WHERE c.flagged
  AND a.status = 'classified'
  AND a.opus_path IS NOT NULL;

-- Each RA's standing decision per item and flag version: the latest row wins (the log is
-- append-only, so correcting a decision means deciding again).
CREATE OR REPLACE VIEW ra_latest_decisions WITH (security_barrier = true) AS
SELECT DISTINCT ON (d.item_id, d.policy_version, d.ra_user_id)
    d.id AS decision_id, d.item_id, d.audio_file_id, d.policy, d.classifier_model, d.policy_version,
    d.flag_score, d.flagged_at, d.decision, d.reason, d.ra_user_id, u.username, d.decided_at
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
CREATE OR REPLACE VIEW ra_accounts WITH (security_barrier = true) AS
SELECT id, username, password_hash
FROM ra_users
WHERE NOT disabled;

-- Sessions that still sign someone in.
CREATE OR REPLACE VIEW ra_live_sessions WITH (security_barrier = true) AS
SELECT s.token_sha256, s.ra_user_id, u.username, s.csrf_token, s.expires_at
FROM ra_sessions AS s
JOIN ra_users AS u ON u.id = s.ra_user_id
WHERE s.expires_at > now()
  AND NOT u.disabled
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
-- model: of the decisions that were "violates" or "does not violate", the share that
-- confirmed the flag. "unsure" is counted but left out of the ratio. Each RA's standing
-- decision counts once, so a double-coded item counts twice.
CREATE OR REPLACE VIEW ra_flag_precision WITH (security_barrier = true) AS
SELECT
    (decided_at AT TIME ZONE 'UTC')::date                       AS day,
    policy,
    classifier_model,
    count(*)                                                    AS decisions,
    count(*) FILTER (WHERE decision = 'violates')               AS violates,
    count(*) FILTER (WHERE decision = 'does_not_violate')       AS does_not_violate,
    count(*) FILTER (WHERE decision = 'unsure')                 AS unsure,
    round(
        (count(*) FILTER (WHERE decision = 'violates'))::numeric
        / nullif(count(*) FILTER (WHERE decision <> 'unsure'), 0), 4
    )                                                           AS precision
FROM ra_latest_decisions
GROUP BY 1, 2, 3;

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

GRANT SELECT ON ra_review_items, ra_latest_decisions, ra_active_claims, ra_accounts, ra_live_sessions,
    ra_transcript_search, ra_flag_precision, ra_double_coded_pairs, ra_agreement, ra_decisions_per_ra
    TO ra_app;
-- RAs reading SQL directly get the figures and the items, not accounts or sessions.
GRANT SELECT ON ra_review_items, ra_transcript_search, ra_flag_precision, ra_agreement, ra_decisions_per_ra
    TO ra_reader;
