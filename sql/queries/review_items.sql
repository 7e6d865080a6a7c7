-- The review console's queue, claims, decisions and search. Parameters common to the queue
-- queries: ra (the RA's user id), double_coding_percent (0..100), and the filters item_id,
-- policy, model, score_min, score_max, date_from, date_to (NULL: no filter).

-- name: queue
-- Items this RA may take (flagged, or in the recall audit sample: see ra_review_items), oldest
-- first. An item is taken when as many other RAs as it needs coders (1, or 2 in the
-- double-coding sample) hold a claim on it or have decided its current version; items this RA
-- decided are done for them.
WITH items AS (
    SELECT i.*, CASE WHEN i.double_coding_bucket < %(double_coding_percent)s THEN 2 ELSE 1 END AS coders_needed
    FROM ra_review_items AS i
), others AS (
    SELECT item_id, count(DISTINCT ra_user_id) AS coders
    FROM (
        SELECT c.item_id, c.ra_user_id FROM ra_active_claims AS c
        UNION
        SELECT d.item_id, d.ra_user_id FROM ra_latest_decisions AS d
        JOIN ra_review_items AS i ON i.item_id = d.item_id AND i.policy_version = d.policy_version
    ) AS holders
    WHERE ra_user_id <> %(ra)s
    GROUP BY item_id
)
SELECT i.item_id, i.audio_file_id, i.original_filename, i.archive_source, i.policy, i.classifier_model,
       i.flag_score, i.flagged_at, i.duration_seconds, i.coders_needed,
       EXISTS (SELECT 1 FROM ra_active_claims AS c WHERE c.item_id = i.item_id AND c.ra_user_id = %(ra)s) AS open_by_me
FROM items AS i
LEFT JOIN others AS o ON o.item_id = i.item_id
WHERE coalesce(o.coders, 0) < i.coders_needed
  AND NOT EXISTS (
      SELECT 1 FROM ra_latest_decisions AS d
      WHERE d.item_id = i.item_id AND d.policy_version = i.policy_version AND d.ra_user_id = %(ra)s
  )
  AND (%(item_id)s::bigint IS NULL OR i.item_id = %(item_id)s)
  AND (%(policy)s::text IS NULL OR i.policy = %(policy)s)
  AND (%(model)s::text IS NULL OR i.classifier_model = %(model)s)
  AND (%(score_min)s::float IS NULL OR i.flag_score >= %(score_min)s)
  AND (%(score_max)s::float IS NULL OR i.flag_score <= %(score_max)s)
  AND (%(date_from)s::date IS NULL OR i.flagged_at >= %(date_from)s::date)
  AND (%(date_to)s::date IS NULL OR i.flagged_at < %(date_to)s::date + 1)
ORDER BY i.flagged_at, i.item_id
LIMIT %(limit)s

-- name: filter_choices
SELECT DISTINCT policy, classifier_model FROM ra_review_items ORDER BY policy, classifier_model

-- name: take_claim_lock
-- One claim at a time, database-wide: checking that an item is free and inserting the claim
-- must not interleave with another RA doing the same. Claims are rare and quick, so one
-- transaction-scoped advisory lock is enough (released at commit).
SELECT pg_advisory_xact_lock(7310442009)

-- name: insert_claim
INSERT INTO ra_claims (item_id, ra_user_id, expires_at)
VALUES (%(item_id)s, %(ra)s, now() + make_interval(secs => %(ttl_s)s))

-- name: item
SELECT * FROM ra_review_items WHERE item_id = %(item_id)s

-- name: my_claim
SELECT 1 AS held FROM ra_active_claims WHERE item_id = %(item_id)s AND ra_user_id = %(ra)s

-- name: my_decision
-- This RA's standing decision on the item's current version (never another RA's: blind).
SELECT d.decision, d.reason, d.decided_at
FROM ra_latest_decisions AS d
JOIN ra_review_items AS i ON i.item_id = d.item_id AND i.policy_version = d.policy_version
WHERE d.item_id = %(item_id)s AND d.ra_user_id = %(ra)s

-- name: record_decision
-- The flag's model, version, score, threshold, whether it was flagged (or an audit item) and
-- its time are copied from the view in the same statement, and only if the RA decided on the
-- version still current; 0 rows: the item changed.
INSERT INTO ra_decisions (item_id, audio_file_id, policy, classifier_model, policy_version, flag_score,
                          flagged_at, decision, reason, ra_user_id, flagged, threshold)
SELECT item_id, audio_file_id, policy, classifier_model, policy_version, flag_score,
       flagged_at, %(decision)s, %(reason)s, %(ra)s, flagged, threshold
FROM ra_review_items
WHERE item_id = %(item_id)s AND policy_version = %(policy_version)s

-- name: audio_key
SELECT opus_key FROM ra_review_items WHERE audio_file_id = %(audio_file_id)s LIMIT 1

-- name: search
-- Newest first; the snippet marks matches with \x01 ... \x02, which the page turns into
-- <mark> after escaping the text (so a transcript can never inject markup).
SELECT s.audio_file_id, s.original_filename, s.archive_source, s.language,
       ts_headline('simple', s.transcript_text, q.query,
                   'StartSel=' || chr(1) || ', StopSel=' || chr(2) || ', MaxFragments=2, MaxWords=20, MinWords=5')
           AS snippet,
       (SELECT array_agg(i.item_id ORDER BY i.item_id) FROM ra_review_items AS i
        WHERE i.audio_file_id = s.audio_file_id) AS review_items
FROM ra_transcript_search AS s,
     websearch_to_tsquery('simple', %(words)s) AS q (query)
WHERE s.document @@ q.query
ORDER BY s.created_at DESC, s.audio_file_id
LIMIT %(limit)s
