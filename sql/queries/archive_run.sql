-- A run's hold on its archive (resources/archive_run.py): the claim on the archive's row in
-- `archives` (holder run, epoch, heartbeat on database time), each step execution's hold on
-- its step (`step_executions`, leased), and the fence every write checks.

-- name: claim_state
-- The archive's version and claim, locked while a run decides whether it may take the claim.
SELECT current_etag, current_last_modified, claimed_by_run, claim_epoch,
       extract(epoch FROM now() - claim_heartbeat_at)::double precision AS heartbeat_age_s
FROM archives
WHERE archive_source = %(archive_key)s
FOR UPDATE

-- name: take_claim
-- The run's version becomes the one results belong to, and the run the claim's holder. A new
-- epoch only when another run held it: a second raw_archive of the holding run (its message
-- delivered again) must not fence out its own run's other steps. (Whether a newer version
-- already holds the archive is decided by the caller from claim_state, in the same transaction.)
UPDATE archives
SET current_etag = %(etag)s,
    current_size_bytes = %(size)s,
    current_last_modified = %(last_modified)s,
    claim_epoch = claim_epoch + CASE WHEN claimed_by_run IS DISTINCT FROM %(run_id)s THEN 1 ELSE 0 END,
    claimed_by_run = %(run_id)s,
    claimed_at = now(),
    claim_heartbeat_at = now()
WHERE archive_source = %(archive_key)s
RETURNING claim_epoch

-- name: renew_claim
-- Only the holder of this epoch renews; no row back means the claim was taken over.
UPDATE archives
SET claim_heartbeat_at = now()
WHERE archive_source = %(archive_key)s AND claim_epoch = %(epoch)s AND claimed_by_run = %(run_id)s
RETURNING claim_epoch

-- name: start_execution
-- A step execution takes its step over (run after claim_state, whose lock waits for the
-- writes in flight): from then on the fence refuses every older execution of the step, a twin
-- of the same run included.
INSERT INTO step_executions (archive_source, step, run_id, claim_epoch, lease_expires_at)
VALUES (%(archive_key)s, %(step)s, %(run_id)s, %(epoch)s, now() + make_interval(secs => %(ttl_s)s))
RETURNING execution

-- name: renew_execution
-- Moves the lease on while the execution still holds its step under its run's claim. An
-- expired lease is never renewed: once it has passed, others may have deleted what the
-- execution uploaded, so it must write and upload nothing more.
UPDATE step_executions AS e
SET lease_expires_at = now() + make_interval(secs => %(ttl_s)s)
FROM archives AS a
WHERE e.execution = %(execution)s
  AND e.ended_at IS NULL
  AND e.lease_expires_at > now()
  AND a.archive_source = e.archive_source
  AND a.claimed_by_run = e.run_id
  AND a.claim_epoch = e.claim_epoch
  AND NOT EXISTS (
      SELECT 1 FROM step_executions AS n
      WHERE n.archive_source = e.archive_source AND n.step = e.step AND n.execution > e.execution)
RETURNING e.execution

-- name: end_execution
-- Its uploads have all returned: the intents it queued may go.
UPDATE step_executions
SET ended_at = now()
WHERE execution = %(execution)s AND ended_at IS NULL

-- name: forget_executions_over
-- Executions over for a day whose intents are all gone: nothing needs them any more (a
-- superseded execution's lease passed long ago, so its fence fails, row or no row).
DELETE FROM step_executions AS e
WHERE (e.ended_at < now() - interval '1 day' OR e.lease_expires_at < now() - interval '1 day')
  AND NOT EXISTS (SELECT 1 FROM object_deletions AS d WHERE d.upload_execution = e.execution)

-- name: lock_current_version
-- Held (FOR SHARE) until the writing transaction commits, so no claim can slip in between
-- the fence check and the write.
SELECT current_etag, claim_epoch
FROM archives
WHERE archive_source = %(archive_key)s
FOR SHARE

-- name: execution_state
-- Run after lock_current_version, in the same transaction, as a statement of its own: its
-- snapshot then holds every execution started before the share lock was granted
-- (start_execution runs under claim_state's row lock, which the share lock waits for).
SELECT (SELECT max(n.execution) FROM step_executions AS n
        WHERE n.archive_source = e.archive_source AND n.step = e.step) AS newest,
       (SELECT n.run_id FROM step_executions AS n
        WHERE n.archive_source = e.archive_source AND n.step = e.step
        ORDER BY n.execution DESC LIMIT 1) AS newest_run,
       e.lease_expires_at > now() AND e.ended_at IS NULL AS leased
FROM step_executions AS e
WHERE e.execution = %(execution)s
