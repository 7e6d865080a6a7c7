-- Policy texts by version, and per-policy flag thresholds (issue 15 item 5, issue 17).

-- Every policy text a score was computed with, written by the classifications step before it
-- scores. policy_version is the hash the rows carry (resources/classifier.py), so the console
-- shows the text an item was scored under, also after POLICIES_DIR changed or a release.
CREATE TABLE IF NOT EXISTS policy_texts (
    policy         TEXT        NOT NULL,
    policy_version TEXT        NOT NULL,
    policy_text    TEXT        NOT NULL,
    first_used_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (policy, policy_version)
);

-- Thresholds chosen per policy and classifier model (`audio-pipeline review-thresholds`),
-- one row per change, never updated: the latest row per (policy, model) is in force. Without
-- a row the pipeline's FLAG_THRESHOLD applies. Applying one re-flags the stored scores (no
-- model call) and records the threshold on every classification row it covers.
CREATE TABLE IF NOT EXISTS policy_thresholds (
    id        BIGSERIAL        PRIMARY KEY,
    policy    TEXT             NOT NULL,
    model     TEXT             NOT NULL,
    threshold DOUBLE PRECISION NOT NULL CHECK (threshold >= 0 AND threshold <= 1),
    basis     TEXT             NOT NULL DEFAULT '',     -- what the choice rested on, in words
    set_at    TIMESTAMPTZ      NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS policy_thresholds_latest_idx ON policy_thresholds (model, policy, id DESC);
