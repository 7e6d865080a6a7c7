"""The data layer on a real PostgreSQL: fencing by archive version and claim epoch, monotonic
statuses, removed members, first-flagged times, and units of work that survive a server restart."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import psycopg2
import pytest
from pipeline_support import rows

from archive_identity import ArchiveVersion
from resources.archive_run import ClaimedArchive, ClaimLost, StaleArchiveVersion, claim, renew_claim
from resources.results_db import FileFailure, ResultsDatabase, object_deletions
from resources.results_db import opus_files as opus_files_db
from resources.results_db.classifications import ClassificationRow, record_scores
from resources.results_db.opus_files import ConvertedFile, record_conversions
from resources.results_db.raw_archive import register_members
from resources.results_db.transcripts import TranscriptRow, record_transcripts

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


@pytest.mark.integration
def test_uploads_no_row_committed_are_deleted_but_never_a_later_claims(results_db):
    v1 = version("e1")
    results_db.archives.partitions_for([v1.key])
    first = claim(results_db, v1, "run-a", lambda holder: True, resume=False)
    ids = register_members(
        ClaimedArchive(first, "run-a", results_db), accepted={"a.mp3": (10, "s1")}, rejected={}, other_failures=[]
    ).ids
    committed, lost = f"processed/d/{ids['a.mp3']}-1.opus", "processed/d/99-1.opus"
    object_deletions.intend_uploads(results_db, first, [committed, lost, lost])  # a repeat is one intent
    record_conversions(
        ClaimedArchive(first, "run-a", results_db),
        [ConvertedFile(ids["a.mp3"], committed, "s3://b/k", "etag", 2.0, 100)],
        [],
    )
    second = claim(results_db, v1, "run-b", lambda holder: True, resume=False)
    in_flight = "processed/d/98-2.opus"
    object_deletions.intend_uploads(results_db, second, [in_flight])

    deleted = []

    class Store:
        def delete_many(self, keys):
            deleted.extend(keys)

    # run-a, taken over, drains: its own lost upload goes, run-b's upload in flight stays.
    assert object_deletions.drain(results_db, first, Store()) == 1
    assert deleted == [lost]
    queued = [r["object_key"] for r in rows(results_db, "SELECT object_key FROM object_deletions")]
    assert queued == [in_flight]  # the committed key was forgotten, not deleted
    assert object_deletions.drain(results_db, second, Store()) == 1 and deleted == [lost, in_flight]


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

    deleted = []

    class Store:
        def delete_many(self, keys):
            deleted.extend(keys)

    assert object_deletions.drain(results_db, HELD[v2].archive, Store()) == 1
    assert deleted == [queued[0]["object_key"]]
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
