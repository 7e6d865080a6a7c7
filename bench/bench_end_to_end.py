"""End-to-end benchmark: one archive of real speech from upload to classified rows, through the
sensor, the run queue and every asset, against the sum of the bare tools doing the same work.

    PYTHONPATH=. HF_HUB_OFFLINE=1 PYANNOTE_METRICS_ENABLED=false \
        .venv/bin/python bench/bench_end_to_end.py [--clips 93] [--workers 2] [--run-workers]

Inputs (not timed): `--clips` espeak-ng clips of 3-10 s plus the 7 bundled samples (100 files
by default) and a parquet of their metadata in one .tar.gz; `--filler-mb N` adds N MiB of
random-byte members (a plain .tar then), so the archive steps' share of a big archive shows. Services: SeaweedFS and PostgreSQL on free ports in temp dirs.

* bare tools, in this process, on local files: tar extraction, ffmpeg (the pipeline's binary and
  settings, libopus 32 kbps mono) over `--workers` threads, bare WhisperX (load_model + per file
  decode + transcribe, batch 8, language en) on the Opus files, the profanity classifier on
  the texts. Model load times are included: a run loads its models too.
* pipeline: `dagster-daemon` as the embedded default runs it (`audio-pipeline demo`,
  operations/demo.py): the repository's dagster.yaml on PostgreSQL (testing/daemon_harness.py),
  the run on the local run host, whose processes have not run anything yet (so the run loads
  its models, as the bare tools do); `--run-workers`: the repository's dagster.yaml as it is, a
  run-worker process per run (the embedded default before issue 25). Embedded defaults (base
  Whisper, profanity classifier), the sensor polling every 2 s. Timed from the upload to the
  run's success; per-step times come from the run's event log.

Prints both, the overhead (pipeline / bare - 1) and where the difference goes. No assertion.
"""

from __future__ import annotations

import argparse
import os
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
from bench_services import DAEMON_START_S, BenchServices, bench_services
from bench_transcription import load_bare_whisperx, make_espeak_clip, sample_clips

from media.ffmpeg_binary import resolve_ffmpeg
from media.opus_convert import convert_to_opus
from models.profanity_scorer import ProfanityScorer
from models.transcriber import decode_audio_file
from models.whisper_models import bundled_whisper_base, default_models_root
from operations.demo import run_host_slots
from testing.archive_factory import build_tar, make_parquet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=93)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--filler-mb",
        type=int,
        default=0,
        help="add a member of this many MiB of random bytes (not audio): a big archive "
        "whose download and reading the archive steps pay, with the same audio work",
    )
    parser.add_argument(
        "--run-workers", action="store_true", help="a run-worker process per run instead of the local run host"
    )
    args = parser.parse_args()

    with bench_services("e2e") as services:
        workdir = services.workdir
        clips = [
            make_espeak_clip(workdir / "clips" / f"clip_{i:03d}.mp3", args.seed * 1000 + i) for i in range(args.clips)
        ] + sample_clips(workdir)
        # The parquet metadata every archive carries: one row per clip, meta_id = its stem.
        metadata = make_parquet(
            workdir / "metadata.parquet", [{"meta_id": Path(c.member).stem, "seconds": c.seconds} for c in clips]
        )
        entries = [(c.member, c.path) for c in clips] + [("metadata.parquet", metadata)]
        for part in range(0, args.filler_mb, 100):  # 100 MiB members: under the member cap
            filler = workdir / "filler" / f"{part:06d}.bin"
            filler.parent.mkdir(exist_ok=True)
            filler.write_bytes(os.urandom(min(100, args.filler_mb - part) * 1024 * 1024))
            entries.append((f"video/{filler.name}", filler))
        # A big archive as plain tar: gzip over random bytes would only measure gzip.
        name = "bench_e2e.tar" if args.filler_mb else "bench_e2e.tar.gz"
        archive = build_tar(workdir / name, entries, gzip=not args.filler_mb)
        audio_s = sum(c.seconds for c in clips)
        print(f"{len(clips)} files, {audio_s:.0f} s of speech, archive {archive.stat().st_size / 2**20:.1f} MiB\n")

        bare = bare_tools(archive, workdir / "bare", args.workers)
        pipeline = through_pipeline(archive, services, 0 if args.run_workers else run_host_slots())

        bare_total = sum(bare.values())
        print("| bare tool | seconds |")
        print("|---|---:|")
        for name, seconds in bare.items():
            print(f"| {name} | {seconds:.1f} |")
        print(f"| **sum** | **{bare_total:.1f}** |\n")
        print("| pipeline | seconds |")
        print("|---|---:|")
        for name, seconds in pipeline.items():
            print(f"| {name} | {seconds:.1f} |")
        total = pipeline["upload → run success"]
        print(f"\norchestration overhead: {total:.1f} s / {bare_total:.1f} s - 1 = {total / bare_total - 1:+.1%}")
        tools = sum(pipeline[f"step {s}"] for s in ("opus_files", "transcripts", "classifications"))
        outside = total - tools
        print(
            f"time outside the tools' own steps (opus_files, transcripts, classifications): "
            f"{outside:.1f} s = {outside / total:.1%} of the run, {outside / bare_total:.1%} of the bare sum"
        )
        archive_steps = sum(pipeline[f"step {s}"] for s in ("raw_archive", "opus_files", "parquet_metadata"))
        print(
            f"archive steps (raw_archive, opus_files, parquet_metadata): {archive_steps:.1f} s = "
            f"{archive_steps / total:.1%} of upload → run success, "
            f"{archive_steps / pipeline['run start → run end']:.1%} of run start → run end"
        )


