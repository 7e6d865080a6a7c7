"""No version silently skipped, scores that follow their transcripts, step failures closed
(issue 18), on real services: SeaweedFS, PostgreSQL, ffmpeg, the real Whisper base model and a
persistent Dagster instance. Runs are started the way the daemon starts a sensor's or a
schedule's run request: the request's partition and tags, executed on the instance.

Each drill measures what the fault table in tests/faults/README.md reports: files lost,
duplicate rows, orphan objects and rows whose object disagrees with them (all 0).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import dagster as dg
import pytest
from fault_report import record_outcome

from archive_identity import ARCHIVE_ETAG_TAG, ArchiveVersion
from audio_assets.archive_job import archives_partitions
from definitions import build_definitions
from resources.classifier import PolicyClassifier
from resources.results_db.transcripts import TranscriptRow, record_transcripts
from resources.transcriber import WhisperTranscriber
from sensors import archive_sensor as archive_sensor_module
from sensors.archive_sensor import archive_sensor
from sensors.dead_letter_sensor import _steps_passed_later, dead_letter_sensor
from sensors.schedules import archive_catchup_schedule
from testing.archive_factory import build_tar, version_clips
from testing.pipeline_support import INGEST_ASSETS, hold, pipeline_resources, rows

pytestmark = [pytest.mark.e2e, pytest.mark.faults]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return version_clips(tmp_path_factory.mktemp("version-clips"))


@pytest.fixture
def build_defs(object_store, results_db, tmp_path, models_dir):
    def build(language: str | None = "en") -> dg.Definitions:
        transcriber = WhisperTranscriber(model="base-bundled", models_root=str(models_dir), language=language)
        classifier = PolicyClassifier(backend="profanity", threshold=0.5)
        return build_definitions(
            pipeline_resources(object_store, results_db, tmp_path / "scratch", transcriber, classifier)
        )

    return build


def tick(instance, object_store, results_db, cursor=None, *, stored=True):
    """One archive_sensor tick; `stored=False` drops its result, as a daemon killed before
    storing the tick would (no partitions added, no runs, the cursor not saved)."""
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"object_store": object_store, "results_db": results_db}
    )
    result = archive_sensor(context)
    if not stored:
        return result, cursor
    if isinstance(result, dg.SensorResult):
        for request in result.dynamic_partitions_requests:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        return result, result.cursor
    return result, context.cursor


def launch(defs, instance, request: dg.RunRequest, assets=INGEST_ASSETS, run_config=None):
    """The run the daemon launches for a request: its partition and tags."""
    return defs.resolve_job_def("archive_job").execute_in_process(
        partition_key=request.partition_key,
        instance=instance,
        tags=dict(request.tags),
        asset_selection=assets,
        raise_on_error=False,
        run_config=run_config,
    )


def audit(results_db, object_store, key: str) -> dict[str, int]:
    """What the fault table reports for one archive."""
    files = rows(
        results_db,
        "SELECT id, status, opus_path, opus_etag FROM audio_files WHERE archive_source = %s AND status <> 'removed'",
        (key,),
    )
    ids = [f["id"] for f in files]
    duplicates = rows(
        results_db,
        "SELECT (SELECT count(*) - count(DISTINCT (audio_file_id, model)) FROM transcripts"
        "        WHERE audio_file_id = ANY(%s))"
        "     + (SELECT count(*) - count(DISTINCT (audio_file_id, flag_category, model)) FROM classifications"
        "        WHERE audio_file_id = ANY(%s)) AS n",
        (ids, ids),
    )[0]["n"]
    referenced = {f["opus_path"] for f in files if f["opus_path"]}
    objects = {o.key: o.etag for o in object_store.iter_objects("processed/")}
    disagree = [f for f in files if f["opus_path"] and objects.get(f["opus_path"]) != f["opus_etag"]]
    return {
        "lost": sum(1 for f in files if f["status"] in ("pending", "failed")),
        "duplicates": int(duplicates),
        "orphans": len(set(objects) - referenced),
        "disagree": len(disagree),
    }


NOTHING_WRONG = {"lost": 0, "duplicates": 0, "orphans": 0, "disagree": 0}


def summary(measured: dict[str, int]) -> str:
    return (
        f"files lost {measured['lost']}, duplicate rows {measured['duplicates']}, orphan objects "
        f"{measured['orphans']}, rows whose object disagrees {measured['disagree']}"
    )


def registry(results_db, key: str) -> dict:
    return rows(
        results_db,
        "SELECT requested_etag, requested_run_seen_at, processed_etag, current_etag FROM archives "
        "WHERE archive_source = %s",
        (key,),
    )[0]


def etags_of_rows(results_db, key: str) -> set[str]:
    found = rows(results_db, "SELECT DISTINCT archive_etag FROM audio_files WHERE archive_source = %s", (key,))
    return {r["archive_etag"] for r in found}


# --- the sensor killed between remembering a request and the tick being stored ----------------


def test_an_overwrite_whose_tick_was_lost_is_requested_again_and_runs(
    build_defs, instance, object_store, results_db, clips, tmp_path, monkeypatch
):
    defs = build_defs()
    key = "archives/batch_lost_tick.tar"
    object_store.upload_file(build_tar(tmp_path / "v1.tar", [("tone.mp3", clips["tone"])]), key)
    first, cursor = tick(instance, object_store, results_db)
    assert launch(defs, instance, first.run_requests[0]).success
    v2 = object_store.upload_file(
        build_tar(tmp_path / "v2.tar", [("tone.mp3", clips["other_tone"]), ("weather.mp3", clips["weather"])]), key
    )

    lost, _ = tick(instance, object_store, results_db, cursor, stored=False)  # remembered, then killed
    assert [r.tags[ARCHIVE_ETAG_TAG] for r in lost.run_requests] == [v2.etag]
    assert registry(results_db, key)["requested_etag"] == v2.etag
    within_grace, _ = tick(instance, object_store, results_db, cursor)
    assert isinstance(within_grace, dg.SkipReason)  # before: the version was never offered again

    monkeypatch.setattr(archive_sensor_module, "REQUEST_GRACE_S", 0.0)
    again, cursor = tick(instance, object_store, results_db, cursor)
    [request] = again.run_requests
    assert request.run_key == lost.run_requests[0].run_key == f"{key}@{v2.etag}#2"  # the same request
    assert launch(defs, instance, request).success
    assert etags_of_rows(results_db, key) == {v2.etag}

    after, _ = tick(instance, object_store, results_db, cursor)
    assert isinstance(after, dg.SkipReason)  # the run exists: the request is confirmed, not repeated
    assert registry(results_db, key)["requested_run_seen_at"] is not None
    measured = audit(results_db, object_store, key)
    assert measured == NOTHING_WRONG
    record_outcome(
        "sensor tick lost after remembering an overwritten archive's new version (SensorResult dropped: "
        "no runs, partitions or cursor stored)",
        "the next tick within the grace period skipped it (the old defect); after the grace period the tick "
        "found no run for the remembered version and requested it again; the run converted the new version's "
        f"2 files; {summary(measured)}",
    )


# --- catch-up compares the object's version with the last successful run's ---------------------


def catch_up(instance, object_store, results_db):
    """One evaluation of archive_catchup_schedule. Its context is closed at once: it opens its
    own instance from the ref, and one left to the garbage collector would close it during a
    later test, leaving Dagster's current-instance context pointing at a closed instance."""
    with dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=datetime.now(UTC),
        resources={"object_store": object_store, "results_db": results_db},
    ) as context:
        return archive_catchup_schedule(context)


