"""The single Definitions object (workspace.yaml and `dagster -m audio_assets.definitions`)."""

from __future__ import annotations

from typing import Any

import dagster as dg

from audio_assets.archive import raw_archive
from audio_assets.checks import archive_checks
from audio_assets.classifications import classifications
from audio_assets.jobs import archive_job
from audio_assets.metadata import parquet_metadata
from audio_assets.opus import opus_files
from audio_assets.transcripts import transcripts
from resources.environments import current_environment, resources_for
from sensors.archive_sensor import archive_sensor

EXECUTORS = {
    # One process per run: small memory, fast start. opus_files parallelises internally.
    "local": dg.in_process_executor,
    "production": dg.multiprocess_executor,
}


def build_definitions(resources: dict[str, Any], executor=dg.in_process_executor) -> dg.Definitions:
    return dg.Definitions(
        assets=[raw_archive, opus_files, parquet_metadata, transcripts, classifications],
        asset_checks=archive_checks,
        jobs=[archive_job],
        sensors=[archive_sensor],
        resources=resources,
        executor=executor,
    )


defs = build_definitions(resources_for(current_environment()), EXECUTORS[current_environment()])
