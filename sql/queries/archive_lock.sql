-- The archive lock: a session-level advisory lock per archive partition, held by a run (or a
-- step, under a multi-process executor) on a connection of its own. The server releases it
-- when that session ends, also when the process holding it is killed.

-- name: prepare_session
-- Server-side keepalives for this session: a holder whose host vanished is noticed in about
-- a minute and its lock released, instead of after the kernel's two hours.
SET tcp_keepalives_idle = 30;
SET tcp_keepalives_interval = 10;
SET tcp_keepalives_count = 3

-- name: try_lock
SELECT pg_try_advisory_lock(hashtextextended('audio-pipeline archive ' || %(partition_key)s, 0)) AS locked

-- name: unlock
SELECT pg_advisory_unlock(hashtextextended('audio-pipeline archive ' || %(partition_key)s, 0)) AS unlocked

-- name: holder
-- Who holds the lock (the holding session's application_name names its run).
SELECT a.application_name, a.pid, a.backend_start
FROM pg_locks AS l
JOIN pg_stat_activity AS a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND ((l.classid::bigint << 32) | l.objid::bigint)
      = hashtextextended('audio-pipeline archive ' || %(partition_key)s, 0)

-- name: ping
SELECT 1 AS alive
