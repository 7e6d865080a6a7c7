-- Archives the transfer_archive job copied from the remote SFTP host into archives/.
-- One row per delivered file version (where it arrived, its size and mtime), so that when
-- the remote host keeps its files in place (no done/ folder) the remote archive sensor can
-- tell what is already transferred; with a done/ folder the rows are the audit trail.
CREATE TABLE IF NOT EXISTS remote_transfers (
    id             BIGSERIAL   PRIMARY KEY,
    remote_host    TEXT        NOT NULL,   -- user@host:port
    remote_path    TEXT        NOT NULL,   -- remote_dir/name, where the file arrived
    remote_size    BIGINT      NOT NULL,
    remote_mtime   BIGINT      NOT NULL,   -- seconds since the epoch, as SFTP reports it
    sha256         TEXT        NOT NULL,
    object_key     TEXT        NOT NULL,   -- archives/{name}
    object_etag    TEXT        NOT NULL,
    moved_to       TEXT,                   -- done/ path, NULL when the file stayed in place
    run_id         TEXT,
    transferred_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (remote_host, remote_path, remote_size, remote_mtime)
);