def test_catch_up_runs_an_archive_whose_last_successful_run_processed_an_older_version(
    build_defs, instance, object_store, results_db, clips, tmp_path
):
    defs = build_defs()
    key = "archives/batch_catch_up.tar"
    v1 = object_store.upload_file(build_tar(tmp_path / "v1.tar", [("tone.mp3", clips["tone"])]), key)
    first, _ = tick(instance, object_store, results_db)
    assert launch(defs, instance, first.run_requests[0], assets=None).success
    assert registry(results_db, key)["processed_etag"] == v1.etag
    # Overwritten while the sensor was not looking (down for longer than its look-back).
    v2 = object_store.upload_file(
        build_tar(tmp_path / "v2.tar", [("tone.mp3", clips["other_tone"]), ("insult.mp3", clips["insult"])]), key
    )

    [request] = catch_up(instance, object_store, results_db)
    assert request.tags[ARCHIVE_ETAG_TAG] == v2.etag
    assert launch(defs, instance, request, assets=None).success
    assert registry(results_db, key)["processed_etag"] == v2.etag
    assert etags_of_rows(results_db, key) == {v2.etag}
    again = catch_up(instance, object_store, results_db)
    assert isinstance(again, dg.SkipReason)
    measured = audit(results_db, object_store, key)
    assert measured == NOTHING_WRONG
    record_outcome(
        "archive overwritten while the sensor could not see it (its last successful run processed the older ETag)",
        "the catch-up schedule compared the listed ETag with the processed one and requested one run pinned "
        f"to the new version; after it, catch-up skipped; {summary(measured)}",
    )


