"""Steps on dagster-celery workers with Redis, as production runs them on several hosts.

One cluster for the module, every part a separate process with its own working directory:
Redis (broker and result backend), PostgreSQL (Dagster instance and results), SeaweedFS (S3),
`dagster-daemon` with the repository's dagster.yaml and AUDIO_PIPELINE_ENV=production (so
runs use celery_executor and the object-store IO manager), one CPU worker on the `cpu` queue
and two "GPU" workers on the `gpu` queue. The GPU workers are CPU processes standing in for
GPU hosts (this machine has no GPU); they run the real Whisper base model.

Measured from the event log: which worker ran each step (its engine event and the step's
materialization metadata), how often each worker process loaded Whisper, when GPU steps
started and ended; and from the results database and the workers' own counters, what a
worker lost mid-`transcripts` cost.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
from celery_cluster import CeleryCluster, production_environment

from embedded_services.redis import start_redis, stop_redis
from operations.run_submission import archive_job_submitter
from resources.object_store import ObjectStore
from resources.results_db import ResultsDatabase
from testing.archive_factory import build_tar, ffmpeg_exe, make_parquet, make_speech_mp3
from testing.daemon_harness import BIN, DaemonHarness
from testing.pipeline_support import rows
from workers.settings import CPU_QUEUE, GPU_QUEUE

pytestmark = [pytest.mark.e2e, pytest.mark.distributed]

GPU_STEPS = {"transcripts", "classifications"}
GPU_WORKERS = ("gpu-a", "gpu-b")
CPU_WORKER = "cpu-1"
# How long a lost worker's step waits before another worker takes it (production: 300 s). Shorter
# than the first transcription on each worker (model load included), so test 1 also shows that a
# live worker's renewals keep a long step from being handed out twice.
LEASE_S = 10

ARCHIVES = {
    "batch_w1": ["the weather is lovely today in the park", "we planted tomatoes and beans"],
    "batch_w2": ["the train to the city leaves at nine", "you are a stupid idiot"],
    "batch_w3": ["please close the window before you leave", "the library opens at ten"],
}
KILL_ARCHIVE = (
    "batch_wkill",
    [
        "the first clip talks about the sea and the boats that sail on it every summer",
        "the second clip talks about the mountains and the snow that covers them in winter",
        "the third clip talks about the river that runs through the old town to the sea",
        "the fourth clip talks about the forest where the deer and the foxes live",
        "the fifth clip talks about the desert where it hardly ever rains at all",
    ],
)


@dataclass(frozen=True)
class StepRecord:
    """One execution of a step, as the event log tells it."""

    run_id: str
    step: str
    celery_worker: str  # from dagster-celery's "Executing steps ... in celery worker" event
    started: float
    ended: float | None
    metadata: dict


@dataclass
class Cluster:
    harness: DaemonHarness
    workers: CeleryCluster
    object_store: ObjectStore
    results_db: ResultsDatabase


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3_server, postgres_server) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("celery-cluster")
    redis_server = start_redis(root / "redis")
    object_store, results_db, pipeline = production_environment(root, s3_server, postgres_server, redis_server, LEASE_S)
    workers = None
    try:
        with DaemonHarness(root / "control", postgres_server, pipeline) as harness:
            workers = CeleryCluster(harness, root / "hosts")
            workers.start_worker(CPU_WORKER, CPU_QUEUE)
            for name in GPU_WORKERS:
                workers.start_worker(name, GPU_QUEUE)
            # The documented command: at most one GPU step at a time, instance-wide.
            subprocess.run(
                [str(BIN / "dagster"), "instance", "concurrency", "set", "gpu", "1"],
                env=harness.env,
                check=True,
                capture_output=True,
            )
            workers.wait_until_ready()
            harness.start_daemon()
            try:
                yield Cluster(harness, workers, object_store, results_db)
            except BaseException:
                print(harness.daemon_log(), workers.logs())
                raise
    finally:
        if workers is not None:
            workers.stop()
        stop_redis(redis_server)


def upload_archive(cluster: Cluster, workdir: Path, name: str, sentences: list[str]) -> str:
    parts = workdir / name
    members = [(f"clips/{name}_{i}.mp3", make_speech_mp3(parts / f"{i}.mp3", text)) for i, text in enumerate(sentences)]
    members.append(
        (
            "meta.parquet",
            make_parquet(
                parts / "meta.parquet", [{"meta_id": Path(member).stem, "creator": f"@{name}"} for member, _ in members]
            ),
        )
    )
    return cluster.object_store.upload_file(
        build_tar(workdir / f"{name}.tar.gz", members, gzip=True), f"archives/{name}.tar.gz"
    ).key


def step_records(instance: dg.DagsterInstance, run_id: str) -> list[StepRecord]:
    """Each execution of each step of the run, in order (a redelivered step has two)."""
    executions: dict[str, list[dict]] = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or entry.step_key is None:
            continue
        attempts = executions.setdefault(entry.step_key, [])
        if event.event_type == dg.DagsterEventType.ENGINE_EVENT and "in celery worker" in (event.message or ""):
            worker = event.engine_event_data.metadata["Celery worker"].value
            attempts.append({"worker": worker, "started": None, "ended": None, "metadata": {}})
        elif not attempts:
            continue
        elif event.event_type == dg.DagsterEventType.STEP_START:
            attempts[-1]["started"] = entry.timestamp
        elif event.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
            attempts[-1]["ended"] = entry.timestamp
        elif event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
            attempts[-1]["metadata"] = {k: v.value for k, v in entry.asset_materialization.metadata.items()}
    return [
        StepRecord(run_id, step, a["worker"].split("@")[0], a["started"], a["ended"], a["metadata"])
        for step, attempts in executions.items()
        for a in attempts
    ]


def assert_classified_once(results_db: ResultsDatabase, key: str, members: int) -> None:
    files = rows(results_db, "SELECT id, status FROM audio_files WHERE archive_source = %s", (key,))
    assert len(files) == members and {f["status"] for f in files} == {"classified"}, files
    ids = [f["id"] for f in files]
    per_file = rows(
        results_db,
        """
        SELECT a.id, (SELECT count(*) FROM transcripts t WHERE t.audio_file_id = a.id) AS transcripts,
               (SELECT count(*) FROM classifications c WHERE c.audio_file_id = a.id) AS scores
        FROM audio_files a WHERE a.id = ANY(%s)""",
        (ids,),
    )
    assert all(r["transcripts"] == 1 and r["scores"] == 1 for r in per_file), per_file  # 0 duplicates


def overlapping(windows: list[tuple[float, float, str]]) -> list[tuple]:
    ordered = sorted(windows)
    return [(a, b) for a, b in zip(ordered, ordered[1:]) if b[0] < a[1]]


def test_steps_run_on_their_queues_one_gpu_step_at_a_time(cluster, tmp_path, record_outcome):
    keys = {name: upload_archive(cluster, tmp_path, name, sentences) for name, sentences in ARCHIVES.items()}
    harness = cluster.harness
    started = time.monotonic()
    runs = {name: harness.wait_for_partition_success(name, timeout_s=600)[-1] for name in ARCHIVES}
    elapsed = time.monotonic() - started
    records = [r for run in runs.values() for r in step_records(harness.instance, run.run_id)]
    print(
        *(
            f"{r.run_id[:8]} {r.step:40} {r.celery_worker:6} pid={r.metadata.get('worker_pid')} "
            f"{r.started:.1f}-{r.ended:.1f} whisper_loads={r.metadata.get('whisper_loads_in_process')}"
            for r in sorted(records, key=lambda r: r.started)
        ),
        sep="\n",
    )

    # 1. Routing: CPU steps only on the CPU worker, GPU steps only on GPU workers, and the
    #    step's own metadata (written by the process that ran it) agrees with Celery's.
    assert {r.step for r in records} >= {"raw_archive", "opus_files", "parquet_metadata", *GPU_STEPS}
    for record in records:
        expected = set(GPU_WORKERS) if record.step in GPU_STEPS else {CPU_WORKER}
        assert record.celery_worker in expected, record
        if record.metadata:
            assert record.metadata["worker_name"] == record.celery_worker, record
    assert all(len(harness.runs(tags={"dagster/partition": n})) == 1 for n in ARCHIVES)  # no retries needed
    executions = [(r.run_id, r.step) for r in records]
    assert len(executions) == len(set(executions)), "a step ran twice: a live worker's message was redelivered"

    # Whisper is loaded once per GPU worker process, however many partitions it transcribes.
    transcribed = [r for r in records if r.step == "transcripts"]
    by_process: dict[tuple[str, int], list[int]] = {}
    for r in transcribed:
        by_process.setdefault((r.celery_worker, r.metadata["worker_pid"]), []).append(
            r.metadata["whisper_loads_in_process"]
        )
    assert len(transcribed) == len(ARCHIVES) and len(by_process) <= len(GPU_WORKERS), by_process
    assert all(loads == [1] * len(loads) for loads in by_process.values()), by_process
    assert max(len(v) for v in by_process.values()) >= 2  # three partitions, two processes: one load served several

    # 2. GPU capacity: with pool gpu = 1, no two GPU steps overlapped, although the three runs
    #    were in flight together and two GPU workers were idle and waiting.
    windows = [(r.started, r.ended, f"{r.step}@{r.celery_worker}") for r in records if r.step in GPU_STEPS]
    assert len(windows) == 2 * len(ARCHIVES) and all(s and e for s, e, _ in windows)
    assert overlapping(windows) == []
    run_spans = [
        (
            min(r.started for r in records if r.run_id == run.run_id),
            max(r.ended for r in records if r.run_id == run.run_id),
            run.run_id,
        )
        for run in runs.values()
    ]
    assert overlapping(run_spans), "the runs never overlapped: the pool limit was not exercised"

    for name, key in keys.items():
        assert_classified_once(cluster.results_db, key, members=len(ARCHIVES[name]))
    table = ", ".join(sorted({f"{r.step}->{r.celery_worker}" for r in records}))
    loads = ", ".join(
        f"{w} pid {pid}: {len(v)} partition(s), {max(v)} load" for (w, pid), v in sorted(by_process.items())
    )
    longest = max(r.ended - r.started for r in records)
    record_outcome(
        f"3 archives on Celery: 1 CPU worker, 2 GPU workers, pool gpu=1 ({elapsed:.0f} s)",
        f"steps: {table}; Whisper loads: {loads}; GPU step windows overlapping: 0 of {len(windows)}; "
        f"longest step {longest:.0f} s vs lease {LEASE_S} s, each step executed once",
    )


def test_gpu_worker_killed_during_transcripts_step_is_redelivered(cluster, tmp_path, record_outcome):
    harness, results_db = cluster.harness, cluster.results_db
    # This run gets one file per transcription chunk (so the kill lands between commits), so it
    # is submitted by hand, like `audio-pipeline requeue`: the sensor must not launch its own.
    harness.stop_sensor("archive_sensor")
    name, sentences = KILL_ARCHIVE
    run = _submit_archive(
        cluster, tmp_path, name, sentences, {"ops": {"transcripts": {"config": {"files_per_chunk": 1}}}}
    )
    key, partition = f"archives/{name}.tar.gz", run.tags["dagster/partition"]
    harness.wait_until(
        lambda: any("transcribed 1/" in m for m in harness.log_messages(run.run_id)),
        600,
        "a first transcript committed",
        0.2,
    )

    (attempt,) = [r for r in step_records(harness.instance, run.run_id) if r.step == "transcripts"]
    victim = cluster.workers.workers[attempt.celery_worker]
    victim.kill_host()
    killed_at = time.time()
    time.sleep(1)  # a commit the worker sent just before dying lands (or not) before we count
    committed = {
        r["audio_file_id"]
        for r in rows(results_db, "SELECT audio_file_id FROM transcripts")
        if r["audio_file_id"] in _file_ids(results_db, key)
    }
    runs = harness.wait_for_partition_success(partition, timeout_s=600)

    attempts = [r for r in step_records(harness.instance, run.run_id) if r.step == "transcripts"]
    survivor = attempts[-1]
    assert [r.run_id for r in runs] == [run.run_id], "completed in the same run: no run retry, no sensor run"
    assert len(attempts) == 2 and survivor.celery_worker != victim.name and survivor.celery_worker in GPU_WORKERS
    assert 1 <= len(committed) < len(sentences)
    meta = survivor.metadata
    # Files committed before the kill were skipped, and the survivor's model saw only the rest:
    # its process counter of files handed to Whisper grew by exactly what was left to do.
    assert meta["already_transcribed"] == len(committed)
    assert meta["transcribed_now"] == len(sentences) - len(committed)
    before = _files_transcribed_before(harness, survivor)
    assert meta["whisper_files_in_process"] - before == len(sentences) - len(committed)
    assert meta["whisper_loads_in_process"] == 1
    assert_classified_once(results_db, key, members=len(sentences))
    recovered_s = survivor.started - killed_at
    assert recovered_s < LEASE_S + 30

    # The survivor goes on with the next archive on the model it loaded when it took over.
    next_run = _submit_archive(cluster, tmp_path, "batch_wnext", ARCHIVES["batch_w1"])
    harness.wait_for_partition_success(next_run.tags["dagster/partition"], timeout_s=600)
    (following,) = [r for r in step_records(harness.instance, next_run.run_id) if r.step == "transcripts"]
    assert following.celery_worker == survivor.celery_worker
    assert (
        following.metadata["worker_pid"] == meta["worker_pid"] and following.metadata["whisper_loads_in_process"] == 1
    )
    loads = _whisper_loads_by_process(harness)
    assert all(set(v) == {1} for v in loads.values()), loads  # across the whole module: one load per process

    record_outcome(
        f"GPU worker {victim.name} SIGKILLed (worker + pool process) during `transcripts`, "
        f"after {len(committed)} of {len(sentences)} files committed",
        f"step redelivered by Redis to {survivor.celery_worker} {recovered_s:.0f} s after the kill (lease {LEASE_S} s), "
        f"same run, no retry; files redone: 0 ({meta['transcribed_now']} transcribed, {meta['already_transcribed']} "
        f"skipped); 0 duplicate rows; Whisper loads per worker process over the module: "
        + ", ".join(f"{w} pid {pid}: {len(v)} partition(s), 1 load" for (w, pid), v in sorted(loads.items())),
    )


def _submit_archive(cluster: Cluster, workdir: Path, name: str, sentences: list[str], run_config=None) -> dg.DagsterRun:
    """Upload an archive and queue its run by hand (the sensor is stopped), as requeue does."""
    key = upload_archive(cluster, workdir, name, sentences)
    partition = cluster.results_db.archives.partitions_for([key])[key]
    cluster.harness.instance.add_dynamic_partitions("archives", [partition])
    with archive_job_submitter(cluster.harness.instance) as submit:
        return submit({"dagster/partition": partition}, run_config)


def _whisper_loads_by_process(harness: DaemonHarness) -> dict[tuple[str, int], list[int]]:
    """{(worker, pid): whisper loads reported by each transcripts step it completed}."""
    loads: dict[tuple[str, int], list[int]] = {}
    for run in harness.runs():
        for r in step_records(harness.instance, run.run_id):
            if r.step == "transcripts" and r.metadata:
                loads.setdefault((r.celery_worker, r.metadata["worker_pid"]), []).append(
                    r.metadata["whisper_loads_in_process"]
                )
    return loads


def _file_ids(results_db: ResultsDatabase, key: str) -> set[int]:
    return {r["id"] for r in rows(results_db, "SELECT id FROM audio_files WHERE archive_source = %s", (key,))}


def _files_transcribed_before(harness: DaemonHarness, survivor: StepRecord) -> int:
    """The survivor process's Whisper file counter at its previous transcripts step (0 if none)."""
    earlier = [
        r.metadata["whisper_files_in_process"]
        for run in harness.runs()
        for r in step_records(harness.instance, run.run_id)
        if r.step == "transcripts"
        and r.metadata
        and r is not survivor
        and r.run_id != survivor.run_id
        and r.metadata["worker_pid"] == survivor.metadata["worker_pid"]
    ]
    return max(earlier, default=0)


