-- object_deletions: an outbox of Opus objects no row points to any more. Keys are queued in
-- the same transaction that stops a row pointing at them, and deleted from the object store
-- after it commits; a process killed in between leaves the key queued for the next run of
-- that archive instead of an orphan object.

-- name: enqueue
-- Rows: (object_key, archive_source, reason)
INSERT INTO object_deletions (object_key, archive_source, reason)
VALUES %s
ON CONFLICT (object_key) DO NOTHING

-- name: intend_uploads
-- Uploads about to start; a row committing a key makes forget_referenced drop it.
INSERT INTO object_deletions (object_key, archive_source, reason, upload_epoch)
SELECT key, %(archive_key)s, 'upload not committed by a row (writer killed or taken over)', %(epoch)s
FROM unnest(%(keys)s::text[]) AS key
ON CONFLICT (object_key) DO NOTHING

-- name: forget_referenced
-- A queued key that a row points to again (the same file converted again) must stay.
DELETE FROM object_deletions AS d
WHERE d.archive_source = %(archive_key)s
  AND EXISTS (SELECT 1 FROM audio_files AS a WHERE a.opus_path = d.object_key)

-- name: queued_for_archive
-- Never an intent of a later claim than the draining run's: that one may be uploading it.
SELECT object_key
FROM object_deletions
WHERE archive_source = %(archive_key)s
  AND (upload_epoch IS NULL OR upload_epoch <= %(epoch)s)
ORDER BY queued_at, object_key
LIMIT %(limit)s

-- name: forget
DELETE FROM object_deletions
WHERE object_key = ANY(%(keys)s)
