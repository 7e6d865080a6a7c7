"""Fixtures for the fault suite."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from s3_fault_proxy import S3FaultProxy

from definitions import build_definitions
from resources.classifier import PolicyClassifier
from resources.transcriber import WhisperTranscriber
from testing.pipeline_support import ArchiveRunner, pipeline_resources


@pytest.fixture
def fault_proxy(s3_server) -> Iterator[Callable[..., S3FaultProxy]]:
    """A factory: fault_proxy(fault_rate=..., kinds=..., delay_s=..., seed=...) returns a started
    S3FaultProxy in front of the session's SeaweedFS; every one is stopped after the test."""
    started: list[S3FaultProxy] = []

    def make(**options) -> S3FaultProxy:
        proxy = S3FaultProxy(s3_server.endpoint_url, **options).start()
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    """Where the bundled Whisper base model is assembled once for every drill."""
    return tmp_path_factory.mktemp("fault-models")


@pytest.fixture
def runner(object_store, results_db, instance, tmp_path, models_dir) -> ArchiveRunner:
    transcriber = WhisperTranscriber(model="base-bundled", models_root=str(models_dir), language="en")
    resources = pipeline_resources(
        object_store, results_db, tmp_path / "scratch", transcriber, PolicyClassifier(backend="profanity")
    )
    return ArchiveRunner(build_definitions(resources), instance, object_store, results_db)


def pytest_sessionstart(session) -> None:
    from fault_report import REPORT

    REPORT.unlink(missing_ok=True)


def pytest_terminal_summary(terminalreporter) -> None:
    from fault_report import markdown_table, outcomes

    rows = outcomes()
    if rows:
        terminalreporter.section("fault drills")
        terminalreporter.write_line(markdown_table(rows))
