-- Requests counted per archive (issue 23 items 2 and 3).
--
-- request_seq: the number of the archive's latest request. It grows whenever a version is
-- requested anew (another ETag than the last request's, or the same one again after a run was
-- seen for it), and it is part of the run key and a tag of the run: a version requested again
-- (A -> B -> A, an operator putting the old file back) is a new run, which Dagster would drop
-- under a repeated `key@etag`, and reconciliation confirms a request only by a run of that
-- request, never by an older run of the same ETag. A request offered again because its run was
-- never seen keeps its number, so Dagster still starts it at most once.
-- catchup_attempts: how many times the catch-up schedule has requested requested_etag; after
-- ARCHIVE_CATCHUP_MAX_ATTEMPTS it stops asking and records catchup_given_up_at, which
-- `audio-pipeline status` shows until that version is processed or another one is requested.
ALTER TABLE archives
    ADD COLUMN IF NOT EXISTS request_seq         BIGINT  NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS catchup_attempts    INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS catchup_given_up_at TIMESTAMPTZ;
