"""Daily report, catch-up, dead letter and scratch sweep on real services."""

from __future__ import annotations

import io
import os
import time
import uuid
from datetime import UTC, datetime, timedelta

import dagster as dg
import pandas as pd
import psycopg2
import pytest

from archive_identity import ArchiveVersion
from audio_assets.daily import daily_summary
from audio_assets.scratch_sweep import scratch_sweep_job
from resources.archive_run import ArchiveRun
from resources.results_db import FileFailure
from resources.results_db.classifications import ClassificationRow, record_processed, record_scores
from resources.results_db.opus_files import ConvertedFile, record_conversions
from resources.results_db.raw_archive import register_members
from resources.results_db.transcripts import TranscriptRow, record_transcripts
from resources.scratch import ScratchSpace
from sensors.schedules import archive_catchup_schedule, versions_to_catch_up
from testing.pipeline_support import hold

NOW = datetime.now(UTC)
YESTERDAY = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()


def _seed_yesterday(results_db) -> None:
    archive = ArchiveVersion("archives/day.tar", "e", 1, NOW, "day")
    held = hold(results_db, archive, "r1")
    ids = register_members(
        held, accepted={n: (1, n) for n in ("a.mp3", "b.mp3", "c.mp3")}, rejected={}, other_failures=[]
    ).ids
    record_conversions(
        held,
        [ConvertedFile(ids[n], f"processed/x/{ids[n]}.opus", "s3://b/k", "e", 30.0, 100) for n in ("a.mp3", "b.mp3")],
        [FileFailure(ids["c.mp3"], "c.mp3", "conversion", "not decodable audio")],
    )
    record_transcripts(
        held,
        [
            TranscriptRow(ids["a.mp3"], "whisper", "you idiot", "en", 0.8, []),
            TranscriptRow(ids["b.mp3"], "whisper", "hello", "en", 0.6, []),
        ],
        [],
    )
    record_scores(
        held, [ClassificationRow(ids["a.mp3"], "harassment_threats", "cope", 0.9, 0.5, False, None)], [ids["a.mp3"]], []
    )

    def move_to_yesterday(cur) -> None:
        for table, column in (
            ("audio_files", "processed_at"),
            ("transcripts", "created_at"),
            ("classifications", "created_at"),
            ("processing_failures", "failed_at"),
        ):
            cur.execute(f"UPDATE {table} SET {column} = %s::date + interval '13 hours'", (YESTERDAY,))

    results_db.transaction(move_to_yesterday)


def test_daily_summary_lands_in_postgres_view_and_parquet(results_db, object_store, ra_login):
    _seed_yesterday(results_db)
    result = dg.materialize(
        [daily_summary], partition_key=YESTERDAY, resources={"results_db": results_db, "object_store": object_store}
    )
    assert result.success
    with psycopg2.connect(ra_login) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT files_processed, files_failed, failed_by_stage, flagged_by_category, "
            "mean_confidence, audio_hours FROM daily_report WHERE day = %s",
            (YESTERDAY,),
        )
        processed, failed, by_stage, flagged, confidence, hours = cur.fetchone()
    assert (processed, failed) == (2, 1)
    assert by_stage == {"conversion": 1}
    assert flagged == {"harassment_threats": 1}
    assert confidence == pytest.approx(0.7)
    assert hours == pytest.approx(60 / 3600, abs=1e-4)
    report = pd.read_parquet(io.BytesIO(object_store.get_bytes(f"reports/{YESTERDAY}.parquet")))
    assert report.loc[0, "files_processed"] == 2 and "not decodable" in report.loc[0, "top_errors"]
    metadata = result.asset_materializations_for_node("daily_summary")[0].metadata
    assert "files_processed" in metadata["report"].value


def _add_run(instance, partition: str, status: dg.DagsterRunStatus) -> None:
    run = dg.DagsterRun(
        job_name="archive_job", run_id=str(uuid.uuid4()), status=status, tags={"dagster/partition": partition}
    )
    instance.add_run(run)


