"""dead_letter_sensor: every failed archive run lands in processing_failures.

File-level failures are recorded by the assets themselves; this catches what they cannot:
a crashed step, an unreadable archive, a lost worker. One open row per archive and step.
"""

import dagster as dg

from audio_assets.jobs import archive_job
from audio_assets.partitions import ARCHIVE_KEY_TAG
from resources.results_db import ResultsDatabase


@dg.run_failure_sensor(
    monitored_jobs=[archive_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Writes each failed archive run (partition, step, error, run id) into processing_failures",
)
def dead_letter_sensor(context: dg.RunFailureSensorContext, results_db: ResultsDatabase) -> None:
    run = context.dagster_run
    partition_key = run.tags.get("dagster/partition")
    archive_key = run.tags.get(ARCHIVE_KEY_TAG) or _archive_of(results_db, partition_key)
    step_failures = context.get_step_failure_events()
    failures = [
        (f"run:{event.step_key}", event.event_specific_data.error.message.strip())
        for event in step_failures
        if event.event_specific_data and event.event_specific_data.error
    ] or [("run", context.failure_event.message or "run failed")]
    for stage, error in failures:
        results_db.record_archive_failure(
            archive_source=archive_key, partition_key=partition_key, stage=stage, error=error, run_id=run.run_id
        )


def _archive_of(results_db: ResultsDatabase, partition_key: str | None) -> str:
    """A UI backfill has no archive tag: the rows know the partition's archive."""
    rows = results_db.query(
        "SELECT DISTINCT archive_source FROM audio_files WHERE partition_key = %s LIMIT 1", (partition_key,)
    )
    return rows[0]["archive_source"] if rows else f"archives/{partition_key}"
