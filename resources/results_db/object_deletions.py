"""The outbox of Opus objects to delete (table `object_deletions`).

A row stops pointing at an object (member removed, bytes changed, moved to another date
folder) in a transaction that also queues the object's key here; the object is deleted only
after that commits. A worker killed in between leaves the key queued, not an orphan object:
the next run of the same archive deletes it. Runs drain only their own archive's keys, at
moments when none of its uploads is in flight, so a key about to be reused is never deleted
under a run that is writing it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import psycopg2.extras

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


class ObjectDeletions:
    def __init__(self, db: Database):
        self.db = db

    def drain(self, archive_key: str, object_store: DeletesObjects) -> int:
        """Delete this archive's queued objects that no row points to; returns how many."""
        deleted = 0
        while True:

            def take(cur) -> list[str]:
                cur.execute(Q.forget_referenced, {"archive_key": archive_key})
                cur.execute(Q.queued_for_archive, {"archive_key": archive_key, "limit": _BATCH})
                return [row["object_key"] for row in cur.fetchall()]

            keys = self.db.transaction(take, what="read queued object deletions")
            if not keys:
                return deleted
            object_store.delete_many(keys)  # deleting a missing key is not an error
            self.db.transaction(lambda cur: cur.execute(Q.forget, {"keys": keys}), what="forget deleted objects")  # noqa: B023 - runs now
            deleted += len(keys)
