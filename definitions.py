"""The single Definitions object (workspace.yaml and `dagster -m definitions`)."""

from __future__ import annotations

import os
from typing import Any

import dagster as dg

from audio_assets.archive_job import archive_job
from audio_assets.checks import archive_checks
from audio_assets.classifications import classifications
from audio_assets.daily import daily_summary, daily_summary_job, daily_summary_schedule
from audio_assets.model_versions import with_model_versions
from audio_assets.opus_files import opus_files
from audio_assets.parquet_metadata import parquet_metadata
from audio_assets.raw_archive import raw_archive
from audio_assets.scratch_sweep import scratch_sweep_job
from audio_assets.transcripts import transcripts
from audio_assets.transfer import transfer_archive
from resources.environments import current_environment, resources_for
from sensors.archive_sensor import archive_sensor
from sensors.dead_letter_sensor import dead_letter_sensor
from sensors.remote_archive_sensor import remote_archive_sensor
from sensors.schedules import archive_catchup_schedule, scratch_sweep_schedule


def executor_for(environment: str):
    """local: one process per run (small memory, fast start; opus_files parallelises inside).
    production: steps on Celery queues when a broker is configured (GPU steps go to the `gpu`
    queue that only GPU hosts consume, the rest to `cpu`; see workers/), else one
    process per step."""
    if environment == "local":
        return dg.in_process_executor
    if os.environ.get("DAGSTER_CELERY_BROKER_URL"):
        from dagster_celery import celery_executor

        from workers.settings import executor_config

        return celery_executor.configured(executor_config())
    return dg.multiprocess_executor


def build_definitions(resources: dict[str, Any], executor=dg.in_process_executor) -> dg.Definitions:
    return dg.Definitions(
        assets=with_model_versions(
            [raw_archive, opus_files, parquet_metadata, transcripts, classifications, daily_summary], resources
        ),
        asset_checks=archive_checks,
        jobs=[archive_job, daily_summary_job, scratch_sweep_job, transfer_archive],
        sensors=[archive_sensor, dead_letter_sensor, remote_archive_sensor],
        schedules=[daily_summary_schedule, archive_catchup_schedule, scratch_sweep_schedule],
        resources=resources,
        executor=executor,
    )


defs = build_definitions(resources_for(current_environment()), executor_for(current_environment()))
