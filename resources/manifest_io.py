"""IO manager for the small per-partition tables passed between steps (manifests, results).

They are stored as Parquet on the object store, not on local disk, so a step running on any
worker host (Celery, Kubernetes) can read what another host wrote, and a person can inspect
them with pandas or duckdb: s3://{bucket}/{prefix}/{asset}/{partition}.parquet
"""


import io

import dagster as dg
import pandas as pd

from resources.object_store import ObjectStore


class ObjectStoreParquetIOManager(dg.ConfigurableIOManager):
    object_store: dg.ResourceDependency[ObjectStore]
    prefix: str = "dagster/manifests"

    def _key(self, context: dg.OutputContext | dg.InputContext) -> str:
        asset_path = "/".join(context.asset_key.path)
        partition = context.asset_partition_key if context.has_asset_partitions else "__all__"
        return f"{self.prefix}/{asset_path}/{partition}.parquet"

    def handle_output(self, context: dg.OutputContext, obj: pd.DataFrame) -> None:
        if obj is None:  # assets that only report a MaterializeResult store nothing
            return
        buffer = io.BytesIO()
        obj.to_parquet(buffer, index=False)
        key = self._key(context)
        self.object_store.put_bytes(key, buffer.getvalue(), content_type="application/vnd.apache.parquet")
        context.add_output_metadata({"manifest_uri": f"s3://{self.object_store.bucket}/{key}"})

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        return pd.read_parquet(io.BytesIO(self.object_store.get_bytes(self._key(context))))
