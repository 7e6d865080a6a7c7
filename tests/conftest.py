"""Real services for the whole test session: SeaweedFS (S3) and PostgreSQL.

Each starts once per session on free loopback ports and is stopped at the end even
when tests fail. Tests get a fresh bucket or database each, so they never see one
another's data.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

# Set before anything imports huggingface_hub (it reads them once): no test may reach a
# model hub, and pyannote must not send telemetry.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["PYANNOTE_METRICS_ENABLED"] = "false"

import botocore.exceptions  # noqa: E402
import dagster as dg  # noqa: E402
import pytest  # noqa: E402

from embedded_services.postgres import LocalPostgres, create_database, start_postgres, stop_postgres  # noqa: E402
from embedded_services.seaweedfs import SeaweedS3, start_seaweedfs, stop_seaweedfs  # noqa: E402
from resources.object_store import ObjectStore  # noqa: E402
from resources.results_db import ResultsDatabase  # noqa: E402


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        stop_seaweedfs(server)


@pytest.fixture
def object_store(s3_server: SeaweedS3) -> Iterator[ObjectStore]:
    store = ObjectStore(
        endpoint_url=s3_server.endpoint_url,
        bucket=f"test-{uuid.uuid4().hex[:16]}",
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
    )
    store.ensure_bucket()
    yield store
    # SeaweedFS gives every bucket its own volumes; dropping the bucket frees them.
    # Best effort: a test that broke the server should fail on its own, not here.
    with contextlib.suppress(botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
        store.client().delete_bucket(Bucket=store.bucket)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres]:
    # Not tmp_path_factory: as root the server runs as user `postgres`, which cannot
    # enter pytest's root-only (0700) temp tree. A mkdtemp dir directly under /tmp it can.
    data_dir = Path(tempfile.mkdtemp(prefix="pipeline-test-postgres-"))
    try:
        server = start_postgres(data_dir, durable=False)
        try:
            yield server
        finally:
            stop_postgres(server)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def postgres_dsn(postgres_server: LocalPostgres) -> str:
    return create_database(postgres_server, f"test_{uuid.uuid4().hex[:16]}")


@pytest.fixture
def results_db(postgres_dsn: str) -> ResultsDatabase:
    """The results database on a fresh, migrated database."""
    db = ResultsDatabase(dsn=postgres_dsn)
    db.migrate()
    return db


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    # Dynamic partitions need a persistent instance; ephemeral() cannot hold them.
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as test_instance:
        yield test_instance
