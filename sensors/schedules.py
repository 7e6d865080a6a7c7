"""Schedules that keep the platform running without a person: catch-up and scratch sweep."""

from datetime import UTC, datetime, timedelta

import dagster as dg

from archive_identity import PARTITION_TAG
from audio_assets.jobs import archive_job
from audio_assets.partitions import archives_partitions
from audio_assets.scratch_sweep import ACTIVE_RUN_STATUSES, scratch_sweep_job
from resources.results_db import ResultsDatabase

FAILED_LOOKBACK = timedelta(days=7)


def partitions_to_catch_up(instance: dg.DagsterInstance) -> list[str]:
    """Archive partitions never fully processed (classifications missing) or whose latest run
    failed, minus those with a run in progress. Complete partitions are never re-run."""
    partitions = instance.get_dynamic_partitions(archives_partitions.name)
    complete = instance.get_materialized_partitions(dg.AssetKey("classifications"))
    in_flight = _partitions_of(instance, dg.RunsFilter(job_name=archive_job.name, statuses=ACTIVE_RUN_STATUSES))
    recently_failed = _partitions_of(
        instance,
        dg.RunsFilter(
            job_name=archive_job.name,
            statuses=[dg.DagsterRunStatus.FAILURE],
            updated_after=datetime.now(UTC) - FAILED_LOOKBACK,
        ),
    )
    failed_last = {pk for pk in recently_failed if _latest_run_status(instance, pk) == dg.DagsterRunStatus.FAILURE}
    return sorted(pk for pk in partitions if (pk not in complete or pk in failed_last) and pk not in in_flight)


def _partitions_of(instance: dg.DagsterInstance, filters: dg.RunsFilter) -> set[str]:
    return {
        record.dagster_run.tags[PARTITION_TAG]
        for record in instance.get_run_records(filters=filters)
        if PARTITION_TAG in record.dagster_run.tags
    }


def _latest_run_status(instance: dg.DagsterInstance, partition_key: str):
    records = instance.get_run_records(
        filters=dg.RunsFilter(job_name=archive_job.name, tags={PARTITION_TAG: partition_key}), limit=1
    )
    return records[0].dagster_run.status if records else None


@dg.schedule(
    job=archive_job,
    cron_schedule="15 1 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily: re-request archives left unfinished or failed (e.g. after an outage)",
)
def archive_catchup_schedule(context: dg.ScheduleEvaluationContext, results_db: ResultsDatabase):
    _add_registered_partitions(context.instance, results_db)
    keys = partitions_to_catch_up(context.instance)
    if not keys:
        return dg.SkipReason("every archive partition is complete or in progress")
    day = context.scheduled_execution_time.date().isoformat()
    return [
        dg.RunRequest(run_key=f"catchup:{day}:{key}", partition_key=key, tags={"audio/catchup": day}) for key in keys
    ]


def _add_registered_partitions(instance: dg.DagsterInstance, results_db: ResultsDatabase) -> None:
    """The sensor registers an archive's partition and marks it requested before the daemon
    stores the tick; if the daemon dies in between, the partition exists only in the registry.
    Adding it here makes it one to catch up."""
    known = set(instance.get_dynamic_partitions(archives_partitions.name))
    missing = sorted(set(results_db.archives.all_partition_keys()) - known)
    if missing:
        instance.add_dynamic_partitions(archives_partitions.name, missing)


scratch_sweep_schedule = dg.ScheduleDefinition(
    name="scratch_sweep_schedule",
    job=scratch_sweep_job,
    cron_schedule="0 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Hourly: remove scratch folders of runs that are no longer running",
)
