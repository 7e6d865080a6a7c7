-- Archive objects: their partitions and the version results belong to (table `archives`).

-- name: partitions_of_keys
SELECT archive_source, partition_key
FROM archives
WHERE archive_source = ANY(%(archive_keys)s)

-- name: insert_archives
-- Several keys in one statement; a key whose preferred partition another key already holds
-- is skipped here (ON CONFLICT DO NOTHING covers both unique constraints) and retried with a
-- disambiguated partition key.
INSERT INTO archives (archive_source, partition_key)
VALUES %s
ON CONFLICT DO NOTHING
RETURNING archive_source, partition_key

-- name: key_of_partition
SELECT archive_source
FROM archives
WHERE partition_key = %(partition_key)s

-- name: claim_state
-- The archive's version and claim, locked while a run decides whether it may take the claim.
SELECT current_etag, current_last_modified, claimed_by_run, claim_epoch,
       extract(epoch FROM now() - claim_heartbeat_at)::double precision AS heartbeat_age_s
FROM archives
WHERE archive_source = %(archive_key)s
FOR UPDATE

-- name: take_claim
-- The run's version becomes the one results belong to, and the run the claim's holder under a
-- new epoch. (Whether a newer version already holds the archive is decided by the caller
-- from claim_state, in the same transaction.)
UPDATE archives
SET current_etag = %(etag)s,
    current_size_bytes = %(size)s,
    current_last_modified = %(last_modified)s,
    claimed_by_run = %(run_id)s,
    claimed_at = now(),
    claim_heartbeat_at = now(),
    claim_epoch = claim_epoch + 1
WHERE archive_source = %(archive_key)s
RETURNING claim_epoch

-- name: renew_claim
-- Only the holder of this epoch renews; no row back means the claim was taken over.
UPDATE archives
SET claim_heartbeat_at = now()
WHERE archive_source = %(archive_key)s AND claim_epoch = %(epoch)s AND claimed_by_run = %(run_id)s
RETURNING claim_epoch

-- name: lock_current_version
-- Held (FOR SHARE) until the writing transaction commits, so no claim can slip in between
-- the fence check and the write.
SELECT current_etag, claim_epoch
FROM archives
WHERE archive_source = %(archive_key)s
FOR SHARE

-- name: not_yet_requested
-- Of the listed (key, ETag) pairs, those whose version no run was requested for. The
-- comparison happens here, so a tick over 100,000 listed archives gets back only the new ones.
SELECT listed.archive_source, listed.etag
FROM unnest(%(archive_keys)s::text[], %(etags)s::text[]) AS listed (archive_source, etag)
LEFT JOIN archives a USING (archive_source)
WHERE a.requested_etag IS DISTINCT FROM listed.etag

-- name: mark_requested
-- Rows: (archive_source, etag), each already registered in the same transaction. No run is
-- known for the request yet: the daemon stores the tick's runs after the sensor returns.
UPDATE archives AS a
SET requested_etag = v.etag,
    requested_at = now(),
    requested_run_seen_at = NULL
FROM (VALUES %s) AS v (archive_source, etag)
WHERE a.archive_source = v.archive_source

-- name: unconfirmed_requests
-- Requests older than the grace period for which no run has been seen yet, oldest first.
SELECT archive_source, requested_etag AS etag, requested_at
FROM archives
WHERE requested_etag IS NOT NULL
  AND requested_run_seen_at IS NULL
  AND requested_at < now() - make_interval(secs => %(grace_s)s)
ORDER BY requested_at
LIMIT %(limit)s

-- name: confirm_requests
-- Rows: (archive_source, etag): a Dagster run exists for the requested version.
UPDATE archives AS a
SET requested_run_seen_at = now()
FROM (VALUES %s) AS v (archive_source, etag)
WHERE a.archive_source = v.archive_source
  AND a.requested_etag = v.etag
  AND a.requested_run_seen_at IS NULL

-- name: forget_requests
-- Rows: (archive_source, etag, requested_at): requests with no run whose version is no longer
-- the object's (overwritten or deleted): nothing can run them any more. The requested_at match
-- leaves a request made again since (by catch-up) alone.
UPDATE archives AS a
SET requested_etag = NULL,
    requested_at = NULL
FROM (VALUES %s) AS v (archive_source, etag, requested_at)
WHERE a.archive_source = v.archive_source
  AND a.requested_etag = v.etag
  AND a.requested_at = v.requested_at::timestamptz
  AND a.requested_run_seen_at IS NULL

-- name: record_processed
-- The archive's run finished its last step for this version. Only the version results belong
-- to can be processed: a run of an older one changes nothing.
UPDATE archives
SET processed_etag = %(etag)s,
    processed_at = now()
WHERE archive_source = %(archive_key)s
  AND current_etag = %(etag)s

-- name: not_yet_processed
-- Of the listed (key, ETag) pairs, those whose version no successful run processed (for the
-- catch-up schedule), with their partition when registered.
SELECT listed.archive_source, listed.etag, a.partition_key
FROM unnest(%(archive_keys)s::text[], %(etags)s::text[]) AS listed (archive_source, etag)
LEFT JOIN archives a USING (archive_source)
WHERE a.processed_etag IS DISTINCT FROM listed.etag
