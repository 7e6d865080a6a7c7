"""Bounded retries in Celery mode: a poison input, a parquet bomb on a memory-limited worker and
a wedged step each end their run with a recorded reason, and the archive's next version runs;
files whose tools fail every time (ffmpeg crashing, Whisper or the scorer throwing) end as their
own outcome while the rest of their archive is classified in the same run. What is not the
input's fault is not bounded as if it were: a long step whose worker is restarted on purpose,
again and again, still completes; a raw_archive waiting for another run's claim never sits in
its slot until the soft time limit.

One cluster for the module, as production runs it (tests/distributed/ has the same shape):
Redis (broker and result backend), PostgreSQL, SeaweedFS, `dagster-daemon` with the
repository's dagster.yaml (run monitoring polled every 2 s here instead of 60 s), one CPU worker
on the `cpu` queue and two "GPU" workers (CPU processes running the real Whisper base model) on
the `gpu` queue. The CPU worker's ffmpeg is a wrapper (FFMPEG_BINARY) that runs the real one,
except on an input carrying a marker in its bytes: then it SIGKILLs the process that started
it (the pool process running `opus_files`, as a poison input that gets it OOM-killed would), or
sleeps forever (a wedged conversion); it runs tests/tool_faults.py's crashing ffmpeg, which dies
of SIGSEGV on its own marker. The GPU worker runs the real Whisper and scorer wrapped to throw on
marked inputs, or take WHISPER_SLOW_S longer on them (tests/tool_fault_hook).

The CPU worker's memory is limited by a watchdog in the test: a pool process whose resident
size passes MEMORY_LIMIT_MIB is SIGKILLed, as the kernel's OOM killer does in a unit with
MemoryMax (deploy/). This machine has cgroup v1 only, so the test cannot give the worker a
cgroup v2 memory.max of its own.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import fault_report
import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tool_faults
import yaml
from celery_cluster import CeleryCluster, CeleryWorker, production_environment
from fault_report import assert_objects_agree, files, record_outcome

from archive_identity import ArchiveVersion
from audio_assets.archive_job import archive_run_request
from embedded_services.redis import start_redis, stop_redis
from media.ffmpeg_binary import resolve_ffmpeg
from operations.run_submission import archive_job_submitter
from resources.object_store import ObjectStore
from resources.results_db import ResultsDatabase
from sensors.schedules import versions_to_catch_up
from testing.archive_factory import build_tar, make_parquet, make_speech_mp3
from testing.daemon_harness import DaemonHarness
from testing.pipeline_support import rows
from workers.deliveries import KEY_PREFIX
from workers.settings import CPU_QUEUE, GPU_QUEUE

pytestmark = [pytest.mark.e2e, pytest.mark.faults, pytest.mark.distributed]

MAX_DELIVERIES = 3  # the default of CELERY_MAX_DELIVERIES
KILL_MARKER = b"POISON-KILL-PARENT"
WEDGE_MARKER = b"POISON-WEDGE"
MEMORY_LIMIT_MIB = 1024
BOMB_ROWS = 4_000_000  # ~0.5 KB of Python objects per row once read: far over the limit
# The CPU queue's time limits on this worker: above any normal step here, below the wedge.
CPU_SOFT_LIMIT_S, CPU_HARD_LIMIT_S = 40, 45
WEDGE_MAX_RUNTIME_S = 20
LEASE_S = 10
GPU_WORKERS = ("gpu-a", "gpu-b")
CLAIM_STEP_WAIT_S = 10
# How long a worker told to stop waits for its step before it is killed (the units' TimeoutStopSec).
STOP_GRACE_S = 3

FFMPEG_WRAPPER = """#!/bin/bash
# ffmpeg standing in for a poison input: the real ffmpeg, except on an input with a marker.
input=""; previous=""
for arg in "$@"; do [ "$previous" = "-i" ] && input="$arg"; previous="$arg"; done
if [ -n "$input" ] && grep -q "{kill}" "$input" 2>/dev/null; then
    echo "$PPID" >> "{kills}"
    kill -9 "$PPID"
    exit 1
fi
if [ -n "$input" ] && grep -q "{wedge}" "$input" 2>/dev/null; then
    echo "$PPID" >> "{wedges}"
    exec sleep 100000