# --- a new transcript makes its scores stale ----------------------------------------------------


def classifications_of(results_db, key: str) -> dict[str, dict]:
    found = rows(
        results_db,
        "SELECT a.original_filename, c.transcript_id, c.scored_at, c.created_at, c.flag_score, t.model "
        "FROM classifications c JOIN audio_files a ON a.id = c.audio_file_id "
        "LEFT JOIN transcripts t ON t.id = c.transcript_id WHERE a.archive_source = %s",
        (key,),
    )
    return {r["original_filename"]: r for r in found}


def scored_now(result) -> int:
    return result.asset_materializations_for_node("classifications")[0].metadata["scored_now"].value


def test_a_whisper_change_rescores_the_new_transcripts_only(
    build_defs, instance, object_store, results_db, clips, tmp_path
):
    key = "archives/batch_whisper_switch.tar"
    object_store.upload_file(
        build_tar(
            tmp_path / "b.tar",
            [("insult.mp3", clips["insult"]), ("weather.mp3", clips["weather"]), ("tone.mp3", clips["tone"])],
        ),
        key,
    )
    first, _ = tick(instance, object_store, results_db)
    assert launch(build_defs(language="en"), instance, first.run_requests[0], assets=None).success
    before = classifications_of(results_db, key)
    assert {r["model"] for r in before.values()} == {"whisperx/base-ct2-int8-en"}

    # WHISPER_LANGUAGE unset (detect), then `dagster asset materialize --select transcripts,classifications`.
    partition = first.run_requests[0].partition_key
    switched = build_defs(language=None).resolve_job_def("archive_job")
    selection = [dg.AssetKey("transcripts"), dg.AssetKey("classifications")]

    def materialize(run_config=None):
        result = switched.execute_in_process(
            partition_key=partition, instance=instance, asset_selection=selection, raise_on_error=False,
            run_config=run_config,
        )  # fmt: skip
        assert result.success
        return result

    result = materialize()
    after = classifications_of(results_db, key)
    assert scored_now(result) == 3  # every file has a new transcript: each is scored again
    assert {r["model"] for r in after.values()} == {"whisperx/base-ct2-int8"}
    assert all(after[n]["scored_at"] > before[n]["scored_at"] for n in before)
    # Same text, same score: first-flagged times stay, so RAs do not see the items again.
    assert all(
        after[n]["created_at"] == before[n]["created_at"]
        for n in before
        if after[n]["flag_score"] == before[n]["flag_score"]
    )
    shown = rows(
        results_db,
        "SELECT i.original_filename, i.transcript_text, t.transcript_text AS scored_text FROM reviewable_items i "
        "JOIN classifications c ON c.id = i.item_id JOIN transcripts t ON t.id = c.transcript_id "
        "WHERE i.archive_source = %s",
        (key,),
    )
    assert len(shown) == 3 and all(r["transcript_text"] == r["scored_text"] for r in shown)

    assert scored_now(materialize()) == 0  # nothing changed: nothing scored
    unchanged = classifications_of(results_db, key)
    assert all(unchanged[n]["scored_at"] == after[n]["scored_at"] for n in after)

    # One transcript re-made with new text (same model): only its file is scored again.
    [weather] = rows(
        results_db,
        "SELECT a.id FROM audio_files a WHERE a.archive_source = %s AND a.original_filename = 'weather.mp3'",
        (key,),
    )
    info = object_store.head(key)
    version = ArchiveVersion(key, info.etag, info.size, info.last_modified, partition)
    # Written the way a run's step writes, by a run that has ended since (a holder the instance
    # does not know would hold the claim while it might still renew it).
    by_hand = instance.add_run(
        dg.DagsterRun(job_name="retranscribe_by_hand", run_id=str(uuid.uuid4()), status=dg.DagsterRunStatus.SUCCESS)
    )
    record_transcripts(
        hold(results_db, version, by_hand.run_id),
        [TranscriptRow(weather["id"], "whisperx/base-ct2-int8", "the weather is awful today", "en", 0.9, [])],
        [],
    )
    classify_only = build_defs(language=None).resolve_job_def("archive_job").execute_in_process(
        partition_key=partition, instance=instance, asset_selection=[dg.AssetKey("classifications")],
        raise_on_error=False,
    )  # fmt: skip
    assert classify_only.success and scored_now(classify_only) == 1
    last = classifications_of(results_db, key)
    assert last["weather.mp3"]["scored_at"] > unchanged["weather.mp3"]["scored_at"]
    assert all(last[n]["scored_at"] == unchanged[n]["scored_at"] for n in ("insult.mp3", "tone.mp3"))
    measured = audit(results_db, object_store, key)
    assert measured == NOTHING_WRONG
    record_outcome(
        "Whisper setting switched (fixed language `en` -> detect), transcripts + classifications materialized",
        "3 new transcripts, 3 items re-scored (each score records its transcript), first-flagged times kept where "
        "the score did not change; a second materialization scored 0; one transcript re-made with new text -> "
        "1 item re-scored, the other 2 kept scored_at; the RA views show the transcript each score was computed "
        f"from; {summary(measured)}",
    )


