"""The archive job and how its steps are declared: one dynamic partition per archive object,
the I/O retry policy, the manifest IO manager, and the routing of GPU steps.

GPU steps reach GPU capacity whichever executor runs them: under dagster-celery they go to the
`gpu` queue, which only GPU hosts consume (`dagster-celery worker start -A workers.celery_app
-q gpu`), the rest to `cpu`; under dagster-k8s the step's pod requests one NVIDIA GPU; and on
any executor pool "gpu" caps concurrent GPU steps instance-wide (`dagster instance concurrency
set gpu N`, N = GPUs available). CPU steps carry none of these, so they never wait for a GPU.

Every step of the code location starts at `gated_step`, the one place where a step that must
not run fails before its body: Dagster records that failure as the step's STEP_FAILURE, with the
reason, and neither a RetryPolicy nor a run retry repeats it.
"""

import contextlib
import functools
import os
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import ParamSpec, TypeVar

import dagster as dg

from archive_identity import ARCHIVES_PARTITIONS, ArchiveVersion

archives_partitions = dg.DynamicPartitionsDefinition(name=ARCHIVES_PARTITIONS)

IO_RETRY = dg.RetryPolicy(max_retries=3, delay=2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)

GPU_POOL = "gpu"
GPU_OP_TAGS = {
    "dagster-celery/queue": "gpu",
    "dagster-k8s/config": {
        "container_config": {"resources": {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}}}
    },
}

# How long one archive run may take, start to end, before run monitoring (the daemon) fails it:
# a wedged step then frees its partition in the run queue. Runs of archive_job carry it as the
# `dagster/max_runtime` tag, whoever launches them (sensor, catch-up, requeue, job backfills);
# dagster.yaml's run_monitoring.max_runtime_seconds is the backstop for every other run.
DEFAULT_ARCHIVE_RUN_MAX_RUNTIME_S = 12 * 3600


def archive_run_max_runtime_s() -> int:
    return int(os.environ.get("ARCHIVE_RUN_MAX_RUNTIME_S", DEFAULT_ARCHIVE_RUN_MAX_RUNTIME_S))


def archive_asset(*, kinds: set[str], group_name: str = "archives", gpu: bool = False, manifest: bool = True):
    """@dg.asset for a step over one archive partition (gated: see `gated_step`). `manifest`:
    its output is an ArchiveTable for the next step (stored by the manifest IO manager)."""
    asset = dg.asset(
        partitions_def=archives_partitions,
        kinds=kinds,
        group_name=group_name,
        io_manager_key="manifest_io" if manifest else "io_manager",
        retry_policy=IO_RETRY,
        op_tags=GPU_OP_TAGS if gpu else None,
        pool=GPU_POOL if gpu else None,
    )
    return lambda compute: asset(gated_step(compute))


# The registry's number of the request a run answers (archives.request_seq, migration 022).
REQUEST_TAG = "audio/archive_request"


def archive_run_request(
    version: ArchiveVersion, request: int | None = None, run_key: str | None = None, tags=None
) -> dg.RunRequest:
    """The one way a run of archive_job is asked for (the sensor, catch-up, requeue): its
    partition and the tags that pin the version, which raw_archive checks with one HEAD.
    `request` is the registry's number of the request (sensor and catch-up), tagged on the run;
    the run key defaults to `key@etag#request`, so Dagster starts a request once however often
    it is offered, and a version requested anew (A -> B -> A: an operator puts the old file
    back) is a new run rather than a repeated `key@etag` that Dagster would drop."""
    pinned = version.run_tags() | ({REQUEST_TAG: str(request)} if request is not None else {})
    return dg.RunRequest(
        run_key=run_key or (f"{version}#{request}" if request is not None else str(version)),
        partition_key=version.partition_key,
        tags=pinned | dict(tags or {}),
    )


def request_number(tags) -> int:
    """The request a run answers; 0 for runs without the tag (requested before migration 022,
    whose requests are numbered 0 too, or launched by requeue or by hand)."""
    return int(tags.get(REQUEST_TAG, 0))


archive_job = dg.define_asset_job(
    "archive_job",
    selection=dg.AssetSelection.groups("archives", "moderation"),
    description=(
        "One archive end to end: raw_archive -> opus_files + parquet_metadata -> transcripts "
        "-> classifications (with checks)"
    ),
    tags={"dagster/max_runtime": str(archive_run_max_runtime_s())},
)


P = ParamSpec("P")
R = TypeVar("R")

# The reason the step executing in this process must fail at its start; set by the worker
# (workers/deliveries.py) around dagster-celery's own task body for a delivery it refuses.
_refusal: ContextVar[str | None] = ContextVar("step_refusal", default=None)


@contextlib.contextmanager
def refusing(reason: str) -> Iterator[None]:
    """Steps executed inside fail at their start with `reason`."""
    token = _refusal.set(reason)
    try:
        yield
    finally:
        _refusal.reset(token)


def gated_step(compute: Callable[P, R]) -> Callable[P, R]:
    """Wrap a step's body (asset, asset check or op) so that it fails at its start, never retried,
    when it must not run: a delivery the worker refuses (`refusing`: its worker was lost too
    often, or it ran past its hard time limit), or an automatic run retry that would run past
    the max runtime of the run it retries (`dagster/max_runtime` bounds a run together with its
    run retries: a run that run monitoring failed for running too long is not run again)."""

    @functools.wraps(compute)
    def step(*args: P.args, **kwargs: P.kwargs) -> R:
        reason = _refusal.get() or _past_max_runtime(dg.OpExecutionContext.get())
        if reason:
            raise dg.Failure(reason, allow_retries=False)
        return compute(*args, **kwargs)

    return step


def _past_max_runtime(context: dg.OpExecutionContext) -> str | None:
    """Why an automatic retry (Dagster's `dagster/retry_number` tag) must not start this step:
    its first run began longer ago than the run's `dagster/max_runtime`. None otherwise."""
    run = context.run
    max_runtime = run.tags.get("dagster/max_runtime")
    if "dagster/retry_number" not in run.tags or not max_runtime:
        return None
    first_run_id = run.root_run_id or run.run_id
    first = context.instance.get_run_record_by_id(first_run_id)
    elapsed_s = time.time() - first.start_time if first and first.start_time else 0.0
    if elapsed_s <= float(max_runtime):
        return None
    return (
        f"run {first_run_id} of this partition started {elapsed_s:.0f} s ago, past its max runtime of "
        f"{float(max_runtime):g} s (dagster/max_runtime), which also bounds its automatic retries: not run"
    )