fi
exec "{real}" "$@"
"""


@dataclass
class MemoryWatchdog:
    """SIGKILLs a pool process of `worker` over `limit_mib` resident, as an OOM killer would."""

    worker: CeleryWorker
    limit_mib: int
    kills: list[tuple[int, float]] = field(default_factory=list)  # (pid, MiB at the kill)
    peaks_mib: dict[int, float] = field(default_factory=dict)  # highest resident size seen, by pid
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> MemoryWatchdog:
        threading.Thread(target=self._run, name="memory-watchdog", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            for process in self.worker.pool_processes():
                try:
                    rss_mib = process.memory_info().rss / 2**20
                    self.peaks_mib[process.pid] = max(self.peaks_mib.get(process.pid, 0.0), rss_mib)
                    if rss_mib > self.limit_mib:
                        process.kill()
                        self.kills.append((process.pid, rss_mib))
                except psutil.Error:
                    continue

    def peak_of_survivors_mib(self) -> float:
        """The highest resident size of a pool process that was never killed."""
        killed = {pid for pid, _ in self.kills}
        return max((mib for pid, mib in self.peaks_mib.items() if pid not in killed), default=0.0)


@dataclass
class Cluster:
    harness: DaemonHarness
    workers: CeleryCluster
    cpu: CeleryWorker
    object_store: ObjectStore
    results_db: ResultsDatabase
    redis_url: str
    kills: Path
    wedges: Path
    crashes: Path
    slow_starts: Path  # a line (the pool process's pid) each time a slow transcription starts
    watchdog: MemoryWatchdog
    gpu_env: dict[str, str]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3_server, postgres_server) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("celery-bounds")
    redis_server = start_redis(root / "redis")
    object_store, results_db, pipeline = production_environment(root, s3_server, postgres_server, redis_server, LEASE_S)
    kills, wedges, wrapper = root / "kills.txt", root / "wedges.txt", root / "ffmpeg-wrapper"
    slow_starts = root / "slow-transcriptions.txt"
    gpu_env = tool_faults.hook_environment() | {"TOOL_FAULTS_SLOW_LOG": str(slow_starts)}
    crashing, crashes = tool_faults.crashing_ffmpeg(root, resolve_ffmpeg())
    wrapper.write_text(
        FFMPEG_WRAPPER.format(
            kill=KILL_MARKER.decode(), wedge=WEDGE_MARKER.decode(), kills=kills, wedges=wedges, real=crashing
        )
    )
    wrapper.chmod(0o755)
    workers = watchdog = None
    harness = DaemonHarness(root / "control", postgres_server, pipeline)
    instance_yaml = harness.home / "dagster.yaml"
    config = yaml.safe_load(instance_yaml.read_text())
    config["run_monitoring"]["poll_interval_seconds"] = 2  # production: 60 s
    instance_yaml.write_text(yaml.safe_dump(config))
    try:
        with harness:
            workers = CeleryCluster(harness, root / "hosts")
            cpu = workers.start_worker(
                "cpu-1",
                CPU_QUEUE,
                env={
                    "FFMPEG_BINARY": str(wrapper),
                    # Another branch caps parquet rows (default far below BOMB_ROWS); lifted here
                    # so the bomb reaches the memory limit, as it would with a higher cap.
                    "METADATA_MAX_ROWS": "1000000000",
                    "CELERY_CPU_SOFT_TIME_LIMIT_S": str(CPU_SOFT_LIMIT_S),
                    "CELERY_CPU_TIME_LIMIT_S": str(CPU_HARD_LIMIT_S),
                    # raw_archive waits this long for a claim in its slot (production: 300 s, far
                    # below the 2-h soft limit), here below the 40-s one.
                    "ARCHIVE_CLAIM_STEP_WAIT_S": str(CLAIM_STEP_WAIT_S),
                },
            )
            for name in GPU_WORKERS:
                workers.start_worker(name, GPU_QUEUE, env=gpu_env)
            workers.wait_until_ready()
            watchdog = MemoryWatchdog(cpu, MEMORY_LIMIT_MIB).start()
            harness.start_daemon()
            try:
                yield Cluster(
                    harness,
                    workers,
                    cpu,
                    object_store,
                    results_db,
                    redis_server.url(0),
                    kills,
                    wedges,
                    crashes,
                    slow_starts,
                    watchdog,
                    gpu_env,
                )
            except BaseException:
                print(harness.daemon_log(), workers.logs())
                raise
    finally:
        if watchdog is not None:
            watchdog.stop()
        if workers is not None:
            workers.stop()
        stop_redis(redis_server)


# --- helpers -------------------------------------------------------------------------------------


def upload(cluster: Cluster, workdir: Path, name: str, poison: bytes = b"", parquet: Path | None = None) -> str:
    """archives/{name}.tar.gz with two speech clips and their parquet; `poison` is appended to
    the second clip's bytes (an MP3 decoder ignores trailing junk), `parquet` replaces the
    metadata file."""
    parts = workdir / f"{name}-{uuid.uuid4().hex[:6]}"
    clips = []
    for i, text in enumerate(["the weather is lovely today in the park", "we planted tomatoes and beans"]):
        mp3 = make_speech_mp3(parts / f"{i}.mp3", text)
        if poison and i == 1:
            mp3.write_bytes(mp3.read_bytes() + poison)
        clips.append((f"clips/{name}_{i}.mp3", mp3))
    meta = parquet or make_parquet(
        parts / "meta.parquet", [{"meta_id": Path(member).stem, "creator": f"@{name}"} for member, _ in clips]
    )
    tar = build_tar(parts / f"{name}.tar.gz", [*clips, ("meta.parquet", meta)], gzip=True)
    return cluster.object_store.upload_file(tar, f"archives/{name}.tar.gz").key


def parquet_bomb(path: Path, rows_count: int) -> Path:
    """A parquet of `rows_count` rows that is a few KB on disk (one dictionary value, RLE)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    zeros = pa.array(np.zeros(rows_count, dtype=np.int32))
    column = pa.DictionaryArray.from_arrays(zeros, pa.array(["bomb-row"]))
    pq.write_table(pa.table({"meta_id": column, "creator": column}), path, compression="zstd")
    return path


