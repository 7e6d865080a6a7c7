"""The hourly sweep: the safety net under per-step cleanup, for workers that were killed and
steps that outlived their runs."""

import dagster as dg
from pydantic import Field

from resources.archive_run import ArchiveRun
from resources.scratch import ScratchSpace

ACTIVE_RUN_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


class ScratchSweepConfig(dg.Config):
    older_than_hours: float = Field(default=6.0, description="Only folders untouched this long are removed")


@dg.op(tags={"kind": "maintenance"})
def sweep_scratch(context: dg.OpExecutionContext, config: ScratchSweepConfig, scratch: ScratchSpace) -> int:
    """Remove scratch folders of runs that are no longer running; report the bytes freed."""
    active = {
        record.dagster_run.run_id
        for record in context.instance.get_run_records(filters=dg.RunsFilter(statuses=ACTIVE_RUN_STATUSES))
    }
    removed, freed = scratch.sweep(older_than_s=config.older_than_hours * 3600, active_run_ids=active)
    context.log.info(f"removed {len(removed)} scratch folder(s), freed {freed / 1e6:.1f} MB")
    context.add_output_metadata(
        {"folders_removed": len(removed), "bytes_freed": freed, "runs": ", ".join(removed[:20]) or "none"}
    )
    return freed


@dg.op(tags={"kind": "maintenance"})
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