# --- step:* failures closed by a later success ----------------------------------------------


def test_a_failed_asset_check_step_is_closed_when_the_check_later_passes(
    build_defs, instance, object_store, results_db, clips, tmp_path
):
    defs = build_defs()
    key = "archives/batch_check_step.tar"
    object_store.upload_file(build_tar(tmp_path / "c.tar", [("tone.mp3", clips["tone"])]), key)
    first, _ = tick(instance, object_store, results_db)
    request = first.run_requests[0]
    # The check run on its own before the archive was ever read: its step fails (no manifest).
    failed = defs.resolve_job_def("archive_job").execute_in_process(
        partition_key=request.partition_key,
        instance=instance,
        tags=dict(request.tags),
        op_selection=["opus_files_every_mp3_has_one_row"],
        raise_on_error=False,
    )
    assert not failed.success
    dead_letter_sensor(dg.build_sensor_context(instance=instance, resources={"results_db": results_db}))
    step = "step:opus_files_every_mp3_has_one_row"
    open_stages = "SELECT stage FROM processing_failures WHERE archive_source = %s AND resolved_at IS NULL"
    assert [r["stage"] for r in rows(results_db, open_stages, (key,))] == [step]

    assert launch(defs, instance, request).success  # the check passes in the archive's run
    assert rows(results_db, open_stages, (key,)) == []
    # Had the dead letter read the failed run only now, while the later run was still going,
    # it would see that run's success of the step and not record it.
    failed_run = instance.get_run_by_id(failed.run_id)
    assert "opus_files_every_mp3_has_one_row" in _steps_passed_later(instance, failed_run)
    assert "transcripts" not in _steps_passed_later(instance, failed_run)  # not in the later run
    # The dead letter reading the failed run again (a fresh cursor) does not reopen it.
    dead_letter_sensor(dg.build_sensor_context(instance=instance, resources={"results_db": results_db}))
    assert rows(results_db, open_stages, (key,)) == []
    assert instance.get_dynamic_partitions(archives_partitions.name) == [request.partition_key]
    measured = audit(results_db, object_store, key)
    assert measured == NOTHING_WRONG
    record_outcome(
        "asset check step failed (`opus_files_every_mp3_has_one_row` run before the archive was read)",
        f"the dead letter recorded `{step}`; the check's pass in the archive's next run closed it, and the "
        f"dead letter reading the failed run again left it closed; {summary(measured)}",
    )
