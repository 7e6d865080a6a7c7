"""archive_sensor: a new or overwritten archives/*.tar[.gz] becomes a partition and a run."""


import os
from datetime import timedelta

import dagster as dg

from audio_assets.archive_identity import (
    ARCHIVE_ETAG_TAG,
    ARCHIVE_KEY_TAG,
    ARCHIVE_PREFIX,
    archives_partitions,
    is_archive_key,
)
from audio_assets.jobs import archive_job
from resources.object_store import ObjectStore
from resources.results_db import ResultsDatabase
from sensors.archive_cursor import ArchiveCursor

LOOKBACK = timedelta(hours=int(os.environ.get("ARCHIVE_SENSOR_LOOKBACK_HOURS", "6")))


@dg.sensor(
    job=archive_job,
    minimum_interval_seconds=int(os.environ.get("ARCHIVE_SENSOR_INTERVAL_S", "30")),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Lists s3://{bucket}/archives/ and requests a run for every new or changed archive",
)
def archive_sensor(
    context: dg.SensorEvaluationContext, object_store: ObjectStore, results_db: ResultsDatabase
) -> dg.SensorResult | dg.SkipReason:
    cursor = ArchiveCursor.parse(context.cursor)
    candidates, new = [], []
    for obj in object_store.iter_objects(ARCHIVE_PREFIX):
        if not is_archive_key(obj.key) or not cursor.is_candidate(obj.last_modified, LOOKBACK):
            continue
        candidates.append((obj.key, obj.etag, obj.last_modified))
        if not cursor.has_seen(obj.key, obj.etag):
            new.append(obj)
    next_cursor = cursor.advance(candidates, LOOKBACK).serialize()
    if not new:
        context.update_cursor(next_cursor)
        return dg.SkipReason(f"no new or changed archives under {ARCHIVE_PREFIX}")

    # Each object keeps the partition it got when first seen; b.tar and b.tar.gz get two.
    partition_of = results_db.archives.partitions_for(obj.key for obj in new)
    missing = sorted(
        key for key in {partition_of[obj.key] for obj in new}
        if not context.instance.has_dynamic_partition(archives_partitions.name, key)
    )
    run_requests = [
        dg.RunRequest(
            # The ETag makes an overwritten archive a new run; Dagster drops a repeated run_key.
            run_key=f"{obj.key}@{obj.etag}",
            partition_key=partition_of[obj.key],
            tags={ARCHIVE_KEY_TAG: obj.key, ARCHIVE_ETAG_TAG: obj.etag},
        )
        for obj in sorted(new, key=lambda o: (o.last_modified, o.key))
    ]
    context.log.info(f"{len(run_requests)} archive(s) to process, {len(missing)} new partition(s)")
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[archives_partitions.build_add_request(missing)] if missing else [],
        cursor=next_cursor,
    )
