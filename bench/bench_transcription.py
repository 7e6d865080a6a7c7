"""Transcription benchmark: the `transcripts` step against bare WhisperX, same model, same run.

    PYTHONPATH=. HF_HUB_OFFLINE=1 PYANNOTE_METRICS_ENABLED=false \
        .venv/bin/python bench/bench_transcription.py [--clips 20] [--repeats 3] [--batch-size 8]

Builds an archive of espeak-ng speech clips (3-10 s, mono 64 kbps MP3; not timed) plus the
bundled samples (operations/samples, one of them a human voice), starts SeaweedFS and
PostgreSQL on free ports in temp dirs and materializes `raw_archive` and `opus_files` (not
timed). Both models, the real Whisper base weights (CTranslate2, int8, CPU), are loaded and
warmed on two files before anything is timed. Then, `--repeats` times in alternating order:

* bare WhisperX: `whisperx.load_model(dir, device="cpu", compute_type="int8",
  vad_method="pyannote", language="en", threads=T)`, then per source MP3
  `decode_audio_file` + `model.transcribe(audio, batch_size=B)`;
* transcribe_files: the pipeline's Transcriber on the same MP3s, no Dagster, no S3, no DB
  (where the step's time goes apart from I/O);
* transcripts step: the Dagster step itself, STEP_START to STEP_SUCCESS from the run's event
  log, with the model already in the per-process cache: manifest load, download of the Opus
  files from S3, decode, VAD, batched Whisper, transcripts rows in PostgreSQL, results output.
  Every run transcribes every file again (`retranscribe: true`): without it, a run after the
  first would find the transcripts of this model and skip every file.

Prints audio-seconds per second, the ratio to bare WhisperX, the real-time factor, CPU seconds,
word error rates of each method's text against the spoken text, a profile of one instrumented
run of each, and the peak RSS of each method run alone in a fresh subprocess. No assertion on
time: the tables are the result.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import bench_conversion as conversion  # clip texts, services
import dagster as dg

import audio_assets.transcripts as transcripts_module
import models.transcriber as transcriber_module
import resources.archive_run as archive_run_module
import resources.manifest_io as manifest_io_module
from definitions import build_definitions
from models.transcriber import TranscriberSettings, decode_audio_file, load_transcriber
from models.whisper_models import bundled_whisper_base, default_models_root, resolve_whisper_model
from resources.classifier import PolicyClassifier
from resources.object_store import ObjectStore
from resources.results_db import ResultsDatabase
from resources.results_db.failures import DeadLetter
from resources.results_db.opus_files import opus_objects
from resources.results_db.transcripts import transcripts_of_archive
from resources.transcriber import WhisperTranscriber
from testing.archive_factory import build_tar, make_speech_mp3
from testing.pipeline_support import ArchiveRunner, pipeline_resources
from testing.wer import corpus_word_error_rate, normalize_words

SAMPLES = conversion.ROOT / "operations" / "samples"
ARCHIVE_NAME = "bench_transcription.tar.gz"
INGEST = [dg.AssetKey("raw_archive"), dg.AssetKey("opus_files")]
TRANSCRIPTS = [dg.AssetKey("transcripts")]
# transcripts skips files that already have a transcript from this model; every timed run
# (and the RSS child's) transcribes them all again, as each run did before that skip existed.
RETRANSCRIBE = {"ops": {"transcripts": {"config": {"retranscribe": True}}}}


# --- inputs (not timed) -------------------------------------------------------------------


@dataclass(frozen=True)
class Clip:
    member: str  # name inside the archive
    path: Path  # the source MP3 on local disk
    text: str  # what was spoken
    seconds: float
    source: str  # "espeak" or "sample"


def make_espeak_clip(path: Path, seed: int) -> Clip:
    """Like bench_conversion.make_clip, but keeps the text for the word error rate."""
    rng = random.Random(seed)
    target = rng.uniform(conversion.MIN_CLIP_S + 0.2, conversion.MAX_CLIP_S - 0.2)
    words = round(target * conversion.ESPEAK_WORDS_PER_S)
    for attempt in range(8):
        text = conversion.sentence(rng, words)
        seconds = conversion.clip_seconds(make_speech_mp3(path, text))
        in_range = conversion.MIN_CLIP_S <= seconds <= conversion.MAX_CLIP_S
        if in_range and (abs(seconds - target) < 0.75 or attempt >= 4):
            return Clip(f"clips/{path.name}", path, text, seconds, "espeak")
        words = max(3, round(words * target / seconds))
    raise RuntimeError(f"could not make a clip in range for {path.name}")


def sample_clips(workdir: Path) -> list[Clip]:
    """The MP3s of the bundled sample archives, with their texts from references.json."""
    references = json.loads((SAMPLES / "references.json").read_text())
    clips = []
    for archive_name, texts in references.items():
        stem = archive_name.split(".")[0]
        with tarfile.open(SAMPLES / archive_name) as tar:
            for member, text in texts.items():
                path = workdir / "samples" / stem / Path(member).name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(tar.extractfile(member).read())
                clips.append(Clip(f"samples/{stem}/{path.name}", path, text, conversion.clip_seconds(path), "sample"))
    return clips


def build_inputs(workdir: Path, count: int, seed: int) -> tuple[Path, list[Clip]]:
    paths = [workdir / "clips" / f"clip_{i:05d}.mp3" for i in range(count)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        clips = list(pool.map(make_espeak_clip, paths, [seed * 100_000 + i for i in range(count)]))
    clips += sample_clips(workdir)
    archive = build_tar(workdir / ARCHIVE_NAME, [(c.member, c.path) for c in clips], gzip=True)
    return archive, clips


# --- the methods ----------------------------------------------------------------------------


@dataclass
class Sample:
    seconds: float
    cpu_s: dict[str, float]
    texts: dict[str, str] = field(default_factory=dict)  # member → transcript
    step_metadata: dict[str, object] = field(default_factory=dict)


def load_bare_whisperx(model_dir: Path, threads: int, device: str = "cpu"):
    import whisperx

    return whisperx.load_model(
        str(model_dir),
        device=device,
        compute_type="float16" if device == "cuda" else "int8",
        vad_method="pyannote",
        language="en",
        threads=threads,
    )


def bare_transcribe(model, clips: list[Clip], batch_size: int) -> dict[str, str]:
    texts = {}
    for clip in clips:
        # Through the module attribute, so the profile's wrapper sees these calls too.
        audio = transcriber_module.decode_audio_file(clip.path)
        result = model.transcribe(audio, batch_size=batch_size)
        texts[clip.member] = " ".join(s["text"].strip() for s in result["segments"]).strip()
    return texts


def module_transcribe(transcriber, clips: list[Clip]) -> dict[str, str]:
    results = transcriber.transcribe_files([c.path for c in clips])
    failed = [c.member for c, r in zip(clips, results) if isinstance(r, Exception)]
    if failed:
        raise RuntimeError(f"transcribe_files failed on {failed}")
    return {c.member: r.text for c, r in zip(clips, results)}


def timed(meter: conversion.CpuMeter, run: Callable[[], dict[str, str]]) -> Sample:
    before, started = meter.read(), time.perf_counter()
    texts = run()
    seconds = time.perf_counter() - started
    return Sample(seconds, conversion.diff(meter.read(), before), texts)


class StepRunner:
    """The archive's partition on real services; times the transcripts step from its event log."""

    def __init__(self, runner: ArchiveRunner, key: str, results_db: ResultsDatabase, files: int):
        self.runner, self.key, self.results_db, self.files = runner, key, results_db, files

    def run(self, assets: list[dg.AssetKey], run_config: dict | None = None) -> str:
        result = self.runner.run(self.key, assets=assets, run_config=run_config)
        for asset in assets:
            step = [e for e in result.all_events if e.step_key == asset.path[-1]]
            if not any(e.event_type == dg.DagsterEventType.STEP_SUCCESS for e in step):
                failure = [e.message for e in step if e.event_type == dg.DagsterEventType.STEP_FAILURE]
                raise RuntimeError(f"{asset.path[-1]} failed: {failure}")
        return result.run_id

    def time_step(self, meter: conversion.CpuMeter) -> Sample:
        before = meter.read()
        run_id = self.run(TRANSCRIPTS, RETRANSCRIBE)
        cpu = conversion.diff(meter.read(), before)
        entries = [e for e in self.runner.instance.all_logs(run_id) if e.step_key == "transcripts"]
        first: dict = {}
        for entry in entries:
            first.setdefault(entry.dagster_event.event_type_value if entry.dagster_event else "LOG", entry)
        seconds = first["STEP_SUCCESS"].timestamp - first["STEP_START"].timestamp
        metadata = {k: v.value for k, v in first["ASSET_MATERIALIZATION"].asset_materialization.metadata.items()}
        if metadata.get("transcribed_now") != self.files or metadata.get("failed") != 0:
            raise RuntimeError(f"transcripts did not transcribe every file: {metadata}")
        return Sample(seconds, cpu, self.stored_texts(), metadata)

    def stored_texts(self) -> dict[str, str]:
        return transcripts_of_archive(self.results_db, self.key)


