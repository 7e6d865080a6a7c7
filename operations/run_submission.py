"""Submit archive_job runs to the Dagster instance with `dagster job launch`, Dagster's public
command for it.

The run is created from the code location's snapshot and handed to the instance's run
coordinator: with dagster.yaml's QueuedRunCoordinator it is QUEUED and the daemon launches it
on its workers, like a sensor's run; it shows in the UI with its tags. The daemon launches a
run from the code location named in the run, so the command loads the code under the name the
daemon uses (see _workspace_file).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import dagster as dg

from archive_identity import PARTITION_TAG
from audio_assets.archive_job import archive_job

# `dagster-daemon run -m definitions` (the demo) names the code location after the
# module; a workspace.yaml may name it otherwise.
CODE_LOCATION_MODULE = "definitions"
FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]
QUEUED_RUN_DAEMON = "QUEUED_RUN_COORDINATOR"


class LaunchFailed(RuntimeError):
    """`dagster job launch` did not create the run; the message is its output."""


@contextlib.contextmanager
def archive_job_submitter(
    instance: dg.DagsterInstance, workspace_file: str | None = None
) -> Iterator[Callable[..., dg.DagsterRun]]:
    """Yields submit(tags, run_config=None) -> the submitted run."""
    with _workspace_file(instance, workspace_file) as workspace:

        def submit(tags: Mapping[str, str], run_config: Mapping | None = None) -> dg.DagsterRun:
            run_id = str(uuid.uuid4())
            command = [
                str(Path(sys.executable).parent / "dagster"),
                "job",
                "launch",
                "-w",
                workspace,
                "-j",
                archive_job.name,
                "--run-id",
                run_id,
                "--tags",
                json.dumps(dict(tags)),
            ]
            if run_config:
                command += ["--config-json", json.dumps(dict(run_config))]
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            run = instance.get_run_by_id(run_id)
            if result.returncode != 0 or run is None:
                raise LaunchFailed(f"{' '.join(command[1:])} failed: {(result.stderr or result.stdout)[-2000:]}")
            return run

        yield submit


@contextlib.contextmanager
def _workspace_file(instance: dg.DagsterInstance, given: str | None) -> Iterator[str]:
    """The given workspace file, else one that loads the code location module under the name
    the daemon knows it by: that of the latest archive_job run it launched (the sensor's)."""
    if given:
        yield given
        return
    location = CODE_LOCATION_MODULE
    for run in instance.get_runs(filters=dg.RunsFilter(job_name=archive_job.name), limit=20):
        if run.remote_job_origin is not None:  # None: executed in process, not launched
            location = run.remote_job_origin.location_name
            break
    with tempfile.TemporaryDirectory(prefix="audio-pipeline-requeue-") as folder:
        path = Path(folder) / "workspace.yaml"
        path.write_text(
            "load_from:\n  - python_module:\n"
            f"      module_name: {CODE_LOCATION_MODULE}\n      location_name: {json.dumps(location)}\n"
        )
        yield str(path)


def is_queued_by_daemon(instance: dg.DagsterInstance) -> bool:
    """Whether submitted runs wait for the daemon (QueuedRunCoordinator) rather than start at once."""
    return isinstance(instance.run_coordinator, dg.QueuedRunCoordinator)


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
