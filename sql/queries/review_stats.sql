-- The review console's stats page, from the views the daily report also reads. A lead sees
-- everyone's figures; an RA coding blind sees their own decisions and team figures over items
-- they can no longer code (own_decisions, team_precision_for_ra).

-- name: precision
SELECT day, policy, classifier_model, decisions, violates, does_not_violate, unsure, precision,
       precision_low, precision_high
FROM ra_flag_precision
ORDER BY day DESC, policy, classifier_model
LIMIT 200

-- name: recall
SELECT * FROM ra_recall ORDER BY policy, classifier_model

-- name: agreement
SELECT policy, items, observed_agreement, expected_agreement, kappa FROM ra_agreement ORDER BY policy

-- name: decisions_per_ra
SELECT day, username, decisions, violates, does_not_violate, unsure
FROM ra_decisions_per_ra
ORDER BY day DESC, username
LIMIT 200

-- name: own_decisions
-- The RA's own standing decisions per day and policy. No precision: in blind review that would
-- tell them which of their items were flagged and which were audit items.
SELECT (decided_at AT TIME ZONE 'UTC')::date                 AS day,
       policy,
       count(*)                                              AS decisions,
       count(*) FILTER (WHERE decision = 'violates')         AS violates,
       count(*) FILTER (WHERE decision = 'does_not_violate') AS does_not_violate,
       count(*) FILTER (WHERE decision = 'unsure')           AS unsure
FROM ra_latest_decisions
WHERE ra_user_id = %(ra)s
GROUP BY 1, 2
ORDER BY 1 DESC, 2
LIMIT 200

-- name: team_precision_for_ra
-- Precision of flags per policy and model over items this RA can no longer code and never
-- decided: complete (as many RAs decided them as they need) and none of theirs. An item the RA
-- still has to code, or coded beside another RA, never shows here, so these figures cannot
-- reveal a second coder's decision (before or after the RA's own).
-- An item no longer in ra_review_items (no RA can code it) needs no second coder here.
WITH coders AS (
    SELECT item_id, policy_version, count(*) AS deciders, bool_or(ra_user_id = %(ra)s) AS mine
    FROM ra_latest_decisions
    GROUP BY item_id, policy_version
), counts AS (
    SELECT d.policy, d.classifier_model,
           count(*) FILTER (WHERE d.decision = 'violates')         AS violates,
           count(*) FILTER (WHERE d.decision = 'does_not_violate') AS does_not_violate,
           count(*) FILTER (WHERE d.decision = 'unsure')           AS unsure
    FROM ra_latest_decisions AS d
    JOIN coders AS c USING (item_id, policy_version)
    WHERE d.flagged
      AND NOT c.mine
      AND c.deciders >= CASE WHEN (SELECT i.double_coding_bucket FROM ra_review_items AS i WHERE i.item_id = d.item_id)
                                  < %(double_coding_percent)s
                             THEN 2 ELSE 1 END
    GROUP BY d.policy, d.classifier_model
)
SELECT policy, classifier_model, violates + does_not_violate + unsure AS decisions, violates, does_not_violate, unsure,
       round(violates::numeric / nullif(violates + does_not_violate, 0), 4) AS precision,
       round(wilson_lower(violates::float8 / nullif(violates + does_not_violate, 0), violates + does_not_violate)::numeric, 4)
           AS precision_low,
       round(wilson_upper(violates::float8 / nullif(violates + does_not_violate, 0), violates + does_not_violate)::numeric, 4)
           AS precision_high
FROM counts
ORDER BY policy, classifier_model

-- name: queue_counts
-- Items per policy waiting for any RA (current version, not yet decided by as many RAs as
-- they need): the queue's size, independent of who asks.
SELECT i.policy, count(*) AS items
FROM ra_review_items AS i
WHERE (SELECT count(DISTINCT d.ra_user_id) FROM ra_latest_decisions AS d
       WHERE d.item_id = i.item_id AND d.policy_version = i.policy_version)
      < CASE WHEN i.double_coding_bucket < %(double_coding_percent)s THEN 2 ELSE 1 END
GROUP BY i.policy
ORDER BY i.policy
