"""dagster.yaml, loaded as production loads it: PostgreSQL storage, queue, monitoring, retries."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg

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