def bare_tools(archive: Path, workdir: Path, workers: int) -> dict[str, float]:
    times = {}
    started = time.perf_counter()
    with tarfile.open(archive) as tar:
        tar.extractall(workdir / "mp3", filter="data")
    mp3s = sorted((workdir / "mp3").rglob("*.mp3"))
    times["tar extraction"] = time.perf_counter() - started

    ffmpeg = resolve_ffmpeg()
    opus = [workdir / "opus" / f"{i:04d}.opus" for i in range(len(mp3s))]
    opus[0].parent.mkdir(parents=True)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda pair: convert_to_opus(pair[0], pair[1], ffmpeg=ffmpeg), zip(mp3s, opus)))
    times["ffmpeg to Opus"] = time.perf_counter() - started

    started = time.perf_counter()
    model = load_bare_whisperx(bundled_whisper_base(default_models_root()), threads=os.cpu_count() or 1)
    texts = []
    for path in opus:
        result = model.transcribe(decode_audio_file(path), batch_size=8)
        texts.append(" ".join(s["text"].strip() for s in result["segments"]).strip())
    times["WhisperX (load + transcribe)"] = time.perf_counter() - started

    started = time.perf_counter()
    ProfanityScorer().score("", texts)
    times["profanity classifier (load + score)"] = time.perf_counter() - started
    return times


def through_pipeline(archive: Path, services: BenchServices, run_host_slots: int) -> dict[str, float]:
    with services.daemon("daemon", run_host_slots) as (harness, store):
        harness.start_daemon()
        time.sleep(DAEMON_START_S)  # the daemon and its code server up before the clock starts
        # The clock starts once the object is in the bucket: a big archive's upload is the
        # sender's time, not the pipeline's.
        store.upload_file(archive, f"archives/{archive.name}")
        started = time.perf_counter()
        [run] = harness.wait_for_partition_success(archive.name.split(".")[0], timeout_s=3600)[-1:]
        total = time.perf_counter() - started
        uploaded_at = time.time() - total
        times = {"upload → run success": total}
        records = harness.instance.get_run_record_by_id(run.run_id)
        times["upload → run created (sensor tick)"] = records.create_timestamp.timestamp() - uploaded_at
        times["run created → run start (queue, run-worker launch and imports)"] = (
            records.start_time - records.create_timestamp.timestamp()
        )
        times["upload → run start (sensor, queue, launch)"] = records.start_time - uploaded_at
        steps = {}
        for entry in harness.instance.all_logs(run.run_id):
            if entry.dagster_event is None or entry.step_key is None:
                continue
            kind = entry.dagster_event.event_type
            if kind == dg.DagsterEventType.STEP_START:
                steps[entry.step_key] = [entry.timestamp, None]
            elif kind == dg.DagsterEventType.STEP_SUCCESS:
                steps[entry.step_key][1] = entry.timestamp
        times["upload → first step start"] = min(start for start, _ in steps.values()) - uploaded_at
        for step, (start, end) in sorted(steps.items(), key=lambda item: item[1][0]):
            times[f"step {step}"] = end - start
        times["run start → run end"] = records.end_time - records.start_time
        times["run start → end, outside steps"] = (
            records.end_time - records.start_time - sum(end - start for start, end in steps.values())
        )
    return times


if __name__ == "__main__":
    main()
