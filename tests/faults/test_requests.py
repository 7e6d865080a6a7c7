"""Requests and the dead letter around quick overwrites (issue 23 items 2, 3, 7), on real
services: SeaweedFS, PostgreSQL, ffmpeg, the real Whisper base model and a persistent Dagster
instance; the revert under `dagster-daemon` with the repository's dagster.yaml.

Each drill measures what the fault table in tests/faults/README.md reports: files lost,
duplicate rows, orphan objects and rows whose object disagrees with them (all 0).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
from fault_report import record_outcome
from test_versions import NOTHING_WRONG, audit, etags_of_rows, launch, registry, summary, tick

from archive_identity import ARCHIVE_ETAG_TAG, ARCHIVE_KEY_TAG
from audio_assets import transcripts as transcripts_asset
from definitions import build_definitions
from operations.status import run_status
from resources.classifier import PolicyClassifier
from resources.transcriber import WhisperTranscriber
from sensors import schedules
from sensors.dead_letter_sensor import dead_letter_sensor
from sensors.schedules import archive_catchup_schedule
from testing.archive_factory import build_tar, truncate_file, version_clips
from testing.daemon_harness import DaemonHarness, PipelineEnvironment, running_daemon
from testing.pipeline_support import pipeline_resources, rows

pytestmark = [pytest.mark.e2e, pytest.mark.faults]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return version_clips(tmp_path_factory.mktemp("request-clips"))


@pytest.fixture
def defs(object_store, results_db, tmp_path, models_dir) -> dg.Definitions:
    transcriber = WhisperTranscriber(model="base-bundled", models_root=str(models_dir), language="en")
    classifier = PolicyClassifier(backend="profanity", threshold=0.5)
    return build_definitions(
        pipeline_resources(object_store, results_db, tmp_path / "scratch", transcriber, classifier)
    )


def catch_up_on(day: datetime, instance, object_store, results_db):
    """One evaluation of archive_catchup_schedule, scheduled at `day` (closed at once: see
    test_versions.catch_up)."""
    with dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=day,
        resources={"object_store": object_store, "results_db": results_db},
    ) as context:
        return archive_catchup_schedule(context)


# --- item 2: catch-up serves the newest first and gives up ---------------------------------------


def test_catch_up_serves_the_newest_version_first_and_gives_up_on_failing_ones(
    defs, instance, object_store, results_db, clips, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(schedules, "CATCHUP_MAX_RUNS", 2)
    refused = {
        "archives/refused_a.tar": build_tar(tmp_path / "a.tar", [("readme.txt", b"no audio here")]),
        "archives/refused_b.tar": build_tar(tmp_path / "b.tar", [("notes.txt", b"nor here")]),
        "archives/refused_c.tar.gz": truncate_file(
            build_tar(tmp_path / "c.tar.gz", [("tone.mp3", clips["tone"])], gzip=True), 0.5
        ),
    }
    for key, local in refused.items():
        object_store.upload_file(local, key)
        time.sleep(1.1)  # LastModified has 1-second resolution: the order is the upload order
    missed = "archives/batch_missed.tar"
    object_store.upload_file(build_tar(tmp_path / "v1.tar", [("tone.mp3", clips["tone"])]), missed)
    first, _ = tick(instance, object_store, results_db)
    runs: dict[str, int] = {}

    def run(request) -> bool:
        version = (request.tags[ARCHIVE_KEY_TAG], request.tags[ARCHIVE_ETAG_TAG])
        runs[f"{version[0]}@{version[1]}"] = runs.get(f"{version[0]}@{version[1]}", 0) + 1
        return launch(defs, instance, request, assets=None).success

    assert [run(r) for r in first.run_requests] == [False, False, False, True]  # refused x3, then missed
    time.sleep(1.1)
    # Overwritten while the sensor was not looking: only catch-up can find it.
    v2 = object_store.upload_file(
        build_tar(tmp_path / "v2.tar", [("tone.mp3", clips["other_tone"]), ("weather.mp3", clips["weather"])]),
        missed,
    )

    days, requested_per_day = datetime(2026, 12, 1, 1, 15, tzinfo=UTC), []
    while len(requested_per_day) < 10:
        evaluation = catch_up_on(days + timedelta(days=len(requested_per_day)), instance, object_store, results_db)
        if isinstance(evaluation, dg.SkipReason):
            break
        requested_per_day.append([r.tags[ARCHIVE_KEY_TAG] for r in evaluation])
        for request in evaluation:
            assert run(request) == (request.tags[ARCHIVE_KEY_TAG] == missed)
    # Newest first: the missed overwrite is the first night's first run (before: the two oldest
    # refused archives, every night, and the overwrite never).
    assert requested_per_day[0] == [missed, "archives/refused_c.tar.gz"]
    assert registry(results_db, missed)["processed_etag"] == v2.etag
    # Each refused version: the sensor's run and 3 catch-up runs, then given up: 6 nights with
    # runs, and the 7th requests nothing.
    assert {key: n for key, n in runs.items() if not key.startswith(missed)} == {
        f"{key}@{object_store.head(key).etag}": 4 for key in refused
    }
    assert len(requested_per_day) == 6 and isinstance(evaluation, dg.SkipReason)
    given_up = rows(results_db, "SELECT archive_source FROM archives WHERE catchup_given_up_at IS NOT NULL")
    assert sorted(r["archive_source"] for r in given_up) == sorted(refused)

    assert run_status(results_db, None, 20, terminal=False) == 0
    shown = [line for line in capsys.readouterr().out.splitlines() if line.startswith("catch-up gave up: ")]
    assert sorted(line.split()[3].split("@")[0] for line in shown) == sorted(refused)
    assert all("after 3 catch-up run(s)" in line for line in shown)
    measured = audit(results_db, object_store, missed)
    assert measured == NOTHING_WRONG
    record_outcome(
        "catch-up with 3 archive versions that fail for good (2 without MP3s, 1 truncated) and an overwrite the "
        "sensor missed, `ARCHIVE_CATCHUP_MAX_RUNS=2`",
        "the missed overwrite ran on the first night (newest first; before: the 2 oldest refused archives were "
        "chosen every night and the overwrite never); each refused version ran 4 times (the sensor's run + "
        "`ARCHIVE_CATCHUP_MAX_ATTEMPTS` 3; before: once a night for ever), then catch-up recorded it given up "
        "(`archives.catchup_given_up_at`) and `audio-pipeline status` names it; the 7th night requested "
        f"nothing; {summary(measured)}",
    )


# --- item 3: a revert runs from the sensor under the daemon --------------------------------------


def test_a_reverted_archive_runs_from_the_sensor_under_the_daemon(
    tmp_path, object_store, results_db, postgres_server, models_dir, clips
):
    key = "archives/batch_revert.tar"
    version_a = build_tar(tmp_path / "a.tar", [("tone.mp3", clips["tone"])])
    version_b = build_tar(tmp_path / "b.tar", [("tone.mp3", clips["other_tone"])])
    pipeline = PipelineEnvironment.serving(object_store, results_db.dsn, tmp_path / "scratch", models_dir)
    with DaemonHarness(tmp_path, postgres_server, pipeline) as harness, running_daemon(harness):

        def runs_of(etag: str) -> list[dg.DagsterRun]:
            return harness.runs(tags={ARCHIVE_ETAG_TAG: etag})

        def succeeded(etag: str, after: int = 0) -> dg.DagsterRun | None:
            done = [r for r in runs_of(etag) if r.status == dg.DagsterRunStatus.SUCCESS]
            return done[0] if len(done) > after else None

        a = object_store.upload_file(version_a, key)
        harness.wait_until(lambda: succeeded(a.etag), 600, "version A's run")
        b = object_store.upload_file(version_b, key)
        harness.wait_until(lambda: succeeded(b.etag), 600, "version B's run")
        reverted = object_store.upload_file(version_a, key)  # the operator puts A back
        assert reverted.etag == a.etag
        put_back_at = datetime.now(UTC)
        # Before: no run for it (its run key repeated A's, which Dagster drops, and the request
        # was confirmed by A's first run) until the nightly catch-up.
        third = harness.wait_until(lambda: succeeded(a.etag, after=1), 600, "a run of version A put back")
        sensor = next(s for s in harness.instance.all_instigator_state() if s.instigator_name == "archive_sensor")
        created = harness.instance.get_run_record_by_id(third.run_id).create_timestamp
        ticks = [
            t
            for t in harness.instance.get_ticks(sensor.instigator_origin_id, sensor.selector_id, limit=50)
            if put_back_at.timestamp() <= t.timestamp <= created.timestamp()
        ]
        assert len(ticks) <= 2, f"{len(ticks)} sensor ticks before the run of the reverted version"
    assert [len(runs_of(a.etag)), len(runs_of(b.etag))] == [2, 1]
    assert etags_of_rows(results_db, key) == {a.etag}
    assert registry(results_db, key)["processed_etag"] == a.etag
    measured = audit(results_db, object_store, key)
    assert measured == NOTHING_WRONG
    record_outcome(
        "archive reverted (A -> B -> A, A's exact bytes uploaded again: the same ETag) under `dagster-daemon`",
        f"the sensor requested a run for A put back within {len(ticks)} tick(s) (run key `key@etag#3`: the "
        "registry's request number); it succeeded and the rows are on A's ETag again (before: no run, the run key "
        "repeated A's first one, which Dagster drops, and reconciliation confirmed it against A's first run; B's "
        f"rows stood against object A until the nightly catch-up); {summary(measured)}",
    )


# --- item 7: a superseded run's failure recorded after the next version's step passed ------------


def test_a_superseded_runs_failure_recorded_late_leaves_no_open_row(
    defs, instance, object_store, results_db, clips, tmp_path, monkeypatch
):
    key = "archives/batch_quick_overwrites.tar"
    object_store.upload_file(build_tar(tmp_path / "v1.tar", [("tone.mp3", clips["tone"])]), key)
    first, cursor = tick(instance, object_store, results_db)
    v2 = object_store.upload_file(build_tar(tmp_path / "v2.tar", [("tone.mp3", clips["other_tone"])]), key)
    second, cursor = tick(instance, object_store, results_db, cursor)
    # The first version's run starts after the overwrite: it fails in a second ("overwritten after
    # this run was requested"), as runs of quickly overwritten archives do.
    assert not launch(defs, instance, first.run_requests[0], assets=None).success

    # The dead letter's tick comes while the next version's run transcribes: its raw_archive has
    # passed (and closed the archive stage's rows), the run is not over.
    transcribe_chunk, ticked = transcripts_asset._transcribe_chunk, []

    def dead_letter_tick_first(*args, **kwargs):
        if not ticked:
            ticked.append(instance.get_run_records(dg.RunsFilter(tags={ARCHIVE_ETAG_TAG: v2.etag}))[0])
            dead_letter_sensor(dg.build_sensor_context(instance=instance, resources={"results_db": results_db}))
        return transcribe_chunk(*args, **kwargs)

    monkeypatch.setattr(transcripts_asset, "_transcribe_chunk", dead_letter_tick_first)
    assert launch(defs, instance, second.run_requests[0], assets=None).success
    assert ticked and ticked[0].dagster_run.status == dg.DagsterRunStatus.STARTED
    # A later tick (a fresh cursor: it reads every failed run again) changes nothing either.
    dead_letter_sensor(dg.build_sensor_context(instance=instance, resources={"results_db": results_db}))

    still_open = rows(
        results_db,
        "SELECT stage, error FROM processing_failures WHERE archive_source = %s AND resolved_at IS NULL",
        (key,),
    )
    assert still_open == [], still_open  # before: the first run's `archive` row, open for good
    assert registry(results_db, key)["processed_etag"] == v2.etag
    measured = audit(results_db, object_store, key)
    assert measured == NOTHING_WRONG
    record_outcome(
        "quick overwrite: the superseded run's failure read by `dead_letter_sensor` after the next version's "
        "`raw_archive` passed, while that run was still going",
        "not recorded (a later run of the partition had passed the failed step), and not on later ticks; 0 open "
        "rows after the run (before: the `archive` row stayed open for good: `_superseded` needed a later run in "
        f"SUCCESS, and raw_archive's success had closed the stage before the failure was written); {summary(measured)}",
    )
