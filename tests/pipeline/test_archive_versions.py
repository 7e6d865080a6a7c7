"""Archive versions on real services: an overwritten archive's removed members, statuses that
only move forward, first-flagged times that stay, transient failures that destroy nothing, and
a run of an older version that can no longer write."""

from __future__ import annotations

import pytest
from s3_fault_proxy import S3FaultProxy

from definitions import build_definitions
from resources.object_store import ObjectStore
from sensors.schedules import versions_to_catch_up
from testing.archive_factory import build_tar, version_clips
from testing.pipeline_support import FULL_JOB, ArchiveRunner, pipeline_resources, rows

pytestmark = pytest.mark.integration


def files(results_db, key) -> dict[str, dict]:
    found = rows(
        results_db,
        "SELECT a.id, a.original_filename, a.status, a.opus_path, a.archive_etag, t.transcript_text, "
        "c.flagged, c.created_at AS first_flagged FROM audio_files a "
        "LEFT JOIN transcripts t ON t.audio_file_id = a.id LEFT JOIN classifications c ON c.audio_file_id = a.id "
        "WHERE a.archive_source = %s",
        (key,),
    )
    return {r["original_filename"]: r for r in found}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return version_clips(tmp_path_factory.mktemp("clips"))


def test_overwritten_archive_marks_missing_members_removed_and_deletes_their_objects(
    archive_runner, results_db, object_store, instance, clips, tmp_path
):
    v1 = build_tar(
        tmp_path / "v1" / "batch_versions.tar",
        [
            ("insult.mp3", clips["insult"]),
            ("weather.mp3", clips["weather"]),
            ("tone.mp3", clips["tone"]),
        ],
    )
    key = archive_runner.upload(v1)
    assert archive_runner.run(key, assets=FULL_JOB).success
    before = files(results_db, key)
    assert {f["status"] for f in before.values()} == {"classified"}

    v2 = build_tar(
        tmp_path / "v2" / "batch_versions.tar",
        [
            ("insult.mp3", clips["insult"]),
            ("tone.mp3", clips["other_tone"]),  # weather.mp3 gone, tone.mp3 changed
        ],
    )
    archive_runner.upload(v2)
    result = archive_runner.run(key, assets=FULL_JOB)

    assert result.success and all(c.passed for c in result.get_asset_check_evaluations())
    after = files(results_db, key)
    assert after["weather.mp3"]["status"] == "removed" and after["weather.mp3"]["opus_path"] is None
    assert object_store.head(before["weather.mp3"]["opus_path"]) is None  # its object is deleted
    assert after["tone.mp3"]["status"] == "classified" and after["tone.mp3"]["id"] == before["tone.mp3"]["id"]
    # The unchanged member was not redone: same transcript, same first-flagged time.
    assert after["insult.mp3"]["first_flagged"] == before["insult.mp3"]["first_flagged"]
    assert after["insult.mp3"]["archive_etag"] != before["insult.mp3"]["archive_etag"]
    assert {f["status"] for f in after.values()} == {"classified", "removed"}
    assert rows(results_db, "SELECT count(*) AS n FROM object_deletions")[0]["n"] == 0
    referenced = {f["opus_path"] for f in after.values() if f["opus_path"]}
    assert {o.key for o in object_store.iter_objects("processed/")} == referenced
    queue = rows(results_db, "SELECT original_filename FROM ra_queue WHERE archive_source = %s", (key,))
    assert queue == [{"original_filename": "insult.mp3"}]
    # Complete, so the nightly catch-up leaves it alone.
    assert key not in {o.key for o in versions_to_catch_up(instance, object_store, results_db)}


def test_a_rerun_moves_nothing_backwards_and_keeps_first_flagged_times(archive_runner, results_db, clips, tmp_path):
    key = archive_runner.upload(
        build_tar(
            tmp_path / "batch_rerun.tar",
            [
                ("insult.mp3", clips["insult"]),
                ("tone.mp3", clips["tone"]),
            ],
        )
    )
    assert archive_runner.run(key, assets=FULL_JOB).success
    before = files(results_db, key)
    # A backfill of the CPU half alone, without the sensor's tags, forcing a new conversion.
    result = archive_runner.run(key, tags=False, run_config={"ops": {"opus_files": {"config": {"reconvert": True}}}})
    assert result.success
    again = archive_runner.run(key, assets=FULL_JOB)
    assert again.success
    after = files(results_db, key)
    assert {n: f["status"] for n, f in after.items()} == {"insult.mp3": "classified", "tone.mp3": "classified"}
    assert after["insult.mp3"]["first_flagged"] == before["insult.mp3"]["first_flagged"]
    metadata = again.asset_materializations_for_node("transcripts")[0].metadata
    assert (metadata["transcribed_now"].value, metadata["already_transcribed"].value) == (0, 2)