def finished_run(cluster: Cluster, partition: str, timeout_s: float) -> dg.DagsterRun:
    """The partition's first run, once it has finished."""
    harness = cluster.harness
    first = harness.first_run(partition, timeout_s=180)
    return harness.wait_until(
        lambda: (run := harness.instance.get_run_by_id(first.run_id)).is_finished and run,
        timeout_s,
        f"run {first.run_id} of {partition} to finish",
    )


def celery_executions(instance: dg.DagsterInstance, run_id: str, step: str) -> int:
    """How many times a worker started executing `step` for the run (dagster-celery's event),
    a refused delivery included (Dagster executes it, and the step fails at its start)."""
    return sum(
        1
        for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
        if entry.step_key == step and "in celery worker" in (entry.message or "")
    )


def step_failures(instance: dg.DagsterInstance, run_id: str) -> dict[str, str]:
    return {
        entry.step_key: entry.dagster_event.step_failure_data.error.message
        for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
    }


def dead_letter(cluster: Cluster, run_id: str, timeout_s: float = 120) -> list[dict]:
    """The dead-letter sensor's rows for the run (it ticks every 30 s)."""
    return cluster.harness.wait_until(
        lambda: rows(
            cluster.results_db,
            "SELECT stage, error, retryable, resolved_at FROM processing_failures WHERE run_id = %s",
            (run_id,),
        ),
        timeout_s,
        f"a dead-letter row for run {run_id}",
    )


def deliveries_of_refused_task(worker: CeleryWorker, step: str) -> int:
    """How many times the worker received the step task it refused, from the worker's log."""
    refused = re.search(rf"while running {step} \(task ([0-9a-f-]+)\)", worker.log_text())
    assert refused, worker.log_text()[-3000:]
    return worker.log_text().count(f"Task execute_plan[{refused.group(1)}] received")


def delivery_counts_left(cluster: Cluster) -> int:
    import redis

    client = redis.Redis.from_url(cluster.redis_url)
    try:
        return sum(1 for _ in client.scan_iter(match=KEY_PREFIX + "*"))
    finally:
        client.close()


def assert_new_version_classified(cluster: Cluster, workdir: Path, name: str, partition: str, failed_run) -> float:
    """Overwrite the archive with good input: its run goes through the run queue and succeeds,
    with 0 files lost, 0 duplicate rows, 0 orphan objects, 0 rows whose object disagrees."""
    started = time.monotonic()
    key = upload(cluster, workdir, name)
    runs = cluster.harness.wait_for_partition_success(partition, timeout_s=600)
    elapsed = time.monotonic() - started
    assert runs[0].run_id == failed_run.run_id and len(runs) == 2, [(r.run_id, r.status) for r in runs]
    files = rows(
        cluster.results_db,
        """
        SELECT a.status, a.opus_path, a.opus_etag,
               (SELECT count(*) FROM transcripts t WHERE t.audio_file_id = a.id) AS transcripts,
               (SELECT count(*) FROM classifications c WHERE c.audio_file_id = a.id) AS scores
        FROM audio_files a WHERE a.archive_source = %s""",
        (key,),
    )
    assert [(f["status"], f["transcripts"], f["scores"]) for f in files] == [("classified", 1, 1)] * 2, files
    for f in files:
        assert cluster.object_store.head(f["opus_path"]).etag == f["opus_etag"], f
    referenced = {
        r["opus_path"] for r in rows(cluster.results_db, "SELECT opus_path FROM audio_files") if r["opus_path"]
    }
    stored = {o.key for o in cluster.object_store.iter_objects("processed/")}
    assert stored == referenced, f"orphans: {stored - referenced}, missing: {referenced - stored}"
    return elapsed


def run_seconds(instance: dg.DagsterInstance, run_id: str) -> float:
    record = instance.get_run_record_by_id(run_id)
    return record.end_time - record.start_time


# --- drills --------------------------------------------------------------------------------------


