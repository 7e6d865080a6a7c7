"""IO manager for the small per-archive tables steps pass on (the manifest, conversion and
transcription results), each with the archive version it is about.

They are Parquet objects on the object store, so a step on any worker host can read what
another host wrote, and a person can open them with pandas or duckdb:

    s3://{bucket}/dagster/manifests/{asset}/{partition}/{run_id}.parquet

One object per run, never per partition: two runs of the same archive cannot read each
other's tables. A run retried from failure reads what its parent run wrote (Dagster passes
the parent's run id for steps it does not re-execute). The ArchiveVersion rides in the
Parquet schema metadata under `audio.archive`, so the identity is written once per table,
not copied onto every row.
"""

import io
from dataclasses import dataclass

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from archive_identity import ArchiveVersion
from resources.object_store import ObjectStore

ARCHIVE_METADATA_KEY = b"audio.archive"


@dataclass(frozen=True)
class ArchiveTable:
    """A small table about one archive version, handed from one step to the next."""

    archive: ArchiveVersion
    rows: pd.DataFrame


def archive_table_to_parquet(table: ArchiveTable) -> bytes:
    arrow = pa.Table.from_pandas(table.rows, preserve_index=False)
    metadata = dict(arrow.schema.metadata or {}) | {ARCHIVE_METADATA_KEY: table.archive.to_json().encode()}
    buffer = io.BytesIO()
    pq.write_table(arrow.replace_schema_metadata(metadata), buffer)
    return buffer.getvalue()


def archive_table_from_parquet(data: bytes) -> ArchiveTable:
    arrow = pq.read_table(io.BytesIO(data))
    archive = ArchiveVersion.from_json(arrow.schema.metadata[ARCHIVE_METADATA_KEY])
    return ArchiveTable(archive=archive, rows=arrow.to_pandas())


class ArchiveTableIOManager(dg.ConfigurableIOManager):
    object_store: dg.ResourceDependency[ObjectStore]
    prefix: str = "dagster/manifests"

    def handle_output(self, context: dg.OutputContext, obj: ArchiveTable | None) -> None:
        if obj is None:  # assets that only report a MaterializeResult store nothing
            return
        key = self._key(context.asset_key, context.asset_partition_key, context.run_id)
        self.object_store.put_bytes(key, archive_table_to_parquet(obj), content_type="application/vnd.apache.parquet")
        context.add_output_metadata(
            {
                "manifest_uri": f"s3://{self.object_store.bucket}/{key}",
                "archive": str(obj.archive),
                "rows": len(obj.rows),
            }
        )

    def load_input(self, context: dg.InputContext) -> ArchiveTable:
        run_id = _upstream_run_id(context)
        if run_id is not None and context.instance.get_run_by_id(run_id) is None:
            run_id = None  # Dagster's placeholder for an upstream step outside this run's plan
        if run_id is not None:
            key = self._key(context.asset_key, context.asset_partition_key, run_id)
        else:
            key = self._latest_key(context)
        return archive_table_from_parquet(self.object_store.get_bytes(key))

    def _key(self, asset_key: dg.AssetKey, partition_key: str, run_id: str) -> str:
        return f"{self.prefix}/{'/'.join(asset_key.path)}/{partition_key}/{run_id}.parquet"

    def _latest_key(self, context: dg.InputContext) -> str:
        """The upstream asset is not part of this run (e.g. only `transcripts` was selected):
        read the table of its latest materialization of this partition."""
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=context.asset_key, asset_partitions=[context.asset_partition_key]),
            limit=1,
        ).records
        if not records:
            raise dg.Failure(
                f"{context.asset_key.to_user_string()} has never been materialized for partition "
                f"{context.asset_partition_key}; materialize it first",
                allow_retries=False,
            )
        run_id = records[0].event_log_entry.run_id
        return self._key(context.asset_key, context.asset_partition_key, run_id)


def _upstream_run_id(context: dg.InputContext) -> str | None:
    """The run that produced the input within this run's plan (or its parent run's, on a
    retry from failure); None when the upstream asset is not part of the plan."""
    upstream = context.upstream_output
    if upstream is None:
        return None
    try:
        return upstream.run_id
    except dg.DagsterInvariantViolationError:
        return None
