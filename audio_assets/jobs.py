"""Jobs the sensor and operators launch."""

import dagster as dg

archive_job = dg.define_asset_job(
    "archive_job",
    selection=dg.AssetSelection.groups("archives"),
    description="Convert one archive: raw_archive -> opus_files + parquet_metadata (with checks)",
)
