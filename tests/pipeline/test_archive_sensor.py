"""archive_sensor against a real S3 server and a persistent Dagster instance."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import dagster as dg

from audio_assets.archive_identity import ARCHIVE_ETAG_TAG, ARCHIVE_KEY_TAG, archives_partitions
from sensors.archive_cursor import ArchiveCursor
from sensors.archive_sensor import archive_sensor


def tick(instance, object_store, results_db, cursor=None):
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"object_store": object_store, "results_db": results_db}
    )
    result = archive_sensor(context)
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
    assert request.run_key == f"archives/batch_a.tar.gz@{info.etag}"
    assert request.tags[ARCHIVE_KEY_TAG] == "archives/batch_a.tar.gz"
    assert request.tags[ARCHIVE_ETAG_TAG] == info.etag
    assert instance.get_dynamic_partitions(archives_partitions.name) == ["batch_a"]


def test_same_archive_next_tick_requests_nothing(instance, object_store, results_db):
    object_store.put_bytes("archives/batch_a.tar", b"one")
    _, cursor = tick(instance, object_store, results_db)

    result, cursor_after = tick(instance, object_store, results_db, cursor)

    assert isinstance(result, dg.SkipReason)
    assert ArchiveCursor.parse(cursor_after).recent == ArchiveCursor.parse(cursor).recent


def test_overwritten_archive_requests_a_new_run(instance, object_store, results_db):
    first = object_store.put_bytes("archives/batch_a.tar", b"version one")
    _, cursor = tick(instance, object_store, results_db)
    second = object_store.put_bytes("archives/batch_a.tar", b"version two")
    assert first.etag != second.etag

    result, _ = tick(instance, object_store, results_db, cursor)

    assert isinstance(result, dg.SensorResult)
    [request] = result.run_requests
    assert request.run_key == f"archives/batch_a.tar@{second.etag}"
    assert result.dynamic_partitions_requests == []  # the partition exists already


def test_a_thousand_new_archives_in_one_tick_keep_the_cursor_small(instance, object_store, results_db):
    keys = [f"archives/batch_{i:04d}.tar.gz" for i in range(1000)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda key: object_store.put_bytes(key, key.encode()), keys))

    result, cursor = tick(instance, object_store, results_db)

    assert len(result.run_requests) == 1000
    assert len({r.run_key for r in result.run_requests}) == 1000
    assert len(instance.get_dynamic_partitions(archives_partitions.name)) == 1000
    # Short fingerprints, not keys: ~40 bytes per archive seen within the look-back window.
    assert len(cursor) < 60_000
    again, _ = tick(instance, object_store, results_db, cursor)
    assert isinstance(again, dg.SkipReason)


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


def test_cursor_forgets_objects_older_than_the_lookback():
    now = datetime(2026, 11, 25, 12, tzinfo=timezone.utc)
    lookback = timedelta(hours=1)
    cursor = ArchiveCursor().advance([("archives/old.tar", "e1", now - timedelta(hours=3))], lookback)
    cursor = cursor.advance([("archives/new.tar", "e2", now)], lookback)
    assert cursor.watermark == now
    assert not cursor.has_seen("archives/old.tar", "e1")
    assert cursor.has_seen("archives/new.tar", "e2")
    assert not cursor.is_candidate(now - timedelta(hours=2), lookback)
    # Same second as the watermark (S3 has 1-second resolution): still a candidate.
    assert cursor.is_candidate(now, lookback)
    assert ArchiveCursor.parse(cursor.serialize()) == cursor