def test_poison_input_that_kills_its_pool_process_fails_the_run_after_n_deliveries(cluster, tmp_path):
    name = "poison_opus"
    key = upload(cluster, tmp_path, name, poison=KILL_MARKER)
    partition = cluster.results_db.archives.partitions_for([key])[key]
    run = finished_run(cluster, partition, timeout_s=600)
    instance = cluster.harness.instance

    killed = cluster.kills.read_text().split() if cluster.kills.exists() else []
    executions = celery_executions(instance, run.run_id, "opus_files")
    failures = step_failures(instance, run.run_id)
    assert run.status == dg.DagsterRunStatus.FAILURE, cluster.workers.logs()
    assert len(killed) == MAX_DELIVERIES and len(set(killed)) == MAX_DELIVERIES  # 3 pool processes
    assert executions == MAX_DELIVERIES + 1  # the 4th failed the step at its start: no 4th kill
    deliveries = deliveries_of_refused_task(cluster.cpu, "opus_files")
    assert deliveries == MAX_DELIVERIES + 1, cluster.cpu.log_text()[-3000:]
    assert f"worker lost {MAX_DELIVERIES} times while running opus_files" in failures.get("opus_files", ""), (
        cluster.harness.log_messages(run.run_id)[-15:],
        cluster.workers.logs(),
    )
    assert run.tags.get("dagster/will_retry") != "true"  # a step failure: no run retry
    assert delivery_counts_left(cluster) == 0

    (row,) = dead_letter(cluster, run.run_id)
    assert row["stage"] == "conversion" and not row["retryable"], row
    assert f"worker lost {MAX_DELIVERIES} times while running opus_files" in row["error"], row
    assert row["resolved_at"] is None

    fail_s = run_seconds(instance, run.run_id)
    next_s = assert_new_version_classified(cluster, tmp_path, name, partition, run)
    record_outcome(
        "Celery: poison input whose ffmpeg SIGKILLs the pool process running `opus_files`",
        f"{deliveries} deliveries: {executions - 1} executions, each killing its pool process ({len(killed)} "
        f"killed), and 1 refused (the step failed at its start, recorded by Dagster); run FAILED "
        f"{fail_s:.0f} s after it started with 'worker lost {MAX_DELIVERIES} times while running opus_files' "
        f"(a step failure, no run retry); dead letter stage {row['stage']}; the overwritten version ran to "
        f"success {next_s:.0f} s after its upload: 2 files classified; files lost 0, duplicate rows 0, orphan "
        "objects 0, rows whose object disagrees 0",
    )


def test_parquet_bomb_on_a_memory_limited_worker_is_read_within_its_memory(cluster, tmp_path):
    # Before metadata was bounded per archive (issue 23 item 10) every row of this bomb became
    # Python objects: each delivery's pool process passed the limit and was killed, and the run
    # failed with "worker lost 3 times while running parquet_metadata" (the poison-input drill
    # above still drills that bound). Now the parquet is streamed and only the rows of the
    # archive's MP3s are kept, so even with the row cap lifted the bomb costs its pool process
    # little: nothing is killed and the archive is classified.
    name = "parquet_bomb"
    bomb = parquet_bomb(tmp_path / "bomb" / "meta.parquet", BOMB_ROWS)
    key = upload(cluster, tmp_path, name, parquet=bomb)
    partition = cluster.results_db.archives.partitions_for([key])[key]
    kills_before = len(cluster.watchdog.kills)
    run = finished_run(cluster, partition, timeout_s=600)
    instance = cluster.harness.instance

    oom_kills = cluster.watchdog.kills[kills_before:]
    assert run.status == dg.DagsterRunStatus.SUCCESS, (step_failures(instance, run.run_id), cluster.workers.logs())
    assert oom_kills == [] and celery_executions(instance, run.run_id, "parquet_metadata") == 1, oom_kills
    assert delivery_counts_left(cluster) == 0
    classified = [f for f in files(cluster.results_db, key).values() if f["status"] == "classified"]
    assert len(classified) == 2, files(cluster.results_db, key)
    assert_objects_agree(cluster.results_db, cluster.object_store, key)
    record_outcome(
        f"Celery: parquet bomb ({bomb.stat().st_size / 1024:.0f} KB, {BOMB_ROWS:,} rows, none of them an MP3's) on a "
        f"CPU worker limited to {MEMORY_LIMIT_MIB} MiB per pool process (test watchdog standing in for the OOM "
        "killer), the row cap lifted on that worker (measured 2026-12-07)",
        f"read streaming in 1 execution, 0 pool processes killed (pool processes peaked at "
        f"{cluster.watchdog.peak_of_survivors_mib():.0f} MiB), run SUCCESS in {run_seconds(instance, run.run_id):.0f} s, "
        "2 files classified (before issue 23 item 10: 3 pool processes killed at about 1,040 MiB and the run FAILED "
        "with 'worker lost 3 times while running parquet_metadata'); files lost 0, duplicate rows 0, orphan objects "
        "0, rows whose object disagrees 0",
    )


