"""dead_letter_sensor on real runs: the underlying error, one row per archive and stage, and
nothing dropped while PostgreSQL is down."""

from __future__ import annotations

import dagster as dg
import pytest

from embedded_services.postgres import start_postgres, stop_postgres
from resources.results_db import ResultsDatabase
from sensors.dead_letter_sensor import dead_letter_sensor, underlying_error
from testing.archive_factory import build_tar, make_tone_mp3, truncate_file
from testing.pipeline_support import rows


def evaluate(instance, results_db, cursor=None):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"results_db": results_db})
    return dead_letter_sensor(context)


def open_failures(results_db, archive_key):
    return rows(
        results_db,
        "SELECT original_filename, stage, error, attempts, run_id FROM processing_failures "
        "WHERE archive_source = %s AND resolved_at IS NULL ORDER BY stage",
        (archive_key,),
    )


@pytest.fixture
def broken_archive_run(archive_runner, tmp_path):
    archive = build_tar(tmp_path / "batch_broken.tar.gz", [("a.mp3", make_tone_mp3(tmp_path / "a.mp3", 3))], gzip=True)
    truncate_file(archive, 0.5)
    key = archive_runner.upload(archive)
    result = archive_runner.run(key)
    assert not result.success
    return key, result.run_id


def test_a_failed_run_is_one_row_per_archive_and_stage_with_the_real_cause(broken_archive_run, instance, results_db):
    key, run_id = broken_archive_run
    result = evaluate(instance, results_db)
    [row] = open_failures(results_db, key)  # the step's own row and the sensor's are one row
    assert (row["original_filename"], row["stage"], row["run_id"]) == ("", "archive", run_id)
    assert "unreadable" in row["error"] and "max_retries" not in row["error"]
    again = evaluate(instance, results_db, cursor=result.cursor)
    assert open_failures(results_db, key) == [row]  # a run is recorded once
    assert again.cursor is not None


def test_retries_exhausted_records_the_error_that_exhausted_them(instance, results_db):
    @dg.asset(partitions_def=dg.StaticPartitionsDefinition(["p"]), retry_policy=dg.RetryPolicy(max_retries=1))
    def flaky():
        raise ConnectionError("s3.example.org refused the connection")

    job = dg.define_asset_job("archive_job", selection=[flaky])
    result = (
        dg.Definitions(assets=[flaky], jobs=[job])
        .resolve_job_def("archive_job")
        .execute_in_process(
            partition_key="p", instance=instance, raise_on_error=False, tags={"audio/archive_key": "archives/p.tar"}
        )
    )
    failure = result.failure_data_for_node("flaky").error
    assert failure.message.startswith("Exceeded max_retries")  # what Dagster shows first
    assert underlying_error(failure) == "ConnectionError: s3.example.org refused the connection"
    evaluate(instance, results_db)
    [row] = open_failures(results_db, "archives/p.tar")
    assert row["stage"] == "step:flaky" and row["error"] == "ConnectionError: s3.example.org refused the connection"


def test_nothing_is_dropped_while_postgresql_is_down(broken_archive_run, instance, results_db, postgres_server):
    key, _ = broken_archive_run
    impatient = ResultsDatabase(dsn=results_db.dsn, retry_window_s=1, connect_timeout_s=2)
    stop_postgres(postgres_server)
    try:
        with pytest.raises(Exception):  # noqa: B017 - which error depends on where the connection fails
            evaluate(instance, impatient)  # the tick fails, and its cursor is not saved
    finally:
        start_postgres(
            postgres_server.data_dir,
            port=postgres_server.port,
            user=postgres_server.user,
            password=postgres_server.password,
            durable=False,
        )
    evaluate(instance, results_db, cursor=None)  # the next tick starts from the same cursor
    assert [r["stage"] for r in open_failures(results_db, key)] == ["archive"]


def test_a_failure_already_followed_by_a_success_is_not_recorded(
    broken_archive_run, archive_runner, instance, results_db, tmp_path
):
    key, _ = broken_archive_run
    results_db.failures.resolve_stages(key, ["archive"])  # as if nothing had been recorded yet
    fixed = build_tar(tmp_path / "fixed.tar.gz", [("a.mp3", make_tone_mp3(tmp_path / "b.mp3", 2))], gzip=True)
    archive_runner.upload(fixed, name="batch_broken.tar.gz")
    assert archive_runner.run(key).success
    evaluate(instance, results_db)
    assert open_failures(results_db, key) == []
