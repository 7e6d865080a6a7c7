"""`audio-pipeline doctor | status | requeue` against the real test services and Dagster."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from archive_identity import ARCHIVE_ETAG_TAG
from embedded_services.postgres import create_database
from operations.cli import main
from operations.requeue import REQUEUED_TAG, failed_archives
from operations.status import ArchiveProgress, render_bars
from testing.archive_factory import build_tar, make_tone_mp3, truncate_file
from testing.pipeline_support import ArchiveRunner, rows

BIN = Path(sys.executable).parent
QUEUED_INSTANCE = {"run_coordinator": {"module": "dagster.core.run_coordinator", "class": "QueuedRunCoordinator"}}


@pytest.fixture
def pipeline_env(monkeypatch, object_store, results_db, scratch_root, models_root) -> dict[str, str]:
    """The CLI's environment: AUDIO_PIPELINE_ENV=local pointed at this test's bucket and database."""
    env = {
        "AUDIO_PIPELINE_ENV": "local",
        "S3_ENDPOINT": object_store.endpoint_url,
        "S3_BUCKET": object_store.bucket,
        "S3_ACCESS_KEY": object_store.access_key,
        "S3_SECRET_KEY": object_store.secret_key,
        "POSTGRES_DSN": results_db.dsn,
        "SCRATCH_ROOT": str(scratch_root),
        "MODELS_ROOT": str(models_root),
        "WHISPER_MODEL": "base-bundled",
        "WHISPER_LANGUAGE": "en",
        "CLASSIFIER_BACKEND": "profanity",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("DAGSTER_CELERY_BROKER_URL", "CELERY_BROKER_URL", "FFMPEG_BINARY"):
        monkeypatch.delenv(name, raising=False)
    return env


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


def lines_by_check(output: str) -> dict[str, str]:
    """{check name: its line} from doctor's output."""
    return {line[7:].split(":", 1)[0]: line for line in output.splitlines() if line.startswith("[")}


# --- doctor --------------------------------------------------------------------------------


@pytest.mark.integration
def test_doctor_passes_on_working_services(pipeline_env, object_store, capsys):
    assert main(["doctor", "--scratch-warn-gb", "0", "--scratch-fail-gb", "0"]) == 0

    checks = lines_by_check(capsys.readouterr().out)
    assert checks["s3"] == f"[ ok ] s3: {object_store.endpoint_url} bucket {object_store.bucket} writable"
    assert checks["postgres"].startswith("[ ok ] postgres:") and "migrations current" in checks["postgres"]
    assert checks["ffmpeg"].startswith("[ ok ] ffmpeg:") and "libopus" in checks["ffmpeg"]
    assert checks["whisper"].startswith("[ ok ] whisper: base-bundled")
    assert checks["classifier"].startswith("[ ok ] classifier: profanity")
    assert checks["gpu"].startswith(("[ ok ] gpu:", "[warn] gpu: none (CPU only)"))  # reported, never required
    assert checks["whisper-gpu"].startswith(("[ ok ] whisper-gpu:", "[skip] whisper-gpu: no CUDA device"))
    assert checks["scratch"].startswith("[ ok ] scratch:")
    assert checks["redis"].startswith("[skip] redis: no Celery broker")
    assert list(object_store.iter_objects("dagster/doctor/")) == []  # the probe object is gone


