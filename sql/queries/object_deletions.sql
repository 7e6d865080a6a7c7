-- object_deletions: an outbox of Opus objects no row points to any more. Keys are queued in
-- the same transaction that stops a row pointing at them, and deleted from the object store
-- after it commits; a process killed in between leaves the key queued (for the archive's next
-- drain, or the hourly sweep) instead of an orphan object.

-- name: enqueue
-- Rows: (object_key, archive_source, reason)
INSERT INTO object_deletions (object_key, archive_source, reason)
VALUES %s
ON CONFLICT (object_key) DO NOTHING

-- name: intend_uploads
-- Uploads about to start; a row committing a key makes forget_referenced drop it.
INSERT INTO object_deletions (object_key, archive_source, reason, upload_execution)
SELECT key, %(archive_key)s, 'upload not committed by a row (writer killed or taken over)', %(execution)s
FROM unnest(%(keys)s::text[]) AS key
ON CONFLICT (object_key) DO NOTHING

-- name: forget_referenced
-- A queued key that a row points to again (the same file converted again) must stay.
-- archive_key NULL: every archive's (the hourly sweep).
DELETE FROM object_deletions AS d
WHERE (d.archive_source = %(archive_key)s OR %(archive_key)s::text IS NULL)
  AND EXISTS (SELECT 1 FROM audio_files AS a WHERE a.opus_path = d.object_key)

-- name: drainable
-- Never an intent of an execution that may still upload it: one whose lease runs and that has
-- not ended, other than the draining execution itself (which drains only when none of its own
-- uploads is in flight). archive_key NULL: every archive's (the hourly sweep).
SELECT d.object_key
FROM object_deletions AS d
LEFT JOIN step_executions AS e ON e.execution = d.upload_execution
WHERE (d.archive_source = %(archive_key)s OR %(archive_key)s::text IS NULL)
  AND (d.upload_execution IS NULL
       OR d.upload_execution = %(execution)s
       OR e.execution IS NULL
       OR e.ended_at IS NOT NULL
       OR e.lease_expires_at <= now())
ORDER BY d.queued_at, d.object_key
LIMIT %(limit)s

-- name: forget
DELETE FROM object_deletions
WHERE object_key = ANY(%(keys)s)
