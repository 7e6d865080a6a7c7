"""Sensor -> run requests -> runs -> rows in the views, with the bundled sample archives."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

import dagster as dg
import psycopg2
import pytest

from operations.demo import upload_samples
from sensors.archive_sensor import archive_sensor
from testing.pipeline_support import rows

REPO = Path(__file__).resolve().parents[2]


def sample_members() -> dict[str, dict[str, str]]:
    return json.loads((resources.files("operations") / "samples" / "references.json").read_text())


@pytest.mark.e2e
def test_sensor_launched_runs_fill_the_tables_and_views(defs, instance, object_store, results_db, ra_login):
    archives = upload_samples(object_store)
    assert len(archives) >= 2

    context = dg.build_sensor_context(
        instance=instance, resources={"object_store": object_store, "results_db": results_db}
    )
    result = defs.resolve_sensor_def("archive_sensor")(context)
    assert isinstance(result, dg.SensorResult)
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    job = defs.resolve_job_def("archive_job")
    for request in result.run_requests:
        run = job.execute_in_process(
            partition_key=request.partition_key, instance=instance, tags=request.tags, run_config=request.run_config
        )
        assert run.success
        assert all(e.passed for e in run.get_asset_check_evaluations())

    expected = {(f"archives/{archive}", member) for archive, members in sample_members().items() for member in members}
    files = rows(results_db, "SELECT archive_source, original_filename, status, parquet_metadata FROM audio_files")
    assert {(r["archive_source"], r["original_filename"]) for r in files} == expected
    assert all(r["status"] == "classified" for r in files)
    assert all(r["parquet_metadata"] is not None for r in files)
    assert rows(results_db, "SELECT count(*) AS n FROM transcripts")[0]["n"] == len(expected)
    stats = rows(results_db, "SELECT status, sum(files) AS files FROM daily_stats GROUP BY status")
    assert {(s["status"], s["files"]) for s in stats} == {("classified", len(expected))}

    # The sample with the insult is the one item RAs get (profanity classifier, threshold 0.5).
    with psycopg2.connect(ra_login) as conn, conn.cursor() as cur:
        cur.execute("SELECT original_filename, flag_category, transcript_text FROM ra_queue")
        queue = cur.fetchall()
    [(member, category, text)] = queue
    assert category == "profanity" and "idiot" in text.lower()
    assert "idiot" in sample_members()["batch_2026_11_01.tar.gz"][member].lower()

    # The next tick finds nothing new: no second run for the same archive versions.
    again = archive_sensor(
        dg.build_sensor_context(
            instance=instance, cursor=result.cursor, resources={"object_store": object_store, "results_db": results_db}
        )
    )
    assert isinstance(again, dg.SkipReason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.e2e
def test_demo_command_runs_twice_through_the_daemon():
    """README command 1, on its own services: the daemon's sensor launches the runs."""
    # Not tmp_path: as root, PostgreSQL runs as `postgres`, which cannot enter pytest's tree.
    state = Path(tempfile.mkdtemp(prefix="demo-state-"))
    state.chmod(0o755)  # like a checkout's .local/: the server user may traverse it
    try:
        _run_demo_twice(state)
    finally:
        shutil.rmtree(state, ignore_errors=True)


def _run_demo_twice(state: Path) -> None:
    command = [
        str(Path(sys.executable).parent / "audio-pipeline"),
        "demo",
        "--state-dir",
        str(state),
        "--s3-port",
        str(_free_port()),
        "--postgres-port",
        str(_free_port()),
        "--stop-services",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("S3_", "POSTGRES_", "DAGSTER_"))}
    first = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    assert "SUCCESS" in first.stdout
    # The daemon (PostgreSQL-backed instance) ticked archive_sensor, which launched the runs.
    assert first.stdout.count("launched by archive_sensor") == len(sample_members())
    assert "daily_stats" in first.stdout and "classified" in first.stdout
    assert "idiot" in first.stdout  # the flagged sample, printed from ra_queue
    # The review console is ready for a new user: its login, settings and a demo RA who
    # would see the flagged sample (counted through the console's own role).
    assert "review console: 1 flagged item(s) wait for review" in first.stdout
    assert (state / "review-console.env").exists()

    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    assert "already there" in second.stdout
    assert "waiting for archive_sensor" not in second.stdout
    assert "review console: 1 flagged item(s) wait for review" in second.stdout
