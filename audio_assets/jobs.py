"""Jobs the sensor and operators launch."""

import dagster as dg

archive_job = dg.define_asset_job(
    "archive_job",
    selection=dg.AssetSelection.groups("archives", "moderation"),
    description=(
        "One archive end to end: raw_archive -> opus_files + parquet_metadata -> transcripts "
        "-> classifications (with checks)"
    ),
)
