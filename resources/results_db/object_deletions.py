"""The outbox of Opus objects to delete (table `object_deletions`).

A row stops pointing at an object (member removed, bytes changed, converted again) in a
transaction that also queues the object's key here; the object is deleted only after that
commits. Every upload is queued too, before it starts, as an intent (a step queues all the
keys it may upload in one transaction before its first upload): once a row commits
pointing at the key it is forgotten, and otherwise (the writer was killed, or fenced out
because another run took its archive over) the object is deleted like any queued one. A
worker killed at any point leaves a queued key, never an orphan object: the next run of the
same archive deletes it.

Only the run holding the archive's claim drains, at moments when none of its uploads is in
flight, and never an intent of a later epoch than its own (a run that has been taken over
cannot delete what the new holder is uploading).
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


def intend_uploads(db: Database, archive: ArchiveVersion, keys: Sequence[str]) -> None:
    """Queue `keys` before uploading any of them, in one transaction: each is deleted unless a
    row commits pointing at it (a key never uploaded costs the drain one no-op delete)."""
    keys = list(dict.fromkeys(keys))
    if keys:
        params = {"keys": keys, "archive_key": archive.key, "epoch": archive.epoch}
        db.transaction(lambda cur: cur.execute(Q.intend_uploads, params), what=f"queue {len(keys)} upload(s)")


def drain(db: Database, archive: ArchiveVersion, object_store: DeletesObjects) -> int:
    """Delete this archive's queued objects that no row points to, up to the run's own epoch;
    returns how many."""
    deleted = 0
    while True:

        def take(cur) -> list[str]:
            cur.execute(Q.forget_referenced, {"archive_key": archive.key})
            cur.execute(Q.queued_for_archive, {"archive_key": archive.key, "epoch": archive.epoch, "limit": _BATCH})
            return [row["object_key"] for row in cur.fetchall()]

        keys = db.transaction(take, what="read queued object deletions")
        if not keys:
            return deleted
        object_store.delete_many(keys)  # deleting a missing key is not an error
        db.transaction(lambda cur: cur.execute(Q.forget, {"keys": keys}), what="forget deleted objects")  # noqa: B023 - runs now
        deleted += len(keys)
