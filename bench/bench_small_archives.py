"""Small archives: the same N speech clips as one archive and as N one-clip archives, uploaded at
once, through the real `dagster-daemon`, `archive_sensor` and run queue.

    PYTHONPATH=. HF_HUB_OFFLINE=1 PYANNOTE_METRICS_ENABLED=false \
        .venv/bin/python bench/bench_small_archives.py [--clips 40] [--repeats 2] [--alone 4] \
        [--setups embedded,run-workers,celery] [--instance PATH]

Setups (each with its own daemon, Dagster database and bucket; SeaweedFS and PostgreSQL on free
ports in temp dirs, shared; base Whisper, the profanity classifier, the sensor ticking every 2 s):

* `embedded`: the embedded default, as `audio-pipeline demo` runs it (operations/demo.py): the
  repository's dagster.yaml with runs launched onto the local run host, a dagster-celery worker
  on embedded Redis whose processes (one per core) stay up and run each run in process;
* `run-workers`: the repository's dagster.yaml as it is (or `--instance`): a run-worker process
  per run, spawned by the code server, which imports Dagster and the code location and loads
  the models for that run alone (the embedded default before issue 25);
* `celery`: production mode's Celery executor: a run-worker process per run, its steps on a
  `cpu` and a `gpu` dagster-celery worker that stay up between tasks (models loaded once).

Per setup, after a warm-up (one one-clip archive per run slot, so that what stays up between
runs has started), `--repeats` times in alternating order: one archive of all N clips, then N
one-clip archives (or the other way round), each timed from the first upload to the last run's
end, with the CPU seconds over that span of every process of the daemon's tree (daemon, code
server, run workers and their ffmpeg), of the Celery workers or run host, and of the S3 and
PostgreSQL servers. Then `--alone` one-clip archives one after another, each left to finish
before the next upload: where a one-clip run's time goes, from its event log, with the
connections PostgreSQL accepted and each process group's CPU seconds over its span.

The bare tools run once on the same clips in this process, models loaded and warmed first:
ffmpeg (the pipeline's binary and settings), Whisper (the pipeline's Transcriber), the
classifier. What a shape costs beyond them is "outside the tools". The bench's own polling
(one run-storage query a second) is in the PostgreSQL figures. Printed per pair: both times,
their ratio, the ratio of their CPU seconds (the same clips, so the same tool work; less
sensitive than wall time to other jobs on the machine) and the CPU seconds per archive outside
the tools. No assertion: the tables are the result.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from bench_services import DAEMON_START_S, BenchServices, bench_services, tree_cpu_s
from bench_transcription import Clip, make_espeak_clip

from media.ffmpeg_binary import resolve_ffmpeg
from media.opus_convert import convert_to_opus
from models.profanity_scorer import ProfanityScorer
from models.transcriber import TranscriberSettings, load_transcriber
from models.whisper_models import default_models_root
from operations.demo import run_host_slots
from resources.object_store import ObjectStore
from testing.archive_factory import build_tar, make_parquet
from testing.daemon_harness import FINISHED, DaemonHarness

E = dg.DagsterEventType
STARTED_PROCESS = "Started process for run"  # the run's first engine event, where it executes
SETUPS = ("embedded", "run-workers", "celery")


@dataclass
class RunTimes:
    run_id: str
    end_time: float


@dataclass
class Shape:
    """One measurement: a set of archives uploaded at once, until every run has ended."""

    archives: int
    seconds: float
    cpu_s: dict[str, float]

    @property
    def total_cpu_s(self) -> float:
        return sum(self.cpu_s.values())


@dataclass
class Pipeline:
    """One setup's daemon, the processes that run its runs, and the bucket they read."""

    setup: str
    harness: DaemonHarness
    services: BenchServices
    store: ObjectStore
    workers: list[int]  # pids of the run host or Celery workers (their trees are counted)
    slots: int

    def cpu_s(self) -> dict[str, float]:
        """CPU seconds so far, by process group."""
        assert self.harness.daemon is not None
        cpu = {"dagster-daemon tree": tree_cpu_s(self.harness.daemon.pid)}
        if self.workers:
            cpu["run host" if self.setup == "embedded" else "Celery workers"] = sum(map(tree_cpu_s, self.workers))
        return cpu | self.services.server_cpu_s()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2, help="pairs (one archive, N archives) per setup")
    parser.add_argument("--alone", type=int, default=4, help="one-clip archives run one at a time, per setup")
    parser.add_argument("--setups", default="embedded", help=f"comma-separated, of {', '.join(SETUPS)}")
    parser.add_argument("--instance", type=Path, help="dagster.yaml for the run-workers setup (default: the repo's)")
    parser.add_argument("--slots", type=int, default=run_host_slots(), help="run host processes (embedded)")
    parser.add_argument("--seed", type=int, default=25)
    args = parser.parse_args()
    setups = args.setups.split(",")
    assert set(setups) <= set(SETUPS), setups
    print(f"load average at the start (1, 5, 15 min): {load()}; {os.cpu_count()} cores", flush=True)
    with bench_services("small-archives") as services:
        clips = make_clips(services.workdir / "clips", args.clips, args.seed)
        print(f"{len(clips)} clips, {sum(c.seconds for c in clips):.0f} s of speech")
        tools = bare_tool_cpu(clips, services.workdir / "bare")
        print("bare tools on these clips, CPU s: " + ", ".join(f"{k} {v:.1f}" for k, v in tools.items()), flush=True)
        pairs: dict[str, list[dict[str, Shape]]] = defaultdict(list)
        alone: dict[str, list[dict[str, float]]] = {}
        for repeat in range(args.repeats):
            for setup in setups if repeat % 2 == 0 else reversed(setups):
                with pipeline(setup, services, args, f"{setup}-{repeat}") as running:
                    print(f"\n== {setup}, repeat {repeat + 1}; load average {load()}", flush=True)
                    order = ("one", "many") if (repeat + setups.index(setup)) % 2 == 0 else ("many", "one")
                    shapes = {kind: measure(running, clips, f"{setup}{repeat}_{kind}", kind == "one") for kind in order}
                    for kind in ("one", "many"):
                        print_shape(shapes[kind], tools, len(clips))
                    print(f"ratio: {shapes['many'].seconds / shapes['one'].seconds:.2f}", flush=True)
                    pairs[setup].append(shapes)
                    if repeat == args.repeats - 1 and args.alone:
                        alone[setup] = [
                            measure_alone(running, clips[i % len(clips)], f"{setup}_alone_{i:02d}")
                            for i in range(args.alone)
                        ]
        report(pairs, alone, tools, len(clips))
    print(f"\nload average at the end (1, 5, 15 min): {load()}")


