-- Each execution of a step holds its step of the run's claim (issue 23, items 1 and 5). Under
-- Celery one run's step can execute twice at once (a message delivered again while the first
-- worker still works), so a run's epoch cannot tell the two apart: every execution gets a row
-- here, and a step's newest execution is the only one whose writes the fence lets through.
-- `lease_expires_at` is moved on while it works; once it has passed, or `ended_at` is set, the
-- execution uploads nothing more, so the upload intents it queued may be deleted and forgotten.
CREATE TABLE IF NOT EXISTS step_executions (
    execution        BIGSERIAL   PRIMARY KEY,  -- also in its Opus keys: {id}-{execution}.opus
    archive_source   TEXT        NOT NULL REFERENCES archives (archive_source) ON DELETE CASCADE,
    step             TEXT        NOT NULL,
    run_id           TEXT        NOT NULL,
    claim_epoch      BIGINT      NOT NULL,     -- the run's claim it executes under
    started_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    lease_expires_at TIMESTAMPTZ NOT NULL,
    ended_at         TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS step_executions_newest_idx ON step_executions (archive_source, step, execution DESC);

-- Intents belong to the execution that may upload them, not to a run's epoch (a twin shares
-- its epoch). Intents from before this migration are treated as plain queued deletions.
ALTER TABLE object_deletions
    DROP COLUMN IF EXISTS upload_epoch,
    ADD COLUMN IF NOT EXISTS upload_execution BIGINT;
