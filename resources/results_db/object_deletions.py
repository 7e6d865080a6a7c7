"""The outbox of Opus objects to delete (table `object_deletions`).

A row stops pointing at an object (member removed, bytes changed, converted again) in a
transaction that also queues the object's key here; the object is deleted only after that
commits. Every upload is queued too, before it starts, as an intent of the step execution
that makes it (a step queues the keys it may upload in one transaction before its first
upload): once a row commits pointing at the key it is forgotten, and otherwise (the writer was
killed, or fenced out because another execution took its step over) the object is deleted
like any queued one. A worker killed at any point leaves a queued key, never an orphan object.

An intent is deleted and forgotten only once its execution can upload nothing more: it ended
(its uploads had all returned), or its lease passed (an execution stops uploading at half its
lease, resources/archive_run.py). Until then no drain touches it, so an execution that
outlives its run, or a twin of the same run, never uploads an object whose intent is already
forgotten. A step drains its archive when none of its own uploads is in flight; the hourly
sweep (audio_assets/scratch_sweep.py) drains every archive, so what an execution left after
the archive's last run is deleted too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import psycopg2.extras

from archive_identity import ArchiveVersion
from resources.results_db.database import Database
from sql.named_queries import queries

Q = queries("object_deletions")
_BATCH = 1000  # DeleteObjects takes at most 1000 keys


class DeletesObjects(Protocol):
    def delete_many(self, keys: Sequence[str]) -> None: ...


def enqueue_in(cur, archive_key: str, keys: Sequence[str | None], reason: str) -> None:
    """Within the caller's transaction: queue these keys (None entries are skipped)."""
    rows = [(key, archive_key, reason) for key in dict.fromkeys(k for k in keys if k)]
    if rows:
        psycopg2.extras.execute_values(cur, Q.enqueue, rows)


def intend_uploads(db: Database, archive: ArchiveVersion, execution: int, keys: Sequence[str]) -> None:
    """Queue `keys` before `execution` uploads any of them, in one transaction: each is deleted
    unless a row commits pointing at it (a key never uploaded costs the drain one no-op delete)."""
    keys = list(dict.fromkeys(keys))
    if keys:
        params = {"keys": keys, "archive_key": archive.key, "execution": execution}
        db.transaction(lambda cur: cur.execute(Q.intend_uploads, params), what=f"queue {len(keys)} upload(s)")


def drain(
    db: Database, object_store: DeletesObjects, archive_key: str | None = None, execution: int | None = None
) -> int:
    """Delete the queued objects of `archive_key` (None: of every archive) that no row points to
    and no execution may still upload, `execution`'s own intents included (the caller has none
    of its uploads in flight); returns how many."""
    deleted = 0
    while True:

        def take(cur) -> list[str]:
            cur.execute(Q.forget_referenced, {"archive_key": archive_key})
            cur.execute(Q.drainable, {"archive_key": archive_key, "execution": execution, "limit": _BATCH})
            return [row["object_key"] for row in cur.fetchall()]

        keys = db.transaction(take, what="read queued object deletions")
        if not keys:
            return deleted
        object_store.delete_many(keys)  # deleting a missing key is not an error
        db.transaction(lambda cur: cur.execute(Q.forget, {"keys": keys}), what="forget deleted objects")  # noqa: B023 - runs now
        deleted += len(keys)