def load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


# --- inputs and the bare tools ----------------------------------------------------------------


def make_clips(folder: Path, count: int, seed: int) -> list[Clip]:
    paths = [folder / f"clip_{i:03d}.mp3" for i in range(count)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return list(pool.map(make_espeak_clip, paths, [seed * 1000 + i for i in range(count)]))


def build_archive(folder: Path, name: str, clips: list[Clip]) -> Path:
    """A .tar.gz of `clips` and a parquet of their metadata (meta_id = the clip's stem)."""
    metadata = make_parquet(
        folder / f"{name}.parquet", [{"meta_id": Path(c.member).stem, "seconds": c.seconds} for c in clips]
    )
    return build_tar(
        folder / f"{name}.tar.gz", [(c.member, c.path) for c in clips] + [("metadata.parquet", metadata)], gzip=True
    )


def cpu_now() -> tuple[float, float]:
    """(this process, its waited-for children) CPU seconds."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def bare_tool_cpu(clips: list[Clip], workdir: Path) -> dict[str, float]:
    """CPU seconds the clips need from each tool, models loaded: what any shape of archive must
    spend; the rest is the pipeline's."""
    workdir.mkdir(parents=True, exist_ok=True)
    ffmpeg = resolve_ffmpeg()
    opus = [workdir / f"{i:03d}.opus" for i in range(len(clips))]
    _, children = cpu_now()
    for clip, target in zip(clips, opus):
        convert_to_opus(clip.path, target, ffmpeg=ffmpeg)
    ffmpeg_s = cpu_now()[1] - children
    settings = TranscriberSettings(model="base-bundled", models_root=str(default_models_root()), language="en")
    transcriber = load_transcriber(settings)
    transcriber.transcribe_files(opus[:1])  # the first call's warm-up belongs to the model's load
    own, _ = cpu_now()
    texts = [t.text for t in transcriber.transcribe_files(opus)]
    whisper_s = cpu_now()[0] - own
    scorer = ProfanityScorer()
    scorer.score("", texts[:1])
    own, _ = cpu_now()
    scorer.score("", texts)
    return {"ffmpeg": ffmpeg_s, "whisper": whisper_s, "classifier": cpu_now()[0] - own}


# --- the setups -------------------------------------------------------------------------------


@contextmanager
def pipeline(setup: str, services: BenchServices, args: argparse.Namespace, name: str) -> Iterator[Pipeline]:
    with ExitStack() as stack:
        slots = args.slots if setup == "embedded" else 0
        extra = {"AUDIO_PIPELINE_ENV": "production"} if setup == "celery" else {}
        harness, store = stack.enter_context(services.daemon(name, slots, broker=setup == "celery", **extra))
        workers: list[int] = []
        if harness.run_host is not None:
            workers.append(harness.run_host.pid)
        elif setup == "celery":
            from celery_cluster import CeleryCluster

            cluster = CeleryCluster(harness, services.workdir / f"workers-{name}")
            stack.callback(cluster.stop)
            cluster.start_worker("cpu", "cpu")
            cluster.start_worker("gpu0", "gpu")
            cluster.wait_until_ready()
            workers += [w.process.pid for w in cluster.workers.values()]
        elif args.instance is not None:
            (harness.home / "dagster.yaml").write_text(args.instance.read_text())
        harness.start_daemon()
        time.sleep(DAEMON_START_S)
        slots = slots or harness.instance.get_concurrency_config().run_queue_config.max_concurrent_runs
        running = Pipeline(setup, harness, services, store, workers, slots)
        warm_up(running)
        yield running


def warm_up(running: Pipeline) -> None:
    """Not measured: one one-clip archive per process of the run host at once (each loads the
    models once, as it does once per start), one archive elsewhere (the Celery workers load
    theirs; a run worker loads them for every run anyway)."""
    clip = make_espeak_clip(running.services.workdir / "warm-up.mp3", 999)
    count = running.slots if running.setup == "embedded" else 1
    archives = [
        build_archive(running.services.workdir / "archives", f"warm_{running.harness.workdir.name}_{i}", [clip])
        for i in range(count)
    ]
    started = time.time()
    upload(running.store, archives)
    wait_for(running.harness, {a.name.split(".")[0] for a in archives}, timeout_s=900)
    print(f"warm-up: {len(archives)} one-clip archives in {time.time() - started:.1f} s", flush=True)


def upload(store: ObjectStore, archives: list[Path]) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda a: store.upload_file(a, f"archives/{a.name}"), archives))


