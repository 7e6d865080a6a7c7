"""dagster.yaml, loaded as production loads it: PostgreSQL storage, queue, monitoring, retries."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import yaml

from embedded_services.postgres import create_database

REPO = Path(__file__).resolve().parents[2]


def test_production_instance_config(postgres_server, tmp_path, monkeypatch):
    create_database(postgres_server, "dagster_config_test")
    for name, value in {
        "DAGSTER_PG_HOST": postgres_server.host,
        "DAGSTER_PG_PORT": str(postgres_server.port),
        "DAGSTER_PG_USER": postgres_server.user,
        "DAGSTER_PG_PASSWORD": postgres_server.password,
        "DAGSTER_PG_DB": "dagster_config_test",
    }.items():
        monkeypatch.setenv(name, value)
    shutil.copyfile(REPO / "dagster.yaml", tmp_path / "dagster.yaml")

    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
        assert not instance.run_retries_retry_on_asset_or_op_failure  # crashes only
        assert instance.run_monitoring_enabled
        # A wedged run is failed: 12 h for any run (archive runs carry their own dagster/max_runtime).
        assert instance.run_monitoring_max_runtime_seconds == 43200
        assert instance.run_monitoring_poll_interval_seconds == 60
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 4
        # The storage really works: a run written through it reads back.
        instance.add_run(dg.DagsterRun(job_name="archive_job", run_id="r-config-test"))
        assert instance.get_run_by_id("r-config-test").job_name == "archive_job"


def test_embedded_default_runs_each_run_on_the_local_run_host(postgres_server, tmp_path, monkeypatch):
    """`audio-pipeline demo`'s instance: the repository's dagster.yaml with runs launched as tasks
    of the local run host (operations/demo.py), never more at once than it has processes, the
    same storage with pooled connections, and every queue limit, monitoring and retry setting
    kept."""
    from operations.demo import RUN_HOST_QUEUE, local_instance_config

    create_database(postgres_server, "dagster_local_config_test")
    for name, value in {
        "DAGSTER_PG_HOST": postgres_server.host,
        "DAGSTER_PG_PORT": str(postgres_server.port),
        "DAGSTER_PG_USER": postgres_server.user,
        "DAGSTER_PG_PASSWORD": postgres_server.password,
        "DAGSTER_PG_DB": "dagster_local_config_test",
        "DAGSTER_CELERY_BROKER_URL": "redis://127.0.0.1:1/0",  # never contacted here
        "DAGSTER_CELERY_BACKEND_URL": "redis://127.0.0.1:1/1",
    }.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(local_instance_config(REPO / "dagster.yaml", slots=3)))
    production = yaml.safe_load((REPO / "dagster.yaml").read_text())

    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        # The same PostgreSQL storage, its connections kept instead of one per query.
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        for storage in (instance.run_storage, instance.event_log_storage, instance.schedule_storage):
            assert type(storage._engine.pool).__name__ == "QueuePool"
        instance.add_run(dg.DagsterRun(job_name="archive_job", run_id="r-local-config-test"))
        assert instance.get_run_by_id("r-local-config-test").job_name == "archive_job"
        launcher = instance.run_launcher
        assert type(launcher).__name__ == "CeleryRunLauncher"
        assert launcher.broker == "redis://127.0.0.1:1/0" and launcher.default_queue == RUN_HOST_QUEUE
        assert launcher.supports_check_run_worker_health  # run monitoring sees a lost run task
        queue = instance.get_concurrency_config().run_queue_config
        assert queue.max_concurrent_runs == 3  # one run per run-host process
        assert [limit["key"] for limit in queue.tag_concurrency_limits] == ["dagster/partition"]
        assert instance.run_monitoring_enabled and instance.run_monitoring_max_runtime_seconds == 43200
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
    local = local_instance_config(REPO / "dagster.yaml", slots=3)
    assert local["storage"]["custom"]["config"] == production["storage"]["postgres"]
    assert {k: v for k, v in local.items() if k not in ("run_launcher", "concurrency", "storage")} == {
        k: v for k, v in production.items() if k not in ("run_launcher", "concurrency", "storage")
    }
    assert (
        local["concurrency"]["runs"]["tag_concurrency_limits"]
        == production["concurrency"]["runs"]["tag_concurrency_limits"]
    )
