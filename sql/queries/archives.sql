-- The archive registry (table `archives`): the partition of each archive object, the versions
-- requested and processed. The claim on an archive is resources/archive_run.py's (archive_run.sql).

-- name: partitions_of_keys
SELECT archive_source AS archive_key, partition_key
FROM archives
WHERE archive_source = ANY(%(archive_keys)s)

-- name: insert_archives
-- Several keys in one statement; a key whose preferred partition another key already holds
-- is skipped here (ON CONFLICT DO NOTHING covers both unique constraints) and retried with a
-- disambiguated partition key.
INSERT INTO archives (archive_source, partition_key)
VALUES %s
ON CONFLICT DO NOTHING
RETURNING archive_source AS archive_key, partition_key

-- name: key_of_partition
SELECT archive_source AS archive_key
FROM archives
WHERE partition_key = %(partition_key)s

-- name: find_archive
-- What an operator names an archive by: its partition key, its object key, or its file name.
SELECT archive_source AS archive_key, partition_key
FROM archives
WHERE partition_key = %(text)s OR archive_source = %(text)s OR archive_source = 'archives/' || %(text)s
ORDER BY archive_source = %(text)s DESC, partition_key = %(text)s DESC
LIMIT 1

-- name: not_yet_requested
-- Of the listed (key, ETag) pairs, those whose version no run was requested for. The
-- comparison happens here, so a tick over 100,000 listed archives gets back only the new ones.
SELECT listed.archive_key, listed.etag
FROM unnest(%(archive_keys)s::text[], %(etags)s::text[]) AS listed (archive_key, etag)
LEFT JOIN archives a ON a.archive_source = listed.archive_key
WHERE a.requested_etag IS DISTINCT FROM listed.etag

-- name: mark_requested
-- Rows: (archive_source, etag, catchup), each already registered in the same transaction;
-- catchup is 1 for a catch-up request, else 0. No run is known for the request yet: the daemon
-- stores the tick's runs after the sensor returns. A request gets a new number (request_seq)
-- unless it offers again a version whose run was never seen (migration 022); catch-up requests
-- are counted per version, and a new version starts the count again.
UPDATE archives AS a
SET request_seq = a.request_seq
        + CASE WHEN a.requested_etag IS DISTINCT FROM v.etag OR a.requested_run_seen_at IS NOT NULL THEN 1 ELSE 0 END,
    catchup_attempts = CASE WHEN a.requested_etag IS DISTINCT FROM v.etag THEN 0 ELSE a.catchup_attempts END
        + v.catchup,
    catchup_given_up_at = CASE WHEN a.requested_etag IS DISTINCT FROM v.etag THEN NULL ELSE a.catchup_given_up_at END,
    requested_etag = v.etag,
    requested_at = now(),
    requested_run_seen_at = NULL
FROM (VALUES %s) AS v (archive_source, etag, catchup)
WHERE a.archive_source = v.archive_source
RETURNING a.archive_source AS archive_key, a.request_seq

-- name: unconfirmed_requests
-- Requests older than the grace period for which no run has been seen yet, oldest first.
SELECT archive_source AS archive_key, requested_etag AS etag, request_seq, requested_at
FROM archives
WHERE requested_etag IS NOT NULL
  AND requested_run_seen_at IS NULL
  AND requested_at < now() - make_interval(secs => %(grace_s)s)
ORDER BY requested_at
LIMIT %(limit)s

-- name: confirm_requests
-- Rows: (archive_source, etag, request_seq): a Dagster run exists for that request.
UPDATE archives AS a
SET requested_run_seen_at = now()
FROM (VALUES %s) AS v (archive_source, etag, request_seq)
WHERE a.archive_source = v.archive_source
  AND a.requested_etag = v.etag
  AND a.request_seq = v.request_seq
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

-- name: not_yet_processed
-- Of the listed (key, ETag) pairs, those whose version no successful run processed (for the
-- catch-up schedule), with their partition when registered and how many times catch-up has
-- requested that version.
SELECT listed.archive_key, listed.etag, a.partition_key,
       CASE WHEN a.requested_etag = listed.etag THEN a.catchup_attempts ELSE 0 END AS catchup_attempts
FROM unnest(%(archive_keys)s::text[], %(etags)s::text[]) AS listed (archive_key, etag)
LEFT JOIN archives a ON a.archive_source = listed.archive_key
WHERE a.processed_etag IS DISTINCT FROM listed.etag

-- name: give_up_catch_up
-- Rows: (archive_source, etag): versions catch-up requested as often as it may and no run
-- processed. Recorded once per version; returns the ones given up now.
UPDATE archives AS a
SET catchup_given_up_at = now()
FROM (VALUES %s) AS v (archive_source, etag)
WHERE a.archive_source = v.archive_source
  AND a.requested_etag = v.etag
  AND a.catchup_given_up_at IS NULL
RETURNING a.archive_source AS archive_key, a.requested_etag AS etag, a.catchup_attempts

-- name: given_up_versions
-- For `audio-pipeline status`: versions catch-up stopped asking for, while they are still the
-- version requested last and no run has processed them (an operator fixes the input and
-- uploads it again, or runs `audio-pipeline requeue`).
SELECT archive_source AS archive_key, partition_key, requested_etag AS etag, catchup_attempts,
       catchup_given_up_at AS given_up_at
FROM archives
WHERE catchup_given_up_at IS NOT NULL
  AND processed_etag IS DISTINCT FROM requested_etag
  AND (%(archive_key)s::text IS NULL OR archive_source = %(archive_key)s)
ORDER BY catchup_given_up_at DESC
LIMIT %(limit)s