def test_wedged_step_is_failed_by_run_monitoring_and_its_time_limit(cluster, tmp_path):
    # This run carries a short max runtime, so it is submitted by hand (as `requeue` does).
    instance = cluster.harness.instance
    cluster.harness.stop_sensor("archive_sensor")
    name = "wedged_opus"
    key = upload(cluster, tmp_path, name, poison=WEDGE_MARKER)
    partition = cluster.results_db.archives.partitions_for([key])[key]
    instance.add_dynamic_partitions("archives", [partition])
    with archive_job_submitter(instance) as submit:
        run = submit({"dagster/partition": partition, "dagster/max_runtime": str(WEDGE_MAX_RUNTIME_S)})
    run = finished_run(cluster, partition, timeout_s=300)
    failed_after_s = run_seconds(instance, run.run_id)

    messages = [e.message or "" for e in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)]
    assert run.status == dg.DagsterRunStatus.FAILURE
    assert any(f"Exceeded maximum runtime of {WEDGE_MAX_RUNTIME_S} seconds" in m for m in messages), messages
    assert failed_after_s >= WEDGE_MAX_RUNTIME_S
    (row,) = dead_letter(cluster, run.run_id)
    assert "maximum runtime" in row["error"] or "hard time limit" in row["error"], row

    # The wedged step itself ends at the CPU queue's hard time limit, which frees the worker: its
    # message goes back with the reason, and its next delivery would fail the step with it (here
    # the run has ended, so the worker drops the revoked message instead).
    harness = cluster.harness
    hard_limit = f"opus_files ran past its hard time limit of {CPU_HARD_LIMIT_S} s"
    harness.wait_until(lambda: hard_limit in cluster.cpu.log_text(), CPU_HARD_LIMIT_S + 60, "the hard time limit")

    # run_retries (dagster.yaml: 2) may start one retry: whether Dagster marks the run to be
    # retried depends on which of run monitoring and the terminated run process reports the
    # failure first. A retry's steps fail at their start: the max runtime bounds the run with
    # its retries, so a run failed for running too long runs no more either way.
    def settled():
        runs = harness.runs(tags={"dagster/partition": partition})
        retried = {r.parent_run_id for r in runs}
        pending = [r for r in runs if r.tags.get("dagster/will_retry") == "true" and r.run_id not in retried]
        return all(r.is_finished for r in runs) and not pending and runs

    runs = list(reversed(harness.wait_until(settled, 3 * (CPU_HARD_LIMIT_S + 60), "every run of the partition to end")))
    # A retry that waits past its own max runtime for the CPU worker (still held by the wedged
    # step until its hard limit) is failed by run monitoring before any step starts, and may be
    # retried in turn, up to run_retries' 2.
    assert len(runs) <= 3 and all(r.status == dg.DagsterRunStatus.FAILURE for r in runs), runs
    retried = []
    for retry in runs[1:]:
        assert retry.root_run_id == run.run_id, retry
        refused = step_failures(instance, retry.run_id)
        assert all("past its max runtime" in error for error in refused.values()), refused
        retried.append(
            f"{', '.join(sorted(refused))} failed at their start (past the max runtime that bounds a run with its "
            "retries)"
            if refused
            else "failed by run monitoring before any step started"
        )
    retried_text = f"run retries started {len(retried)}: " + "; ".join(retried) if retried else ""
    wedged = cluster.wedges.read_text().split()
    assert len(wedged) == 1  # no retry converted anything
    record_outcome(
        f"Celery: wedged `opus_files` (ffmpeg that never ends), run max_runtime {WEDGE_MAX_RUNTIME_S} s, CPU "
        f"queue time limits {CPU_SOFT_LIMIT_S}/{CPU_HARD_LIMIT_S} s (measured 2026-12-07)",
        f"run FAILED by run monitoring {failed_after_s:.0f} s after it started ('Exceeded maximum runtime'); dead "
        f"letter: '{row['error']}'; the step's pool process killed at the hard limit ('{hard_limit}', its message "
        f"put back with that reason); {retried_text or 'run retries started none'}; wedged conversions {len(wedged)}, runs of the "
        f"partition {len(runs)}, all FAILED (before: 3 runs, 3 wedged conversions)",
    )


def test_files_that_always_fail_their_tool_are_their_own_outcome_and_the_rest_is_classified(cluster, tmp_path):
    # Submitted by hand, as requeue does: the wedged-step drill stops the archive sensor.
    archive = tool_faults.archive_with_bad_files(tmp_path / "parts", "bad_files", gzip=True)
    key = cluster.object_store.upload_file(archive, "archives/bad_files.tar.gz").key
    partition = cluster.results_db.archives.partitions_for([key])[key]
    instance = cluster.harness.instance
    instance.add_dynamic_partitions("archives", [partition])
    with archive_job_submitter(instance) as submit:
        submit(archive_run_request(ArchiveVersion.of(cluster.object_store.head(key), partition)).tags)
    run = finished_run(cluster, partition, timeout_s=900)
    assert run.status == dg.DagsterRunStatus.SUCCESS, (step_failures(instance, run.run_id), cluster.workers.logs())
    executions = {
        step: celery_executions(instance, run.run_id, step) for step in ("opus_files", "transcripts", "classifications")
    }
    assert executions == {"opus_files": 3, "transcripts": 3, "classifications": 3}  # each bad file tried 3 times

    stored = {
        r["original_filename"]: r
        for r in rows(
            cluster.results_db,
            "SELECT original_filename, status, failed_stage, error, opus_path, opus_etag FROM audio_files "
            "WHERE archive_source = %s",
            (key,),
        )
    }
    good = {name: r["status"] for name, r in stored.items() if name not in tool_faults.BAD_CLIPS}
    assert good == {f"clips/good{i}.mp3": "classified" for i in range(6)}
    assert {
        name: (stored[name]["status"], stored[name]["failed_stage"], stored[name]["error"])
        for name in tool_faults.BAD_CLIPS
    } == {
        name: ("failed", stage, f"{reason} (after 3 attempts)")
        for name, (stage, reason) in tool_faults.BAD_CLIPS.items()
    }
    assert len(cluster.crashes.read_text().splitlines()) == 3
    for row in stored.values():
        if row["opus_path"]:
            assert cluster.object_store.head(row["opus_path"]).etag == row["opus_etag"], row
    assert key not in {o.key for o in versions_to_catch_up(instance, cluster.object_store, cluster.results_db)}
    record_outcome(
        "Celery: one archive of 6 good clips, 1 whose ffmpeg crashes (SIGSEGV), 1 whose Whisper batch throws, 1 "
        "whose scoring throws, every time",
        f"run SUCCESS {run_seconds(instance, run.run_id):.0f} s after it started: the 6 good clips classified in the "
        "same run; each bad file `failed` at its own stage, '(after 3 attempts)': 3 executions of each step "
        "(a step failure never reached the run); catch-up finds nothing to run; files lost 0, rows whose object "
        "disagrees 0",
    )


