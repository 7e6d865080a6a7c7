"""One archive, one run at a time: the same partition launched three ways at once (the
sensor, a backfill, `dagster asset materialize`) runs one after another, and the rows end
as a single run would leave them."""

from __future__ import annotations

import subprocess
from datetime import datetime

import dagster as dg
import pytest

from testing.archive_factory import build_tar, make_speech_mp3, make_tone_mp3
from testing.daemon_harness import BIN, DaemonHarness, PipelineEnvironment, running_daemon
from testing.pipeline_support import rows

LOCK_MESSAGE = "holding the claim on "


def exclusive_interval(harness: DaemonHarness, run_id: str) -> tuple[float, float]:
    """From the moment the run held the archive's claim to its end."""
    logs = harness.instance.all_logs(run_id)
    held = min(e.timestamp for e in logs if LOCK_MESSAGE in (e.user_message or ""))
    ended = max(
        e.timestamp
        for e in logs
        if e.dagster_event
        and e.dagster_event.event_type in (dg.DagsterEventType.RUN_SUCCESS, dg.DagsterEventType.RUN_FAILURE)
    )
    return held, ended


def final_rows(results_db, key):
    return rows(
        results_db,
        """
        SELECT a.original_filename, a.status, a.opus_path, a.archive_etag, t.transcript_text,
               c.flag_score, c.flagged, c.created_at AS first_flagged
        FROM audio_files a
        LEFT JOIN transcripts t ON t.audio_file_id = a.id
        LEFT JOIN classifications c ON c.audio_file_id = a.id
        WHERE a.archive_source = %s ORDER BY a.original_filename
        """,
        (key,),
    )


