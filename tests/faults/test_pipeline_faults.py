"""The fault suite: the whole pipeline under `dagster-daemon`, with one fault injected per test.

For each fault the run (or the retry Dagster starts for it) must complete with every member
of the archive accounted for (0 files lost), no duplicate rows, no orphan Opus objects, no
object left queued for deletion, and no open failure left behind. tests/faults/README.md has
the table of faults and outcomes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
from fault_report import record_outcome

from embedded_services.postgres import create_database, restart_postgres, start_postgres, stop_postgres
from embedded_services.redis import start_redis, stop_redis
from resources.results_db import ResultsDatabase
from testing.archive_factory import build_tar, make_parquet, make_speech_mp3, make_tone_mp3
from testing.daemon_harness import DaemonHarness, PipelineEnvironment, repository, running_daemon
from testing.pipeline_support import rows

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

SPEECH = {
    "clips/insult.mp3": "you are a stupid idiot and everyone hates you",
    "clips/weather.mp3": "the weather is lovely today in the park",
    "clips/train.mp3": "the train to the city leaves at nine in the morning",
    "clips/garden.mp3": "we planted tomatoes and beans in the garden",
}


@pytest.fixture(scope="module")
def archive_parts(tmp_path_factory) -> list[tuple[str, Path]]:
    parts = tmp_path_factory.mktemp("fault-archive")
    members = [(name, make_speech_mp3(parts / Path(name).name, text)) for name, text in SPEECH.items()]
    members.append(("clips/tone.mp3", make_tone_mp3(parts / "tone.mp3", seconds=3)))
    members.append(
        (
            "meta.parquet",
            make_parquet(
                parts / "meta.parquet",
                [{"meta_id": Path(name).stem, "creator": f"@{Path(name).stem}"} for name, _ in members],
            ),
        )
    )
    return members


def build_archive(parts, path: Path) -> Path:
    return build_tar(path, parts, gzip=True)


def assert_nothing_lost(results_db: ResultsDatabase, object_store, key: str, *, members: int) -> dict:
    """0 files lost, 0 duplicate rows, no orphan objects, nothing left queued or open."""
    files = rows(
        results_db, "SELECT id, original_filename, status, opus_path FROM audio_files WHERE archive_source = %s", (key,)
    )
    assert len(files) == members and {f["status"] for f in files} == {"classified"}, files
    ids = [f["id"] for f in files]
    transcripts = rows(
        results_db,
        "SELECT audio_file_id, count(*) AS n FROM transcripts WHERE audio_file_id = ANY(%s) GROUP BY 1",
        (ids,),
    )
    assert sorted(t["audio_file_id"] for t in transcripts) == sorted(ids) and {t["n"] for t in transcripts} == {1}
    scores = rows(results_db, "SELECT count(*) AS n FROM classifications WHERE audio_file_id = ANY(%s)", (ids,))
    assert scores[0]["n"] == len(ids)  # the profanity backend scores one category
    referenced = {f["opus_path"] for f in files}
    stored = {o.key for o in object_store.iter_objects("processed/")}
    assert stored == referenced, f"orphans: {stored - referenced}, missing: {referenced - stored}"
    assert rows(results_db, "SELECT count(*) AS n FROM object_deletions")[0]["n"] == 0
    still_open = rows(results_db, "SELECT stage, error FROM processing_failures WHERE resolved_at IS NULL")
    assert still_open == [], still_open
    return {"files": len(files), "objects": len(stored)}


# --- S3 errors and timeouts ------------------------------------------------------------------


def test_s3_errors_and_timeouts_on_a_fifth_of_requests(
    tmp_path, archive_parts, object_store, results_db, postgres_server, models_dir
):
    from s3_fault_proxy import S3FaultProxy

    key = object_store.upload_file(
        build_archive(archive_parts, tmp_path / "batch_s3_faults.tar.gz"), "archives/batch_s3_faults.tar.gz"
    ).key
    with S3FaultProxy(object_store.endpoint_url, fault_rate=0.25, delay_s=3.0, seed=7) as proxy:
        pipeline = PipelineEnvironment.serving(
            object_store,
            results_db.dsn,
            tmp_path / "scratch",
            models_dir,
            endpoint=proxy.endpoint_url,
            S3_READ_TIMEOUT_S="2",
            S3_CONNECT_TIMEOUT_S="2",
        )
        with DaemonHarness(tmp_path, postgres_server, pipeline) as harness, running_daemon(harness):
            runs = harness.wait_for_partition_success("batch_s3_faults", timeout_s=900)
        stats = proxy.stats
    outcome = assert_nothing_lost(results_db, object_store, key, members=len(SPEECH) + 1)
    injected = sum(stats.faults.values())
    assert injected / stats.requests >= 0.2 and all(
        stats.faults[k] for k in ("500", "503", "reset", "truncate", "delay")
    )
    record_outcome(
        "S3 errors and timeouts (25 % of requests: 500, 503, reset, truncated body, 3 s delay vs 2 s timeout)",
        f"{len(runs)} run(s), {injected} of {stats.requests} requests failed; {outcome['files']} files classified, "
        f"0 lost, 0 duplicates, {outcome['objects']} objects, 0 orphans",
    )


# --- PostgreSQL restarted mid-run ------------------------------------------------------------


@pytest.fixture
def own_results_server():
    """A results database on a server of its own: this test restarts it."""
    data_dir = Path(tempfile.mkdtemp(prefix="fault-results-pg-"))
    data_dir.chmod(0o755)
    server = start_postgres(data_dir, durable=False)
    try:
        yield server
    finally:
        stop_postgres(server)
        subprocess.run(["rm", "-rf", str(data_dir)], check=False)


def test_results_database_down_for_20_seconds_mid_run(
    tmp_path, archive_parts, object_store, postgres_server, own_results_server, models_dir
):
    results_db = ResultsDatabase(dsn=create_database(own_results_server, "results"))
    results_db.migrate()
    key = object_store.upload_file(
        build_archive(archive_parts, tmp_path / "batch_pg_restart.tar.gz"), "archives/batch_pg_restart.tar.gz"
    ).key
    pipeline = PipelineEnvironment.serving(object_store, results_db.dsn, tmp_path / "scratch", models_dir)
    with DaemonHarness(tmp_path, postgres_server, pipeline) as harness, running_daemon(harness):
        run = harness.first_run("batch_pg_restart")
        harness.wait_for_step(run.run_id, "transcripts")
        restarted = time.monotonic()
        restart_postgres(own_results_server, down_s=20, durable=False)
        outage_s = time.monotonic() - restarted
        runs = harness.wait_for_partition_success("batch_pg_restart", timeout_s=600)
    outcome = assert_nothing_lost(results_db, object_store, key, members=len(SPEECH) + 1)
    record_outcome(
        f"results PostgreSQL stopped for {outage_s:.0f} s during `transcripts` (pg_ctl stop -m fast, start)",
        f"{len(runs)} run(s) ({'no retry needed' if len(runs) == 1 else 'completed by its retry'}); "
        f"{outcome['files']} files classified, 0 lost, 0 duplicates, 0 orphans",
    )


# --- the run worker SIGKILLed mid-step ---------------------------------------------------------


@pytest.mark.parametrize("run_host", [False, True], ids=["run-worker", "run-host"])
def test_run_worker_killed_during_transcripts_is_retried_and_resumes(
    tmp_path, archive_parts, object_store, results_db, postgres_server, models_dir, run_host
):
    """The process running the run is SIGKILLed mid-step: a run worker of its own (production
    without a broker), or a process of the local run host (the embedded default, which then
    learns of the loss from the Celery result backend)."""
    from operations.run_submission import archive_job_submitter

    with contextlib.ExitStack() as stack:
        broker = {}
        if run_host:
            redis = start_redis(tmp_path / "redis")
            stack.callback(stop_redis, redis)
            broker = {"DAGSTER_CELERY_BROKER_URL": redis.url(0), "DAGSTER_CELERY_BACKEND_URL": redis.url(1)}
        pipeline = PipelineEnvironment.serving(object_store, results_db.dsn, tmp_path / "scratch", models_dir, **broker)
        harness = stack.enter_context(DaemonHarness(tmp_path, postgres_server, pipeline))
        if run_host:
            harness.start_run_host(slots=2)
        with running_daemon(harness):
            # The run is submitted by hand, so the sensor is stopped before the archive lands: a
            # sensor run of it would do the work first, and the submitted run would find it done.
            harness.stop_sensor("archive_sensor")
            key = object_store.upload_file(
                build_archive(archive_parts, tmp_path / "batch_sigkill.tar.gz"), "archives/batch_sigkill.tar.gz"
            ).key
            partition = results_db.archives.partitions_for([key])[key]
            harness.instance.add_dynamic_partitions("archives", [partition])
            # Submitted like `audio-pipeline requeue` does, with one file per transcription chunk,
            # so that the kill lands after some transcripts are committed and before others.
            with archive_job_submitter(harness.instance) as submit:
                first = submit(
                    {"dagster/partition": partition}, {"ops": {"transcripts": {"config": {"files_per_chunk": 1}}}}
                )
            harness.wait_until(
                lambda: any("transcribed 2/" in m for m in harness.log_messages(first.run_id)),
                600,
                "two files transcribed",
                0.5,
            )
            before = {
                r["audio_file_id"]: r["created_at"]
                for r in rows(results_db, "SELECT audio_file_id, created_at FROM transcripts")
            }
            os.kill(harness.run_worker_pid(first.run_id), signal.SIGKILL)
            killed_at = time.monotonic()
            harness.wait_until(
                lambda: harness.instance.get_run_by_id(first.run_id).status == dg.DagsterRunStatus.FAILURE,
                120,
                "the killed run to be marked failed",
            )
            detected_s = time.monotonic() - killed_at
            runs = harness.wait_for_partition_success(partition, timeout_s=600)
    retry = runs[-1]
    assert retry.run_id != first.run_id and retry.tags.get("dagster/parent_run_id") == first.run_id
    after = {
        r["audio_file_id"]: r["created_at"]
        for r in rows(results_db, "SELECT audio_file_id, created_at FROM transcripts")
    }
    redone = [file_id for file_id, created in before.items() if after[file_id] != created]
    assert len(before) >= 2 and redone == []
    outcome = assert_nothing_lost(results_db, object_store, key, members=len(SPEECH) + 1)
    record_outcome(
        ("run-host process" if run_host else "run worker")
        + " SIGKILLed during `transcripts` (after 2 of 5 files were committed)",
        f"marked failed in {detected_s:.0f} s, retried from failure by run_retries; {len(before)} transcripts kept, "
        f"0 redone; {outcome['files']} files classified, 0 lost, 0 duplicates, 0 orphans",
    )


# --- scratch on a small filesystem -------------------------------------------------------------


@pytest.fixture
def small_scratch(tmp_path):
    """A 9 MiB tmpfs for scratch; unmounted afterwards."""
    mount_point = tmp_path / "small-scratch"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=9m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs for scratch in CI: {mounted.stderr}")
        pytest.skip(f"mounting a tmpfs needs root: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_scratch_smaller_than_the_archive_and_full_at_first(
    tmp_path, object_store, results_db, postgres_server, models_dir, small_scratch
):
    """The archive's MP3s inflate to more than the scratch disk holds next to the archive, so
    extracting them all before converting (what the seed did) cannot work; and at the start
    another process has filled the disk, so the first attempt finds no room at all."""
    parts = tmp_path / "parts"
    members = [
        (f"clips/tone_{i:02d}.mp3", make_tone_mp3(parts / f"t{i}.mp3", seconds=40, freq=300 + 20 * i))
        for i in range(16)
    ]
    members.append(("clips/hello.mp3", make_speech_mp3(parts / "hello.mp3", "hello from a small disk")))
    archive = build_tar(tmp_path / "batch_small_scratch.tar", members)  # uncompressed: ~5 MB on disk
    mp3_bytes = sum(p.stat().st_size for _, p in members)
    assert archive.stat().st_size + mp3_bytes > 9 * 1024 * 1024  # extracting all first cannot fit
    key = object_store.upload_file(archive, "archives/batch_small_scratch.tar").key
    filler = small_scratch / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=8"], capture_output=True, check=False)

    pipeline = PipelineEnvironment.serving(object_store, results_db.dsn, small_scratch / "scratch", models_dir)
    peak = _ScratchPeak(small_scratch / "scratch")
    with DaemonHarness(tmp_path, postgres_server, pipeline) as harness, running_daemon(harness), peak:
        run = harness.first_run("batch_small_scratch")
        harness.wait_until(
            lambda: list(harness.instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY)),
            300,
            "the first attempt to give up for lack of scratch space",
        )
        filler.unlink()  # the other process finishes and frees the disk
        peak.start()
        runs = harness.wait_for_partition_success("batch_small_scratch", timeout_s=600)
    retries = list(harness.instance.all_logs(runs[-1].run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY))
    files = rows(results_db, "SELECT status FROM audio_files WHERE archive_source = %s", (key,))
    assert [f["status"] for f in files] == ["classified"] * len(members)
    stored = {o.key for o in object_store.iter_objects("processed/")}
    assert len(stored) == len(members)
    assert peak.peak_bytes < archive.stat().st_size + 3 * 2**20  # the archive and a few members at a time
    record_outcome(
        f"scratch on a 9 MiB tmpfs, full when the run starts; archive + its MP3s need {(archive.stat().st_size + mp3_bytes) / 2**20:.1f} MiB",
        f"{len(retries)} step retry(ies) for scratch space, then {len(files)} files classified; scratch use "
        f"peaked at {peak.peak_bytes / 2**20:.1f} MiB (archive {archive.stat().st_size / 2**20:.1f} MiB); 0 lost, 0 orphans",
    )


class _ScratchPeak:
    """Samples the bytes under a scratch directory every 50 ms while the run works."""

    def __init__(self, root: Path):
        self.root, self.peak_bytes, self._stop, self._thread = root, 0, threading.Event(), None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            used = 0
            for path in self.root.rglob("*"):
                try:
                    used += path.stat().st_size if path.is_file() else 0
                except OSError:
                    pass  # removed while we looked
            self.peak_bytes = max(self.peak_bytes, used)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()


# --- the daemon restarted during a run ---------------------------------------------------------


def test_daemon_restart_during_a_run_lets_the_run_finish(
    tmp_path, archive_parts, object_store, results_db, postgres_server, models_dir
):
    unit = (repository() / "deploy" / "audio-pipeline-daemon.service").read_text()
    assert "\nKillMode=process\n" in unit  # the stop this drill performs is the one systemd does
    key = object_store.upload_file(
        build_archive(archive_parts, tmp_path / "batch_daemon_restart.tar.gz"), "archives/batch_daemon_restart.tar.gz"
    ).key
    pipeline = PipelineEnvironment.serving(object_store, results_db.dsn, tmp_path / "scratch", models_dir)
    with DaemonHarness(tmp_path, postgres_server, pipeline) as harness, running_daemon(harness):
        run = harness.first_run("batch_daemon_restart")
        harness.wait_for_step(run.run_id, "transcripts")
        harness.stop_daemon(signal.SIGTERM)  # what `systemctl restart` does with KillMode=process
        time.sleep(5)
        harness.start_daemon()
        runs = harness.wait_for_partition_success("batch_daemon_restart", timeout_s=600)
    assert [r.run_id for r in runs] == [run.run_id], "the same run finished: it was neither killed nor retried"
    outcome = assert_nothing_lost(results_db, object_store, key, members=len(SPEECH) + 1)
    record_outcome(
        "dagster-daemon restarted (SIGTERM to the daemon only, as KillMode=process) during `transcripts`",
        f"the run went on in its own process and succeeded without a retry; {outcome['files']} files classified, "
        "0 lost, 0 duplicates, 0 orphans",
    )
