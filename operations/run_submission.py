"""Submit archive_job runs to the Dagster instance, the way `dagster job launch` does.

The run is created from the code location's snapshot and handed to the instance's run
coordinator: with dagster.yaml's QueuedRunCoordinator it is QUEUED and the daemon launches it
on its workers, like a sensor's run; it shows in the UI with its tags. This reuses
`dagster job launch`'s own functions (dagster._cli, dagster._core.workspace) rather than
shelling out to it once per run, so `--all` loads the code location once, under the name the
daemon knows. They are private API: dagster is pinned exactly in pyproject.toml and
tests/pipeline/test_operator_cli.py fails if an upgrade moves them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import dagster as dg
from dagster._cli.job import _create_run
from dagster._cli.workspace.cli_target import (
    get_code_location_from_workspace,
    get_remote_job_from_remote_repo,
    get_remote_repository_from_code_location,
)
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import ModuleTarget, WorkspaceFileTarget

from audio_assets.jobs import archive_job

# The daemon launches a run from the code location named in the run; `dagster-daemon run -m
# audio_assets.definitions` (the demo) names it after the module, workspace.yaml names it
# "audio_assets.definitions:defs". See _location_name_in_use.
CODE_LOCATION_MODULE = "audio_assets.definitions"
FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]
QUEUED_RUN_DAEMON = "QUEUED_RUN_COORDINATOR"
PARTITION_TAG = "dagster/partition"  # what makes a run of an asset job a partition's run


@contextlib.contextmanager
def archive_job_submitter(
    instance: dg.DagsterInstance, workspace_file: str | None = None
) -> Iterator[Callable[..., dg.DagsterRun]]:
    """Yields submit(tags, run_config=None) -> the submitted run. The code location (a gRPC
    server process) is loaded once on entry and stopped on exit."""
    target = (
        WorkspaceFileTarget(paths=[workspace_file])
        if workspace_file
        else ModuleTarget(CODE_LOCATION_MODULE, None, None, _location_name_in_use(instance))
    )
    with WorkspaceProcessContext(instance, target, version=dg.__version__) as process_context:
        workspace = process_context.create_request_context()
        location = get_code_location_from_workspace(workspace, None)
        repository = get_remote_repository_from_code_location(location, None)
        job = get_remote_job_from_remote_repo(repository, archive_job.name)

        def submit(tags: Mapping[str, str], run_config: Mapping | None = None) -> dg.DagsterRun:
            run = _create_run(
                instance=instance,
                code_location=location,
                remote_repo=repository,
                remote_job=job,
                run_config=dict(run_config or {}),
                tags=tags,
                op_selection=None,
                run_id=None,
            )
            return instance.submit_run(run.run_id, workspace)

        yield submit


def _location_name_in_use(instance: dg.DagsterInstance) -> str:
    """The name the daemon knows the code under: that of the latest archive_job run it
    launched (the sensor's), else the module's own name. Loading the module under that name
    makes a requeued run resolve in the daemon whichever way the daemon loads the code."""
    for run in instance.get_runs(filters=dg.RunsFilter(job_name=archive_job.name), limit=20):
        if run.remote_job_origin is not None:  # None: executed in process, not launched
            return run.remote_job_origin.location_name
    return CODE_LOCATION_MODULE


def is_queued_by_daemon(instance: dg.DagsterInstance) -> bool:
    """Whether submitted runs wait for the daemon (QueuedRunCoordinator) rather than start in
    the submitting process's code server."""
    return isinstance(instance.run_coordinator, QueuedRunCoordinator)


def daemon_is_running(instance: dg.DagsterInstance) -> bool:
    status = instance.get_daemon_statuses([QUEUED_RUN_DAEMON]).get(QUEUED_RUN_DAEMON)
    return bool(status and status.healthy)


def runs_in_flight(instance: dg.DagsterInstance, partition_key: str) -> list[dg.DagsterRun]:
    tags = {PARTITION_TAG: partition_key}
    return list(instance.get_runs(filters=dg.RunsFilter(job_name=archive_job.name, tags=tags, statuses=IN_FLIGHT)))


def wait_for_runs(
    instance: dg.DagsterInstance,
    run_ids: Sequence[str],
    timeout_s: float,
    on_change: Callable[[dg.DagsterRun], None],
    poll_s: float = 2.0,
) -> dict[str, dg.DagsterRun]:
    """Poll until every run has finished or `timeout_s` passed; calls on_change(run) whenever a
    run's status changes. Returns the last seen run of each id."""
    deadline = time.monotonic() + timeout_s
    seen: dict[str, dg.DagsterRun] = {}
    while True:
        for run_id in run_ids:
            run = instance.get_run_by_id(run_id)
            if run is not None and (run_id not in seen or seen[run_id].status != run.status):
                on_change(run)
            if run is not None:
                seen[run_id] = run
        if all(r.status in FINISHED for r in seen.values()) and len(seen) == len(run_ids):
            return seen
        if time.monotonic() >= deadline:
            return seen
        time.sleep(poll_s)