# --- profile: one extra, instrumented run of each (not in the table) ----------------------


def profiled_targets() -> list[tuple[object, str, str]]:
    import whisperx.asr
    import whisperx.audio
    from whisperx.vads.pyannote import Pyannote

    return [
        (manifest_io_module.ArchiveTableIOManager, "load_input", "load manifest (S3 GET + parquet)"),
        (archive_run_module, "claim", "archive claim (row in archives, fenced)"),
        (ObjectStore, "download_file", "download Opus file (HEAD + GET + HEAD)"),
        (transcriber_module, "decode_audio_file", "decode audio (PyAV, resample to 16 kHz)"),
        (Pyannote, "__call__", "VAD (pyannote segmentation)"),
        (whisperx.audio, "log_mel_spectrogram", "log-mel features (pipeline)"),
        (whisperx.asr, "log_mel_spectrogram", "log-mel features (bare)"),
        (whisperx.asr.WhisperModel, "encode", "Whisper encoder (CTranslate2)"),
        (whisperx.asr.WhisperModel, "generate_segment_batched", "bare: encoder + beam search + detokenize"),
        (transcriber_module.Transcriber, "_generate", "pipeline: beam search + detokenize"),
        (transcripts_module, "record_transcripts", "DB: record_transcripts (one per chunk commit)"),
        (DeadLetter, "resolve_stages", "DB: resolve_stages"),
        (manifest_io_module.ArchiveTableIOManager, "handle_output", "results output (parquet PUT)"),
    ]


