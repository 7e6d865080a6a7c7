"""Two executions of one step, in Celery mode: a twin in the same run (the step's message
delivered again while the first worker still works) and a step that outlives its run.

One cluster for the module, as production runs it: Redis (broker and result backend),
PostgreSQL, SeaweedFS, `dagster-daemon` with the repository's dagster.yaml, two CPU workers and
one "GPU" worker (a CPU process running the real Whisper base model). The two CPU workers share
one scratch folder, as two worker processes on one host do. Their ffmpeg is the real one behind
a wrapper that waits before each conversion while the test asks it to (a file per worker holds
the delay), so a step is still converting when the fault comes, and counts its conversions.

Twin: the worker running `opus_files` is stopped (SIGSTOP to its process group: the worker,
its pool process and ffmpeg) for longer than the message lease, so the message is handed to
the other worker, which starts a second execution of the step in the same run; the first is
then continued (SIGCONT) while the second still works. Outlived run: the run is cancelled
mid-`opus_files` (its Celery task is revoked, which does not stop a task already running), and
the archive's next run takes over while the old execution keeps converting.

Each ends with the audit: every row's Opus object HEADed against the row (ETag), every object
under processed/ pointed to by a row or queued in object_deletions, then (after the hourly
sweep) nothing queued and nothing else stored; every file classified once.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
from celery_cluster import CeleryCluster, CeleryWorker, production_environment
from fault_report import files, orphan_objects, record_outcome

from archive_identity import ArchiveVersion
from audio_assets.archive_job import archive_run_request
from audio_assets.scratch_sweep import scratch_sweep_job
from embedded_services.redis import start_redis, stop_redis
from media.ffmpeg_binary import resolve_ffmpeg
from operations.run_submission import archive_job_submitter
from resources.archive_run import ArchiveRun
from resources.object_store import ObjectStore
from resources.results_db import ResultsDatabase
from resources.scratch import ScratchSpace
from testing.archive_factory import build_tar, make_tone_mp3
from testing.daemon_harness import DaemonHarness
from testing.pipeline_support import rows
from workers.settings import CPU_QUEUE, GPU_QUEUE

pytestmark = [pytest.mark.e2e, pytest.mark.faults, pytest.mark.distributed]

LEASE_S = 10  # the Celery message lease: a stopped worker's step goes to another after this
CLAIM_TTL_S = 30  # the claim's TTL: an execution renews every 5 s and stops uploading after 15 s
CPU_WORKERS = ("cpu-1", "cpu-2")
FILES_PER_COMMIT = 10

FFMPEG_WRAPPER = """#!/bin/bash
# The real ffmpeg, after the delay the test wrote for this worker (if any); each call counted.
echo "$$" >> "{calls}/$WORKER_NAME"
flag="{slow}/$WORKER_NAME"
[ -s "$flag" ] && sleep "$(cat "$flag")"
exec "{real}" "$@"
"""


@dataclass
class Cluster:
    harness: DaemonHarness
    workers: CeleryCluster
    object_store: ObjectStore
    results_db: ResultsDatabase
    scratch: Path
    slow: Path
    calls: Path
    redis_url: str

    def cpu(self, name: str) -> CeleryWorker:
        return self.workers.workers[name]

    def set_delay(self, worker: str, seconds: float) -> None:
        (self.slow / worker).write_text(f"{seconds:g}" if seconds else "")

    def conversions(self, worker: str) -> int:
        path = self.calls / worker
        return len(path.read_text().split()) if path.exists() else 0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3_server, postgres_server) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("twin-executions")
    redis_server = start_redis(root / "redis")
    object_store, results_db, pipeline = production_environment(root, s3_server, postgres_server, redis_server, LEASE_S)
    slow, calls, wrapper, scratch = root / "slow", root / "calls", root / "ffmpeg-wrapper", root / "host-scratch"
    slow.mkdir()
    calls.mkdir()
    wrapper.write_text(FFMPEG_WRAPPER.format(slow=slow, calls=calls, real=resolve_ffmpeg()))
    wrapper.chmod(0o755)
    workers = None
    try:
        with DaemonHarness(root / "control", postgres_server, pipeline) as harness:
            harness.env["ARCHIVE_CLAIM_TTL_S"] = str(CLAIM_TTL_S)
            workers = CeleryCluster(harness, root / "hosts")
            for name in CPU_WORKERS:  # one host: one scratch folder
                workers.start_worker(name, CPU_QUEUE, env={"FFMPEG_BINARY": str(wrapper), "SCRATCH_ROOT": str(scratch)})
            workers.start_worker("gpu-a", GPU_QUEUE)
            workers.wait_until_ready()
            harness.start_daemon()
            harness.stop_sensor("archive_sensor")  # runs are submitted by hand, with their config
            try:
                yield Cluster(harness, workers, object_store, results_db, scratch, slow, calls, redis_server.url(0))
            except BaseException:
                print(harness.daemon_log(), workers.logs())
                raise
    finally:
        if workers is not None:
            for worker in workers.workers.values():  # never leave a stopped process group behind
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(worker.process.pid, signal.SIGCONT)
            workers.stop()
        stop_redis(redis_server)


# --- helpers -------------------------------------------------------------------------------------


def upload_tones(cluster: Cluster, workdir: Path, name: str, count: int) -> str:
    """archives/{name}.tar.gz with `count` short tone MP3s (a few distinct ones, repeated)."""
    tones = [make_tone_mp3(workdir / f"tone{i}.mp3", seconds=0.6, freq=300 + 70 * i) for i in range(5)]
    members = [(f"clips/{name}_{i:03d}.mp3", tones[i % len(tones)]) for i in range(count)]
    archive = build_tar(workdir / f"{name}.tar.gz", members, gzip=True)
    return cluster.object_store.upload_file(archive, f"archives/{name}.tar.gz").key


def submit(cluster: Cluster, key: str) -> dg.DagsterRun:
    """A run of the archive's current version, as requeue submits one, committing every
    FILES_PER_COMMIT files (so the fault lands between commits)."""
    instance = cluster.harness.instance
    partition = cluster.results_db.archives.partitions_for([key])[key]
    instance.add_dynamic_partitions("archives", [partition])
    tags = archive_run_request(ArchiveVersion.of(cluster.object_store.head(key), partition)).tags
    config = {"ops": {"opus_files": {"config": {"files_per_commit": FILES_PER_COMMIT}}}}
    with archive_job_submitter(instance) as launch:
        return launch(tags, run_config=config)


def executions(instance: dg.DagsterInstance, run_id: str, step: str) -> list[str]:
    """The Celery workers that started executing `step` for the run, in order."""
    return [
        str(entry.dagster_event.engine_event_data.metadata["Celery worker"].value).split("@")[0]
        for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
        if entry.step_key == step and "in celery worker" in (entry.message or "")
    ]


def converted(cluster: Cluster, key: str) -> int:
    return rows(
        cluster.results_db,
        "SELECT count(*) AS n FROM audio_files WHERE archive_source = %s AND opus_path IS NOT NULL",
        (key,),
    )[0]["n"]


def idle(worker: CeleryWorker) -> bool:
    """Every task the worker received has ended (its log says so), and no ffmpeg is left."""
    log = worker.log_text()
    received = len(re.findall(r"Task execute_plan\[[0-9a-f-]+\] received", log))
    ended = len(re.findall(r"Task execute_plan\[[0-9a-f-]+\] (succeeded|raised|retry)", log))
    ffmpeg = [p for pool in worker.pool_processes() for p in pool.children()]
    return received == ended and not ffmpeg


def finished(cluster: Cluster, run_id: str, timeout_s: float) -> dg.DagsterRun:
    harness = cluster.harness
    return harness.wait_until(
        lambda: (run := harness.instance.get_run_by_id(run_id)).is_finished and run, timeout_s, f"run {run_id}"
    )


def sweep(cluster: Cluster) -> int:
    """The hourly sweep job, as its schedule runs it."""
    scratch = ScratchSpace(root=str(cluster.scratch))
    archive_run = ArchiveRun(object_store=cluster.object_store, results_db=cluster.results_db, scratch=scratch)
    result = scratch_sweep_job.execute_in_process(
        instance=cluster.harness.instance, resources={"scratch": scratch, "archive_run": archive_run}
    )
    assert result.success
    return result.output_for_node("sweep_abandoned_uploads")


@dataclass(frozen=True)
class Audit:
    files: int
    lost: list[str]  # members not classified
    duplicates: list[str]  # members with other than one transcript and one score
    disagreeing: list[str]  # rows whose object is missing or has another ETag (HEAD)
    orphans: list[str]  # objects under processed/ no row points to and nothing queued
    queued: int  # keys still in object_deletions

    def clean(self) -> bool:
        return not (self.lost or self.duplicates or self.disagreeing or self.orphans)


def audit(cluster: Cluster, key: str) -> Audit:
    found = files(cluster.results_db, key)
    counts = rows(
        cluster.results_db,
        """
        SELECT a.original_filename,
               (SELECT count(*) FROM transcripts t WHERE t.audio_file_id = a.id) AS transcripts,
               (SELECT count(*) FROM classifications c WHERE c.audio_file_id = a.id) AS scores
        FROM audio_files a WHERE a.archive_source = %s""",
        (key,),
    )
    pointed = {r["opus_path"]: r["opus_etag"] for r in found.values() if r["opus_path"]}
    disagreeing = []
    for path, etag in pointed.items():
        head = cluster.object_store.head(path)
        if head is None or head.etag != etag:
            disagreeing.append(f"{path}: {'missing' if head is None else head.etag} (row: {etag})")
    queued = rows(cluster.results_db, "SELECT count(*) AS n FROM object_deletions")[0]["n"]
    return Audit(
        files=len(found),
        lost=sorted(name for name, r in found.items() if r["status"] != "classified"),
        duplicates=sorted(c["original_filename"] for c in counts if (c["transcripts"], c["scores"]) != (1, 1)),
        disagreeing=sorted(disagreeing),
        orphans=orphan_objects(cluster.results_db, cluster.object_store),  # the module's archives share the bucket
        queued=queued,
    )


def cut_broker_connections(cluster: Cluster, worker: CeleryWorker) -> int:
    """Close every connection the worker's processes hold to Redis (CLIENT KILL), as a Redis
    restart or a network reset does to that host; Redis itself stays up. Returns how many."""
    import psutil
    import redis

    port = int(cluster.redis_url.rsplit(":", 1)[1].split("/")[0])
    launcher = psutil.Process(worker.process.pid)
    addresses = set()
    for process in [launcher, *launcher.children(recursive=True)]:
        try:
            connections = process.net_connections(kind="tcp")
        except psutil.NoSuchProcess:  # an ffmpeg that ended meanwhile
            continue
        addresses |= {f"{c.laddr.ip}:{c.laddr.port}" for c in connections if c.raddr and c.raddr.port == port}
    client = redis.Redis.from_url(cluster.redis_url)
    try:
        return sum(bool(client.client_kill(address)) for address in addresses)
    finally:
        client.close()


def missing_working_files(cluster: Cluster, key: str) -> list[str]:
    """Failures (open or closed) that say a file in a working folder was gone."""
    found = rows(
        cluster.results_db,
        "SELECT original_filename, error FROM processing_failures WHERE archive_source = %s",
        (key,),
    )
    return [f"{r['original_filename']}: {r['error']}" for r in found if "No such file" in (r["error"] or "")]


# --- drills --------------------------------------------------------------------------------------


def test_a_twin_execution_of_opus_files_in_the_same_run_never_clobbers_the_other(cluster, tmp_path):
    harness, instance = cluster.harness, cluster.harness.instance
    members = 200
    for name in CPU_WORKERS:
        cluster.set_delay(name, 0.3)
    key = upload_tones(cluster, tmp_path, "twin_opus", members)
    run = submit(cluster, key)

    harness.wait_until(lambda: executions(instance, run.run_id, "opus_files"), 300, "opus_files to start", 0.5)
    first = executions(instance, run.run_id, "opus_files")[0]
    second = next(name for name in CPU_WORKERS if name != first)
    harness.wait_until(lambda: converted(cluster, key) >= 2 * FILES_PER_COMMIT, 300, "two commits", 0.5)

    # The first worker stops (its message lease with it) past the lease: the other takes the step.
    os.killpg(cluster.cpu(first).process.pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        harness.wait_until(
            lambda: len(executions(instance, run.run_id, "opus_files")) >= 2, 120, "a second execution", 0.5
        )
        before = cluster.conversions(second)
        harness.wait_until(lambda: cluster.conversions(second) >= before + 20, 120, "the twin converting", 0.5)
    finally:
        os.killpg(cluster.cpu(first).process.pid, signal.SIGCONT)  # both now work at once
    stopped_s = time.monotonic() - stopped_at

    run = finished(cluster, run.run_id, 900)
    harness.wait_until(lambda: all(idle(cluster.cpu(n)) for n in CPU_WORKERS), 600, "both twins to end", 1)
    counted = {name: cluster.conversions(name) for name in CPU_WORKERS}
    before_sweep = audit(cluster, key)
    gone = missing_working_files(cluster, key)
    print(f"run {run.status}, executions {executions(instance, run.run_id, 'opus_files')}, conversions {counted}")
    print(f"before the sweep: {before_sweep}\nmissing working files: {gone[:5]}")
    assert before_sweep.disagreeing == [] and before_sweep.orphans == [], before_sweep
    swept = sweep(cluster)
    after = audit(cluster, key)
    assert after.clean() and after.queued == 0 and after.files == members, after
    assert gone == []  # a twin on the same host never removed the other's working folder
    assert run.status == dg.DagsterRunStatus.SUCCESS, harness.log_messages(run.run_id)[-20:]
    opus_executions = executions(instance, run.run_id, "opus_files")
    assert len(opus_executions) >= 2 and set(opus_executions) == set(CPU_WORKERS), opus_executions
    record_outcome(
        "Celery: twin executions of `opus_files` in one run (two CPU workers on one host, 200 files; the worker "
        f"running it SIGSTOPped for {stopped_s:.0f} s, past the {LEASE_S} s message lease, then continued while "
        "the other worker's execution of the same step still worked)",
        f"run {run.status.value}; executions of opus_files {len(opus_executions)} "
        f"({' -> '.join(opus_executions)}); ffmpeg conversions {counted[first]} on the stopped worker, "
        f"{counted[second]} on the other; the older execution was fenced out (its uploads refused, its commit "
        f"'taken over'); {before_sweep.queued} queued key(s) left by it deleted by the sweep ({swept}); "
        f"{after.files} files classified: files lost 0, duplicate rows 0, orphan objects 0, rows whose object "
        "disagrees 0 (HEAD of every row's object); working files lost to the twin 0",
    )


def test_a_step_that_outlives_its_cancelled_run_leaves_no_object_behind(cluster, tmp_path):
    harness, instance = cluster.harness, cluster.harness.instance
    members = 40
    for name in CPU_WORKERS:
        cluster.set_delay(name, 1.5)  # the old execution is still converting when the next run starts
    key = upload_tones(cluster, tmp_path, "outlived_opus", members)
    run = submit(cluster, key)
    harness.wait_until(lambda: executions(instance, run.run_id, "opus_files"), 300, "opus_files to start", 0.5)
    old_worker = executions(instance, run.run_id, "opus_files")[0]
    other = next(name for name in CPU_WORKERS if name != old_worker)
    harness.wait_until(lambda: converted(cluster, key) >= FILES_PER_COMMIT, 300, "a first commit", 0.5)

    # Cancelled: Dagster revokes the step's Celery task, which does not stop it once it runs.
    at_cancel = cluster.conversions(old_worker)
    assert instance.run_launcher.terminate(run.run_id)
    cancelled = finished(cluster, run.run_id, 120)
    assert cancelled.status == dg.DagsterRunStatus.CANCELED
    cluster.set_delay(other, 0)  # the next run's steps go at full speed on the other worker
    retry = submit(cluster, key)
    samples: list[Audit] = []
    deadline = time.monotonic() + 900
    while not (run_now := instance.get_run_by_id(retry.run_id)).is_finished or not idle(cluster.cpu(old_worker)):
        assert time.monotonic() < deadline, (run_now.status, cluster.workers.logs())
        samples.append(audit(cluster, key))  # rows ∪ queue cover processed/ at every moment
        time.sleep(2)
    old_conversions = cluster.conversions(old_worker) - at_cancel
    before_sweep = audit(cluster, key)
    orphans_seen = sorted({o for sample in samples for o in sample.orphans})
    print(f"retry {run_now.status}; orphans seen {len(orphans_seen)} {orphans_seen[:5]}; before sweep {before_sweep}")
    assert run_now.status == dg.DagsterRunStatus.SUCCESS, harness.log_messages(retry.run_id)[-20:]
    assert orphans_seen == [] and before_sweep.orphans == [], (orphans_seen, before_sweep)
    swept = sweep(cluster)
    after = audit(cluster, key)
    assert after.clean() and after.queued == 0 and after.files == members, after
    record_outcome(
        "Celery: a step that outlives its run (run cancelled mid-`opus_files`, 40 files; the revoked task "
        "keeps converting on its worker while the archive's next run takes over on the other)",
        f"next run {run_now.status.value}; the old execution stopped uploading once it saw its claim lost "
        f"({old_conversions} conversions on its worker after the cancel); {len(samples)} audits while both worked: "
        f"every object under processed/ was a row's or queued ({before_sweep.queued} queued once both ended), "
        f"the hourly sweep deleted {swept}; {after.files} files classified: files lost 0, duplicate rows 0, "
        "orphan objects 0, rows whose object disagrees 0",
    )


def test_a_worker_that_loses_the_broker_mid_step_stops_it_and_the_step_runs_once_elsewhere(cluster, tmp_path):
    harness, instance = cluster.harness, cluster.harness.instance
    members = 100
    for name in CPU_WORKERS:
        cluster.set_delay(name, 0.3)
    key = upload_tones(cluster, tmp_path, "broker_cut", members)
    run = submit(cluster, key)
    harness.wait_until(lambda: executions(instance, run.run_id, "opus_files"), 300, "opus_files to start", 0.5)
    first = executions(instance, run.run_id, "opus_files")[0]
    harness.wait_until(lambda: converted(cluster, key) >= 2 * FILES_PER_COMMIT, 300, "two commits", 0.5)

    cut_at = rows(cluster.results_db, "SELECT now() AS t")[0]["t"]
    cut = cut_broker_connections(cluster, cluster.cpu(first))
    harness.wait_until(lambda: len(executions(instance, run.run_id, "opus_files")) >= 2, 120, "the step elsewhere", 0.5)
    run = finished(cluster, run.run_id, 900)
    harness.wait_until(lambda: all(idle(cluster.cpu(n)) for n in CPU_WORKERS), 600, "both workers to be idle", 1)
    (original, *_) = rows(
        cluster.results_db,
        "SELECT execution, extract(epoch FROM ended_at - %s) AS ran_on_s FROM step_executions "
        "WHERE run_id = %s AND step = 'opus_files' ORDER BY execution",
        (cut_at, run.run_id),
    )
    before_sweep = audit(cluster, key)
    opus_executions = executions(instance, run.run_id, "opus_files")
    print(f"cut {cut}; run {run.status}; executions {opus_executions}; original {original}; {before_sweep}")
    assert run.status == dg.DagsterRunStatus.SUCCESS, harness.log_messages(run.run_id)[-20:]
    assert before_sweep.disagreeing == [] and before_sweep.orphans == [], before_sweep
    swept = sweep(cluster)
    after = audit(cluster, key)
    assert after.clean() and after.queued == 0 and after.files == members, after
    # The worker stopped its own execution when it saw the loss (Celery's warning says so).
    assert "cannot be acknowledged after a connection loss" in cluster.cpu(first).log_text()
    record_outcome(
        f"Celery: the broker connections of the worker running `opus_files` closed (CLIENT KILL of its {cut} "
        "Redis connections; Redis stays up, as after a restart or a network reset), 100 files",
        f"run {run.status.value}; executions of opus_files {len(opus_executions)} ({' -> '.join(opus_executions)}): "
        "the worker put the message back on the queue as it reconnected and terminated its own execution "
        f"(which ended {float(original['ran_on_s']):.1f} s after the cut, its answer a retry request), the step "
        f"ran again elsewhere; the sweep deleted {swept} queued key(s); files lost 0, duplicate rows 0, orphan "
        "objects 0, rows whose object disagrees 0",
    )
