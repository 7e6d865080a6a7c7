"""sweep_scratch: the safety net under per-step cleanup, for workers that were killed."""

import dagster as dg
from pydantic import Field

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


@dg.job(description="Remove scratch folders left by killed runs")
def scratch_sweep_job():
    sweep_scratch()