def profile(name: str, run: Callable[[], float], audio_s: float) -> None:
    with conversion.timed_calls(profiled_targets()) as totals:
        seconds = run()
    print(f"\nprofile: one instrumented run of {name}: {seconds:.2f} s, {audio_s / seconds:.2f} audio-s/s")
    print("| part | calls | seconds | ms per call | share of the run |")
    print("|---|---:|---:|---:|---:|")
    for label, (calls, total) in totals.items():
        if calls:
            print(f"| {label} | {calls} | {total:.2f} | {total / calls * 1000:.1f} | {total / seconds:.0%} |")


# --- peak memory: each method alone in a fresh process ------------------------------------


def status_mb(field_name: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process. Not ru_maxrss: Linux carries the parent's
    peak into a child across fork + exec, so a child's ru_maxrss is at least the parent's."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def child_main(spec: dict) -> None:
    """Load one method's model, transcribe every file once, print RSS figures as JSON."""
    after_imports = status_mb("VmRSS")
    settings = TranscriberSettings(**spec["settings"])
    # Two batches are enough to reach the peak; the step child runs its whole partition anyway.
    clips = [Clip(c["member"], Path(c["path"]), "", 0.0, "") for c in spec["clips"]][: 2 * max(8, spec["batch_size"])]
    if spec["method"] == "bare WhisperX":
        model = load_bare_whisperx(Path(spec["model_dir"]), settings.threads)
        after_load = status_mb("VmRSS")
        bare_transcribe(model, clips, settings.batch_size)
    elif spec["method"].startswith("transcribe_files"):
        settings = dataclasses.replace(settings, batch_size=spec["batch_size"])
        model = load_transcriber(settings)
        after_load = status_mb("VmRSS")
        module_transcribe(model, clips)
    else:
        load_transcriber(settings)
        after_load = status_mb("VmRSS")
        run_step_in_child(spec, settings)
    peak = status_mb("VmHWM")
    print(json.dumps({"after_imports": after_imports, "after_load": after_load, "peak": peak}))


def run_step_in_child(spec: dict, settings: TranscriberSettings) -> None:
    store = ObjectStore(**spec["object_store"])
    results_db = ResultsDatabase(dsn=spec["dsn"])
    transcriber = transcriber_resource(settings)
    workdir = Path(tempfile.mkdtemp(prefix="bench-transcription-child-"))
    try:
        # The parent's instance: the step reads opus_files' table of its latest materialization
        # there. The parent waits for this process meanwhile, so the two never write at once.
        with dg.instance_for_test(temp_dir=spec["dagster_dir"]) as instance:
            defs = build_definitions(
                pipeline_resources(
                    store, results_db, workdir / "scratch", transcriber, PolicyClassifier(backend="profanity")
                )
            )
            runner = ArchiveRunner(defs, instance, store, results_db)
            StepRunner(runner, spec["key"], results_db, len(spec["clips"])).run(TRANSCRIPTS, RETRANSCRIBE)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def measure_rss(spec: dict) -> dict[str, dict[str, float]]:
    batch = spec["settings"]["batch_size"]
    out = {}
    for method, batch_size in (
        ("bare WhisperX", batch),
        ("transcripts step", batch),
        (f"transcribe_files, batch_size={batch} (no Dagster, no S3)", batch),
        ("transcribe_files, batch_size=1 (no Dagster, no S3)", 1),
    ):
        completed = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps({**spec, "method": method, "batch_size": batch_size})],
            capture_output=True,
            text=True,
            check=False,
        )
        if completed.returncode != 0:
            raise RuntimeError(f"RSS child for {method} failed:\n{completed.stderr[-3000:]}")
        out[method] = json.loads(completed.stdout.strip().splitlines()[-1])
    return out