def measure(running: Pipeline, clips: list[Clip], prefix: str, one_archive: bool) -> Shape:
    folder = running.services.workdir / "archives"
    if one_archive:
        archives = [build_archive(folder, f"{prefix}_all", clips)]
    else:
        archives = [build_archive(folder, f"{prefix}_{i:03d}", [clip]) for i, clip in enumerate(clips)]
    before = running.cpu_s()
    started = time.time()
    upload(running.store, archives)
    runs = wait_for(running.harness, {a.name.split(".")[0] for a in archives}, timeout_s=3600)
    ended = max(r.end_time for r in runs.values())
    time.sleep(2)  # the last run's process ends (run worker) or goes idle (run host)
    after = running.cpu_s()
    return Shape(len(archives), ended - started, {k: after[k] - before[k] for k in after})


def measure_alone(running: Pipeline, clip: Clip, name: str) -> dict[str, float]:
    archive = build_archive(running.services.workdir / "archives", name, [clip])
    before, connections = running.cpu_s(), running.services.connections_opened()
    uploaded = time.time()
    upload(running.store, [archive])
    [run] = wait_for(running.harness, {name}, timeout_s=600).values()
    time.sleep(2)
    after = running.cpu_s()
    row = run_phases(running.harness.instance, run.run_id, uploaded)
    row["PostgreSQL connections (all, over the span)"] = float(running.services.connections_opened() - connections - 1)
    row["CPU s, all processes"] = sum(after[k] - before[k] for k in after)
    for key in after:
        row[f"  {key}"] = after[key] - before[key]
    print(
        f"{name}: upload → run end {row['upload → run end']:.2f} s, CPU {row['CPU s, all processes']:.2f} s", flush=True
    )
    return row


def wait_for(harness: DaemonHarness, partitions: set[str], timeout_s: float) -> dict[str, RunTimes]:
    """The last run of each partition, once every one has finished (a failure stops the bench).
    Polls a count of the partitions' finished runs (one query a second), then reads them once."""
    tags = {"dagster/partition": sorted(partitions)}
    finished = dg.RunsFilter(job_name="archive_job", statuses=list(FINISHED), tags=tags)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if harness.instance.get_runs_count(finished) >= len(partitions):
            latest: dict[str, dg.DagsterRun] = {}
            for run in harness.runs(job_name="archive_job", tags=tags):  # newest first
                latest.setdefault(run.tags["dagster/partition"], run)
            if len(latest) == len(partitions) and all(r.status in FINISHED for r in latest.values()):
                failed = [r.run_id for r in latest.values() if r.status != dg.DagsterRunStatus.SUCCESS]
                if failed:
                    messages = [m for run_id in failed for m in harness.log_messages(run_id)][-30:]
                    raise RuntimeError(f"runs did not succeed: {failed}\n" + "\n".join(messages))
                records = harness.instance.get_run_records(dg.RunsFilter(run_ids=[r.run_id for r in latest.values()]))
                ends = {r.dagster_run.run_id: r.end_time for r in records}
                return {p: RunTimes(r.run_id, ends[r.run_id]) for p, r in latest.items()}
        time.sleep(1)
    raise RuntimeError(f"timed out waiting for {len(partitions)} partitions\n{harness.daemon_log()}")


