-- A run's claim on an archive, spanning the whole run on any executor (it replaces the
-- per-step advisory lock of resources/archive_lock.py, which under Celery lived on one step's
-- connection only). `claimed_by_run` holds it; `claim_epoch` grows by one with every new
-- claim, and every fenced write checks it in the same transaction, so a run that lost its
-- claim (to a run that took over after it ended or went silent) can write nothing more.
-- `claim_heartbeat_at` is renewed while a step of the holding run works.
ALTER TABLE archives
    ADD COLUMN IF NOT EXISTS claim_epoch        BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS claim_heartbeat_at TIMESTAMPTZ;

-- Opus keys are written once per claim (processed/{date}/{id}-{epoch}.opus): an upload is
-- queued here before it starts, as an intent, and forgotten when a row commits pointing at it.
-- An intent left behind (a killed or fenced-out writer) is deleted like any queued object,
-- but never while its own claim may still be uploading it.
ALTER TABLE object_deletions
    ADD COLUMN IF NOT EXISTS upload_epoch BIGINT;  -- NULL: an object a row stopped pointing to