@pytest.mark.e2e
def test_sensor_backfill_and_cli_runs_of_one_archive_never_overlap(
    tmp_path, object_store, results_db, postgres_server, scratch_root, models_root
):
    parts = tmp_path / "parts"
    archive = build_tar(
        tmp_path / "batch_three_ways.tar.gz",
        [
            ("insult.mp3", make_speech_mp3(parts / "insult.mp3", "you are a stupid idiot and everyone hates you")),
            ("weather.mp3", make_speech_mp3(parts / "weather.mp3", "the weather is lovely today")),
            ("tone.mp3", make_tone_mp3(parts / "tone.mp3", seconds=2)),
        ],
        gzip=True,
    )
    key = object_store.upload_file(archive, "archives/batch_three_ways.tar.gz").key
    partition = "batch_three_ways"
    pipeline = PipelineEnvironment.serving(object_store, results_db.dsn, scratch_root, models_root)
    with DaemonHarness(tmp_path, postgres_server, pipeline) as harness, running_daemon(harness):
        sensor_run = harness.first_run(partition)
        target = ["-m", "definitions"]
        backfill = subprocess.Popen(
            [
                str(BIN / "dagster"),
                "job",
                "backfill",
                "-j",
                "archive_job",
                "--partitions",
                partition,
                "--noprompt",
                *target,
            ],
            cwd=harness.workdir,
            env=harness.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        materialize = subprocess.Popen(
            [
                str(BIN / "dagster"),
                "asset",
                "materialize",
                "--select",
                "raw_archive*",
                "--partition",
                partition,
                *target,
            ],
            cwd=harness.workdir,
            env=harness.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        first_done = harness.wait_until(
            lambda: next(
                (
                    r
                    for r in harness.runs(tags={"dagster/partition": partition})
                    if r.status == dg.DagsterRunStatus.SUCCESS
                ),
                None,
            ),
            900,
            "the first run to finish",
        )
        after_first = final_rows(results_db, key)
        backfill_out, _ = backfill.communicate(timeout=300)
        assert backfill.returncode == 0, backfill_out
        materialize_out, _ = materialize.communicate(timeout=900)
        assert materialize.returncode == 0, materialize_out[-4000:]
        harness.wait_until(
            lambda: (
                len(harness.runs(tags={"dagster/partition": partition})) == 3
                and all(
                    r.status == dg.DagsterRunStatus.SUCCESS for r in harness.runs(tags={"dagster/partition": partition})
                )
            ),
            900,
            "all three runs to succeed",
        )
        runs = harness.runs(tags={"dagster/partition": partition})
        intervals = sorted(exclusive_interval(harness, r.run_id) for r in runs)
        launched_by = sorted(
            "sensor" if "dagster/sensor_name" in r.tags else "backfill" if "dagster/backfill" in r.tags else "cli"
            for r in runs
        )

    print("exclusive intervals:", [(round(a, 1), round(b, 1)) for a, b in intervals])
    assert launched_by == ["backfill", "cli", "sensor"]
    for (_, end), (next_start, _) in zip(intervals, intervals[1:]):
        assert end <= next_start, (
            f"runs overlapped: {[(datetime.fromtimestamp(a), datetime.fromtimestamp(b)) for a, b in intervals]}"
        )
    after = final_rows(results_db, key)
    assert len(after) == 3 and {r["status"] for r in after} == {"classified"}
    flagged = [r for r in after if r["flagged"]]
    assert [r["original_filename"] for r in flagged] == ["insult.mp3"]
    # Identical to what the first run left: the later runs found the work done and changed
    # nothing, not even the time the item was first flagged.
    assert after == after_first
    assert sensor_run.run_id in {r.run_id for r in runs} and first_done.run_id in {r.run_id for r in runs}


@pytest.mark.e2e
def test_archive_overwritten_while_its_run_transcribes_ends_with_the_new_versions_rows(
    tmp_path, object_store, results_db, postgres_server, scratch_root, models_root
):
    parts = tmp_path / "parts"
    v1 = build_tar(
        tmp_path / "v1" / "batch_overwritten.tar.gz",
        [
            ("first.mp3", make_speech_mp3(parts / "first.mp3", "the first version of this archive talks about trains")),
            ("second.mp3", make_speech_mp3(parts / "second.mp3", "and the old second clip talks about boats")),
            ("dropped.mp3", make_tone_mp3(parts / "dropped.mp3", seconds=2)),
        ],
        gzip=True,
    )
    v2 = build_tar(
        tmp_path / "v2" / "batch_overwritten.tar.gz",
        [
            ("first.mp3", parts / "first.mp3"),  # unchanged
            ("second.mp3", make_speech_mp3(parts / "second2.mp3", "the new second clip talks about gardens")),
        ],
        gzip=True,
    )
    key = object_store.upload_file(v1, "archives/batch_overwritten.tar.gz").key
    pipeline = PipelineEnvironment.serving(object_store, results_db.dsn, scratch_root, models_root)
    with DaemonHarness(tmp_path, postgres_server, pipeline) as harness, running_daemon(harness):
        first = harness.first_run("batch_overwritten")
        harness.wait_for_step(first.run_id, "transcripts")
        new_etag = object_store.upload_file(v2, key).etag
        runs = harness.wait_until(
            lambda: [
                r
                for r in harness.runs(tags={"dagster/partition": "batch_overwritten"})
                if r.tags.get("audio/archive_etag") == new_etag and r.status == dg.DagsterRunStatus.SUCCESS
            ],
            900,
            "the new version's run to succeed",
        )
        assert harness.instance.get_run_by_id(first.run_id).status in (
            dg.DagsterRunStatus.SUCCESS,
            dg.DagsterRunStatus.FAILURE,
        )
        assert len(runs) == 1
    after = {r["original_filename"]: r for r in final_rows(results_db, key)}
    assert {r["archive_etag"] for r in after.values()} == {new_etag}
    assert after["dropped.mp3"]["status"] == "removed"
    assert after["second.mp3"]["status"] == "classified" and "garden" in after["second.mp3"]["transcript_text"].lower()
    assert "train" in after["first.mp3"]["transcript_text"].lower()
    stored = {o.key for o in object_store.iter_objects("processed/")}
    assert stored == {r["opus_path"] for r in after.values() if r["opus_path"]}
