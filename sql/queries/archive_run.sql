-- A run's hold on its archive (resources/archive_run.py): the claim on the archive's row in
-- `archives` (holder run, epoch, heartbeat on database time) and the fence every write checks.

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
