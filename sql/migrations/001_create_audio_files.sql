-- One row per MP3 member of an archive: the unit RAs review and every stage updates.
CREATE TABLE IF NOT EXISTS audio_files (
    id                BIGSERIAL PRIMARY KEY,
    original_filename TEXT        NOT NULL,          -- member path inside the archive
    opus_path         TEXT,                          -- object key: processed/{archive date}/{id}.opus
    s3_opus_path      TEXT,                          -- s3://{bucket}/{opus_path}
    archive_source    TEXT        NOT NULL,          -- object key of the archive: archives/{batch}.tar.gz
    partition_key     TEXT        NOT NULL,          -- Dagster partition of the archive
    archive_etag      TEXT,                          -- which version of the archive produced the row
    duration_seconds  DOUBLE PRECISION,              -- of the Opus output, checked against the source
    file_size_bytes   BIGINT,                        -- of the Opus object
    source_size_bytes BIGINT,                        -- of the MP3 member
    status            TEXT        NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'converted', 'transcribed', 'classified', 'failed')),
    error             TEXT,                          -- why the row is 'failed'
    failed_stage      TEXT,                          -- archive | conversion | upload | transcription | classification
    parquet_metadata  JSONB,                         -- the joined parquet row, JSON-safe
    metadata_source   TEXT,                          -- parquet member the row came from
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    processed_at      TIMESTAMPTZ,                   -- last time a stage changed the status
    CONSTRAINT audio_files_archive_member_key UNIQUE (archive_source, original_filename),
    CONSTRAINT audio_files_failed_has_error CHECK (status <> 'failed' OR error IS NOT NULL)
);

CREATE INDEX IF NOT EXISTS audio_files_partition_idx ON audio_files (partition_key);
CREATE INDEX IF NOT EXISTS audio_files_status_processed_idx ON audio_files (status, processed_at);
CREATE INDEX IF NOT EXISTS audio_files_metadata_gin ON audio_files USING GIN (parquet_metadata jsonb_path_ops);
