"""The data layer on a real PostgreSQL: fencing by archive version and claim epoch, monotonic
statuses, removed members, first-flagged times, and units of work that survive a server restart."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import psycopg2
import pytest

from archive_identity import ArchiveVersion
from resources.archive_run import (
    ClaimedArchive,
    ClaimLost,
    ExecutionLease,
    ExecutionOver,
    HeldArchive,
    StaleArchiveVersion,
    claim,
    renew_claim,
    renew_execution,
    start_execution,
)
from resources.results_db import FileFailure, ResultsDatabase, object_deletions
from resources.results_db import opus_files as opus_files_db
from resources.results_db.classifications import ClassificationRow, record_scores
from resources.results_db.opus_files import ConvertedFile, record_conversions
from resources.results_db.raw_archive import register_members
from resources.results_db.transcripts import TranscriptRow, record_transcripts
from testing.pipeline_support import rows

T0 = datetime(2026, 11, 30, 12, tzinfo=UTC)


def version(etag: str, minutes: int = 0, key: str = "archives/a.tar", partition: str = "a") -> ArchiveVersion:
    return ArchiveVersion(key, etag, 1000, T0 + timedelta(minutes=minutes), partition)


def register(db: ResultsDatabase, archive: ArchiveVersion, members: dict[str, str], rejected=None):
    """A run of `archive` claims it and registers its members (what raw_archive does); its
    claimed version (with the epoch) is held in `HELD[archive]` for the later writes."""
    db.archives.partitions_for([archive.key])
    claimed = claim(db, archive, f"run-{archive.etag}", lambda holder: True, resume=False)
    HELD[archive] = ClaimedArchive(claimed, f"run-{archive.etag}", db)
    return register_members(
        HELD[archive], accepted={n: (10, sha) for n, sha in members.items()}, rejected=rejected or {}, other_failures=[]
    )


HELD: dict[ArchiveVersion, ClaimedArchive] = {}


def convert(db: ResultsDatabase, archive: ArchiveVersion, ids: dict[str, int], names) -> None:
    held = HELD[archive] if archive.epoch is None else ClaimedArchive(archive, "r", db)
    record_conversions(
        held,
        [ConvertedFile(ids[n], f"processed/{archive.date}/{ids[n]}.opus", "s3://b/k", "etag", 2.0, 100) for n in names],
        [],
    )


def statuses(db, key="archives/a.tar") -> dict[str, str]:
    return opus_files_db.statuses(db, key)


@pytest.mark.integration
def test_distinct_objects_get_distinct_partitions_and_keep_them(results_db):
    first = results_db.archives.partitions_for(["archives/b.tar.gz", "archives/b.tar"])
    assert first["archives/b.tar"] == "b"  # sorted: b.tar is named first
    assert first["archives/b.tar.gz"].startswith("b-") and first["archives/b.tar.gz"] != "b"
    again = results_db.archives.partitions_for(["archives/b.tar.gz", "archives/c.tar", "archives/b.tar"])
    assert again == first | {"archives/c.tar": "c"}
    assert results_db.archives.key_of_partition(first["archives/b.tar.gz"]) == "archives/b.tar.gz"


@pytest.mark.integration
def test_an_older_version_can_never_write_over_a_newer_one(results_db):
    v1, v2 = version("e1"), version("e2", minutes=5)
    registered = register(results_db, v1, {"a.mp3": "s1"})
    register(results_db, v2, {"a.mp3": "s1"})  # v2 claims while v1's run is still going

    with pytest.raises(StaleArchiveVersion, match="version e2"):
        convert(results_db, v1, registered.ids, ["a.mp3"])
    with pytest.raises(StaleArchiveVersion):
        claim(results_db, v1, "late retry of v1", lambda holder: True, resume=False)
    with pytest.raises(StaleArchiveVersion):
        record_transcripts(HELD[v1], [TranscriptRow(registered.ids["a.mp3"], "m", "x", "en", 1.0, [])], [])
    assert statuses(results_db) == {"a.mp3": "pending"}
    assert rows(results_db, "SELECT archive_etag FROM audio_files")[0]["archive_etag"] == "e2"


@pytest.mark.integration
def test_a_run_taken_over_writes_nothing_more_and_later_steps_never_wait(results_db):
    archive = version("e1")
    results_db.archives.partitions_for([archive.key])
    live, ended = (lambda holder: False), (lambda holder: True)
    first = claim(results_db, archive, "run-a", live, resume=False)
    assert first.epoch == 1
    # Another run's raw_archive is told who holds it (and waits); its later steps never wait.
    holder = claim(results_db, archive, "run-b", live, resume=False)
    assert holder.run_id == "run-a" and holder.heartbeat_age_s < 60
    with pytest.raises(ClaimLost, match="run-a"):
        claim(results_db, archive, "run-b", live, resume=True)
    # The holder's later steps resume its claim, same epoch.
    assert claim(results_db, archive, "run-a", live, resume=True).epoch == 1
    ids = register_members(
        ClaimedArchive(first, "run-a", results_db), accepted={"a.mp3": (10, "s1")}, rejected={}, other_failures=[]
    ).ids

    # run-a ended (or went silent): run-b takes over under a new epoch.
    second = claim(results_db, archive, "run-b", ended, resume=False)
    assert second.epoch == 2
    assert renew_claim(results_db, second, "run-b") and not renew_claim(results_db, first, "run-a")
    with pytest.raises(ClaimLost, match="epoch 1"):
        convert(results_db, first, ids, ["a.mp3"])  # a stale writer of the same version
    with pytest.raises(ClaimLost):
        claim(results_db, first, "run-a", live, resume=True)
    assert statuses(results_db) == {"a.mp3": "pending"}
    convert(results_db, second, ids, ["a.mp3"])
    assert statuses(results_db) == {"a.mp3": "converted"}
    # A retry of a failed run resumes, under a new epoch, from a parent that ended.
    assert claim(results_db, second, "run-b-retry", ended, resume=True).epoch == 3


class Deletions:
    """An object store that only records what it was asked to delete."""

    def __init__(self):
        self.deleted: list[str] = []
        self.bucket = "b"

    def delete_many(self, keys):
        self.deleted.extend(keys)


def execution(db, claimed: ArchiveVersion, run_id: str, step: str, ttl_s: float = 60, store=None) -> HeldArchive:
    """A new execution of `step` of the run, as ArchiveRun.step starts one (no Dagster here)."""
    return HeldArchive(
        claimed,
        run_id,
        db,
        object_store=store or Deletions(),
        scratch=None,
        log=None,
        step=step,
        execution=start_execution(db, claimed, run_id, step, ttl_s),
        lease=ExecutionLease(ttl_s),
    )


def end(db, held: HeldArchive) -> None:
    rows(db, "UPDATE step_executions SET ended_at = now() WHERE execution = %s RETURNING 1", (held.execution,))


@pytest.mark.integration
def test_twin_executions_of_one_step_in_one_run_are_fenced_apart(results_db):
    archive = version("e1")
    results_db.archives.partitions_for([archive.key])
    live = lambda holder: False  # noqa: E731
    first = claim(results_db, archive, "run-a", live, resume=False)
    # raw_archive delivered twice: the second keeps the run's epoch, so its other steps go on.
    assert claim(results_db, archive, "run-a", live, resume=False).epoch == first.epoch
    ids = register_members(
        ClaimedArchive(first, "run-a", results_db), accepted={"a.mp3": (10, "s1")}, rejected={}, other_failures=[]
    ).ids
    a = execution(results_db, first, "run-a", "opus_files")
    metadata = execution(results_db, first, "run-a", "parquet_metadata")
    b = execution(results_db, first, "run-a", "opus_files")  # opus_files' message delivered again
    assert a.execution < b.execution

    def converted(held: HeldArchive) -> list[ConvertedFile]:
        key = f"processed/d/{ids['a.mp3']}-{held.execution}.opus"
        return [ConvertedFile(ids["a.mp3"], key, "s3://b/k", f"etag-{held.execution}", 2.0, 100)]

    with pytest.raises(ExecutionOver, match=f"execution {b.execution} \\(run run-a\\) took opus_files over"):
        record_conversions(a, converted(a), [])
    assert not renew_execution(results_db, first, "run-a", a.execution, 60)
    record_conversions(b, converted(b), [])
    metadata.transaction(lambda cur: None, what="a write of another step")  # not fenced out
    assert renew_execution(results_db, first, "run-a", metadata.execution, 60)
    (row,) = rows(results_db, "SELECT opus_path, opus_etag FROM audio_files")
    assert row == {"opus_path": converted(b)[0].opus_key, "opus_etag": f"etag-{b.execution}"}


@pytest.mark.integration
def test_uploads_no_row_committed_are_deleted_only_once_their_execution_is_over(results_db):
    v1 = version("e1")
    results_db.archives.partitions_for([v1.key])
    first = claim(results_db, v1, "run-a", lambda holder: True, resume=False)
    ids = register_members(
        ClaimedArchive(first, "run-a", results_db), accepted={"a.mp3": (10, "s1")}, rejected={}, other_failures=[]
    ).ids
    a = execution(results_db, first, "run-a", "opus_files")
    committed, lost = f"processed/d/{ids['a.mp3']}-{a.execution}.opus", f"processed/d/99-{a.execution}.opus"
    a.intend_uploads([committed, lost, lost])  # a repeat is one intent
    record_conversions(a, [ConvertedFile(ids["a.mp3"], committed, "s3://b/k", "etag", 2.0, 100)], [])

    # run-b takes over (run-a ended) while run-a's execution still works: it may still upload.
    second = claim(results_db, v1, "run-b", lambda holder: True, resume=False)
    store = Deletions()
    b = execution(results_db, second, "run-b", "opus_files", store=store)
    in_flight = f"processed/d/98-{b.execution}.opus"
    b.intend_uploads([in_flight])
    assert b.drain() == 1 and store.deleted == [in_flight]  # its own; run-a's lost upload stays
    queued = [r["object_key"] for r in rows(results_db, "SELECT object_key FROM object_deletions")]
    assert queued == [lost]  # the committed key was forgotten, not deleted
    end(results_db, a)  # its uploads have returned
    assert b.drain() == 1 and store.deleted == [in_flight, lost]

    # An execution killed where no `finally` runs: its intents go once its lease has passed.
    c = execution(results_db, second, "run-b", "opus_files", ttl_s=0.5)
    c.intend_uploads([f"processed/d/97-{c.execution}.opus"])
    assert object_deletions.drain(results_db, store, v1.key) == 0
    time.sleep(1)
    with pytest.raises(ExecutionOver, match="lease was last renewed"):
        c.lease.check()  # it stopped uploading at half its lease
    with pytest.raises(ExecutionOver, match="its lease passed"):
        record_conversions(c, [], [FileFailure(ids["a.mp3"], "a.mp3", "conversion", "x")])
    assert not renew_execution(results_db, second, "run-b", c.execution, 60)  # never revived
    assert object_deletions.drain(results_db, store) == 1  # the hourly sweep's drain: every archive
    assert rows(results_db, "SELECT count(*) AS n FROM object_deletions")[0]["n"] == 0


@pytest.mark.integration
def test_a_definite_failure_never_undoes_a_file_converted_before(results_db):
    v1 = version("e1")
    ids = register(results_db, v1, {"a.mp3": "s1"}).ids
    convert(results_db, v1, ids, ["a.mp3"])
    record_conversions(HELD[v1], [], [FileFailure(ids["a.mp3"], "a.mp3", "conversion", "not decodable audio")])
    (row,) = rows(results_db, "SELECT status, opus_path FROM audio_files")
    assert row["status"] == "converted" and row["opus_path"]
    assert rows(results_db, "SELECT count(*) AS n FROM object_deletions")[0]["n"] == 0


@pytest.mark.integration
def test_statuses_only_move_forward_unless_the_member_changed(results_db):
    v1 = version("e1")
    ids = register(results_db, v1, {"a.mp3": "s1", "b.mp3": "s1"}).ids
    convert(results_db, v1, ids, ["a.mp3", "b.mp3"])
    record_transcripts(HELD[v1], [TranscriptRow(ids["a.mp3"], "m", "hi", "en", 1.0, [])], [])
    record_scores(
        HELD[v1], [ClassificationRow(ids["a.mp3"], "p", "c", 0.9, 0.5, False, None, "pv")], [ids["a.mp3"]], []
    )
    convert(results_db, v1, ids, ["a.mp3"])  # a re-run converts it again
    assert statuses(results_db) == {"a.mp3": "classified", "b.mp3": "converted"}

    v2 = version("e2", minutes=1)
    registered = register(results_db, v2, {"a.mp3": "s1", "b.mp3": "CHANGED"})
    assert registered.restarted == ["b.mp3"]
    assert statuses(results_db) == {"a.mp3": "classified", "b.mp3": "pending"}


@pytest.mark.integration
def test_members_missing_from_a_new_version_are_removed_and_their_objects_queued(results_db):
    v1 = version("e1")
    ids = register(results_db, v1, {"keep.mp3": "s1", "gone.mp3": "s1"}).ids
    convert(results_db, v1, ids, ["keep.mp3", "gone.mp3"])
    v2 = version("e2", minutes=1)
    registered = register(results_db, v2, {"keep.mp3": "s1"})
    assert registered.removed == ["gone.mp3"]
    assert statuses(results_db) == {"keep.mp3": "converted", "gone.mp3": "removed"}
    gone = rows(results_db, "SELECT opus_path FROM audio_files WHERE original_filename = 'gone.mp3'")[0]
    assert gone["opus_path"] is None
    queued = rows(results_db, "SELECT object_key FROM object_deletions")
    assert queued == [{"object_key": f"processed/{v1.date}/{ids['gone.mp3']}.opus"}]

    store = Deletions()
    assert object_deletions.drain(results_db, store, v2.key) == 1
    assert store.deleted == [queued[0]["object_key"]]
    assert rows(results_db, "SELECT count(*) AS n FROM object_deletions")[0]["n"] == 0


@pytest.mark.integration
def test_rescoring_an_unchanged_flag_keeps_its_first_flagged_time(results_db):
    v1 = version("e1")
    ids = register(results_db, v1, {"a.mp3": "s1"}).ids
    convert(results_db, v1, ids, ["a.mp3"])

    def score(value: float, policy_version: str = "pv1"):
        record_scores(
            HELD[v1],
            [ClassificationRow(ids["a.mp3"], "hate", "cope", value, 0.5, False, None, policy_version)],
            [ids["a.mp3"]],
            [],
        )
        return rows(results_db, "SELECT created_at, scored_at FROM classifications")[0]

    first = score(0.91)
    time.sleep(0.05)
    same = score(0.9102)  # a re-run: the same item, the same flag
    assert same["created_at"] == first["created_at"] and same["scored_at"] > first["scored_at"]
    moved = score(0.75)  # the score changed: RAs should see it again
    assert moved["created_at"] > first["created_at"]
    new_policy = score(0.75, "pv2")
    assert new_policy["created_at"] > moved["created_at"]


@pytest.mark.integration
def test_a_unit_of_work_waits_out_a_database_restart(postgres_server, results_db):
    from embedded_services.postgres import restart_postgres

    results_db = ResultsDatabase(dsn=results_db.dsn, retry_window_s=60)
    restarter = threading.Thread(
        target=restart_postgres, args=(postgres_server,), kwargs={"down_s": 3, "durable": False}
    )
    restarter.start()
    time.sleep(0.5)  # the server is going down or down
    started = time.monotonic()
    partitions = results_db.archives.partitions_for(["archives/during-outage.tar"])
    waited = time.monotonic() - started
    restarter.join()
    assert partitions == {"archives/during-outage.tar": "during-outage"}
    assert waited > 1.0  # it did meet the outage, and rode it out


@pytest.mark.integration
def test_sessions_carry_statement_and_lock_timeouts(results_db):
    settings = rows(
        results_db, "SELECT current_setting('statement_timeout') AS statement, current_setting('lock_timeout') AS lock"
    )[0]
    assert settings == {"statement": "5min", "lock": "30s"}
    quick = ResultsDatabase(dsn=results_db.dsn, statement_timeout_s=0.2)
    with pytest.raises(psycopg2.errors.QueryCanceled):
        rows(quick, "SELECT pg_sleep(2)")
