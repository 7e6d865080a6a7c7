"""archive_sensor against a real S3 server and a persistent Dagster instance."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import dagster as dg

from archive_identity import ARCHIVE_ETAG_TAG, ARCHIVE_KEY_TAG
from audio_assets.archive_job import archives_partitions
from resources.object_store import _S3_XML, ObjectStore
from sensors import archive_sensor as archive_sensor_module
from sensors.archive_sensor import ArchiveCursor, archive_sensor
from testing.pipeline_support import rows


def tick(instance, object_store, results_db, cursor=None, *, stored=True):
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"object_store": object_store, "results_db": results_db}
    )
    result = archive_sensor(context)
    if not stored:  # dropped, as by a daemon killed before it stored the tick
        return result, cursor
    if isinstance(result, dg.SensorResult):
        for request in result.dynamic_partitions_requests:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        return result, result.cursor
    return result, context.cursor


def test_new_archive_adds_partition_and_requests_a_run(instance, object_store, results_db):
    info = object_store.put_bytes("archives/batch_a.tar.gz", b"not inspected by the sensor")
    object_store.put_bytes("archives/notes.txt", b"ignored")
    object_store.put_bytes("archives/nested/batch_b.tar", b"ignored: not directly under archives/")

    result, _ = tick(instance, object_store, results_db)

    assert isinstance(result, dg.SensorResult)
    [request] = result.run_requests
    assert request.partition_key == "batch_a"
    assert request.run_key == f"archives/batch_a.tar.gz@{info.etag}#1"
    assert request.tags[ARCHIVE_KEY_TAG] == "archives/batch_a.tar.gz"
    assert request.tags[ARCHIVE_ETAG_TAG] == info.etag
    assert instance.get_dynamic_partitions(archives_partitions.name) == ["batch_a"]


def test_same_archive_next_tick_requests_nothing(instance, object_store, results_db):
    object_store.put_bytes("archives/batch_a.tar", b"one")
    _, cursor = tick(instance, object_store, results_db)

    result, cursor_after = tick(instance, object_store, results_db, cursor)

    assert isinstance(result, dg.SkipReason)
    assert ArchiveCursor.parse(cursor_after) == ArchiveCursor.parse(cursor)


def test_overwritten_archive_requests_a_new_run(instance, object_store, results_db):
    first = object_store.put_bytes("archives/batch_a.tar", b"version one")
    _, cursor = tick(instance, object_store, results_db)
    second = object_store.put_bytes("archives/batch_a.tar", b"version two")
    assert first.etag != second.etag

    result, _ = tick(instance, object_store, results_db, cursor)

    assert isinstance(result, dg.SensorResult)
    [request] = result.run_requests
    assert request.run_key == f"archives/batch_a.tar@{second.etag}#2"
    assert result.dynamic_partitions_requests == []  # the partition exists already


def test_a_backlog_is_requested_over_several_ticks_with_a_small_cursor(instance, object_store, results_db, monkeypatch):
    monkeypatch.setattr(archive_sensor_module, "MAX_RUNS_PER_TICK", 400)
    keys = [f"archives/batch_{i:04d}.tar.gz" for i in range(1000)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda key: object_store.put_bytes(key, key.encode()), keys))

    requested, cursor, ticks = [], None, []
    for _ in range(3):
        result, cursor = tick(instance, object_store, results_db, cursor)
        ticks.append(len(result.run_requests))
        requested += [r.tags[ARCHIVE_KEY_TAG] for r in result.run_requests]
        assert len(cursor) < 100  # a watermark and a count, however many archives there are

    assert ticks == [400, 400, 200]
    assert sorted(requested) == keys  # each exactly once
    assert ArchiveCursor.parse(cursor).backlog == 0
    assert len(instance.get_dynamic_partitions(archives_partitions.name)) == 1000
    again, _ = tick(instance, object_store, results_db, cursor)
    assert isinstance(again, dg.SkipReason)


def test_an_archive_arriving_during_a_backlog_is_not_missed(instance, object_store, results_db, monkeypatch):
    monkeypatch.setattr(archive_sensor_module, "MAX_RUNS_PER_TICK", 2)
    for i in range(3):
        object_store.put_bytes(f"archives/old_{i}.tar", b"old")
    first, cursor = tick(instance, object_store, results_db)
    assert ArchiveCursor.parse(cursor).backlog == 1
    object_store.put_bytes("archives/old_0.tar", b"overwritten while the backlog drains")
    object_store.put_bytes("archives/late.tar", b"new")
    second, cursor = tick(instance, object_store, results_db, cursor)
    third, cursor = tick(instance, object_store, results_db, cursor)
    keys = [r.tags[ARCHIVE_KEY_TAG] for result in (first, second, third) for r in result.run_requests]
    assert sorted(keys) == [
        "archives/late.tar",
        "archives/old_0.tar",
        "archives/old_0.tar",
        "archives/old_1.tar",
        "archives/old_2.tar",
    ]
    assert isinstance(tick(instance, object_store, results_db, cursor)[0], dg.SkipReason)


def test_two_archives_with_one_batch_id_get_two_partitions(instance, object_store, results_db):
    """b.tar and b.tar.gz are different archives: they must never share materializations."""
    object_store.put_bytes("archives/b.tar.gz", b"one archive")
    object_store.put_bytes("archives/b.tar", b"another archive")
    result, cursor = tick(instance, object_store, results_db)
    partitions = {r.tags[ARCHIVE_KEY_TAG]: r.partition_key for r in result.run_requests}
    assert partitions["archives/b.tar"] == "b"
    assert partitions["archives/b.tar.gz"].startswith("b-")
    assert sorted(instance.get_dynamic_partitions(archives_partitions.name)) == sorted(partitions.values())
    # Overwritten later, each keeps its own partition.
    object_store.put_bytes("archives/b.tar.gz", b"one archive, version two")
    again, _ = tick(instance, object_store, results_db, cursor)
    assert [r.partition_key for r in again.run_requests] == [partitions["archives/b.tar.gz"]]


def test_cursor_watermark_stops_at_the_oldest_archive_left_for_later():
    now = datetime(2026, 11, 25, 12, tzinfo=UTC)
    lookback = timedelta(hours=1)
    listed = [now - timedelta(hours=3), now - timedelta(minutes=5), now]
    cursor = ArchiveCursor().advance(listed, left_for_later=[now - timedelta(minutes=5), now])
    assert cursor.watermark == now - timedelta(minutes=5) and cursor.backlog == 2
    assert cursor.is_candidate(now - timedelta(minutes=5), lookback)
    cursor = cursor.advance(listed[1:], left_for_later=[])
    assert cursor.watermark == now and cursor.backlog == 0
    assert not cursor.is_candidate(now - timedelta(hours=2), lookback)
    # Same second as the watermark (S3 has 1-second resolution): still a candidate.
    assert cursor.is_candidate(now, lookback)
    assert ArchiveCursor.parse(cursor.serialize()) == cursor
    # A cursor of the earlier format (watermark + fingerprints) is read without its fingerprints.
    old = ArchiveCursor.parse('{"watermark": "2026-11-25T12:00:00+00:00", "recent": {"abc": "x"}}')
    assert old == ArchiveCursor(now)


def test_keys_that_are_not_archives_are_counted_and_named(instance, object_store, results_db):
    object_store.put_bytes("archives/2026/12/x.tar", b"nested under a folder")
    object_store.put_bytes("archives/batch_c.zip", b"another suffix")
    result, _ = tick(instance, object_store, results_db)
    assert isinstance(result, dg.SkipReason)
    assert "1 key(s) skipped" in result.skip_message and "archives/batch_c.zip" in result.skip_message
    # The nested key is not listed at all; its folder is named.
    assert "1 folder(s) not looked into" in result.skip_message and "archives/2026/" in result.skip_message
    assert "x.tar" not in result.skip_message
    object_store.put_bytes("archives/batch_c.tar", b"an archive")
    with_runs, _ = tick(instance, object_store, results_db)
    assert [r.tags[ARCHIVE_KEY_TAG] for r in with_runs.run_requests] == ["archives/batch_c.tar"]


def test_a_tick_does_not_list_keys_nested_under_archives(instance, object_store, results_db, monkeypatch):
    """Issue 23 item 16: 1,200 keys an uploader nested under archives/ (more than one 1,000-key
    page) cost a tick nothing: it reads one page holding the archive and the folder."""
    nested = [f"archives/raw/2026/12/{i:04d}.mp3" for i in range(1200)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda key: object_store.put_bytes(key, b"x"), nested))
    object_store.put_bytes("archives/batch_d.tar", b"an archive")
    pages: list[int] = []
    list_page = ObjectStore._list_page

    def counted(self, params):
        page = list_page(self, params)
        pages.append(sum(1 for _ in page.iter(f"{_S3_XML}Contents")))
        return page

    monkeypatch.setattr(ObjectStore, "_list_page", counted)
    result, cursor = tick(instance, object_store, results_db)
    assert [r.tags[ARCHIVE_KEY_TAG] for r in result.run_requests] == ["archives/batch_d.tar"]
    assert pages == [1], f"the tick read {len(pages)} listing page(s) with {sum(pages)} keys"  # before: [1000, 201]
    quiet, _ = tick(instance, object_store, results_db, cursor)
    assert isinstance(quiet, dg.SkipReason) and "archives/raw/" in quiet.skip_message
    assert pages == [1, 1]


def test_a_request_without_a_run_is_offered_again_and_one_for_a_gone_version_forgotten(
    instance, object_store, results_db, monkeypatch
):
    first = object_store.put_bytes("archives/kept.tar", b"v1")
    object_store.put_bytes("archives/gone.tar", b"v1")
    tick(instance, object_store, results_db, stored=False)  # the daemon died: no runs exist
    object_store.delete("archives/gone.tar")
    monkeypatch.setattr(archive_sensor_module, "REQUEST_GRACE_S", 0.0)
    result, _ = tick(instance, object_store, results_db)
    assert [r.run_key for r in result.run_requests] == [f"archives/kept.tar@{first.etag}#1"]  # the same request
    [gone] = rows(results_db, "SELECT requested_etag FROM archives WHERE archive_source = 'archives/gone.tar'")
    assert gone["requested_etag"] is None  # nothing can run that version any more


def _stored_run(instance, request: dg.RunRequest) -> None:
    """The run the daemon stores for a request: its tags, as a finished run."""
    run = dg.DagsterRun(
        job_name="archive_job", run_id=str(uuid.uuid4()), status=dg.DagsterRunStatus.SUCCESS, tags=dict(request.tags)
    )
    instance.add_run(run)


def test_a_reverted_archive_is_a_new_request_confirmed_only_by_its_own_run(
    instance, object_store, results_db, monkeypatch
):
    """Issue 23 item 3: A -> B -> A (the old file put back, same ETag). Before, the third request
    repeated A's run key (`key@etag`), which Dagster drops, and reconciliation confirmed it
    against A's first run, so A's bytes never ran again from the sensor."""
    key = "archives/batch_revert.tar"
    monkeypatch.setattr(archive_sensor_module, "REQUEST_GRACE_S", 0.0)
    a = object_store.put_bytes(key, b"version A")
    first, cursor = tick(instance, object_store, results_db)
    _stored_run(instance, first.run_requests[0])
    object_store.put_bytes(key, b"version B")
    second, cursor = tick(instance, object_store, results_db, cursor)
    _stored_run(instance, second.run_requests[0])
    reverted = object_store.put_bytes(key, b"version A")
    assert reverted.etag == a.etag

    lost, _ = tick(instance, object_store, results_db, cursor, stored=False)  # the daemon died before storing it
    [request] = lost.run_requests
    assert request.tags[ARCHIVE_ETAG_TAG] == a.etag
    assert request.run_key == f"{key}@{a.etag}#3" != first.run_requests[0].run_key  # Dagster does not drop it
    again, cursor = tick(instance, object_store, results_db, cursor)  # not confirmed by A's first run
    assert [r.run_key for r in again.run_requests] == [request.run_key]
    _stored_run(instance, again.run_requests[0])
    confirmed, _ = tick(instance, object_store, results_db, cursor)
    assert isinstance(confirmed, dg.SkipReason)
    [registry] = rows(
        results_db, "SELECT request_seq, requested_run_seen_at FROM archives WHERE archive_source = %s", (key,)
    )
    assert registry["request_seq"] == 3 and registry["requested_run_seen_at"] is not None
