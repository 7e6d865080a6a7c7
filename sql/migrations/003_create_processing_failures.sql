-- The dead letter: archive-level and file-level failures with their stage and reason.
-- One open row per (archive, member, stage); a repeat failure updates it and counts attempts,
-- a later success closes it (resolved_at).
CREATE TABLE IF NOT EXISTS processing_failures (
    id                BIGSERIAL PRIMARY KEY,
    archive_source    TEXT        NOT NULL,
    partition_key     TEXT,
    original_filename TEXT        NOT NULL DEFAULT '',   -- '' for an archive-level failure
    audio_file_id     BIGINT      REFERENCES audio_files (id) ON DELETE SET NULL,
    stage             TEXT        NOT NULL,
    error             TEXT        NOT NULL,
    run_id            TEXT,
    attempts          INTEGER     NOT NULL DEFAULT 1,
    failed_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    resolved_at       TIMESTAMPTZ
);

CREATE UNIQUE INDEX IF NOT EXISTS processing_failures_open_key
    ON processing_failures (archive_source, original_filename, stage)
    WHERE resolved_at IS NULL;
