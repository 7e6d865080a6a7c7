-- Archives as objects: each has its own partition and the version its result rows belong to.
-- Writers check `current_etag` (FOR SHARE) before writing, so a run of an older version can
-- never overwrite the results of a newer one.
CREATE TABLE IF NOT EXISTS archives (
    archive_source        TEXT        PRIMARY KEY,     -- object key: archives/{name}.tar[.gz]
    partition_key         TEXT        NOT NULL UNIQUE, -- its Dagster partition, distinct per object
    current_etag          TEXT,                        -- the version results belong to (NULL: none yet)
    current_size_bytes    BIGINT,
    current_last_modified TIMESTAMPTZ,                 -- orders versions: a claim never goes back in time
    claimed_by_run        TEXT,
    claimed_at            TIMESTAMPTZ,
    registered_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Archives processed before this migration: their partition and version from their rows.
INSERT INTO archives (archive_source, partition_key, current_etag)
SELECT DISTINCT ON (archive_source) archive_source, partition_key, archive_etag
FROM audio_files
ORDER BY archive_source, processed_at DESC NULLS LAST
ON CONFLICT DO NOTHING;

ALTER TABLE audio_files
    ADD COLUMN IF NOT EXISTS source_sha256 TEXT,  -- of the MP3 member: changed bytes start the file over
    ADD COLUMN IF NOT EXISTS opus_etag     TEXT;  -- of the Opus object uploaded: readers check they got it

-- 'removed': the member is not in the archive's current version (its Opus object is deleted).
ALTER TABLE audio_files DROP CONSTRAINT IF EXISTS audio_files_status_check;
ALTER TABLE audio_files ADD CONSTRAINT audio_files_status_check
    CHECK (status IN ('pending', 'converted', 'transcribed', 'classified', 'failed', 'removed'));

CREATE INDEX IF NOT EXISTS audio_files_opus_path_idx ON audio_files (opus_path) WHERE opus_path IS NOT NULL;

-- created_at is when the item was first scored as it stands (see model_outputs.sql);
-- scored_at is the latest time it was scored. policy_version: hash of the policy text.
ALTER TABLE classifications
    ADD COLUMN IF NOT EXISTS policy_version TEXT        NOT NULL DEFAULT '',
    ADD COLUMN IF NOT EXISTS scored_at      TIMESTAMPTZ NOT NULL DEFAULT now();

-- retryable: transient (upload, disk full, database): the row was left as it was.
ALTER TABLE processing_failures
    ADD COLUMN IF NOT EXISTS retryable BOOLEAN NOT NULL DEFAULT false;

-- Outbox of Opus objects no row points to any more, deleted after the change commits.
CREATE TABLE IF NOT EXISTS object_deletions (
    object_key     TEXT        PRIMARY KEY,
    archive_source TEXT        NOT NULL,
    reason         TEXT        NOT NULL,
    queued_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS object_deletions_archive_idx ON object_deletions (archive_source);
