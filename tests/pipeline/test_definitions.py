"""The Definitions object as users load it: from the installed package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
from psycopg2.extensions import parse_dsn

REPO = Path(__file__).resolve().parents[2]

# The lineage users see in the UI; a change to it should be a visible diff here.
EXPECTED_GRAPH = {
    "raw_archive": set(),
    "opus_files": {"raw_archive"},
    "parquet_metadata": {"raw_archive"},
    "transcripts": {"opus_files"},
    "classifications": {"transcripts"},
    "daily_summary": set(),  # reads the results tables, not an archive partition
}
GPU_ASSETS = {"transcripts", "classifications"}
EXPECTED_CHECKS = {
    ("opus_files", "every_mp3_has_one_row"),
    ("opus_files", "opus_objects_match_rows"),
    ("opus_files", "durations_are_positive"),
}


def test_package_is_imported_from_site_packages_not_the_source_tree():
    import audio_assets

    assert "site-packages" in audio_assets.__file__, audio_assets.__file__


def test_definitions_load_and_match_the_expected_asset_graph():
    from definitions import defs

    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert keys == set(EXPECTED_GRAPH)
    for key, parents in EXPECTED_GRAPH.items():
        node = graph.get(dg.AssetKey(key))
        assert {p.to_user_string() for p in node.parent_keys} == parents
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert checks == EXPECTED_CHECKS
    for sensor in ("archive_sensor", "dead_letter_sensor"):
        assert defs.resolve_sensor_def(sensor).default_status == dg.DefaultSensorStatus.RUNNING
    for schedule in ("daily_summary_schedule", "archive_catchup_schedule", "scratch_sweep_schedule"):
        assert defs.resolve_schedule_def(schedule).default_status == dg.DefaultScheduleStatus.RUNNING
    assert defs.resolve_job_def("archive_job").partitions_def.name == "archives"
    # Every archive run carries a max runtime that run monitoring enforces (ARCHIVE_RUN_MAX_RUNTIME_S).
    assert defs.resolve_job_def("archive_job").tags["dagster/max_runtime"] == "43200"


def test_gpu_assets_are_routed_to_gpu_capacity_and_cpu_assets_are_not():
    from definitions import defs

    graph = defs.resolve_asset_graph()
    for key in EXPECTED_GRAPH:
        node = graph.get(dg.AssetKey(key))
        tags = node.assets_def.op.tags
        if key in GPU_ASSETS:
            assert tags["dagster-celery/queue"] == "gpu"
            k8s = tags["dagster-k8s/config"]
            k8s = json.loads(k8s) if isinstance(k8s, str) else k8s
            assert k8s["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
            assert node.pools == {"gpu"}
        else:
            assert "dagster-celery/queue" not in tags and "dagster-k8s/config" not in tags
            assert not node.pools


def test_dagster_cli_validates_the_definitions(tmp_path):
    env = dict(os.environ, DAGSTER_HOME=str(tmp_path))
    completed = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", str(REPO / "workspace.yaml")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_production_environment_reads_connections_from_environment_variables(monkeypatch):
    from resources.environments import resources_for

    for name, value in {
        "S3_ENDPOINT": "https://s3.example.org",
        "S3_BUCKET": "prod-bucket",
        "S3_ACCESS_KEY": "AK",
        "S3_SECRET_KEY": "SK",
        "POSTGRES_DSN": "host=db.example.org dbname=audio",
        "SCRATCH_ROOT": "/scratch",
    }.items():
        monkeypatch.setenv(name, value)
    resources = resources_for("production")
    object_store = resources["object_store"].process_config_and_initialize()
    assert (object_store.endpoint_url, object_store.bucket, object_store.secret_key) == (
        "https://s3.example.org",
        "prod-bucket",
        "SK",
    )
    connection = parse_dsn(resources["results_db"].process_config_and_initialize().connection_string())
    assert (connection["host"], connection["dbname"]) == ("db.example.org", "audio")
    assert "statement_timeout" in connection["options"] and connection["keepalives"] == "1"
    assert resources["scratch"].process_config_and_initialize().root == "/scratch"


def test_production_steps_go_to_celery_queues_when_a_broker_is_configured(monkeypatch):
    from definitions import executor_for

    assert executor_for("local").name == "in_process"
    assert executor_for("production").name == "multiprocess"
    monkeypatch.setenv("DAGSTER_CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("DAGSTER_CELERY_BACKEND_URL", "redis://127.0.0.1:6379/1")
    assert executor_for("production").name == "celery"