def _processed(results_db, object_store, key: str) -> None:
    """As if a run of the object's current version had finished its last step."""
    info = object_store.head(key)
    archive = ArchiveVersion(
        key, info.etag, info.size, info.last_modified, results_db.archives.partitions_for([key])[key]
    )
    record_processed(hold(results_db, archive, "r"))


def test_catch_up_requests_every_archive_whose_current_version_was_not_processed(instance, results_db, object_store):
    for name in ("done", "running", "failed_last", "never_ran", "overwritten"):
        object_store.put_bytes(f"archives/{name}.tar", b"version one")
    for name in ("done", "running", "failed_last", "overwritten"):
        _processed(results_db, object_store, f"archives/{name}.tar")
    object_store.put_bytes("archives/running.tar", b"version two, its run in progress")
    object_store.put_bytes("archives/failed_last.tar", b"version two, its run failed")
    object_store.put_bytes("archives/overwritten.tar", b"version two, never seen by the sensor")
    instance.add_dynamic_partitions("archives", ["done", "running", "failed_last"])
    _add_run(instance, "running", dg.DagsterRunStatus.STARTED)
    _add_run(instance, "failed_last", dg.DagsterRunStatus.FAILURE)
    resources = {"results_db": results_db, "object_store": object_store}

    # Closed at once: a schedule context opens its own instance from the ref, and one left to the
    # garbage collector would close it in a later test, leaving Dagster's context pointing at it.
    with dg.build_schedule_context(instance=instance, scheduled_execution_time=NOW, resources=resources) as context:
        requests = archive_catchup_schedule(context)
    assert sorted(r.partition_key for r in requests) == ["failed_last", "never_ran", "overwritten"]
    for request in requests:  # pinned to the version listed now
        key = request.tags["audio/archive_key"]
        assert request.tags["audio/archive_etag"] == object_store.head(key).etag
    assert {"never_ran", "overwritten"} <= set(instance.get_dynamic_partitions("archives"))

    for name in ("failed_last", "never_ran", "overwritten"):
        _processed(results_db, object_store, f"archives/{name}.tar")
    assert [o.key for o in versions_to_catch_up(instance, object_store, results_db)] == []
    with dg.build_schedule_context(instance=instance, scheduled_execution_time=NOW, resources=resources) as context:
        skipped = archive_catchup_schedule(context)
    assert isinstance(skipped, dg.SkipReason)


def test_scratch_sweep_removes_only_old_folders_of_runs_that_are_gone(instance, tmp_path, object_store, results_db):
    root = tmp_path / "scratch"
    running_id, killed_id, fresh_id = (str(uuid.uuid4()) for _ in range(3))
    instance.add_run(dg.DagsterRun(job_name="archive_job", run_id=running_id, status=dg.DagsterRunStatus.STARTED))
    instance.add_run(dg.DagsterRun(job_name="archive_job", run_id=killed_id, status=dg.DagsterRunStatus.FAILURE))
    old = time.time() - 7 * 3600
    for run_id in (running_id, killed_id, fresh_id):
        step = root / run_id / "opus_files"
        step.mkdir(parents=True)
        (step / "archive.tar").write_bytes(b"x" * 10_000)
        if run_id != fresh_id:
            for path in (step / "archive.tar", step, step.parent):
                os.utime(path, (old, old))

    scratch = ScratchSpace(root=str(root))
    archive_run = ArchiveRun(object_store=object_store, results_db=results_db, scratch=scratch)
    result = scratch_sweep_job.execute_in_process(
        instance=instance, resources={"scratch": scratch, "archive_run": archive_run}
    )

    assert result.success
    assert not (root / killed_id).exists()
    assert (root / running_id).exists() and (root / fresh_id).exists()
    assert result.output_for_node("sweep_scratch") == 10_000
