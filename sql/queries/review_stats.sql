-- The review console's stats page, from the views the daily report also reads.

-- name: precision
SELECT day, policy, classifier_model, decisions, violates, does_not_violate, unsure, precision
FROM ra_flag_precision
ORDER BY day DESC, policy, classifier_model
LIMIT 200

-- name: agreement
SELECT policy, items, observed_agreement, expected_agreement, kappa FROM ra_agreement ORDER BY policy

-- name: decisions_per_ra
SELECT day, username, decisions, violates, does_not_violate, unsure
FROM ra_decisions_per_ra
ORDER BY day DESC, username
LIMIT 200

-- name: queue_counts
-- Items per policy waiting for any RA (flagged, current version, not yet decided by as many
-- RAs as they need): the queue's size, independent of who asks.
SELECT i.policy, count(*) AS items
FROM ra_review_items AS i
WHERE (SELECT count(DISTINCT d.ra_user_id) FROM ra_latest_decisions AS d
       WHERE d.item_id = i.item_id AND d.policy_version = i.policy_version)
      < CASE WHEN i.double_coding_bucket < %(double_coding_percent)s THEN 2 ELSE 1 END
GROUP BY i.policy
ORDER BY i.policy
