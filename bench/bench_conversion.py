"""Conversion benchmark: the `opus_files` step against bare parallel ffmpeg, same MP3s, same run.

    PYTHONPATH=. .venv/bin/python bench/bench_conversion.py [--files 120] [--repeats 3]

Builds an archive of espeak-ng speech clips (3-10 s, mono 64 kbps MP3, like short-form-video
audio; not timed), starts SeaweedFS and PostgreSQL on free ports in temp dirs, materializes
`raw_archive` for it (not timed), then times, `--repeats` times in alternating order:

* bare ffmpeg: the extracted MP3s through the same ffmpeg binary and settings (libopus,
  32 kbps, mono) in a pool of `--workers` threads, one subprocess each; no check, no upload;
* convert_to_opus: the same, through the pipeline's function (ffmpeg + integrity check), no I/O;
* opus_files step: the Dagster step itself, STEP_START to STEP_SUCCESS from the run's event
  log: manifest load, archive claim, archive download, MP3s copied out of the tar as the
  conversion pool asks for them, conversion and check, uploads, DB rows committed every
  `files_per_commit` files. Every run converts every file again (`reconvert: true`): without
  it, a run after the first would find the files converted for this archive version and skip
  them.

Prints the medians as files/h and the ratio to bare ffmpeg, where the step's time goes (from
its event log) and the CPU seconds each process spent (ffmpeg, this Python process, the S3
and PostgreSQL servers). No assertion on time: the table is the result.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import av
import dagster as dg
from bench_services import ROOT as ROOT  # bench_transcription reads conversion.ROOT
from bench_services import bench_services, postmaster_pid, process_cpu_s

import audio_assets.opus_files as opus_files_module
import media.opus_convert as opus_convert_module
import resources.archive_run as archive_run_module
import resources.manifest_io as manifest_io_module
from archive_identity import ARCHIVE_ETAG_TAG, ARCHIVE_KEY_TAG
from audio_assets.archive_job import archives_partitions
from audio_assets.opus_files import opus_files
from audio_assets.raw_archive import raw_archive
from embedded_services.postgres import create_database
from media.ffmpeg_binary import resolve_ffmpeg
from media.opus_convert import convert_to_opus
from media.tar_safety import ArchiveEntry, ArchiveLimits, iter_archive
from resources.archive_run import ArchiveRun
from resources.manifest_io import ArchiveTableIOManager
from resources.object_store import ObjectStore
from resources.results_db import ResultsDatabase
from resources.results_db.failures import DeadLetter
from resources.scratch import ScratchSpace
from testing.archive_factory import build_tar, make_speech_mp3

BITRATE_KBPS = 32
ARCHIVE_KEY = "archives/bench_conversion.tar.gz"
MIN_CLIP_S, MAX_CLIP_S = 3.0, 10.0
ESPEAK_WORDS_PER_S = 2.6  # first guess; each clip is re-made until it lands in range

WORDS = [
    "okay",
    "so",
    "today",
    "I",
    "want",
    "to",
    "show",
    "you",
    "my",
    "new",
    "morning",
    "routine",
    "and",
    "honestly",
    "it",
    "changed",
    "my",
    "life",
    "first",
    "you",
    "grab",
    "a",
    "coffee",
    "then",
    "you",
    "stretch",
    "for",
    "five",
    "minutes",
    "and",
    "check",
    "your",
    "messages",
    "this",
    "recipe",
    "only",
    "needs",
    "three",
    "ingredients",
    "and",
    "it",
    "takes",
    "ten",
    "minutes",
    "to",
    "make",
    "do",
    "not",
    "forget",
    "to",
    "like",
    "and",
    "follow",
    "for",
    "more",
    "videos",
    "like",
    "this",
    "one",
    "every",
    "single",
    "week",
    "we",
    "went",
    "to",
    "the",
    "beach",
    "with",
    "the",
    "dog",
    "and",
    "the",
    "waves",
    "were",
    "huge",
    "so",
    "we",
    "stayed",
    "on",
    "the",
    "sand",
    "here",
    "is",
    "a",
    "quick",
    "tip",
    "for",
    "your",
    "exams",
    "read",
    "the",
    "question",
    "twice",
    "before",
    "you",
    "answer",
    "anything",
    "my",
    "cat",
    "learned",
    "to",
    "open",
    "the",
    "fridge",
    "last",
    "night",
    "and",
    "now",
    "nothing",
    "in",
    "the",
    "kitchen",
    "is",
    "safe",
    "this",
    "is",
    "the",
    "best",
    "pizza",
    "in",
    "the",
    "whole",
    "city",
    "and",
    "the",
    "line",
    "was",
    "worth",
    "every",
    "minute",
    "let",
    "me",
    "know",
    "in",
    "the",
    "comments",
    "what",
    "you",
    "think",
    "about",
    "this",
    "outfit",
    "for",
    "the",
    "weekend",
    "party",
    "the",
    "new",
    "phone",
    "camera",
    "is",
    "amazing",
    "in",
    "low",
    "light",
    "but",
    "the",
    "battery",
    "does",
    "not",
    "last",
    "a",
    "full",
    "day",
]


# --- inputs (not timed) -------------------------------------------------------------------


def sentence(rng: random.Random, words: int) -> str:
    start = rng.randrange(len(WORDS))
    chosen = [WORDS[(start + i) % len(WORDS)] for i in range(max(3, words))]
    text = " ".join(chosen).capitalize()
    cut = rng.randrange(len(chosen) // 2, len(chosen))  # one comma: espeak pauses there
    return text.replace(f" {chosen[cut]} ", f", {chosen[cut]} ", 1) + rng.choice([".", "!", "?"])


def clip_seconds(path: Path) -> float:
    with av.open(str(path)) as container:
        return container.duration / av.time_base


def make_clip(path: Path, seed: int) -> float:
    rng = random.Random(seed)
    target = rng.uniform(MIN_CLIP_S + 0.2, MAX_CLIP_S - 0.2)
    words = round(target * ESPEAK_WORDS_PER_S)
    for attempt in range(8):
        seconds = clip_seconds(make_speech_mp3(path, sentence(rng, words)))
        in_range = MIN_CLIP_S <= seconds <= MAX_CLIP_S
        if in_range and (abs(seconds - target) < 0.75 or attempt >= 4):
            return seconds
        words = max(3, round(words * target / seconds))
    raise RuntimeError(f"could not make a {MIN_CLIP_S:g}-{MAX_CLIP_S:g} s clip for {path.name}")


def build_archive(workdir: Path, count: int, seed: int) -> tuple[Path, list[float]]:
    clips = [workdir / "clips" / f"clip_{i:05d}.mp3" for i in range(count)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        seconds = list(pool.map(make_clip, clips, [seed * 100_000 + i for i in range(count)]))
    archive = build_tar(workdir / "bench_conversion.tar.gz", [(f"clips/{c.name}", c) for c in clips], gzip=True)
    shutil.rmtree(workdir / "clips")
    return archive, seconds


def extract_mp3s(archive: Path, out_dir: Path) -> list[Path]:
    """The archive's accepted MP3 members, copied under out_dir at their relative path (the
    archive is our own, so its names are safe to use), in archive order."""
    paths = []
    for entry in iter_archive(archive, ArchiveLimits(max_member_bytes=512 * 1024 * 1024)):
        if entry.rejection is None and entry.kind == "mp3":
            target = out_dir / entry.name
            target.parent.mkdir(parents=True, exist_ok=True)
            entry.copy_to(target)
            paths.append(target)
    return paths


# --- CPU accounting -------------------------------------------------------------------------


@dataclass
class CpuMeter:
    """CPU seconds by process group, read before and after a measurement."""

    weed_pid: int | None
    postgres_pid: int | None

    def read(self) -> dict[str, float]:
        own = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the ffmpeg subprocesses, once waited for
        return {
            "ffmpeg": children.ru_utime + children.ru_stime,
            "python": own.ru_utime + own.ru_stime,
            "seaweedfs": process_cpu_s(self.weed_pid),
            "postgres": process_cpu_s(self.postgres_pid),
        }


# --- the three ways to convert ------------------------------------------------------------


@dataclass
class Sample:
    seconds: float
    cpu_s: dict[str, float]
    phases: dict[str, float] = field(default_factory=dict)
    step_metadata: dict[str, object] = field(default_factory=dict)


def bare_ffmpeg(ffmpeg: str, source: Path, target: Path) -> None:
    subprocess.run(
        [
            ffmpeg,
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-i",
            str(source),
            "-vn",
            "-c:a",
            "libopus",
            "-b:a",
            f"{BITRATE_KBPS}k",
            "-ac",
            "1",
            "-f",
            "opus",
            str(target),
        ],
        check=True,
        capture_output=True,
    )


def checked_convert(ffmpeg: str, source: Path, target: Path) -> None:
    convert_to_opus(source, target, ffmpeg=ffmpeg, bitrate_kbps=BITRATE_KBPS)


def time_pool(
    convert: Callable[[str, Path, Path], None], ffmpeg: str, mp3s: list[Path], out_dir: Path, workers: int
) -> float:
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda mp3: convert(ffmpeg, mp3, out_dir / f"{mp3.stem}.opus"), mp3s))
    elapsed = time.perf_counter() - started
    made = len(list(out_dir.glob("*.opus")))
    if made != len(mp3s):
        raise RuntimeError(f"{convert.__name__} made {made} of {len(mp3s)} Opus files")
    shutil.rmtree(out_dir)
    return elapsed


# One asset per run, without asset checks: those run after opus_files (a HEAD per file) and
# would count in the CPU of the run, though not in the step's time.
BENCH_JOBS = {
    asset: dg.define_asset_job(f"bench_{asset}", selection=dg.AssetSelection.assets(asset).without_checks())
    for asset in ("raw_archive", "opus_files")
}

_COMMITTED = re.compile(r"committed (\d+) converted and (\d+) failed file\(s\)")
STREAM_PHASE = "extract + convert + check (+ uploads and chunk commits alongside)"

# The step's log has no event between its input and its first commit, so the end of its one
# archive download is marked here (time.time(), like the event log): one call per run.
_download_ends: list[float] = []


def _mark_download_ends() -> None:
    original = vars(archive_run_module.HeldArchive)["local_copy"]
    if getattr(original, "bench_marks_end", False):
        return

    def download(*args, **kwargs):
        try:
            return original(*args, **kwargs)
        finally:
            _download_ends.append(time.time())

    download.bench_marks_end = True
    archive_run_module.HeldArchive.local_copy = download


def opus_run_config(workers: int) -> dict:
    """Every file converted again on every run: opus_files skips files already converted for
    this archive version unless `reconvert` is set."""
    return {"ops": {"opus_files": {"config": {"workers": workers, "reconvert": True}}}}


class PipelineRunner:
    """One archive partition on real services; runs `opus_files` alone once raw_archive exists."""

    def __init__(
        self,
        defs: dg.Definitions,
        instance: dg.DagsterInstance,
        store: ObjectStore,
        results_db: ResultsDatabase,
        workers: int,
    ):
        self.instance, self.store = instance, store
        self.jobs = {asset: defs.resolve_job_def(job.name) for asset, job in BENCH_JOBS.items()}
        # The partition the sensor would give the object: registered in PostgreSQL.
        self.partition_key = results_db.archives.partitions_for([ARCHIVE_KEY])[ARCHIVE_KEY]
        self.run_config = opus_run_config(workers)
        instance.add_dynamic_partitions(archives_partitions.name, [self.partition_key])
        _mark_download_ends()

    def materialize(self, asset: str) -> str:
        tags = {ARCHIVE_KEY_TAG: ARCHIVE_KEY, ARCHIVE_ETAG_TAG: self.store.head(ARCHIVE_KEY).etag}
        result = self.jobs[asset].execute_in_process(
            run_config=self.run_config if asset == "opus_files" else None,
            partition_key=self.partition_key,
            instance=self.instance,
            tags=tags,
            raise_on_error=False,
        )
        step = [e for e in result.all_events if e.step_key == asset]
        if not any(e.event_type == dg.DagsterEventType.STEP_SUCCESS for e in step):
            failure = [e.message for e in step if e.event_type == dg.DagsterEventType.STEP_FAILURE]
            raise RuntimeError(f"{asset} failed: {failure}")
        return result.run_id

    def step_timing(
        self, run_id: str, files: int, download_end: float
    ) -> tuple[float, dict[str, float], dict[str, object]]:
        """Step seconds, its phases and its metadata, from the run's event log timestamps
        (and the end of the archive download, marked by _mark_download_ends)."""
        entries = [e for e in self.instance.all_logs(run_id) if e.step_key == "opus_files"]
        first = {}
        for entry in entries:
            kind = entry.dagster_event.event_type_value if entry.dagster_event else "LOG"
            first.setdefault(kind, entry)
        start, end = first["STEP_START"].timestamp, first["STEP_SUCCESS"].timestamp
        commits = [e for e in entries if e.dagster_event is None and _COMMITTED.search(e.user_message or "")]
        committed = sum(int(_COMMITTED.search(e.user_message).group(1)) for e in commits)
        if committed != files:
            raise RuntimeError(f"opus_files committed {committed} converted files, expected {files}")
        last_commit = commits[-1].timestamp
        inputs_loaded = first["LOADED_INPUT"].timestamp if "LOADED_INPUT" in first else start
        metadata = {
            k: v.value
            for k, v in first["ASSET_MATERIALIZATION"].asset_materialization.metadata.items()
            if k in {"converted", "already_converted", "failed", "files_per_hour"}
        }
        phases = {
            "load manifest (IO manager, S3)": inputs_loaded - start,
            "archive claim + outbox drain + conversion-state query + archive download": download_end - inputs_loaded,
            STREAM_PHASE: last_commit - download_end,
            "outbox drain + dead letter + results output + events": end - last_commit,
        }
        return end - start, phases, metadata

    def time_step(self, meter: CpuMeter, files: int) -> Sample:
        _download_ends.clear()
        before = meter.read()
        run_id = self.materialize("opus_files")
        cpu = diff(meter.read(), before)
        if len(_download_ends) != 1:
            raise RuntimeError(f"opus_files downloaded its archive {len(_download_ends)} times, expected once")
        seconds, phases, metadata = self.step_timing(run_id, files, _download_ends[0])
        if metadata.get("converted") != files or metadata.get("failed") != 0 or metadata.get("already_converted") != 0:
            raise RuntimeError(f"opus_files did not convert every file: {metadata}")
        return Sample(seconds, cpu, phases, metadata)


def diff(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after}


# --- services -----------------------------------------------------------------------------


@dataclass
class Services:
    store: ObjectStore
    results_db: ResultsDatabase
    meter: CpuMeter


@contextmanager
def running_services(workdir: Path) -> Iterator[Services]:
    with bench_services("conversion", durable=True) as services:  # durable, as in production
        store = ObjectStore(
            endpoint_url=services.s3.endpoint_url,
            bucket="audio-pipeline",
            access_key=services.s3.access_key,
            secret_key=services.s3.secret_key,
        )
        store.ensure_bucket()
        results_db = ResultsDatabase(dsn=create_database(services.pg, "bench_conversion"))
        results_db.migrate()
        yield Services(store, results_db, CpuMeter(services.s3.pid, postmaster_pid(services.pg_dir)))


# --- profile: one extra, instrumented run (not in the table) ------------------------------


@contextmanager
def timed_calls(targets: list[tuple[object, str, str]]) -> Iterator[dict[str, list[float]]]:
    """Wrap `owner.attr` so each call adds its wall seconds to totals[label] = [calls, s]."""
    targets = [t for t in targets if t[1] in vars(t[0])]  # the code under test changes; skip what is gone
    totals = {label: [0, 0.0] for _, _, label in targets}
    lock = threading.Lock()
    originals = [(owner, attr, vars(owner)[attr]) for owner, attr, _ in targets]

    def wrap(original, label):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                with lock:
                    totals[label][0] += 1
                    totals[label][1] += time.perf_counter() - started

        return wrapper

    for (owner, attr, label), (_, _, original) in zip(targets, originals):
        setattr(owner, attr, wrap(original, label))
    try:
        yield totals
    finally:
        for owner, attr, original in originals:
            setattr(owner, attr, original)


PROFILED = [
    (manifest_io_module.ArchiveTableIOManager, "load_input", "load manifest (S3 GET + parquet)"),
    (archive_run_module, "claim", "archive claim (row in archives, fenced)"),
    (archive_run_module.HeldArchive, "drain", "DB: object deletions outbox drain"),
    (opus_files_module, "conversion_state", "DB: conversion state query"),
    (archive_run_module.HeldArchive, "local_copy", "download archive (S3)"),
    (ArchiveEntry, "copy_to", "copy one MP3 out of the tar (streamed, main thread)"),
    (opus_convert_module, "_declared_duration", "source header probe (PyAV open)"),
    (opus_convert_module, "_run_ffmpeg", "ffmpeg encode (subprocess)"),
    (opus_convert_module, "verified_opus_duration", "Opus output check (Ogg page CRCs)"),
    (opus_convert_module, "decoded_duration_seconds", "full decode of source (fallback)"),
    (
        archive_run_module.HeldArchive,
        "intend_uploads",
        "DB: upload intents (one transaction per files_per_commit files)",
    ),
    (ObjectStore, "upload_file", "upload_file (upload pool: one PutObject + Content-MD5)"),
    (opus_files_module, "record_conversions", "DB: record_conversions (one per chunk commit)"),
    (DeadLetter, "resolve_stages", "DB: resolve_stages"),
    (manifest_io_module.ArchiveTableIOManager, "handle_output", "results output (parquet PUT)"),
]


def profile_step(runner: PipelineRunner, meter: CpuMeter, files: int, workers: int) -> None:
    with timed_calls(PROFILED) as totals:
        sample = runner.time_step(meter, files)
    print(
        f"\nprofile: one instrumented opus_files run, step {sample.seconds:.2f} s, {workers} workers "
        "(per-file calls run in parallel: their seconds are summed over workers)"
    )
    print(
        "| part | calls | seconds summed | ms per call | vs the conversion workers' time (uploads run in their own pool) |"
    )
    print("|---|---:|---:|---:|---:|")
    pool_s = sample.phases[STREAM_PHASE] * workers
    for label, (calls, seconds) in totals.items():
        if calls:
            print(f"| {label} | {calls} | {seconds:.2f} | {seconds / calls * 1000:.1f} | {seconds / pool_s:.0%} |")


def compare_uploads(store: ObjectStore, meter: CpuMeter, opus_dir: Path, workers: int) -> None:
    """The same Opus files uploaded the step's way (ObjectStore.upload_file: one PutObject with
    Content-MD5 below the multipart threshold) and with a bare put_object whose ETag is checked
    against the file's MD5: the second is the floor the first can reach."""
    paths = sorted(opus_dir.glob("*.opus"))

    def via_upload_file(path: Path) -> None:
        store.upload_file(path, f"bench/upload_file/{path.name}", content_type="audio/ogg")

    def via_put_object(path: Path) -> None:
        data = path.read_bytes()
        response = store.client().put_object(
            Bucket=store.bucket, Key=f"bench/put_object/{path.name}", Body=data, ContentType="audio/ogg"
        )
        if response["ETag"].strip('"') != hashlib.md5(data).hexdigest():
            raise RuntimeError(f"ETag mismatch for {path.name}")

    print(f"\nuploads alone: {len(paths)} Opus files, {workers} threads, local SeaweedFS")
    print("| upload method | seconds | ms per file | CPU s: python | CPU s: seaweedfs |")
    print("|---|---:|---:|---:|---:|")
    for name, upload in (
        ("ObjectStore.upload_file (as the step: PutObject + Content-MD5)", via_upload_file),
        ("bare client.put_object + ETag check", via_put_object),
    ):
        before, started = meter.read(), time.perf_counter()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(upload, paths))
        seconds, cpu = time.perf_counter() - started, diff(meter.read(), before)
        print(
            f"| {name} | {seconds:.2f} | {seconds / len(paths) * 1000:.1f} | {cpu['python']:.2f} | {cpu['seaweedfs']:.2f} |"
        )


