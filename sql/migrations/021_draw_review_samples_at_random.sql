-- Blind review that stays blind (issue 26). Migrations 009 and 017 put an item in the
-- double-coding and recall audit samples by an unsalted hash of its id, and the id is in every
-- URL: an RA who read them could tell audit items from flagged ones, and knew ahead which
-- items a second RA codes. Each classification now carries its own random draws, made when
-- the row is inserted and shown nowhere, so nothing an RA can read says anything about them.
-- They stay with the item: the pipeline upserts a re-scored row, keeping its id and draws.
-- random() is seeded per backend from the operating system's strong random source; its
-- outputs are never shown, so they cannot be predicted from one another either.
ALTER TABLE classifications
    -- 0..9,999: in the recall audit sample when below share_percent x 100 (down to 0.01 %)
    ADD COLUMN IF NOT EXISTS audit_bucket         INTEGER NOT NULL DEFAULT floor(random() * 10000)::int,
    -- 0..99: coded by two RAs when below REVIEW_DOUBLE_CODING_PERCENT
    ADD COLUMN IF NOT EXISTS double_coding_bucket INTEGER NOT NULL DEFAULT floor(random() * 100)::int;

-- Existing rows got fresh draws above (a volatile default is evaluated per row). Items an RA
-- has started (decided, or holds a claim on) keep the samples they were in, whatever the
-- share: an audit item decided stays in the audit sample, and a double-coded pair in progress
-- still gets its second coder while a single-coded item decided once never wants one.
UPDATE classifications AS c
SET audit_bucket = ra_hash_bucket('ra-recall-audit', c.id, 10000),
    double_coding_bucket = ra_hash_bucket('ra-double-coding', c.id, 100)
WHERE EXISTS (SELECT 1 FROM ra_decisions AS d WHERE d.item_id = c.id)
   OR EXISTS (SELECT 1 FROM ra_claims AS cl WHERE cl.item_id = c.id AND cl.expires_at > now());

-- The hash goes, with the index and the view built on it (sql/views/review_console.sql makes
-- the view again, on the draws, after the migrations).
DROP INDEX IF EXISTS classifications_recall_audit_idx;
DROP VIEW IF EXISTS ra_review_items;
DROP FUNCTION IF EXISTS ra_hash_bucket(TEXT, BIGINT, INTEGER);

-- The audit sample's candidates, found without reading every unflagged row on each queue page.
CREATE INDEX IF NOT EXISTS classifications_audit_bucket_idx ON classifications (audit_bucket) WHERE NOT flagged;
