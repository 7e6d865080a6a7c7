-- remote_transfers: archives the transfer_archive job copied from the SFTP host.

-- name: record_transfer
-- One row per remote file version; a re-run updates it.
INSERT INTO remote_transfers (remote_host, remote_path, remote_size, remote_mtime, sha256, object_key,
                              object_etag, moved_to, run_id)
VALUES (%(remote_host)s, %(remote_path)s, %(remote_size)s, %(remote_mtime)s, %(sha256)s, %(object_key)s,
        %(object_etag)s, %(moved_to)s, %(run_id)s)
ON CONFLICT (remote_host, remote_path, remote_size, remote_mtime) DO UPDATE SET
    sha256 = EXCLUDED.sha256,
    object_key = EXCLUDED.object_key,
    object_etag = EXCLUDED.object_etag,
    moved_to = EXCLUDED.moved_to,
    run_id = EXCLUDED.run_id,
    transferred_at = now()

-- name: recorded_versions
SELECT remote_path, remote_size, remote_mtime
FROM remote_transfers
WHERE remote_host = %(remote_host)s AND remote_path = ANY(%(remote_paths)s)

-- name: all_transfers
SELECT *
FROM remote_transfers
ORDER BY id
