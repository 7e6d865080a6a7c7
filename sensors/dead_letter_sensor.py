"""dead_letter_sensor: every failed archive run lands in processing_failures, with its cause.

File-level failures are recorded by the assets themselves; this catches what they cannot: a
step that ran out of retries, an unreadable archive, a run whose worker died.

Why a plain sensor and not `run_failure_sensor`: the latter moves its cursor past a failed
run even when the sensor body raised, so a run that failed while PostgreSQL was down would
never be recorded. Here the cursor is returned only after the rows are committed; a tick
that cannot reach the database fails, keeps the old cursor, and the next tick tries the same
runs again. Writing a run twice changes nothing (one open row per archive and stage).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import dagster as dg

from archive_identity import PARTITION_TAG, tagged_version
from audio_assets.archive_job import archive_job
from resources.archive_run import LAST_STEP
from resources.results_db import STAGE_OF_STEP, ResultsDatabase

RUNS_PER_TICK = 100
FIRST_LOOKBACK = timedelta(days=7)  # a new cursor looks this far back (recording twice is harmless)
# Runs updated within this window of the cursor are read again: update timestamps can tie.
_OVERLAP_S = 1.0


@dataclass
class DeadLetterCursor:
    updated_after: float  # update timestamp (epoch s) of the newest failed run recorded
    recent: dict[str, float] = field(default_factory=dict)  # run id -> update timestamp, near it

    @classmethod
    def parse(cls, raw: str | None) -> DeadLetterCursor:
        if not raw:
            return cls((datetime.now(UTC) - FIRST_LOOKBACK).timestamp())
        data = json.loads(raw)
        return cls(data["updated_after"], dict(data["recent"]))

    def serialize(self) -> str:
        return json.dumps({"updated_after": self.updated_after, "recent": self.recent}, sort_keys=True)

    def has_recorded(self, run_id: str) -> bool:
        return run_id in self.recent

    def advance(self, run_id: str, update_timestamp: float) -> None:
        self.updated_after = max(self.updated_after, update_timestamp)
        self.recent[run_id] = update_timestamp
        # Only runs near the newest timestamp can be read again; the rest are forgotten.
        self.recent = {r: t for r, t in self.recent.items() if t >= self.updated_after - _OVERLAP_S}


@dg.sensor(
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Writes each failed archive run (partition, step, underlying error, run id) into processing_failures",
)
def dead_letter_sensor(
    context: dg.SensorEvaluationContext, results_db: ResultsDatabase
) -> dg.SensorResult | dg.SkipReason:
    cursor = DeadLetterCursor.parse(context.cursor)
    records = context.instance.get_run_records(
        filters=dg.RunsFilter(
            job_name=archive_job.name,
            statuses=[dg.DagsterRunStatus.FAILURE],
            updated_after=datetime.fromtimestamp(cursor.updated_after - _OVERLAP_S, UTC),
        ),
        order_by="update_timestamp",
        ascending=True,
        limit=RUNS_PER_TICK,
    )
    written = 0
    for record in records:
        run = record.dagster_run
        if cursor.has_recorded(run.run_id):
            continue
        if not _superseded(context.instance, record):
            written += record_failed_run(context.instance, results_db, run)
        cursor.advance(run.run_id, record.update_timestamp.timestamp())  # only after the commit
    if not written:
        return dg.SensorResult(skip_reason=dg.SkipReason("no new failed archive runs"), cursor=cursor.serialize())
    context.log.info(f"recorded {written} failure(s) of failed archive runs")
    return dg.SensorResult(cursor=cursor.serialize())


def record_failed_run(instance: dg.DagsterInstance, results_db: ResultsDatabase, run: dg.DagsterRun) -> int:
    """One dead-letter row per failed step (or one for the run); returns how many."""
    partition_key = run.tags.get(PARTITION_TAG)
    archive_key = tagged_version(run.tags)[0] or _archive_of(results_db, partition_key)
    found = [
        (
            STAGE_OF_STEP.get(event.step_key or "", f"step:{event.step_key}"),
            underlying_error(event.dagster_event.step_failure_data.error),
        )
        for event in (
            r.event_log_entry
            for r in instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE).records
        )
        if event.dagster_event and event.dagster_event.step_failure_data.error
    ]
    # A step a later run of the partition already passed closed its stage's row when it
    # succeeded (a check's own row: audio_assets/checks.py): recording this failure now, after
    # that success, would reopen it for good. Quick overwrites do this: the superseded run
    # fails in seconds, and the next version's step succeeds before this sensor's next tick.
    passed_later = _steps_passed_later(instance, run)
    failures = [(stage, error) for stage, error in found if _step_of(stage) not in passed_later]
    retryable = False
    if not found and LAST_STEP not in passed_later:
        # The run failed outside any step (a lost worker, a failed launch, max runtime); its
        # row closes when the last step succeeds.
        failures = [("run", _run_failure_message(instance, run))]
        retryable = True
    for stage, error in failures:
        results_db.failures.record_archive_failure(
            archive_key, partition_key, stage=stage, error=error, run_id=run.run_id, retryable=retryable
        )
    return len(failures)


def underlying_error(error) -> str:
    """The innermost cause of a step's recorded error (message, cls_name, cause): what went
    wrong, not "Exceeded max_retries of 3" or Dagster's "Error occurred while executing op"
    wrapped around it."""
    deepest = error
    while deepest is not None and deepest.cause is not None:
        deepest = deepest.cause
    if deepest is None:
        return "unknown error"
    message = deepest.message.strip()
    return (
        message
        if message.startswith(f"{deepest.cls_name}") or not deepest.cls_name
        else f"{deepest.cls_name}: {message}"
    )


def _run_failure_message(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str:
    records = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
    messages = [r.event_log_entry.message.strip() for r in records if r.event_log_entry.message]
    # Run monitoring's "Exceeded maximum runtime of N seconds." wins over what the interrupted
    # run worker reported on its way out.
    timeouts = [m for m in messages if "maximum runtime" in m]
    if timeouts:
        return f"{timeouts[-1]} (the run's dagster/max_runtime; failed by run monitoring)"
    return messages[-1] if messages else "run failed"


def _step_of(stage: str) -> str:
    """The step whose success closes a dead-letter row of `stage` (STAGE_OF_STEP's inverse)."""
    if stage.startswith("step:"):
        return stage.removeprefix("step:")
    return LAST_STEP if stage == "run" else next(step for step, s in STAGE_OF_STEP.items() if s == stage)


def _steps_passed_later(instance: dg.DagsterInstance, run: dg.DagsterRun) -> set[str]:
    """The steps that runs of the same partition created after `run` have succeeded (so far)."""
    partition_key = run.tags.get(PARTITION_TAG)
    created = instance.get_run_record_by_id(run.run_id)
    if partition_key is None or created is None:
        return set()
    later = instance.get_run_records(
        filters=dg.RunsFilter(
            job_name=archive_job.name, tags={PARTITION_TAG: partition_key}, created_after=created.create_timestamp
        ),
        limit=20,
    )
    return {
        record.event_log_entry.step_key or ""
        for other in later
        for record in instance.get_records_for_run(
            other.dagster_run.run_id, of_type=dg.DagsterEventType.STEP_SUCCESS
        ).records
    }


def _superseded(instance: dg.DagsterInstance, record) -> bool:
    """A later run of the same partition already succeeded: this failure is history."""
    partition_key = record.dagster_run.tags.get(PARTITION_TAG)
    if partition_key is None:
        return False
    later = instance.get_run_records(
        filters=dg.RunsFilter(
            job_name=archive_job.name,
            statuses=[dg.DagsterRunStatus.SUCCESS],
            tags={PARTITION_TAG: partition_key},
            created_after=record.create_timestamp,
        ),
        limit=1,
    )
    return bool(later)


def _archive_of(results_db: ResultsDatabase, partition_key: str | None) -> str:
    """A UI backfill has no archive tag: the registry knows the partition's archive."""
    key = results_db.archives.key_of_partition(partition_key) if partition_key is not None else None
    return key or f"archives/(partition {partition_key or 'unknown'} not registered)"
