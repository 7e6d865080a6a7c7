"""The archive registry (table `archives`): one partition per object, the versions requested
(the sensor, catch-up) and processed (the last step's success). The version results belong to
and the run that holds each archive are resources/archive_run.py's (archive_run.sql)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import psycopg2.extras

from archive_identity import partition_key_candidates
from resources.results_db.database import Database
from sql.named_queries import queries

Q = queries("archives")


class Request(NamedTuple):
    """A version marked requested: its archive's partition, and the request's number (which the
    run key and the run's tags carry; see migration 022)."""

    partition_key: str
    number: int


class ArchiveRegistry:
    def __init__(self, db: Database):
        self.db = db

    def partitions_for(self, archive_keys: Iterable[str]) -> dict[str, str]:
        """{archive key: partition key}, registering keys seen for the first time. A new key
        gets its clean batch id unless another object already holds it; then it gets the id
        plus a hash of its own key. Keys are taken in sorted order, so one tick that sees
        b.tar and b.tar.gz together always names them the same way."""
        wanted = sorted(set(archive_keys))
        if not wanted:
            return {}
        return self.db.transaction(lambda cur: _register(cur, wanted), what="register archive partitions")

    def not_yet_requested(self, versions: list[tuple[str, str]]) -> set[tuple[str, str]]:
        """The (archive key, ETag) pairs among `versions` that no run has been requested for."""
        keys, etags = zip(*versions) if versions else ((), ())
        rows = self.db.rows(Q.not_yet_requested, {"archive_keys": list(keys), "etags": list(etags)})
        return {(row["archive_key"], row["etag"]) for row in rows}

    def record_requests(self, versions: list[tuple[str, str]], *, catch_up: bool = False) -> dict[str, Request]:
        """Register each (archive key, ETag)'s partition and mark that version requested, in one
        transaction (catch-up's requests are counted per version); returns {archive key:
        Request (partition key, the request's number)}."""
        if not versions:
            return {}

        def record(cur) -> dict[str, Request]:
            partitions = _register(cur, sorted({key for key, _ in versions}))
            numbers = psycopg2.extras.execute_values(
                cur, Q.mark_requested, [(key, etag, int(catch_up)) for key, etag in versions], fetch=True
            )
            return {row["archive_key"]: Request(partitions[row["archive_key"]], row["request_seq"]) for row in numbers}

        return self.db.transaction(record, what=f"record {len(versions)} requested archive version(s)")

    def unconfirmed_requests(self, grace_s: float, limit: int) -> list[dict]:
        """Requests older than `grace_s` with no run seen yet: archive_key, etag, request_seq,
        requested_at."""
        return self.db.rows(Q.unconfirmed_requests, {"grace_s": grace_s, "limit": limit})

    def confirm_requests(self, versions: list[tuple[str, str, int]]) -> None:
        """A run exists for each (archive key, ETag, request number) request."""
        if versions:
            self.db.transaction(
                lambda cur: psycopg2.extras.execute_values(cur, Q.confirm_requests, versions),
                what=f"confirm {len(versions)} requested archive version(s)",
            )

    def forget_requests(self, requests: list[dict]) -> None:
        """Drop requests (rows of unconfirmed_requests) that never got a run and never can."""
        values = [(r["archive_key"], r["etag"], r["requested_at"]) for r in requests]
        if values:
            self.db.transaction(
                lambda cur: psycopg2.extras.execute_values(cur, Q.forget_requests, values),
                what=f"forget {len(values)} requested archive version(s)",
            )

    def not_yet_processed(self, versions: list[tuple[str, str]]) -> dict[tuple[str, str], dict]:
        """{(archive key, ETag): {partition_key (None when unregistered), catchup_attempts}} of
        the listed versions no successful run processed."""
        keys, etags = zip(*versions) if versions else ((), ())
        rows = self.db.rows(Q.not_yet_processed, {"archive_keys": list(keys), "etags": list(etags)})
        return {(row["archive_key"], row["etag"]): row for row in rows}

    def give_up_catch_up(self, versions: list[tuple[str, str]]) -> list[dict]:
        """Record that catch-up stopped asking for these (archive key, ETag) versions; returns
        those given up now (archive_key, etag, catchup_attempts), not the ones recorded before."""
        if not versions:
            return []
        return self.db.transaction(
            lambda cur: psycopg2.extras.execute_values(cur, Q.give_up_catch_up, versions, fetch=True),
            what=f"record {len(versions)} archive version(s) catch-up gave up on",
        )

    def given_up(self, archive_key: str | None, limit: int) -> list[dict]:
        """Versions catch-up gave up on that are still unprocessed (all, or one archive's):
        archive_key, partition_key, etag, catchup_attempts, given_up_at."""
        return self.db.rows(Q.given_up_versions, {"archive_key": archive_key, "limit": limit})

    def find(self, text: str) -> dict | None:
        """The archive (archive_key, partition_key) an operator names by its partition key, its
        object key or its file name (`audio-pipeline requeue --archive`, `status`)."""
        rows = self.db.rows(Q.find_archive, {"text": text})
        return rows[0] if rows else None

    def key_of_partition(self, partition_key: str) -> str | None:
        """The one partition -> archive key resolver (never a bucket listing)."""
        rows = self.db.rows(Q.key_of_partition, {"partition_key": partition_key})
        return rows[0]["archive_key"] if rows else None


def _register(cur, wanted: list[str]) -> dict[str, str]:
    cur.execute(Q.partitions_of_keys, {"archive_keys": wanted})
    known = {row["archive_key"]: row["partition_key"] for row in cur.fetchall()}
    for choice in (0, 1):  # the preferred partition key, then the fallback
        new = [key for key in wanted if key not in known]
        if not new:
            break
        rows = psycopg2.extras.execute_values(
            cur, Q.insert_archives, [(key, partition_key_candidates(key)[choice]) for key in new], fetch=True
        )
        known |= {row["archive_key"]: row["partition_key"] for row in rows}
    missing = [key for key in wanted if key not in known]
    if missing:
        raise RuntimeError(f"no free partition key for {missing[:5]} (hash collision?)")
    return known
