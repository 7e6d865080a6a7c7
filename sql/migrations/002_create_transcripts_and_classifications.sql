-- Filled by the GPU half (WhisperX, CoPE-A); one result per file and model (and policy),
-- so a re-run upserts instead of stacking duplicates.
CREATE TABLE IF NOT EXISTS transcripts (
    id              BIGSERIAL PRIMARY KEY,
    audio_file_id   BIGINT      NOT NULL REFERENCES audio_files (id) ON DELETE CASCADE,
    model           TEXT        NOT NULL,
    transcript_text TEXT        NOT NULL,
    language        TEXT,
    confidence      DOUBLE PRECISION,
    segments        JSONB,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT transcripts_file_model_key UNIQUE (audio_file_id, model)
);

CREATE TABLE IF NOT EXISTS classifications (
    id                BIGSERIAL PRIMARY KEY,
    audio_file_id     BIGINT      NOT NULL REFERENCES audio_files (id) ON DELETE CASCADE,
    flag_category     TEXT        NOT NULL,          -- the policy the score is for
    model             TEXT        NOT NULL,
    flag_score        DOUBLE PRECISION,              -- p("1") under the policy
    flagged           BOOLEAN     NOT NULL,
    threshold         DOUBLE PRECISION,
    content_truncated BOOLEAN     NOT NULL DEFAULT false,
    reason            TEXT,                          -- e.g. why an item was not scored
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT classifications_file_policy_model_key UNIQUE (audio_file_id, flag_category, model)
);

CREATE INDEX IF NOT EXISTS classifications_flagged_idx ON classifications (created_at) WHERE flagged;