def test_doctor_names_the_workers_whose_agreed_settings_differ_from_this_hosts(cluster, monkeypatch):
    from operations.doctor import DoctorSettings, check_host_settings

    for name, value in cluster.harness.env.items():  # this host: the daemon's, which the GPU workers share
        monkeypatch.setenv(name, value)
    result = check_host_settings(DoctorSettings(timeout_s=5), None)

    # cpu-1 runs the drills' own caps and time limits; the GPU workers run this host's settings.
    assert result.state == "fail", result
    differing = dict(part.split(": ", 1) for part in result.detail.split("; "))
    assert [name.split("@")[0] for name in differing] == ["cpu-1"], result.detail
    (cpu,) = differing.values()
    for expected in (
        f"CELERY_CPU_SOFT_TIME_LIMIT_S={CPU_SOFT_LIMIT_S} (here (default))",
        "METADATA_MAX_ROWS=1000000000 (here (default))",
        f"ARCHIVE_CLAIM_STEP_WAIT_S={CLAIM_STEP_WAIT_S} (here (default))",
    ):
        assert expected in cpu, cpu
    assert "CELERY_TASK_LEASE_S" not in cpu  # set alike everywhere
    record_outcome(
        "Celery: per-host settings that disagree (measured 2026-12-07)",
        f"`audio-pipeline doctor` on the daemon's host asked the 3 live workers for their agreed settings: "
        f"[{result.state}] {result.detail}; the 2 GPU workers agree; every step's materialization also "
        "carries its host's values (`host_settings`)",
    )


def plant_scratch(scratch: Path, run_id: str, age_s: float) -> Path:
    """A run's scratch folder with a file, untouched for `age_s`."""
    folder = scratch / run_id / "transcripts"
    folder.mkdir(parents=True)
    (folder / "left-behind.opus").write_bytes(b"x" * 100_000)
    then = time.time() - age_s
    for path in (folder / "left-behind.opus", folder, folder.parent):
        os.utime(path, (then, then))
    return folder.parent


def restart(cluster: Cluster, worker: CeleryWorker, grace_s: float | None = None) -> CeleryWorker:
    """Stop `worker` on purpose as its systemd unit does (SIGTERM to the Celery process: a warm
    shutdown; after `grace_s`, TimeoutStopSec, SIGKILL to all that is left) and start it again."""
    ready_before = worker.log_text().count(" ready.")
    (celery_main,) = psutil.Process(worker.process.pid).children()
    celery_main.send_signal(signal.SIGTERM)
    if grace_s is None:
        worker.process.wait(timeout=60)
    else:
        cluster.harness.wait_until(lambda: "shutdown (MainProcess)" in worker.log_text(), 30, "a warm shutdown", 0.2)
        time.sleep(grace_s)
        os.killpg(worker.process.pid, signal.SIGKILL)
        worker.process.wait(timeout=30)
    env = cluster.gpu_env if worker.queue == GPU_QUEUE else {}
    started = cluster.workers.start_worker(worker.name, worker.queue, env=env)
    cluster.harness.wait_until(
        lambda: started.log_text().count(" ready.") > ready_before, 180, f"{worker.name} ready again"
    )
    return started


def test_every_worker_sweeps_its_own_hosts_scratch_when_it_starts(cluster):
    worker = cluster.workers.workers["gpu-b"]  # a GPU host: no sweep job step ever reaches it
    scratch = worker.workdir / "scratch"
    running = cluster.harness.instance.add_run(
        dg.DagsterRun(job_name="archive_job", run_id=str(uuid.uuid4()), status=dg.DagsterRunStatus.STARTED)
    )
    stale = plant_scratch(scratch, str(uuid.uuid4()), age_s=7 * 3600)  # a killed step's, its run long over
    in_use = plant_scratch(scratch, running.run_id, age_s=7 * 3600)  # old, but its run goes on
    recent = plant_scratch(scratch, str(uuid.uuid4()), age_s=60)
    restarted = restart(cluster, worker)
    cluster.harness.wait_until(lambda: not stale.exists(), 60, "the stale scratch folder to go")
    assert in_use.exists() and recent.exists()
    assert "scratch sweep of" in restarted.log_text()
    cluster.harness.instance.delete_run(running.run_id)
    record_outcome(
        "Celery: scratch left on a GPU host by killed steps (measured 2026-12-07)",
        "a GPU-queue worker restarted with 3 run folders in its SCRATCH_ROOT: the one untouched for 7 h of a run "
        "that had ended was removed by the worker's own sweep as it started (it sweeps hourly after); the "
        "7-h-old one of a running run and a 1-minute-old one were kept",
    )


