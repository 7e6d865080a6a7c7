"""Schedules that keep the platform running without a person: catch-up and scratch sweep."""

import os
from typing import NamedTuple

import dagster as dg

from archive_identity import ARCHIVE_PREFIX, ARCHIVES_PARTITIONS, PARTITION_TAG, ArchiveVersion, is_archive_key
from audio_assets.archive_job import archive_job, archive_run_request
from audio_assets.scratch_sweep import ACTIVE_RUN_STATUSES, scratch_sweep_job
from resources.object_store import ObjectInfo, ObjectStore
from resources.results_db import ResultsDatabase

CATCHUP_MAX_RUNS = int(os.environ.get("ARCHIVE_CATCHUP_MAX_RUNS", "1000"))
# Catch-up requests of one version before catch-up gives up on it (the sensor's own request of
# a version is not counted): a refused archive, one without MP3s or one a service keeps failing
# is then downloaded at most this many more times, not every night for ever.
CATCHUP_MAX_ATTEMPTS = int(os.environ.get("ARCHIVE_CATCHUP_MAX_ATTEMPTS", "3"))


class CatchUp(NamedTuple):
    due: list[ObjectInfo]  # newest first, at most CATCHUP_MAX_RUNS
    spent: list[ObjectInfo]  # requested CATCHUP_MAX_ATTEMPTS times by catch-up, never processed


def catch_up(instance: dg.DagsterInstance, object_store: ObjectStore, results_db: ResultsDatabase) -> CatchUp:
    """The listed objects of the archives whose object, as listed now, is not the version their
    last successful run processed (`archives.processed_etag`): never run, failed, or overwritten
    while the sensor could not see it. Archives with a run in progress are left to it; versions
    catch-up already asked for CATCHUP_MAX_ATTEMPTS times are spent. Newest first, so versions
    that fail for good never hold back an overwrite the sensor missed; at most
    ARCHIVE_CATCHUP_MAX_RUNS. One listing, one registry query and one run query however many
    archives the bucket holds."""
    listed = {(o.key, o.etag): o for o in object_store.list_folder(ARCHIVE_PREFIX).objects if is_archive_key(o.key)}
    behind = results_db.archives.not_yet_processed(list(listed))
    in_flight = {
        record.dagster_run.tags.get(PARTITION_TAG)
        for record in instance.get_run_records(
            filters=dg.RunsFilter(job_name=archive_job.name, statuses=ACTIVE_RUN_STATUSES)
        )
    }
    idle = [
        (listed[v], row)
        for v, row in behind.items()
        if row["partition_key"] is None or row["partition_key"] not in in_flight
    ]
    newest_first = sorted(idle, key=lambda pair: (pair[0].last_modified, pair[0].key), reverse=True)
    due = [o for o, row in newest_first if row["catchup_attempts"] < CATCHUP_MAX_ATTEMPTS]
    spent = [o for o, row in newest_first if row["catchup_attempts"] >= CATCHUP_MAX_ATTEMPTS]
    return CatchUp(due[:CATCHUP_MAX_RUNS], spent)


def versions_to_catch_up(
    instance: dg.DagsterInstance, object_store: ObjectStore, results_db: ResultsDatabase
) -> list[ObjectInfo]:
    """The versions the catch-up schedule would request now."""
    return catch_up(instance, object_store, results_db).due


@dg.schedule(
    job=archive_job,
    cron_schedule="15 1 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily: request a run for every archive whose current version no run has processed",
)
def archive_catchup_schedule(
    context: dg.ScheduleEvaluationContext, object_store: ObjectStore, results_db: ResultsDatabase
):
    behind, spent = catch_up(context.instance, object_store, results_db)
    given_up = results_db.archives.give_up_catch_up([(o.key, o.etag) for o in spent])
    if given_up:
        context.log.warning(
            f"catch-up gave up on {len(given_up)} archive version(s) after {CATCHUP_MAX_ATTEMPTS} runs each "
            "(shown by `audio-pipeline status`): " + ", ".join(f"{g['archive_key']}@{g['etag']}" for g in given_up[:5])
        )
    if not behind:
        return dg.SkipReason("every archive's current version is processed, in progress or given up")
    # Registers new keys and marks the versions requested, as the sensor does, counting them.
    requests = results_db.archives.record_requests([(o.key, o.etag) for o in behind], catch_up=True)
    versions = [ArchiveVersion.of(o, requests[o.key].partition_key) for o in behind]
    known = set(context.instance.get_dynamic_partitions(ARCHIVES_PARTITIONS))
    missing = sorted({v.partition_key for v in versions} - known)
    if missing:  # registered by a sensor tick the daemon never stored, or never seen by it
        context.instance.add_dynamic_partitions(ARCHIVES_PARTITIONS, missing)
    day = context.scheduled_execution_time.date().isoformat()
    context.log.info(f"catching up {len(versions)} archive version(s) (at most {CATCHUP_MAX_RUNS} a day)")
    return [
        archive_run_request(v, requests[v.key].number, f"catchup:{day}:{v}", {"audio/catchup": day}) for v in versions
    ]


scratch_sweep_schedule = dg.ScheduleDefinition(
    name="scratch_sweep_schedule",
    job=scratch_sweep_job,
    cron_schedule="0 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Hourly: remove scratch folders of runs that are no longer running",
)
