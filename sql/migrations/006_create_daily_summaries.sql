-- One row per UTC day, written by the daily_summary asset: the RAs' daily report.
CREATE TABLE IF NOT EXISTS daily_summaries (
    day                 DATE PRIMARY KEY,
    archives_processed  INTEGER          NOT NULL,
    files_processed     INTEGER          NOT NULL,
    files_failed        INTEGER          NOT NULL,
    failed_by_stage     JSONB            NOT NULL,   -- {"conversion": 3, ...}
    top_errors          JSONB            NOT NULL,   -- [{"stage", "error", "files"}, ...]
    flagged_by_category JSONB            NOT NULL,   -- {"harassment_threats": 2, ...}
    mean_confidence     DOUBLE PRECISION,            -- of the day's transcripts
    audio_hours         DOUBLE PRECISION NOT NULL,
    files_per_hour      DOUBLE PRECISION,            -- files over the span of the day's processing
    generated_at        TIMESTAMPTZ      NOT NULL DEFAULT now()
);