# --- report -------------------------------------------------------------------------------


def median_sample(samples: list[Sample]) -> Sample:
    ordered = sorted(samples, key=lambda s: s.seconds)
    return ordered[len(ordered) // 2]


def print_report(results: dict[str, list[Sample]], files: int, workers: int, audio_s: list[float]) -> None:
    base = median_sample(results["bare ffmpeg"]).seconds
    print(
        f"\n{files} MP3s, {sum(audio_s) / 60:.1f} min of audio (clips {min(audio_s):.1f}-{max(audio_s):.1f} s), "
        f"workers={workers}, median of {len(results['bare ffmpeg'])} runs\n"
    )
    print("| method | files | seconds | files/h | ratio vs bare ffmpeg |")
    print("|---|---:|---:|---:|---:|")
    for name, samples in results.items():
        seconds = median_sample(samples).seconds
        print(f"| {name} | {files} | {seconds:.2f} | {files / seconds * 3600:,.0f} | {base / seconds:.2f} |")
    print(
        "\nall runs (s): " + "; ".join(f"{n}: {', '.join(f'{s.seconds:.2f}' for s in v)}" for n, v in results.items())
    )
    # Neighbouring runs share the machine's state (other load, caches), so each repeat's own
    # ratio shows how much of the spread above is the machine rather than the method.
    for name in list(results)[1:]:
        paired = [b.seconds / m.seconds for b, m in zip(results["bare ffmpeg"], results[name])]
        print(
            f"ratio per repeat, {name}: {', '.join(f'{r:.2f}' for r in paired)} (median {statistics.median(paired):.2f})"
        )

    step = median_sample(results["opus_files step"])
    print(f"\nopus_files step, median run: own metadata files_per_hour={step.step_metadata.get('files_per_hour')}")
    print("| phase of the step | seconds | share |")
    print("|---|---:|---:|")
    for phase, seconds in step.phases.items():
        print(f"| {phase} | {seconds:.2f} | {seconds / step.seconds:.0%} |")

    print_cpu(results, files)


def print_cpu(results: dict[str, list[Sample]], files: int) -> None:
    """CPU is what bounds throughput once the cores are busy, and unlike wall time it barely
    moves when other programs share the machine."""
    names = list(results["bare ffmpeg"][0].cpu_s)
    medians = {
        method: {n: statistics.median(s.cpu_s[n] for s in samples) for n in names}
        for method, samples in results.items()
    }
    base = sum(medians["bare ffmpeg"].values())
    print("\nCPU seconds per run (median of each column; the step's run includes Dagster's run start/end)")
    print("| method | " + " | ".join(names) + " | total CPU s | CPU ms/file | CPU ratio vs bare ffmpeg |")
    print("|---|" + "---:|" * (len(names) + 3))
    for method, cpu in medians.items():
        total = sum(cpu.values())
        cells = " | ".join(f"{cpu[n]:.2f}" for n in names)
        print(f"| {method} | {cells} | {total:.2f} | {total / files * 1000:.0f} | {base / total:.2f} |")


# --- main ---------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=120, help="MP3s in the archive (default 120)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each method; the median is reported")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="parallel conversions (default: cores)"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the clip texts")
    parser.add_argument("--no-profile", action="store_true", help="skip the instrumented run and the upload comparison")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-conversion-"))
    try:
        run_bench(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def bench_definitions(services: Services, workdir: Path) -> dg.Definitions:
    """Only the two assets under test, not definitions: the other slices
    (transcripts, classifications) need resources this benchmark has no use for."""
    return dg.Definitions(
        assets=[raw_archive, opus_files],
        jobs=list(BENCH_JOBS.values()),
        resources={
            "object_store": services.store,
            "results_db": services.results_db,
            "manifest_io": ArchiveTableIOManager(object_store=services.store),
            "archive_run": ArchiveRun(
                object_store=services.store,
                results_db=services.results_db,
                scratch=ScratchSpace(root=str(workdir / "scratch")),
            ),
        },
        executor=dg.in_process_executor,  # as the local environment runs it
    )


def run_bench(args: argparse.Namespace, workdir: Path) -> None:
    print(f"building {args.files} speech MP3s (not timed) ...", flush=True)
    archive, audio_s = build_archive(workdir, args.files, args.seed)
    mp3s = extract_mp3s(archive, workdir / "mp3")
    ffmpeg = resolve_ffmpeg()  # also warms its libopus check, which the step would pay once per process
    print(
        f"ffmpeg: {ffmpeg}; load average (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True
    )

    (workdir / "dagster").mkdir()
    with running_services(workdir) as services, dg.instance_for_test(temp_dir=str(workdir / "dagster")) as instance:
        services.store.upload_file(archive, ARCHIVE_KEY)
        defs = bench_definitions(services, workdir)
        runner = PipelineRunner(defs, instance, services.store, services.results_db, args.workers)
        runner.materialize("raw_archive")  # not timed: the step under test reads its manifest
        time_pool(bare_ffmpeg, ffmpeg, mp3s[: args.workers * 2], workdir / "warmup", args.workers)

        def pool_sample(convert) -> Sample:
            before = services.meter.read()
            seconds = time_pool(convert, ffmpeg, mp3s, workdir / "out", args.workers)
            return Sample(seconds, diff(services.meter.read(), before))

        methods: dict[str, Callable[[], Sample]] = {
            "bare ffmpeg": lambda: pool_sample(bare_ffmpeg),
            "convert_to_opus (with integrity check, no I/O)": lambda: pool_sample(checked_convert),
            "opus_files step": lambda: runner.time_step(services.meter, args.files),
        }

        results: dict[str, list[Sample]] = {name: [] for name in methods}
        for repeat in range(args.repeats):
            order = list(methods) if repeat % 2 == 0 else list(reversed(methods))
            for name in order:
                sample = methods[name]()
                results[name].append(sample)
                print(f"run {repeat + 1}/{args.repeats} {name}: {sample.seconds:.2f} s", flush=True)
        print_report(results, args.files, args.workers, audio_s)
        if not args.no_profile:
            profile_step(runner, services.meter, args.files, args.workers)
            opus_dir = workdir / "opus"
            opus_dir.mkdir()
            with ThreadPoolExecutor(max_workers=args.workers) as pool:
                list(pool.map(lambda mp3: bare_ffmpeg(ffmpeg, mp3, opus_dir / f"{mp3.stem}.opus"), mp3s))
            compare_uploads(services.store, services.meter, opus_dir, args.workers)
    print(f"\nload average at the end (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
