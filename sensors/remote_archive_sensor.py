"""remote_archive_sensor: each new archive on the remote SFTP host becomes a transfer_archive run.

A file is new when its version (name, size, mtime) has not been requested before: a file
replaced under the same name transfers again. Files leave the listing once transferred
(moved to done_dir) or are filtered out by remote_transfers (no done_dir), so the cursor
only holds short fingerprints of versions requested and not yet transferred: its size
follows the backlog, not the history. Dagster also drops a repeated run_key, so a lost
cursor cannot start a second transfer of the same version.

The sensor is RUNNING by default only when REMOTE_HOST is set when the code loads; started
by hand without it, a tick skips and says why instead of failing.
"""

import hashlib
import json
import os
import time

import dagster as dg

from audio_assets.transfer import (
    REMOTE_FILE_TAG,
    recorded_versions,
    transfer_archive,
    transfer_run_config,
)
from resources.remote_host import RemoteArchiveHost, RemoteFile
from resources.results_db import ResultsDatabase

MAX_RUNS_PER_TICK = 200  # the rest wait for the next tick; keeps a tick well inside its timeout


def version_fingerprint(remote: RemoteFile) -> str:
    return hashlib.sha1(remote.version.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def parse_cursor(raw: str | None) -> set[str]:
    return set(json.loads(raw)) if raw else set()


def serialize_cursor(fingerprints: set[str]) -> str:
    return json.dumps(sorted(fingerprints))


@dg.sensor(
    job=transfer_archive,
    minimum_interval_seconds=int(os.environ.get("REMOTE_SENSOR_INTERVAL_S", "60")),
    default_status=(
        dg.DefaultSensorStatus.RUNNING if os.environ.get("REMOTE_HOST") else dg.DefaultSensorStatus.STOPPED
    ),
    description="Lists the remote SFTP directory and requests a transfer_archive run for every new archive",
)
def remote_archive_sensor(
    context: dg.SensorEvaluationContext, remote_host: RemoteArchiveHost, results_db: ResultsDatabase
) -> dg.SensorResult | dg.SkipReason:
    if not remote_host.is_configured:
        return dg.SkipReason("REMOTE_HOST is not set: no remote host to transfer archives from")
    listed = remote_host.list_archives()
    settled_before = time.time() - remote_host.min_age_s
    ready = [f for f in listed if f.mtime <= settled_before]
    if not remote_host.done_dir:
        done = recorded_versions(results_db, remote_host, ready)
        ready = [f for f in ready if f.version not in done]

    requested = parse_cursor(context.cursor)
    pending = {version_fingerprint(f): f for f in ready}
    new = [f for fp, f in pending.items() if fp not in requested][:MAX_RUNS_PER_TICK]
    # Forget versions that were transferred, replaced or removed since they were requested.
    next_cursor = serialize_cursor({fp for fp in requested if fp in pending} | {version_fingerprint(f) for f in new})
    waiting = len(listed) - len(ready)
    if not new:
        context.update_cursor(next_cursor)
        settling = f"; {waiting} still settling or transferred" if waiting else ""
        return dg.SkipReason(f"no new archives in {remote_host.address}:{remote_host.remote_dir}{settling}")

    context.log.info(f"{len(new)} new archive(s) on {remote_host.address}")
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                # size and mtime make a replaced file a new run; Dagster drops a repeated run_key.
                run_key=remote.version,
                run_config=transfer_run_config(remote),
                tags={REMOTE_FILE_TAG: remote.name},
            )
            for remote in new
        ],
        cursor=next_cursor,
    )
