-- The recall audit sample and the statistics the console, the views and the daily report share.

-- The share of classified, not flagged items that goes into the review queue as well, so RAs'
-- decisions can estimate what the classifier misses. One row; changed with
-- `audio-pipeline review-audit --percent P`. Kept in the database, not in the console's
-- environment, because the sample is part of the data: the views and the daily report read it.
CREATE TABLE IF NOT EXISTS recall_audit_settings (
    singleton     BOOLEAN      PRIMARY KEY DEFAULT true CHECK (singleton),
    share_percent NUMERIC(5,2) NOT NULL DEFAULT 2 CHECK (share_percent >= 0 AND share_percent <= 100),
    changed_at    TIMESTAMPTZ  NOT NULL DEFAULT now()
);
INSERT INTO recall_audit_settings DEFAULT VALUES ON CONFLICT DO NOTHING;

-- A stable pseudo-random bucket 0..buckets-1 per item and purpose, from a hash of the id (not
-- random(): every query, and every day, agrees on it). The double-coding sample has used
-- purpose 'ra-double-coding' with 100 buckets since migration 009; the recall audit uses
-- 'ra-recall-audit' with 10,000 (shares down to 0.01 %). The hash does not depend on the score,
-- so the audit sample is a simple random sample of the unflagged items of every policy and day.
CREATE OR REPLACE FUNCTION ra_hash_bucket(purpose TEXT, item_id BIGINT, buckets INTEGER) RETURNS INTEGER
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT ('x' || left(md5(purpose || ':' || item_id::text), 7))::bit(28)::int % buckets
$$;

-- The audit sample's candidates, found without hashing every unflagged row on each queue page.
CREATE INDEX IF NOT EXISTS classifications_recall_audit_idx
    ON classifications (ra_hash_bucket('ra-recall-audit', id, 10000)) WHERE NOT flagged;

-- Wilson score interval (95 %) for a proportion p observed over n trials: unlike the normal
-- approximation it stays inside [0, 1] and behaves at p = 0, p = 1 and small n. n may be an
-- effective sample size (weighted estimates use Kish's). NULL when n = 0.
CREATE OR REPLACE FUNCTION wilson_lower(p DOUBLE PRECISION, n DOUBLE PRECISION) RETURNS DOUBLE PRECISION
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN n > 0 THEN
        greatest(0, ((p + 3.8414588 / (2 * n)) - 1.959964 * sqrt(p * (1 - p) / n + 3.8414588 / (4 * n * n)))
                    / (1 + 3.8414588 / n))
    END
$$;

CREATE OR REPLACE FUNCTION wilson_upper(p DOUBLE PRECISION, n DOUBLE PRECISION) RETURNS DOUBLE PRECISION
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN n > 0 THEN
        least(1, ((p + 3.8414588 / (2 * n)) + 1.959964 * sqrt(p * (1 - p) / n + 3.8414588 / (4 * n * n)))
                 / (1 + 3.8414588 / n))
    END
$$;

-- The daily report carries precision, recall and false-negative rate with their intervals.
ALTER TABLE daily_summaries ADD COLUMN IF NOT EXISTS review_recall JSONB NOT NULL DEFAULT '[]';

-- Recall from the two samples the review queue holds: precision p of the flagged items and the
-- miss rate q (share of unflagged items that violate, from the audit sample). found = p x
-- flagged items, missed = q x unflagged items; recall = found / (found + missed). A stratum
-- with no items contributes nothing whatever its (unknown) rate; NULL when nothing violates.
CREATE OR REPLACE FUNCTION estimated_recall(p DOUBLE PRECISION, q DOUBLE PRECISION,
                                            flagged_items BIGINT, unflagged_items BIGINT)
RETURNS DOUBLE PRECISION
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT found / nullif(found + missed, 0)
    FROM (SELECT CASE WHEN flagged_items = 0 THEN 0 ELSE p * flagged_items END   AS found,
                 CASE WHEN unflagged_items = 0 THEN 0 ELSE q * unflagged_items END AS missed) AS estimate
$$;
