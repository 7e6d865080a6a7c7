"""archive_sensor: a new or overwritten archives/*.tar[.gz] becomes a partition and a run.

Each tick requests at most ARCHIVE_SENSOR_MAX_RUNS_PER_TICK runs, oldest archives first, and
leaves the rest for the next ticks: a bucket that already holds 100,000 archives is taken up
over many short ticks (each far below the daemon's 60 s sensor timeout, after which a tick's
cursor is not saved) instead of one tick that never finishes.
"""

import os
from datetime import timedelta

import dagster as dg

from archive_identity import ARCHIVE_PREFIX, ArchiveVersion, is_archive_key
from audio_assets.jobs import archive_job
from audio_assets.partitions import archives_partitions
from resources.object_store import ObjectStore
from resources.results_db import ResultsDatabase
from sensors.archive_cursor import ArchiveCursor

LOOKBACK = timedelta(hours=int(os.environ.get("ARCHIVE_SENSOR_LOOKBACK_HOURS", "6")))
MAX_RUNS_PER_TICK = int(os.environ.get("ARCHIVE_SENSOR_MAX_RUNS_PER_TICK", "500"))


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
    candidates = [
        obj
        for obj in object_store.iter_objects(ARCHIVE_PREFIX)
        if is_archive_key(obj.key) and cursor.is_candidate(obj.last_modified, LOOKBACK)
    ]
    unrequested = results_db.archives.not_yet_requested([(obj.key, obj.etag) for obj in candidates])
    new = sorted(
        (obj for obj in candidates if (obj.key, obj.etag) in unrequested), key=lambda o: (o.last_modified, o.key)
    )
    now, later = new[:MAX_RUNS_PER_TICK], new[MAX_RUNS_PER_TICK:]
    next_cursor = cursor.advance([obj.last_modified for obj in candidates], [obj.last_modified for obj in later])
    if not now:
        context.update_cursor(next_cursor.serialize())
        return dg.SkipReason(f"no new or changed archives under {ARCHIVE_PREFIX} ({len(candidates)} checked)")

    # Each object keeps the partition it got when first seen; b.tar and b.tar.gz get two.
    partition_of = results_db.archives.record_requests([(obj.key, obj.etag) for obj in now])
    known = set(context.instance.get_dynamic_partitions(archives_partitions.name))
    missing = sorted({partition_of[obj.key] for obj in now} - known)
    # The run's archive version, made here once: its tags pin the run to it.
    versions = [ArchiveVersion(o.key, o.etag, o.size, o.last_modified, partition_of[o.key]) for o in now]
    run_requests = [
        # The ETag makes an overwritten archive a new run; Dagster drops a repeated run_key.
        dg.RunRequest(run_key=str(archive), partition_key=archive.partition_key, tags=archive.run_tags())
        for archive in versions
    ]
    context.log.info(
        f"{len(run_requests)} archive(s) to process, {len(missing)} new partition(s), "
        f"{len(later)} left for the next ticks"
    )
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[archives_partitions.build_add_request(missing)] if missing else [],
        cursor=next_cursor.serialize(),
    )
