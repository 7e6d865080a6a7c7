"""`audio-pipeline requeue`: run the failed files of an archive through Dagster again.

A partition's run is idempotent (rows are upserted on (archive_source, original_filename),
Opus objects rewritten at the same keys), so a new archive_job run of the partition retries
exactly the failed files and leaves finished ones as they are; no per-file job is needed.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import dagster as dg

from archive_identity import ARCHIVES_PARTITIONS, ArchiveVersion
from audio_assets.archive_job import archive_run_request
from operations.run_submission import (
    LaunchFailed,
    archive_job_submitter,
    daemon_is_running,
    is_queued_by_daemon,
    runs_in_flight,
    wait_for_runs,
)

REQUEUED_TAG = "audio/requeued"
REQUEUED_FILES_TAG = "audio/requeued_failed_files"


@dataclass(frozen=True)
class FailedArchive:
    archive_key: str
    partition_key: str
    failed_files: int
    archive_error: str | None  # an open failure of the whole archive (e.g. unreadable tar)

    def describe(self) -> str:
        parts = [f"{self.failed_files} failed file(s)"]
        if self.archive_error:
            parts.append(f"archive failure ({self.archive_error[:80]})")
        return ", ".join(parts)


def failed_archives(results_db, archive: str | None) -> list[FailedArchive]:
    """Archives with failures; `archive` (a partition key, archive key or file name) narrows
    it to one, None means all."""
    found = results_db.archives.find(archive) if archive else None
    if archive and found is None:
        return []
    return [FailedArchive(**row) for row in results_db.failures.failed_archives(found and found["archive_key"])]


def run_requeue(
    results_db, object_store, *, archive: str | None, wait: bool, timeout_s: float, workspace_file: str | None
) -> int:
    targets = failed_archives(results_db, archive)
    if not targets:
        print(f"nothing to requeue: no failures recorded{f' for {archive!r}' if archive else ''}")
        return 0
    if not os.environ.get("DAGSTER_HOME"):
        # Checked here to say what it is for; Dagster's own error is a page of general advice.
        print("requeue needs DAGSTER_HOME: the Dagster instance the daemon and the UI use", file=sys.stderr)
        return 2
    with dg.DagsterInstance.get() as instance, archive_job_submitter(instance, workspace_file) as submit:
        submitted = []
        for target in targets:
            run = _submit(instance, object_store, target, submit)
            if run is not None:
                submitted.append((target, run))
        if not submitted:
            return 1
        if not wait and is_queued_by_daemon(instance):
            print("submitted; follow the runs in the Dagster UI or with `audio-pipeline status`")
            return 0
        # Without a queue (an instance configured with DefaultRunCoordinator) the runs were
        # launched at once: report how they end, even with --no-wait.
        return _wait_and_report(instance, results_db, submitted, timeout_s)


def _submit(instance: dg.DagsterInstance, object_store, target: FailedArchive, submit) -> dg.DagsterRun | None:
    busy = runs_in_flight(instance, target.partition_key)
    if busy:
        print(f"skipped {target.archive_key}: run {busy[0].run_id} of its partition is {busy[0].status.value}")
        return None
    info = object_store.head(target.archive_key)
    if info is None:
        print(f"skipped {target.archive_key}: no longer in s3://{object_store.bucket}")
        return None
    # The sensor adds partitions; an instance rebuilt since then may not have this one.
    if not instance.has_dynamic_partition(ARCHIVES_PARTITIONS, target.partition_key):
        instance.add_dynamic_partitions(ARCHIVES_PARTITIONS, [target.partition_key])
    # Pins the version read now, like a sensor run: if the archive changes meanwhile the run
    # stops and the sensor's run for the new version takes over.
    request = archive_run_request(
        ArchiveVersion.of(info, target.partition_key),
        tags={REQUEUED_TAG: "true", REQUEUED_FILES_TAG: str(target.failed_files)},
    )
    try:
        run = submit(request.tags)
    except LaunchFailed as error:
        print(f"could not requeue {target.archive_key}: {error}", file=sys.stderr)
        return None
    print(
        f"requeued {target.archive_key} (partition {target.partition_key}): {target.describe()} "
        f"-> run {run.run_id} {run.status.value}"
    )
    return run


def _wait_and_report(
    instance, results_db, submitted: list[tuple[FailedArchive, dg.DagsterRun]], timeout_s: float
) -> int:
    if is_queued_by_daemon(instance) and not daemon_is_running(instance):
        print("note: no dagster-daemon heartbeat; queued runs start once `dagster-daemon run` is up")
    print(f"waiting for {len(submitted)} run(s), at most {timeout_s:g} s ...")
    final = wait_for_runs(
        instance,
        [run.run_id for _, run in submitted],
        timeout_s,
        on_change=lambda run: print(f"  run {run.run_id}: {run.status.value}"),
    )
    all_succeeded = True
    for target, run in submitted:
        status = final[run.run_id].status if run.run_id in final else run.status
        remaining = results_db.failures.failed_file_count(target.archive_key)
        print(
            f"{target.archive_key}: run {run.run_id} {status.value}; failed files {target.failed_files} -> {remaining}"
        )
        all_succeeded &= status == dg.DagsterRunStatus.SUCCESS
    return 0 if all_succeeded else 1