def test_raw_archive_waits_for_another_runs_claim_outside_its_worker_slot(cluster, tmp_path):
    from resources.archive_run import claim

    instance, harness = cluster.harness.instance, cluster.harness
    soft_limits_before = cluster.cpu.log_text().count("SoftTimeLimitExceeded")  # the wedged drill's
    key = upload(cluster, tmp_path, "claimed_elsewhere")
    partition = cluster.results_db.archives.partitions_for([key])[key]
    instance.add_dynamic_partitions("archives", [partition])
    # Another live run holds the archive (as a `dagster asset materialize` outside the queue would).
    holder = instance.add_run(
        dg.DagsterRun(job_name="claim_holder", run_id=str(uuid.uuid4()), status=dg.DagsterRunStatus.STARTED)
    )
    version = ArchiveVersion.of(cluster.object_store.head(key), partition)
    assert isinstance(claim(cluster.results_db, version, holder.run_id, lambda _: False, resume=False), ArchiveVersion)
    with archive_job_submitter(instance) as submit:
        run = submit(archive_run_request(version).tags)

    def raw_archive_retries():
        return [
            entry.dagster_event.event_specific_data.error
            for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY)
            if entry.step_key == "raw_archive"
        ]

    harness.wait_for_step(run.run_id, "raw_archive", timeout_s=600)
    harness.wait_until(raw_archive_retries, 300, "raw_archive to give its slot back")
    waited_s = run_seconds_so_far(instance, run.run_id)
    instance.report_run_failed(holder)  # the holder ends (a run the instance no longer knows holds on)
    run = finished_run(cluster, partition, timeout_s=600)
    retries = raw_archive_retries()
    causes = [error.to_string() for error in retries]
    assert run.status == dg.DagsterRunStatus.SUCCESS, (step_failures(instance, run.run_id), cluster.workers.logs())
    assert retries and all("ArchiveBusy" in cause and "SoftTimeLimitExceeded" not in cause for cause in causes), causes
    assert cluster.cpu.log_text().count("SoftTimeLimitExceeded") == soft_limits_before
    executions = celery_executions(instance, run.run_id, "raw_archive")
    assert executions == len(retries) + 1
    record_outcome(
        f"Celery: raw_archive of an archive another live run holds, CPU soft time limit {CPU_SOFT_LIMIT_S} s "
        "(measured 2026-12-07)",
        f"each execution of raw_archive waited {CLAIM_STEP_WAIT_S} s in its slot (ARCHIVE_CLAIM_STEP_WAIT_S; "
        f"production 300 s against a 2-h soft limit) and asked Dagster for a retry a minute later, outside any slot "
        f"(SoftTimeLimitExceeded 0 times); the holder ended {waited_s:.0f} s into the run and execution "
        f"{executions} took the claim: run SUCCESS, 2 files classified",
    )


def run_seconds_so_far(instance: dg.DagsterInstance, run_id: str) -> float:
    record = instance.get_run_record_by_id(run_id)
    return time.time() - (record.start_time or time.time())


def slow_archive(cluster: Cluster, workdir: Path, name: str) -> str:
    """archives/{name}.tar.gz with one speech clip whose transcription takes WHISPER_SLOW_S longer."""
    parts = workdir / name
    clip = make_speech_mp3(parts / "slow.mp3", "the weather is lovely today in the park")
    clip = tool_faults.with_title(clip, tool_faults.WHISPER_SLOW)
    meta = make_parquet(parts / "meta.parquet", [{"meta_id": "slow", "creator": f"@{name}"}])
    tar = build_tar(parts / f"{name}.tar.gz", [("clips/slow.mp3", clip), ("meta.parquet", meta)], gzip=True)
    return cluster.object_store.upload_file(tar, f"archives/{name}.tar.gz").key