def run_phases(instance: dg.DagsterInstance, run_id: str, uploaded_at: float) -> dict[str, float]:
    """Where one run's time went, from its event log: each phase ends where the next begins."""
    record = instance.get_run_record_by_id(run_id)
    created = record.create_timestamp.timestamp()
    first: dict[object, float] = {}
    steps: dict[str, list[float]] = defaultdict(list)
    events = 0
    model_load_s = 0.0
    for entry in instance.all_logs(run_id):
        events += 1
        event = entry.dagster_event
        if event is None:
            continue
        first.setdefault(event.event_type, entry.timestamp)
        if STARTED_PROCESS in (entry.message or ""):
            first.setdefault(STARTED_PROCESS, entry.timestamp)
        if entry.step_key and event.event_type in (E.STEP_START, E.STEP_SUCCESS):
            steps[entry.step_key].append(entry.timestamp)
        if event.event_type == E.ASSET_MATERIALIZATION:
            value = event.event_specific_data.materialization.metadata.get("model_load_s")
            model_load_s += float(value.value) if value is not None else 0.0
    step_s = sum(times[-1] - times[0] for times in steps.values())
    first_step = min(times[0] for times in steps.values())
    last_step = max(times[-1] for times in steps.values())
    return {
        "upload → run created (sensor)": created - uploaded_at,
        "→ RUN_STARTING (queue)": first[E.RUN_STARTING] - created,
        "→ run's process up (spawn, import Dagster; run host: task taken)": first[STARTED_PROCESS]
        - first[E.RUN_STARTING],
        "→ RUN_START (import the code location, plan)": first[E.RUN_START] - first[STARTED_PROCESS],
        "→ first STEP_START (resources)": first_step - first[E.RUN_START],
        "steps, STEP_START → STEP_SUCCESS, summed": step_s,
        "  of which the Whisper model's load": model_load_s,
        "between steps (step start-up: a process or a Celery task each)": (last_step - first_step) - step_s,
        **{f"  step {key}": times[-1] - times[0] for key, times in sorted(steps.items(), key=lambda kv: kv[1][0])},
        "last step → run end": record.end_time - last_step,
        "upload → run end": record.end_time - uploaded_at,
        "steps": float(len(steps)),
        "events in the run's log": float(events),
    }


# --- report -----------------------------------------------------------------------------------


def outside_tools(shape: Shape, tools: dict[str, float]) -> float:
    """CPU seconds per archive beyond what the bare tools need for the shape's clips."""
    return (shape.total_cpu_s - sum(tools.values())) / shape.archives


def print_shape(shape: Shape, tools: dict[str, float], clips: int) -> None:
    label = f"one {clips}-clip archive" if shape.archives == 1 else f"{shape.archives} one-clip archives"
    cpu = ", ".join(f"{k} {v:.1f}" for k, v in shape.cpu_s.items())
    print(
        f"{label}: {shape.seconds:.1f} s; CPU {shape.total_cpu_s:.1f} s ({cpu}); "
        f"outside the tools {outside_tools(shape, tools):.2f} CPU s per archive",
        flush=True,
    )


def report(
    pairs: dict[str, list[dict[str, Shape]]],
    alone: dict[str, list[dict[str, float]]],
    tools: dict[str, float],
    clips: int,
) -> None:
    print(f"\nbare tools on the {clips} clips: {sum(tools.values()):.1f} CPU s\n")
    print(
        f"| setup | repeat | one {clips}-clip archive, s | {clips} one-clip archives, s | ratio | CPU s, one / many "
        "| CPU ratio | outside the tools, CPU s per archive, one / many | extra CPU s per extra archive |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for setup, shapes_list in pairs.items():
        for index, shapes in enumerate(shapes_list):
            one, many = shapes["one"], shapes["many"]
            print(
                f"| {setup} | {index + 1} | {one.seconds:.1f} | {many.seconds:.1f} | "
                f"**{many.seconds / one.seconds:.2f}** | {one.total_cpu_s:.0f} / {many.total_cpu_s:.0f} | "
                f"{many.total_cpu_s / one.total_cpu_s:.2f} | "
                f"{outside_tools(one, tools):.1f} / {outside_tools(many, tools):.2f} | "
                f"{(many.total_cpu_s - one.total_cpu_s) / (many.archives - 1):.2f} |"
            )
    for setup, rows in alone.items():
        print(f"\n{setup}: one-clip runs alone, {len(rows)} one after another; seconds, median (min-max)\n")
        print("| phase | median | min | max |")
        print("|---|---:|---:|---:|")
        for key in rows[0]:
            values = [row[key] for row in rows]
            print(f"| {key} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |")


if __name__ == "__main__":
    main()
