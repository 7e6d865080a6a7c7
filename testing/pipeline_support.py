"""Wiring shared by the pipeline tests and the benchmarks: resources and an archive runner."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from archive_identity import ARCHIVE_ETAG_TAG, ARCHIVE_KEY_TAG, ArchiveVersion
from audio_assets.archive_job import archives_partitions
from resources.archive_run import ArchiveRun, ClaimedArchive, claim
from resources.classifier import PolicyClassifier
from resources.manifest_io import ArchiveTableIOManager
from resources.object_store import ObjectStore
from resources.remote_host import RemoteArchiveHost
from resources.results_db import ResultsDatabase
from resources.scratch import ScratchSpace
from resources.transcriber import WhisperTranscriber

# The CPU half, for tests that are about archives rather than models.
INGEST_ASSETS = [dg.AssetKey("raw_archive"), dg.AssetKey("opus_files"), dg.AssetKey("parquet_metadata")]
FULL_JOB = None  # every asset of archive_job


def pipeline_resources(
    object_store: ObjectStore,
    results_db: ResultsDatabase,
    scratch_root: Path,
    transcriber: WhisperTranscriber,
    classifier: PolicyClassifier,
) -> dict:
    scratch = ScratchSpace(root=str(scratch_root))
    return {
        "object_store": object_store,
        "results_db": results_db,
        "scratch": scratch,
        "manifest_io": ArchiveTableIOManager(object_store=object_store),
        "archive_run": ArchiveRun(
            object_store=object_store, results_db=results_db, scratch=scratch, poll_interval_s=0.2
        ),
        "transcriber": transcriber,
        "classifier": classifier,
        "remote_host": RemoteArchiveHost(),  # unconfigured: no SFTP host in these tests
    }


def hold(results_db: ResultsDatabase, archive: ArchiveVersion, run_id: str = "seed") -> ClaimedArchive:
    """A run's hold on `archive` outside Dagster, as ArchiveRun.step hands a step: the archive
    registered and claimed by `run_id`, for seeding rows through the steps' own writes."""
    results_db.archives.partitions_for([archive.key])
    claimed = claim(results_db, archive, run_id, lambda holder: True, resume=False)
    assert isinstance(claimed, ArchiveVersion), claimed  # every other holder counts as ended
    return ClaimedArchive(claimed, run_id, results_db)


def rows(results_db: ResultsDatabase, sql: str, params=None) -> list[dict]:
    """Rows of an ad-hoc query, for assertions (the pipeline itself runs only named queries)."""

    def read(cur) -> list[dict]:
        cur.execute(sql, params)
        return [dict(row) for row in cur.fetchall()]

    return results_db.transaction(read, what="test query")


class ArchiveRunner:
    """Upload an archive and materialize its partition the way a sensor-launched run does."""

    def __init__(
        self, defs: dg.Definitions, instance: dg.DagsterInstance, object_store: ObjectStore, results_db: ResultsDatabase
    ):
        self.defs, self.instance, self.object_store, self.results_db = defs, instance, object_store, results_db

    def upload(self, local: Path, name: str | None = None) -> str:
        key = f"archives/{name or local.name}"
        self.object_store.upload_file(local, key)
        return key

    def partition_of(self, key: str) -> str:
        """The partition the sensor would give this object (registering it, as the sensor does)."""
        partition_key = self.results_db.archives.partitions_for([key])[key]
        name = archives_partitions.name
        assert name is not None
        if not self.instance.has_dynamic_partition(name, partition_key):
            self.instance.add_dynamic_partitions(name, [partition_key])
        return partition_key

    def run(self, key: str, *, tags: bool = True, assets=INGEST_ASSETS, run_config=None) -> dg.ExecuteInProcessResult:
        partition_key = self.partition_of(key)
        run_tags = {}
        if tags:
            info = self.object_store.head(key)
            assert info is not None, f"{key} is not in the bucket"
            run_tags = {ARCHIVE_KEY_TAG: key, ARCHIVE_ETAG_TAG: info.etag}
        return self.defs.resolve_job_def("archive_job").execute_in_process(
            partition_key=partition_key,
            instance=self.instance,
            tags=run_tags,
            asset_selection=assets,
            raise_on_error=False,
            run_config=run_config,
        )