def test_a_long_step_whose_worker_is_stopped_on_purpose_three_times_still_completes(cluster, tmp_path):
    instance, harness = cluster.harness.instance, cluster.harness
    key = slow_archive(cluster, tmp_path, "restarted_gpu")
    partition = cluster.results_db.archives.partitions_for([key])[key]
    instance.add_dynamic_partitions("archives", [partition])
    with archive_job_submitter(instance) as submit:
        submit(archive_run_request(ArchiveVersion.of(cluster.object_store.head(key), partition)).tags)

    def slow_starts() -> list[int]:
        return [int(pid) for pid in cluster.slow_starts.read_text().split()] if cluster.slow_starts.exists() else []

    seen = len(slow_starts())
    stopped = []
    for _ in range(MAX_DELIVERIES):  # a rolling restart of the GPU workers, three times over
        pid = harness.wait_until(lambda n=seen: slow_starts()[n:], 300, "the long transcription to start", 0.5)[0]
        seen += 1
        (worker,) = [w for w in cluster.workers.workers.values() if pid in {p.pid for p in w.pool_processes()}]
        restart(cluster, worker, grace_s=STOP_GRACE_S)
        stopped.append(worker.name)
    run = finished_run(cluster, partition, timeout_s=600)

    assert run.status == dg.DagsterRunStatus.SUCCESS, (step_failures(instance, run.run_id), cluster.workers.logs())
    assert celery_executions(instance, run.run_id, "transcripts") == MAX_DELIVERIES + 1
    assert len(slow_starts()) == seen + 1  # each delivery ran the step; the 4th to its end
    given_back = sum(w.log_text().count("does not count") for w in cluster.workers.workers.values())
    assert given_back >= MAX_DELIVERIES
    file = files(cluster.results_db, key)["clips/slow.mp3"]
    assert file["status"] == "classified", file
    assert fault_report.failures(cluster.results_db, key) == {}
    objects = assert_objects_agree(cluster.results_db, cluster.object_store, key)
    (materialization,) = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("transcripts"), asset_partitions=[partition]), limit=1
    ).records
    reported = materialization.event_log_entry.asset_materialization.metadata["host_settings"].value
    assert reported["CELERY_TASK_LEASE_S"] == str(LEASE_S) and reported["code_version"], reported
    record_outcome(
        f"Celery: a long `transcripts` step ({tool_faults.WHISPER_SLOW_S} s longer) whose GPU worker is stopped on "
        f"purpose 3 times (measured 2026-12-07)",
        f"two GPU-queue workers; each time the step ran, the worker running it got SIGTERM (warm shutdown, its "
        f"running delivery given back), then SIGKILL {STOP_GRACE_S} s later (TimeoutStopSec) and was started "
        f"again ({', '.join(stopped)}); the 4th delivery ran the step to its end: run SUCCESS, not 'worker lost "
        f"3 times'; 1 file classified, files lost 0, duplicate rows 0, orphan objects 0 ({objects} object), rows "
        "whose object disagrees 0",
    )


def test_a_delivery_that_redis_will_not_count_goes_back_on_its_queue_unrun(tmp_path, monkeypatch):
    """Redis that refuses writes (full, with the noeviction policy deploy/README.md asks for):
    the step is not run uncounted; its message goes back on its queue."""
    import redis
    from celery import Celery

    from workers import deliveries
    from workers.deliveries import BoundedStep

    monkeypatch.setattr(deliveries, "COUNT_RETRY_DELAYS_S", (0.1, 0.2), raising=False)
    monkeypatch.setattr(BoundedStep, "_counter", None)
    server = start_redis(tmp_path / "redis")
    try:
        app = Celery(broker=server.url(0), backend=server.url(1), set_as_current=False)
        ran = []

        @app.task(bind=True, base=BoundedStep, name="bounded_step")
        def bounded_step(self, execute_step_args_packed):
            ran.append(self.request.id)
            return []

        client = redis.Redis.from_url(server.url(0))
        client.config_set("maxmemory", 1)  # every write refused: "OOM command not allowed"
        refused = bounded_step.apply(kwargs={"execute_step_args_packed": {}})
        client.config_set("maxmemory", 0)
        counted = bounded_step.apply(kwargs={"execute_step_args_packed": {}})
    finally:
        monkeypatch.setattr(BoundedStep, "_counter", None)
        stop_redis(server)
    assert refused.state == "REJECTED" and ran == [counted.id], (refused.state, ran)
    assert counted.state == "SUCCESS"
    record_outcome(
        "Celery: Redis refuses the delivery count (full, noeviction) (measured 2026-12-07)",
        "the step task did not run; after its retries the delivery was rejected back onto its queue (Celery's "
        "Reject with requeue), logged as an error; once Redis took writes again the next delivery was counted "
        "and ran",
    )


def test_a_refused_steps_answer_is_dagsters_own_step_failure_event(tmp_path):
    """What a refused delivery answers is what Dagster itself records when the step's body (an
    asset of the archive job, with its I/O retry policy, or an asset check) fails at its start:
    the STEP_FAILURE with the reason, read back from the instance's event log; no retry, and
    nothing of the body ran."""
    from audio_assets.archive_job import archive_asset, gated_step, refusing

    ran = []

    @archive_asset(kinds={"python"}, manifest=False)
    def toy_step(context):  # (annotations are strings in this module: Dagster needs none)
        ran.append("asset")
        return dg.MaterializeResult()

    @dg.asset
    def plain():
        return 1

    @dg.asset_check(asset=plain)
    @gated_step
    def toy_check():
        ran.append("check")
        return dg.AssetCheckResult(passed=True)

    reason = f"worker lost {MAX_DELIVERIES} times while running the step"
    with dg.DagsterInstance.local_temp(str(tmp_path)) as instance:
        instance.add_dynamic_partitions("archives", ["p"])
        for assets, options in (
            ([toy_step], {"partition_key": "p"}),
            ([plain, toy_check], {"selection": dg.AssetSelection.checks(toy_check)}),
        ):
            with refusing(reason):
                result = dg.materialize(assets, instance=instance, raise_on_error=False, **options)
            stored = instance.all_logs(result.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
            (failure,) = [entry.dagster_event for entry in stored]
            assert failure.step_failure_data.user_failure_data.description == reason
            assert reason in failure.step_failure_data.error.message
            retries = instance.all_logs(result.run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY)
            assert not result.success and retries == []
    assert ran == []