@pytest.mark.integration
def test_doctor_fails_fast_and_alone_when_s3_is_down(pipeline_env):
    env = os.environ | {"S3_ENDPOINT": f"http://127.0.0.1:{closed_port()}"}
    started = time.monotonic()
    result = subprocess.run(
        [str(BIN / "audio-pipeline"), "doctor", "--timeout", "3"],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - started

    assert result.returncode == 1, result.stdout + result.stderr
    checks = lines_by_check(result.stdout)
    assert checks["s3"].startswith("[FAIL] s3:") and "could not connect" in checks["s3"]
    assert checks["postgres"].startswith("[ ok ] postgres:")
    assert "1 check(s) failed: s3" in result.stdout
    assert elapsed < 60  # process start and imports included; the probe itself fails at once


@pytest.mark.integration
def test_doctor_names_pending_migrations_unreachable_broker_and_full_scratch(
    pipeline_env, postgres_server, monkeypatch, capsys
):
    monkeypatch.setenv("POSTGRES_DSN", create_database(postgres_server, "doctor_unmigrated"))
    monkeypatch.setenv("DAGSTER_CELERY_BROKER_URL", f"redis://:secret@127.0.0.1:{closed_port()}/0")

    assert main(["doctor", "--timeout", "2", "--scratch-fail-gb", "1e12"]) == 1

    checks = lines_by_check(capsys.readouterr().out)
    assert checks["postgres"].startswith("[FAIL] postgres:") and "migrations pending (001" in checks["postgres"]
    assert "audio-pipeline migrate" in checks["postgres"]
    assert checks["redis"].startswith("[FAIL] redis: connection refused (127.0.0.1:")
    assert "secret" not in checks["redis"]
    assert checks["scratch"].startswith("[FAIL] scratch:")
    assert checks["s3"].startswith("[ ok ] s3:")

    assert main(["migrate"]) == 0  # what the line says to do
    main(["doctor", "--timeout", "2"])
    assert lines_by_check(capsys.readouterr().out)["postgres"].startswith("[ ok ] postgres:")


@pytest.mark.integration
def test_doctor_pings_redis_with_auth(pipeline_env, monkeypatch, capsys):
    received: list[bytes] = []
    port = _fake_redis(received)
    monkeypatch.setenv("CELERY_BROKER_URL", f"redis://:s3cret@127.0.0.1:{port}/0")

    main(["doctor", "--timeout", "2", "--scratch-fail-gb", "0", "--scratch-warn-gb", "0"])

    assert lines_by_check(capsys.readouterr().out)["redis"] == f"[ ok ] redis: 127.0.0.1:{port} answered PONG"
    assert received == [b"*2\r\n$4\r\nAUTH\r\n$6\r\ns3cret\r\n", b"*1\r\n$4\r\nPING\r\n"]


def _fake_redis(received: list[bytes]) -> int:
    """A one-connection server that answers AUTH with +OK and PING with +PONG, as Redis does."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        connection, _ = server.accept()
        with connection, server:
            for reply in (b"+OK\r\n", b"+PONG\r\n"):
                received.append(connection.recv(4096))
                connection.sendall(reply)

    threading.Thread(target=serve, daemon=True).start()
    return server.getsockname()[1]


# --- status --------------------------------------------------------------------------------


@pytest.mark.integration
def test_status_counts_files_per_archive_and_shows_broken_archives(
    pipeline_env, archive_runner, results_db, tmp_path, capsys
):
    mixed = build_tar(
        tmp_path / "batch_mixed.tar",
        [
            ("good.mp3", make_tone_mp3(tmp_path / "good.mp3")),
            ("bad.mp3", os.urandom(4096)),
        ],
    )
    assert archive_runner.run(archive_runner.upload(mixed)).success
    broken = build_tar(tmp_path / "batch_broken.tar.gz", [("a.mp3", make_tone_mp3(tmp_path / "a.mp3", 3))], gzip=True)
    truncate_file(broken, 0.5)
    assert not archive_runner.run(archive_runner.upload(broken)).success

    assert main(["status"]) == 0
    out = capsys.readouterr().out.splitlines()  # captured output is no terminal: the plain table
    assert out[0].split() == ["archive", "partition", "files", "converted", "transcribed", "classified", "failed"]
    assert out[1].split() == ["archives/batch_mixed.tar", "batch_mixed", "2", "1", "0", "0", "1"]
    assert out[2].startswith("archive failed: archives/batch_broken.tar.gz (archive): archive unreadable")

    assert main(["status", "--archive", "batch_mixed", "--limit", "5"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert main(["status", "--archive", "no_such_batch"]) == 1

    # requeue sees both: the failed file and the archive that never got rows
    found = {f.archive_key: (f.failed_files, f.archive_error is not None) for f in failed_archives(results_db, None)}
    assert found == {"archives/batch_mixed.tar": (1, False), "archives/batch_broken.tar.gz": (0, True)}


def test_progress_bars_stack_stages_in_a_fixed_width():
    legend, first, second = render_bars(
        [
            ArchiveProgress("archives/a.tar", "a", 10, 8, 6, 3, 2),
            ArchiveProgress("archives/b.tar", "bb", 4, 0, 0, 0, 0),
        ],
        width=10,
    )
    assert legend.startswith("# classified")
    assert first.startswith("a  [###===--xx]  50% done  10 files: 8 converted, 6 transcribed, 3 classified, 2 failed")
    assert second.startswith("bb [..........]   0% done")


# --- requeue -------------------------------------------------------------------------------


@pytest.mark.e2e
def test_requeue_reruns_failed_files_through_the_daemon(pipeline_env, defs, object_store, results_db, tmp_path, capsys):
    home = tmp_path / "dagster_home"
    home.mkdir()
    # DAGSTER_HOME for the CLI and the daemon too, with the run queue of the real dagster.yaml.
    with dg.instance_for_test(overrides=QUEUED_INSTANCE, temp_dir=str(home)) as instance:
        key, fixed_etag, before = _archive_with_a_file_that_failed_then_was_fixed(
            defs, instance, object_store, results_db, tmp_path
        )
        with dagster_daemon(tmp_path):
            assert main(["requeue", "--archive", "batch_requeue", "--timeout", "480"]) == 0

        out = capsys.readouterr().out
        [requeued] = instance.get_runs(filters=dg.RunsFilter(tags={REQUEUED_TAG: "true"}))
        assert requeued.status == dg.DagsterRunStatus.SUCCESS
        assert requeued.tags["dagster/partition"] == "batch_requeue"
        assert requeued.tags[ARCHIVE_ETAG_TAG] == fixed_etag
        # The status printed at submission is whatever the run reached by then (QUEUED, or further
        # if the daemon already dequeued it): only its presence is checked.
        submitted = re.escape(f"requeued {key} (partition batch_requeue): 1 failed file(s) -> run {requeued.run_id} ")
        assert re.search(submitted + r"(QUEUED|NOT_STARTED|STARTING|STARTED|SUCCESS)\b", out), out
        assert f"{key}: run {requeued.run_id} SUCCESS; failed files 1 -> 0" in out
        opus = instance.get_latest_materialization_event(dg.AssetKey("opus_files"))
        assert (opus.run_id, opus.dagster_event.partition) == (requeued.run_id, "batch_requeue")

        after = {
            r["original_filename"]: r
            for r in rows(results_db, "SELECT * FROM audio_files WHERE archive_source = %s", (key,))
        }
        assert set(after) == {"good.mp3", "bad.mp3"}  # upserted: no duplicate rows
        assert after["bad.mp3"]["status"] == "classified" and after["bad.mp3"]["id"] == before["bad.mp3"]["id"]
        assert after["good.mp3"]["status"] == "classified"
        assert after["good.mp3"]["opus_path"] == before["good.mp3"]["opus_path"]
        transcribed = rows(
            results_db,
            "SELECT a.archive_source, a.original_filename, t.model, t.created_at FROM transcripts t "
            "JOIN audio_files a ON a.id = t.audio_file_id ORDER BY a.original_filename",
        )
        # One transcript per file: good.mp3's from the first run was kept, not made again.
        assert [r["original_filename"] for r in transcribed] == ["bad.mp3", "good.mp3"], transcribed
        assert (
            rows(
                results_db,
                "SELECT count(*) AS n FROM processing_failures WHERE resolved_at IS NULL AND original_filename = 'bad.mp3'",
            )[0]["n"]
            == 0
        )

        # Nothing failed any more: a second requeue submits nothing.
        assert main(["requeue", "--all"]) == 0
        assert "nothing to requeue" in capsys.readouterr().out
        assert len(instance.get_runs(filters=dg.RunsFilter(tags={REQUEUED_TAG: "true"}))) == 1


def _archive_with_a_file_that_failed_then_was_fixed(defs, instance, object_store, results_db, tmp_path):
    """batch_requeue.tar run once with a corrupt bad.mp3 (-> failed row), then overwritten in
    S3 under the same key with a good bad.mp3, as an operator would after fixing the cause."""
    good = make_tone_mp3(tmp_path / "good.mp3")
    runner = ArchiveRunner(defs, instance, object_store, results_db)
    corrupt = build_tar(tmp_path / "v1" / "batch_requeue.tar", [("good.mp3", good), ("bad.mp3", os.urandom(4096))])
    key = runner.upload(corrupt)
    assert runner.run(key, assets=None).success  # the whole job: good.mp3 gets classified
    before = {
        r["original_filename"]: r
        for r in rows(results_db, "SELECT * FROM audio_files WHERE archive_source = %s", (key,))
    }
    assert (before["good.mp3"]["status"], before["bad.mp3"]["status"]) == ("classified", "failed")
    assert before["bad.mp3"]["failed_stage"] == "conversion"

    fixed = build_tar(
        tmp_path / "v2" / "batch_requeue.tar",
        [
            ("good.mp3", good),
            ("bad.mp3", make_tone_mp3(tmp_path / "bad.mp3", seconds=2, freq=660)),
        ],
    )
    runner.upload(fixed)
    return key, object_store.head(key).etag, before


@contextlib.contextmanager
def dagster_daemon(tmp_path: Path) -> Iterator[None]:
    """`dagster-daemon run` on this test's instance and services, stopped on exit. The archive
    sensor is stopped first: it would otherwise run the overwritten archive on its own."""
    target = ["-m", "definitions"]
    subprocess.run([str(BIN / "dagster"), "sensor", "stop", "archive_sensor", *target], check=True, timeout=180)
    log_path = tmp_path / "dagster-daemon.log"
    with log_path.open("wb") as log:
        daemon = subprocess.Popen([str(BIN / "dagster-daemon"), "run", *target], stdout=log, stderr=subprocess.STDOUT)
        try:
            yield
        except BaseException:
            sys.stderr.write(log_path.read_text(errors="replace")[-6000:])  # why the run never ran
            raise
        finally:
            daemon.terminate()
            try:
                daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