def test_a_failed_upload_keeps_the_good_object_and_row(
    archive_runner, instance, object_store, results_db, scratch_root, transcriber, classifier, clips, tmp_path
):
    key = archive_runner.upload(build_tar(tmp_path / "batch_upload_fails.tar", [("tone.mp3", clips["tone"])]))
    assert archive_runner.run(key, assets=FULL_JOB).success
    [before] = files(results_db, key).values()

    # Every PUT of an Opus object fails (HTTP 500), whatever the retries; everything else works.
    uploads = lambda method, path: method == "PUT" and "/processed/" in path  # noqa: E731
    with S3FaultProxy(object_store.endpoint_url, fault_rate=1.0, kinds=("500",), only=uploads) as proxy:
        broken_store = ObjectStore(
            endpoint_url=proxy.endpoint_url,
            bucket=object_store.bucket,
            access_key=object_store.access_key,
            secret_key=object_store.secret_key,
            max_attempts=2,
        )
        defs = build_definitions(pipeline_resources(broken_store, results_db, scratch_root, transcriber, classifier))
        broken = ArchiveRunner(defs, instance, broken_store, results_db)
        result = broken.run(key, run_config={"ops": {"opus_files": {"config": {"reconvert": True}}}})

    assert not result.success  # the step gave up after its retries
    [after] = files(results_db, key).values()
    assert (after["status"], after["opus_path"]) == ("classified", before["opus_path"])
    assert object_store.head(before["opus_path"]) is not None
    [failure] = rows(
        results_db,
        "SELECT stage, retryable, error FROM processing_failures "
        "WHERE archive_source = %s AND resolved_at IS NULL AND original_filename = 'tone.mp3'",
        (key,),
    )
    assert failure["stage"] == "upload" and failure["retryable"] and "InternalError" in failure["error"]


def test_every_upload_finds_its_intent_committed_one_transaction_per_commit_batch(
    archive_runner, instance, object_store, results_db, scratch_root, transcriber, classifier, clips, tmp_path
):
    """opus_files queues the upload intents of `files_per_commit` files in one transaction, before
    the first of them is converted: each PUT reaching S3 finds its key's intent committed."""
    members = [(f"clip{i}.mp3", clips["tone" if i % 2 else "other_tone"]) for i in range(5)]
    key = archive_runner.upload(build_tar(tmp_path / "batch_intents.tar", members))
    intents: dict[str, object] = {}  # Opus key -> queued_at of its intent when its PUT arrived

    def intent_on_put(method: str, path: str) -> bool:
        if method == "PUT" and "/processed/" in path:
            object_key = path.split(f"/{object_store.bucket}/", 1)[1]
            found = rows(results_db, "SELECT queued_at FROM object_deletions WHERE object_key = %s", (object_key,))
            intents[object_key] = found[0]["queued_at"] if found else None
        return False  # no fault: the proxy only watches

    with S3FaultProxy(object_store.endpoint_url, fault_rate=0.0, only=intent_on_put) as proxy:
        watched = ObjectStore(
            endpoint_url=proxy.endpoint_url,
            bucket=object_store.bucket,
            access_key=object_store.access_key,
            secret_key=object_store.secret_key,
        )
        defs = build_definitions(pipeline_resources(watched, results_db, scratch_root, transcriber, classifier))
        config = {"ops": {"opus_files": {"config": {"files_per_commit": 2}}}}
        assert ArchiveRunner(defs, instance, watched, results_db).run(key, run_config=config).success

    opus_paths = {f["opus_path"] for f in files(results_db, key).values()}
    assert set(intents) == opus_paths and len(opus_paths) == 5
    assert None not in intents.values(), intents  # every intent committed before its upload
    assert len(set(intents.values())) == 3  # one transaction (one now()) per 2 files: 2 + 2 + 1
    assert rows(results_db, "SELECT * FROM object_deletions") == []  # all forgotten once the rows committed
    ids = {f["id"] for f in files(results_db, key).values()}
    listed = {o.key for o in object_store.iter_objects("processed/") if int(o.key.rsplit("/")[-1].split("-")[0]) in ids}
    assert listed == opus_paths  # orphan objects 0


def test_a_run_of_an_overwritten_version_writes_nothing(archive_runner, results_db, object_store, clips, tmp_path):
    key = archive_runner.upload(build_tar(tmp_path / "v1" / "batch_stale.tar", [("tone.mp3", clips["tone"])]))
    old_etag = object_store.head(key).etag
    archive_runner.upload(build_tar(tmp_path / "v2" / "batch_stale.tar", [("tone.mp3", clips["other_tone"])]))
    assert archive_runner.run(key).success  # the new version's run
    # A late run still tagged with the old version (a retry, a queued request) is refused.
    stale = archive_runner.defs.resolve_job_def("archive_job").execute_in_process(
        partition_key=archive_runner.partition_of(key),
        instance=archive_runner.instance,
        raise_on_error=False,
        tags={"audio/archive_key": key, "audio/archive_etag": old_etag},
    )
    assert not stale.success
    assert "overwritten after this run was requested" in stale.failure_data_for_node("raw_archive").error.message
    assert {f["archive_etag"] for f in files(results_db, key).values()} == {object_store.head(key).etag}


def test_a_step_run_alone_reads_its_upstreams_latest_table(archive_runner, results_db, clips, tmp_path):
    """`transcripts` selected on its own (a UI re-materialization) reads the table of the
    latest opus_files materialization of the partition."""
    import dagster as dg

    key = archive_runner.upload(build_tar(tmp_path / "batch_alone.tar", [("insult.mp3", clips["insult"])]))
    assert archive_runner.run(key).success  # the CPU half
    alone = archive_runner.run(key, assets=[dg.AssetKey("transcripts")])
    assert alone.success
    assert files(results_db, key)["insult.mp3"]["status"] == "transcribed"
