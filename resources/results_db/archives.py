"""The archive registry (table `archives`): one partition per object, which version of each
archive the result rows belong to, and which run holds the archive (its claim and epoch)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import psycopg2.extras

from archive_identity import ArchiveVersion, partition_key_candidates
from resources.results_db.database import ClaimLost, Database, StaleArchiveVersion
from sql.named_queries import queries

Q = queries("archives")


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
        return {(row["archive_source"], row["etag"]) for row in rows}

    def record_requests(self, versions: list[tuple[str, str]]) -> dict[str, str]:
        """Register each (archive key, ETag)'s partition and mark that version requested, in one
        transaction; returns {archive key: partition key}."""
        if not versions:
            return {}

        def record(cur) -> dict[str, str]:
            partitions = _register(cur, sorted({key for key, _ in versions}))
            psycopg2.extras.execute_values(cur, Q.mark_requested, versions)
            return partitions

        return self.db.transaction(record, what=f"record {len(versions)} requested archive version(s)")

    def unconfirmed_requests(self, grace_s: float, limit: int) -> list[dict]:
        """Requests older than `grace_s` with no run seen yet: archive_source, etag, requested_at."""
        return self.db.rows(Q.unconfirmed_requests, {"grace_s": grace_s, "limit": limit})

    def confirm_requests(self, versions: list[tuple[str, str]]) -> None:
        """A run exists for each (archive key, ETag) request."""
        if versions:
            self.db.transaction(
                lambda cur: psycopg2.extras.execute_values(cur, Q.confirm_requests, versions),
                what=f"confirm {len(versions)} requested archive version(s)",
            )

    def forget_requests(self, requests: list[dict]) -> None:
        """Drop requests (rows of unconfirmed_requests) that never got a run and never can."""
        values = [(r["archive_source"], r["etag"], r["requested_at"]) for r in requests]
        if values:
            self.db.transaction(
                lambda cur: psycopg2.extras.execute_values(cur, Q.forget_requests, values),
                what=f"forget {len(values)} requested archive version(s)",
            )

    def record_processed(self, archive: ArchiveVersion) -> None:
        """The archive's last step succeeded for `archive` (if it is still the current version)."""
        params = {"archive_key": archive.key, "etag": archive.etag}
        self.db.transaction(
            lambda cur: cur.execute(Q.record_processed, params), fence=archive, what=f"record {archive} processed"
        )

    def not_yet_processed(self, versions: list[tuple[str, str]]) -> dict[tuple[str, str], str | None]:
        """{(archive key, ETag): partition key or None} of the listed versions no successful
        run processed."""
        keys, etags = zip(*versions) if versions else ((), ())
        rows = self.db.rows(Q.not_yet_processed, {"archive_keys": list(keys), "etags": list(etags)})
        return {(row["archive_source"], row["etag"]): row["partition_key"] for row in rows}

    def key_of_partition(self, partition_key: str) -> str | None:
        """The one partition -> archive key resolver (never a bucket listing)."""
        rows = self.db.rows(Q.key_of_partition, {"partition_key": partition_key})
        return rows[0]["archive_source"] if rows else None

    def claim(
        self, archive: ArchiveVersion, run_id: str, holder_ended: Callable[[ClaimHolder], bool], *, resume: bool
    ) -> ArchiveVersion | ClaimHolder:
        """The run's claim on `archive`, in one transaction: `archive` with its claim's epoch,
        or the other run that holds the archive and has not ended (the caller waits or gives up).

        raw_archive takes a claim (`resume=False`): its version becomes the one results belong
        to, unless a newer one (later LastModified) already is (StaleArchiveVersion; ties go to
        the later claim, which read the object later). Every later step resumes it: the run's
        own claim keeps its epoch; one left by a run that ended (a retry of a failed run takes
        over from its parent) gets a new epoch; one another live run holds is lost (ClaimLost:
        later steps never wait for an archive, so a GPU step holds no GPU while waiting).
        """

        def claim(cur) -> ArchiveVersion | ClaimHolder:
            cur.execute(Q.claim_state, {"archive_key": archive.key})
            row = cur.fetchone()
            if row is None:  # every run's archive comes from the registry, so this is a bug
                raise LookupError(f"{archive.key} is not in the archives registry")
            newer = (
                row["current_etag"] is not None
                and row["current_etag"] != archive.etag
                and row["current_last_modified"] is not None
                and row["current_last_modified"] > archive.last_modified
            )
            if newer or (resume and row["current_etag"] != archive.etag):
                raise StaleArchiveVersion(archive, row["current_etag"])
            holder = ClaimHolder(row["claimed_by_run"], row["heartbeat_age_s"]) if row["claimed_by_run"] else None
            if resume and holder is not None and holder.run_id == run_id:
                cur.execute(Q.renew_claim, {"archive_key": archive.key, "epoch": row["claim_epoch"], "run_id": run_id})
                return replace(archive, epoch=row["claim_epoch"])
            if holder is not None and holder.run_id != run_id and not holder_ended(holder):
                if resume:
                    raise ClaimLost(archive, row["claim_epoch"], holder.run_id)
                return holder
            cur.execute(Q.take_claim, _claim_params(archive, run_id))
            return replace(archive, epoch=cur.fetchone()["claim_epoch"])

        return self.db.transaction(claim, what=f"claim {archive}")

    def renew_claim(self, archive: ArchiveVersion, run_id: str) -> bool:
        """Renew the heartbeat of the run's claim; False once another run has taken it over."""
        rows = self.db.rows(
            Q.renew_claim, {"archive_key": archive.key, "epoch": archive.epoch, "run_id": run_id}, what="renew claim"
        )
        return bool(rows)


@dataclass(frozen=True)
class ClaimHolder:
    """The run that holds an archive's claim, and how long ago a step of it last said so."""

    run_id: str
    heartbeat_age_s: float | None  # None: never renewed (a claim from before heartbeats)


def _claim_params(archive: ArchiveVersion, run_id: str) -> dict:
    return {
        "archive_key": archive.key,
        "etag": archive.etag,
        "size": archive.size,
        "last_modified": archive.last_modified,
        "run_id": run_id,
    }


def _register(cur, wanted: list[str]) -> dict[str, str]:
    cur.execute(Q.partitions_of_keys, {"archive_keys": wanted})
    known = {row["archive_source"]: row["partition_key"] for row in cur.fetchall()}
    for choice in (0, 1):  # the preferred partition key, then the fallback
        new = [key for key in wanted if key not in known]
        if not new:
            break
        rows = psycopg2.extras.execute_values(
            cur, Q.insert_archives, [(key, partition_key_candidates(key)[choice]) for key in new], fetch=True
        )
        known |= {row["archive_source"]: row["partition_key"] for row in rows}
    missing = [key for key in wanted if key not in known]
    if missing:
        raise RuntimeError(f"no free partition key for {missing[:5]} (hash collision?)")
    return known
