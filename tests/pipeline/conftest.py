"""Fixtures that wire the real services (tests/conftest.py) into Dagster definitions."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from audio_assets.definitions import build_definitions
from audio_assets.partitions import ARCHIVE_ETAG_TAG, ARCHIVE_KEY_TAG, archives_partitions, partition_key_for
from resources.manifest_io import ObjectStoreParquetIOManager
from resources.results_db import ResultsDatabase
from resources.scratch import ScratchSpace


@pytest.fixture
def results_db(postgres_dsn) -> ResultsDatabase:
    db = ResultsDatabase(dsn=postgres_dsn)
    db.migrate()
    return db


@pytest.fixture
def scratch_root(tmp_path) -> Path:
    return tmp_path / "scratch"


@pytest.fixture
def defs(object_store, results_db, scratch_root) -> dg.Definitions:
    return build_definitions(
        {
            "object_store": object_store,
            "results_db": results_db,
            "scratch": ScratchSpace(root=str(scratch_root)),
            "manifest_io": ObjectStoreParquetIOManager(object_store=object_store),
        }
    )


@pytest.fixture
def instance(tmp_path):
    # Dynamic partitions need a persistent instance; ephemeral() cannot hold them.
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as test_instance:
        yield test_instance


class ArchiveRunner:
    """Upload an archive and materialize its partition the way a sensor-launched run does."""

    def __init__(self, defs, instance, object_store):
        self.defs, self.instance, self.object_store = defs, instance, object_store

    def upload(self, local: Path, name: str | None = None) -> str:
        key = f"archives/{name or local.name}"
        self.object_store.upload_file(local, key)
        return key

    def run(self, key: str, *, tags: bool = True) -> dg.ExecuteInProcessResult:
        partition_key = partition_key_for(key)
        if not self.instance.has_dynamic_partition(archives_partitions.name, partition_key):
            self.instance.add_dynamic_partitions(archives_partitions.name, [partition_key])
        run_tags = {}
        if tags:
            run_tags = {ARCHIVE_KEY_TAG: key, ARCHIVE_ETAG_TAG: self.object_store.head(key).etag}
        return self.defs.resolve_job_def("archive_job").execute_in_process(
            partition_key=partition_key, instance=self.instance, tags=run_tags, raise_on_error=False
        )


@pytest.fixture
def archive_runner(defs, instance, object_store) -> ArchiveRunner:
    return ArchiveRunner(defs, instance, object_store)