CLAIM_ARCHIVE = [
    "the first clip is about the harbour and the ships that come in every morning",
    "the second clip is about the orchard and the apples that ripen in the autumn",
    "the third clip is about the bridge that the town built over the river last year",
    "the fourth clip is about the market where farmers sell bread and cheese on saturday",
]


@pytest.mark.parametrize("overwrite", [False, True], ids=["same-version", "overwritten-mid-run"])
def test_the_claim_spans_the_run_when_its_sessions_die_and_a_materialize_starts(
    cluster, tmp_path, record_outcome, overwrite
):
    """Every session of the results database is terminated while `opus_files` of a queued run
    works on a CPU worker (the advisory lock this replaced lived on one of them), and `dagster
    asset materialize` of the same partition starts at once, outside the run queue, on the
    same Celery workers. The materialize waits for the run's claim, so no write interleaves,
    and every row's Opus object is the one it names (HEAD each)."""
    harness, results_db, store = cluster.harness, cluster.results_db, cluster.object_store
    harness.stop_sensor("archive_sensor")
    name = f"batch_wclaim_{'over' if overwrite else 'same'}"
    run = _submit_archive(
        cluster,
        tmp_path,
        name,
        CLAIM_ARCHIVE,
        {"ops": {"opus_files": {"config": {"workers": 1, "files_per_commit": 1}}}},
    )
    key, partition = f"archives/{name}.tar.gz", run.tags["dagster/partition"]
    harness.wait_until(lambda: harness.step_started(run.run_id, "opus_files"), 600, "opus_files started", 0.1)
    # The run keeps no session open (each unit of work opens its own): for 3 s, end every
    # session of the results database but ours, catching the step's transactions in flight.
    terminated, until = 0, time.monotonic() + 3
    while time.monotonic() < until:
        terminated += rows(
            results_db,
            "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )[0]["n"]
        time.sleep(0.05)
    opus_running = not any(
        e.dagster_event and e.dagster_event.event_type == dg.DagsterEventType.STEP_SUCCESS
        for e in harness.instance.all_logs(run.run_id)
        if e.step_key == "opus_files"
    )
    if overwrite:  # the second clip says something else in the new version; the others are the same bytes
        parts = tmp_path / name
        members = [(f"clips/{name}_{i}.mp3", parts / f"{i}.mp3") for i in range(len(CLAIM_ARCHIVE))]
        members[1] = (members[1][0], make_speech_mp3(tmp_path / "v2" / "1.mp3", "a new second clip"))
        members.append(("meta.parquet", parts / "meta.parquet"))
        store.upload_file(build_tar(tmp_path / "v2" / f"{name}.tar.gz", members, gzip=True), key)
    log = (tmp_path / "materialize.log").open("wb")
    materialize = subprocess.Popen(
        [
            str(BIN / "dagster"),
            "asset",
            "materialize",
            "-m",
            "definitions",
            "--select",
            "raw_archive,opus_files,parquet_metadata,transcripts,classifications",
            "--partition",
            partition,
        ],
        cwd=harness.workdir,
        env=harness.env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        assert materialize.wait(timeout=900) == 0, (tmp_path / "materialize.log").read_text()[-4000:]
    finally:
        if materialize.poll() is None:
            materialize.kill()
    # The queued run, the materialize, and any run the sensor had requested before it was stopped.
    runs = harness.runs(tags={"dagster/partition": partition})
    assert {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}, [(r.run_id, r.status, r.tags) for r in runs]
    (second,) = [r for r in runs if r.run_id != run.run_id and "dagster/sensor_name" not in r.tags]

    def claimed_at(run_id: str) -> float:
        return min(
            e.timestamp for e in harness.instance.all_logs(run_id) if "holding the claim on" in (e.user_message or "")
        )

    def ended_at(run_id: str) -> float:
        return max(e.timestamp for e in harness.instance.all_logs(run_id))

    # No interleaving: each run held the claim from its raw_archive to its end, one after another.
    spans = sorted((claimed_at(r.run_id), ended_at(r.run_id), r.run_id) for r in runs)
    assert overlapping(spans) == [], spans
    assert spans[0][2] == run.run_id and claimed_at(second.run_id) >= ended_at(run.run_id)
    (archive,) = rows(
        results_db, "SELECT current_etag, claim_epoch, claimed_by_run FROM archives WHERE archive_source = %s", (key,)
    )
    assert archive["claimed_by_run"] == spans[-1][2] and archive["claim_epoch"] == len(runs)
    assert archive["current_etag"] == store.head(key).etag

    files = rows(results_db, "SELECT * FROM audio_files WHERE archive_source = %s ORDER BY original_filename", (key,))
    assert {f["status"] for f in files} == {"classified"} and len(files) == len(CLAIM_ARCHIVE)
    assert {f["archive_etag"] for f in files} == {archive["current_etag"]}
    disagree = [f["opus_path"] for f in files if store.head(f["opus_path"]).etag != f["opus_etag"]]
    assert disagree == []
    stored = {o.key for o in store.iter_objects("processed/")}
    referenced = {
        r["opus_path"] for r in rows(results_db, "SELECT opus_path FROM audio_files WHERE opus_path IS NOT NULL")
    }
    assert stored == referenced  # 0 orphans, across the module's archives
    assert rows(results_db, "SELECT count(*) AS n FROM object_deletions WHERE archive_source = %s", (key,))[0]["n"] == 0
    assert_classified_once(results_db, key, members=len(CLAIM_ARCHIVE))
    first_run_keys = tuple(  # Opus keys end in the number of the step execution that wrote them
        f"-{r['execution']}.opus"
        for r in rows(results_db, "SELECT execution FROM step_executions WHERE run_id = %s", (run.run_id,))
    )
    changed = [f for f in files if not f["opus_path"].endswith(first_run_keys)]
    assert len(changed) == (1 if overwrite else 0)  # only the changed member was converted again
    record_outcome(
        f"{terminated} results-DB sessions terminated over 3 s as `opus_files` started "
        f"({'still running' if opus_running else 'already done'}), `dagster asset materialize` of the same "
        f"partition started{' after the archive was overwritten' if overwrite else ''}",
        f"the materialize took the claim {claimed_at(second.run_id) - ended_at(run.run_id):.1f} s after the run ended "
        f"for the claim (epochs 1 -> 2); both SUCCESS; rows whose object disagrees: 0 of {len(files)}; "
        f"orphan objects 0; files converted again: {len(changed)}",
    )


def test_audio_over_the_cap_reaching_a_gpu_worker_is_refused_without_decoding(cluster, tmp_path, record_outcome):
    # Converted on the CPU worker under the default 20-min cap; `transcripts` runs with a 1-min
    # cap (as a GPU fleet configured tighter than the CPU one would): the GPU worker must refuse
    # the 2-min file from its stored duration, never download or decode it.
    harness, results_db = cluster.harness, cluster.results_db
    harness.stop_sensor("archive_sensor")  # and no tick in flight that could list the next upload
    parts = tmp_path / "long"
    minute = parts / "minute.mp3"
    parts.mkdir()
    encode = [ffmpeg_exe(), "-loglevel", "error", "-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", "60"]
    subprocess.run([*encode, "-c:a", "libmp3lame", "-b:a", "8k", "-write_xing", "0", str(minute)], check=True)
    (parts / "two.mp3").write_bytes(minute.read_bytes() * 2)
    members = [
        ("clips/two.mp3", parts / "two.mp3"),
        ("clips/help.mp3", make_speech_mp3(parts / "h.mp3", "please help")),
    ]
    key = cluster.object_store.upload_file(
        build_tar(tmp_path / "batch_wlong.tar", members), "archives/batch_wlong.tar"
    ).key
    partition = results_db.archives.partitions_for([key])[key]
    harness.instance.add_dynamic_partitions("archives", [partition])
    with archive_job_submitter(harness.instance) as submit:
        run = submit({"dagster/partition": partition}, {"ops": {"transcripts": {"config": {"max_audio_minutes": 1}}}})
    runs = harness.wait_for_partition_success(partition, timeout_s=600)
    assert [r.run_id for r in runs] == [run.run_id], "the sensor launched a run of its own"

    (step,) = [r for r in step_records(harness.instance, run.run_id) if r.step == "transcripts"]
    assert step.celery_worker in GPU_WORKERS
    files = {
        r["original_filename"]: r
        for r in rows(results_db, "SELECT * FROM audio_files WHERE archive_source = %s", (key,))
    }
    assert files["clips/two.mp3"]["status"] == "failed" and files["clips/two.mp3"]["failed_stage"] == "transcription"
    assert files["clips/two.mp3"]["error"] == "audio is 2 min, over the 1 min cap (max_audio_minutes)"
    assert files["clips/help.mp3"]["status"] == "classified"
    assert step.metadata["transcribed_now"] == 1 and step.metadata["failed"] == 1
    handed = step.metadata["whisper_files_in_process"] - _files_transcribed_before(harness, step)
    assert handed == 1  # the GPU worker's model saw the clip only
    record_outcome(
        "2-min file reaching `transcripts` on a GPU-queue worker with a 1-min cap",
        f'refused on {step.celery_worker} from its stored duration ("audio is 2 min, over the 1 min cap"), not '
        f"downloaded or decoded (files handed to Whisper: {handed}, the clip); the clip classified in the same run",
    )
