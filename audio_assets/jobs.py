"""Jobs the sensor and operators launch."""

import os

import dagster as dg

# How long one archive run may take, start to end, before run monitoring (the daemon) fails it:
# a wedged step then frees its partition in the run queue. Runs of archive_job carry it as the
# `dagster/max_runtime` tag, whoever launches them (sensor, catch-up, requeue, job backfills);
# dagster.yaml's run_monitoring.max_runtime_seconds is the backstop for every other run.
DEFAULT_ARCHIVE_RUN_MAX_RUNTIME_S = 12 * 3600


def archive_run_max_runtime_s() -> int:
    return int(os.environ.get("ARCHIVE_RUN_MAX_RUNTIME_S", DEFAULT_ARCHIVE_RUN_MAX_RUNTIME_S))


archive_job = dg.define_asset_job(
    "archive_job",
    selection=dg.AssetSelection.groups("archives", "moderation"),
    description=(
        "One archive end to end: raw_archive -> opus_files + parquet_metadata -> transcripts "
        "-> classifications (with checks)"
    ),
    tags={"dagster/max_runtime": str(archive_run_max_runtime_s())},
)
