"""The hourly sweep: the safety net under per-step cleanup, for workers that were killed and
steps that outlived their runs.

Scratch is per host, so the job sweeps the host that runs it (the daemon's with the local and
multiprocess executors); under Celery every worker also sweeps its own host's scratch when it
starts and every hour after (workers/celery_app.py), GPU hosts included, which no sweep job
step ever reaches.
"""

import dagster as dg
from pydantic import Field

from audio_assets.archive_job import gated_step
from resources.archive_run import ArchiveRun
from resources.scratch import ScratchSpace

ACTIVE_RUN_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


DEFAULT_OLDER_THAN_HOURS = 6.0


class ScratchSweepConfig(dg.Config):
    older_than_hours: float = Field(
        default=DEFAULT_OLDER_THAN_HOURS, description="Only folders untouched this long are removed"
    )


def sweep_host_scratch(
    instance: dg.DagsterInstance, scratch: ScratchSpace, older_than_hours: float = DEFAULT_OLDER_THAN_HOURS
) -> tuple[list[str], int]:
    """Remove this host's scratch folders of runs that are no longer running and have not been
    touched for `older_than_hours`; returns (the runs' folders removed, bytes freed)."""
    active = {
        record.dagster_run.run_id
        for record in instance.get_run_records(filters=dg.RunsFilter(statuses=ACTIVE_RUN_STATUSES))
    }
    return scratch.sweep(older_than_s=older_than_hours * 3600, active_run_ids=active)


@dg.op(tags={"kind": "maintenance"})
@gated_step
def sweep_scratch(context: dg.OpExecutionContext, config: ScratchSweepConfig, scratch: ScratchSpace) -> int:
    """Remove scratch folders of runs that are no longer running; report the bytes freed."""
    removed, freed = sweep_host_scratch(context.instance, scratch, config.older_than_hours)
    context.log.info(f"removed {len(removed)} scratch folder(s), freed {freed / 1e6:.1f} MB")
    context.add_output_metadata(
        {"folders_removed": len(removed), "bytes_freed": freed, "runs": ", ".join(removed[:20]) or "none"}
    )
    return freed


@dg.op(tags={"kind": "maintenance"})
@gated_step
def sweep_abandoned_uploads(context: dg.OpExecutionContext, archive_run: ArchiveRun) -> int:
    """Delete the Opus objects no row points to whose uploader is over: what a step execution
    that outlived its run (or was killed) left after the archive's last run drained."""
    deleted = archive_run.sweep_abandoned_uploads()
    context.log.info(f"deleted {deleted} object(s) no row points to")
    context.add_output_metadata({"objects_deleted": deleted})
    return deleted


@dg.job(description="Remove scratch folders left by killed runs and objects left by steps that outlived their runs")
def scratch_sweep_job():
    sweep_scratch()
    sweep_abandoned_uploads()