# --- report -------------------------------------------------------------------------------


def median_sample(samples: list[Sample]) -> Sample:
    return sorted(samples, key=lambda s: s.seconds)[len(samples) // 2]


def print_report(results: dict[str, list[Sample]], clips: list[Clip], batch_size: int) -> None:
    audio_s = sum(c.seconds for c in clips)
    base = median_sample(results["bare WhisperX"]).seconds
    print(
        f"\n{len(clips)} files, {audio_s:.1f} s of audio, batch_size={batch_size}, "
        f"median of {len(results['bare WhisperX'])} runs (audio-seconds: the source MP3s' durations, for every method)\n"
    )
    print("| method | input | seconds | audio-s per s | real-time factor | ratio vs bare WhisperX |")
    print("|---|---|---:|---:|---:|---:|")
    inputs = {
        "bare WhisperX": "MP3 (local)",
        "transcribe_files (no I/O)": "MP3 (local)",
        "transcripts step": "Opus 32 kbps (S3)",
    }
    for name, samples in results.items():
        seconds = median_sample(samples).seconds
        print(
            f"| {name} | {inputs[name]} | {seconds:.2f} | {audio_s / seconds:.2f} | {seconds / audio_s:.3f} | {base / seconds:.2f} |"
        )
    print(
        "\nall runs (s): " + "; ".join(f"{n}: {', '.join(f'{s.seconds:.2f}' for s in v)}" for n, v in results.items())
    )
    for name in list(results)[1:]:
        paired = [b.seconds / m.seconds for b, m in zip(results["bare WhisperX"], results[name])]
        print(
            f"ratio per repeat, {name}: {', '.join(f'{r:.2f}' for r in paired)} (median {statistics.median(paired):.2f})"
        )
    step = median_sample(results["transcripts step"])
    print(
        "\ntranscripts step, median run, own metadata: "
        + ", ".join(
            f"{k}={step.step_metadata.get(k)}"
            for k in ("model", "transcribed_now", "audio_minutes", "realtime_factor", "model_load_s")
        )
    )
    print_cpu(results)


def print_cpu(results: dict[str, list[Sample]]) -> None:
    names = [n for n in results["bare WhisperX"][0].cpu_s if n != "ffmpeg"]  # no ffmpeg here
    medians = {m: {n: statistics.median(s.cpu_s[n] for s in v) for n in names} for m, v in results.items()}
    base = sum(medians["bare WhisperX"].values())
    print("\nCPU seconds per run (median of each column; the step's run includes Dagster's run start/end)")
    print("| method | " + " | ".join(names) + " | total CPU s | CPU ratio vs bare WhisperX |")
    print("|---|" + "---:|" * (len(names) + 2))
    for method, cpu in medians.items():
        total = sum(cpu.values())
        print(f"| {method} | " + " | ".join(f"{cpu[n]:.2f}" for n in names) + f" | {total:.2f} | {base / total:.2f} |")


def print_accuracy(texts_by_method: dict[str, dict[str, str]], clips: list[Clip]) -> None:
    """Corpus WER per method and set; keys are "method | input", with bare WhisperX on each input."""
    print("\nword error rate (testing/wer.py, corpus WER: all errors / all reference words; last timed run)")
    print(
        "| method | input | espeak clips | samples (6 espeak + 1 human) | all | identical to bare WhisperX, same input | identical to bare WhisperX on MP3 |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")

    def same(a: dict[str, str], b: dict[str, str]) -> str:
        equal = sum(normalize_words(a.get(c.member, "")) == normalize_words(b.get(c.member, "")) for c in clips)
        return f"{equal}/{len(clips)}"

    for name, texts in texts_by_method.items():
        cells = []
        for source in ("espeak", "sample", None):
            pairs = [(c.text, texts.get(c.member, "")) for c in clips if source in (None, c.source)]
            cells.append(f"{corpus_word_error_rate(pairs):.1%}")
        bare_same_input = texts_by_method[f"bare WhisperX | {name.split(' | ')[1]}"]
        print(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {same(texts, bare_same_input)} | {same(texts, texts_by_method['bare WhisperX | MP3'])} |"
        )
    bare, step = texts_by_method["bare WhisperX | MP3"], texts_by_method["transcripts step | Opus 32 kbps"]
    differing = [c for c in clips if normalize_words(step.get(c.member, "")) != normalize_words(bare[c.member])]
    for clip in differing[:4]:
        print(
            f"  {clip.member}: ref={clip.text!r}\n    bare, MP3={bare[clip.member]!r}\n    step, Opus={step.get(clip.member)!r}"
        )


def opus_copies(
    results_db: ResultsDatabase, store: ObjectStore, key: str, clips: list[Clip], workdir: Path
) -> list[Clip]:
    """The clips as the step sees them: the Opus objects opus_files uploaded."""
    opus_key = {row["original_filename"]: row["opus_path"] for row in opus_objects(results_db, key)}
    copies = []
    for clip in clips:
        path = workdir / "opus" / f"{len(copies):05d}.opus"
        store.download_file(opus_key[clip.member], path)
        copies.append(dataclasses.replace(clip, path=path))
    return copies


def gc_probe(clips: list[Clip], step_median_s: float) -> None:
    """faster-whisper's decode_audio ends with gc.collect(), whose cost grows with every object
    the process holds (Dagster, torch, pyannote). What gc.freeze() after model load would save."""

    def decode_ms() -> float:
        started = time.perf_counter()
        for clip in clips:
            decode_audio_file(clip.path)
        return (time.perf_counter() - started) / len(clips) * 1000

    tracked = len(gc.get_objects())
    before = statistics.median(decode_ms() for _ in range(3))
    gc.freeze()  # moves every object so far to the permanent generation, which collect() skips
    try:
        after = statistics.median(decode_ms() for _ in range(3))
    finally:
        gc.unfreeze()
    saved = (before - after) / 1000 * len(clips)
    print(
        f"\ngc.freeze() what-if: {tracked:,} objects tracked by the collector; decode_audio_file "
        f"{before:.0f} ms/file as run above, {after:.0f} ms/file after gc.freeze(): "
        f"{saved:.1f} s less per pass, {saved / step_median_s:.0%} of the median step"
    )


def print_rss(rss: dict[str, dict[str, float]]) -> None:
    print(
        "\npeak RSS (VmHWM), each method alone in a fresh process: model load, then one pass over the "
        "first 16 files (the step: its whole partition)"
    )
    print("| method | RSS after imports MiB | RSS after model load MiB | peak RSS MiB |")
    print("|---|---:|---:|---:|")
    for method, figures in rss.items():
        print(f"| {method} | {figures['after_imports']:.0f} | {figures['after_load']:.0f} | {figures['peak']:.0f} |")


# --- main ---------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=20, help="espeak-ng clips, besides the 7 samples (default 20)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each method; the median is reported")
    parser.add_argument(
        "--batch-size", type=int, default=8, help="WhisperX batch_size for both (default 8; 0 = the pipeline's auto)"
    )
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="cuda: float16 on the GPU, batch-size sweep only (no S3/DB), audio-s/s and real-time factor",
    )
    parser.add_argument(
        "--model",
        default="base-bundled",
        help="base-bundled, or a name under MODELS_ROOT / a CTranslate2 dir (e.g. large-v2)",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads (default: cores)")
    parser.add_argument("--seed", type=int, default=2, help="seed of the clip texts")
    parser.add_argument("--no-profile", action="store_true", help="skip the instrumented runs")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocesses")
    parser.add_argument(
        "--sweep",
        type=int,
        nargs="+",
        metavar="B",
        help="instead: bare WhisperX vs transcribe_files at these batch sizes, no services",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)  # JSON spec: one method alone, for its peak RSS
    return parser.parse_args()


def transcriber_resource(settings: TranscriberSettings) -> WhisperTranscriber:
    return WhisperTranscriber(
        model=settings.model,
        models_root=settings.models_root,
        device=settings.device,
        compute_type=settings.compute_type,
        batch_size=settings.batch_size,
        language=settings.language,
        threads=settings.threads,
    )


def run_repeats(methods: dict[str, Callable[[], Sample]], repeats: int) -> dict[str, list[Sample]]:
    results: dict[str, list[Sample]] = {name: [] for name in methods}
    for repeat in range(repeats):
        order = list(methods) if repeat % 2 == 0 else list(reversed(methods))
        for name in order:
            sample = methods[name]()
            results[name].append(sample)
            print(f"run {repeat + 1}/{repeats} {name}: {sample.seconds:.2f} s", flush=True)
    return results


def main() -> None:
    args = parse_args()
    if args.child:
        child_main(json.loads(args.child))
        return
    workdir = Path(tempfile.mkdtemp(prefix="bench-transcription-"))
    try:
        if args.device == "cuda" and not args.sweep:
            args.sweep = [args.batch_size]  # no services on a GPU host: the no-I/O comparison
        (run_sweep if args.sweep else run_bench)(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def bench_settings(args: argparse.Namespace) -> tuple[TranscriberSettings, Path]:
    models_root = Path(os.environ.get("MODELS_ROOT") or default_models_root())  # assembled once, reused
    settings = TranscriberSettings(
        model=args.model,
        models_root=str(models_root),
        device=args.device,
        compute_type="float16" if args.device == "cuda" else "int8",
        batch_size=args.batch_size,
        language="en",
        threads=args.threads,
    )
    if args.model == "base-bundled":
        return settings, bundled_whisper_base(models_root)
    return settings, Path(resolve_whisper_model(args.model, models_root))


def run_sweep(args: argparse.Namespace, workdir: Path) -> None:
    """Where the pipeline's extra CPU comes from: its batched decoding at several batch sizes
    against bare WhisperX on the same MP3s, no I/O, no Dagster. gc.freeze() first, so the
    collector's share of decoding (see gc_probe) is out of both."""
    _, clips = build_inputs(workdir, args.clips, args.seed)
    settings, model_dir = bench_settings(args)
    bare_model = load_bare_whisperx(model_dir, args.threads, args.device)
    models = {b: load_transcriber(dataclasses.replace(settings, batch_size=b)) for b in args.sweep}
    bare_batch = args.batch_size or next(iter(models.values())).batch_size
    bare_transcribe(bare_model, clips[:2], bare_batch)
    for model in models.values():
        module_transcribe(model, clips[:2])
    gc.freeze()
    meter = conversion.CpuMeter(None, None)
    methods = {
        "bare WhisperX": lambda: timed(meter, lambda: bare_transcribe(bare_model, clips, bare_batch)),
        **{
            f"transcribe_files, batch_size={m.batch_size}": (
                lambda m=m: timed(meter, lambda: module_transcribe(m, clips))
            )
            for m in models.values()
        },
    }
    print(
        f"{len(clips)} files, {sum(c.seconds for c in clips):.1f} s of audio; "
        f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )
    results = run_repeats(methods, args.repeats)
    audio_s = sum(c.seconds for c in clips)
    base = median_sample(results["bare WhisperX"])
    base_cpu = statistics.median(s.cpu_s["python"] for s in results["bare WhisperX"])
    print(f"\nbatch-size sweep, no I/O, after gc.freeze(); median of {args.repeats} runs")
    print(f"device {args.device}, model {args.model}")
    print(
        "| method | seconds | audio-s per s | real-time factor | ratio vs bare | ratio per repeat (median) | CPU s | CPU ratio vs bare |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, samples in results.items():
        seconds = median_sample(samples).seconds
        paired = statistics.median(b.seconds / m.seconds for b, m in zip(results["bare WhisperX"], samples))
        cpu = statistics.median(s.cpu_s["python"] for s in samples)
        print(
            f"| {name} | {seconds:.2f} | {audio_s / seconds:.2f} | {seconds / audio_s:.3f} | {base.seconds / seconds:.2f} | "
            f"{paired:.2f} | {cpu:.2f} | {base_cpu / cpu:.2f} |"
        )
    encoder_per_window(next(iter(models.values())), clips, args.repeats)


def encoder_per_window(model, clips: list[Clip], repeats: int) -> None:
    """The CTranslate2 encoder alone on 8 real 30-s windows: 8 calls of one window against one
    call of 8, alternating; wall and CPU ms per window."""
    features = model._features([decode_audio_file(c.path) for c in clips[:8]])
    encode = model._whisper.encode
    timings: dict[int, list[tuple[float, float]]] = {1: [], 8: []}
    for repeat in range(repeats):
        for batch in (1, 8) if repeat % 2 == 0 else (8, 1):
            started, cpu = time.perf_counter(), time.process_time()
            for first in range(0, 8, batch):
                encode(features[first : first + batch])
            timings[batch].append(((time.perf_counter() - started) / 8 * 1000, (time.process_time() - cpu) / 8 * 1000))
    print("\nWhisper encoder alone, 8 windows of 30 s (ms per window, median)")
    print("| windows per encode call | wall ms | CPU ms | runs (wall) |")
    print("|---:|---:|---:|---|")
    for batch, runs in timings.items():
        print(
            f"| {batch} | {statistics.median(w for w, _ in runs):.0f} | {statistics.median(c for _, c in runs):.0f} | "
            f"{', '.join(f'{w:.0f}' for w, _ in runs)} |"
        )


def run_bench(args: argparse.Namespace, workdir: Path) -> None:
    print(f"building {args.clips} espeak-ng MP3s + the samples (not timed) ...", flush=True)
    archive, clips = build_inputs(workdir, args.clips, args.seed)
    settings, model_dir = bench_settings(args)
    print(
        f"model: {model_dir}; load average (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True
    )

    (workdir / "dagster").mkdir()
    with (
        conversion.running_services(workdir) as services,
        dg.instance_for_test(temp_dir=str(workdir / "dagster")) as instance,
    ):
        transcriber = transcriber_resource(settings)
        defs = build_definitions(
            pipeline_resources(
                services.store,
                services.results_db,
                workdir / "scratch",
                transcriber,
                PolicyClassifier(backend="profanity"),
            )
        )
        archive_runner = ArchiveRunner(defs, instance, services.store, services.results_db)
        key = archive_runner.upload(archive, ARCHIVE_NAME)
        step = StepRunner(archive_runner, key, services.results_db, len(clips))
        step.run(INGEST)  # not timed: the step under test reads opus_files' results

        # Load time is excluded from every method: both models are loaded and warmed here.
        started = time.perf_counter()
        pipeline_model = load_transcriber(transcriber.settings())  # the cache the step's resource hits
        pipeline_load_s = time.perf_counter() - started
        started = time.perf_counter()
        bare_model = load_bare_whisperx(model_dir, args.threads)
        bare_load_s = time.perf_counter() - started
        import torch

        print(
            f"loaded: pipeline Transcriber {pipeline_load_s:.1f} s, bare WhisperX {bare_load_s:.1f} s; "
            f"torch threads {torch.get_num_threads()}, CTranslate2 threads {args.threads}",
            flush=True,
        )
        module_transcribe(pipeline_model, clips[:2])
        bare_transcribe(bare_model, clips[:2], args.batch_size)

        methods: dict[str, Callable[[], Sample]] = {
            "bare WhisperX": lambda: timed(services.meter, lambda: bare_transcribe(bare_model, clips, args.batch_size)),
            "transcribe_files (no I/O)": lambda: timed(
                services.meter, lambda: module_transcribe(pipeline_model, clips)
            ),
            "transcripts step": lambda: step.time_step(services.meter),
        }
        results = run_repeats(methods, args.repeats)
        print_report(results, clips, args.batch_size)
        print(
            f"\npeak RSS of this process (both models, every method): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
        )

        # Accuracy: is a difference the codec's or the pipeline's? Bare WhisperX on the Opus files too.
        opus_clips = opus_copies(services.results_db, services.store, key, clips, workdir)
        print_accuracy(
            {
                "bare WhisperX | MP3": results["bare WhisperX"][-1].texts,
                "transcribe_files | MP3": results["transcribe_files (no I/O)"][-1].texts,
                "bare WhisperX | Opus 32 kbps": bare_transcribe(bare_model, opus_clips, args.batch_size),
                "transcripts step | Opus 32 kbps": results["transcripts step"][-1].texts,
            },
            clips,
        )

        audio_s = sum(c.seconds for c in clips)
        if not args.no_profile:
            profile(
                "bare WhisperX",
                lambda: timed(services.meter, lambda: bare_transcribe(bare_model, clips, args.batch_size)).seconds,
                audio_s,
            )
            profile("transcripts step", lambda: step.time_step(services.meter).seconds, audio_s)
            gc_probe(clips, median_sample(results["transcripts step"]).seconds)
        if not args.no_rss:
            print_rss(
                measure_rss(
                    {
                        "settings": dataclasses.asdict(settings),
                        "model_dir": str(model_dir),
                        "key": key,
                        "dsn": services.results_db.dsn,
                        "dagster_dir": str(workdir / "dagster"),
                        "object_store": {
                            "endpoint_url": services.store.endpoint_url,
                            "bucket": services.store.bucket,
                            "access_key": services.store.access_key,
                            "secret_key": services.store.secret_key,
                        },
                        "clips": [{"member": c.member, "path": str(c.path)} for c in clips],
                    }
                )
            )
    print(f"\nload average at the end (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
