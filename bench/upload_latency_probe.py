"""What-if behind bench/RESULTS.md: the opus_files step when each upload is slower (a remote S3
instead of the local SeaweedFS) and with more workers than cores.

    PYTHONPATH=. .venv/bin/python bench/upload_latency_probe.py [--latency-ms 0 40] [--workers 2 3 4]

Each upload_file call is delayed by --latency-ms before it runs (the round trips of a remote
PUT: one since upload_file sends small objects as one PutObject with Content-MD5, two before). Prints the step's median seconds and its ratio to bare ffmpeg
with cores workers, measured in the same loop. The code under test is unchanged; only the
delay is added, by wrapping ObjectStore.upload_file for the duration of a measurement. Each
step run converts every file again (`reconvert: true`, see bench_conversion.opus_run_config).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import bench_conversion as bench
import dagster as dg

from resources.object_store import ObjectStore


@contextmanager
def delayed_uploads(seconds: float):
    original = vars(ObjectStore)["upload_file"]

    def upload_file(self, *args, **kwargs):
        time.sleep(seconds)
        return original(self, *args, **kwargs)

    ObjectStore.upload_file = upload_file
    try:
        yield
    finally:
        ObjectStore.upload_file = original


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[0, 40])
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 3, 4])
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-upload-latency-"))
    try:
        probe(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def probe(args: argparse.Namespace, workdir: Path) -> None:
    cores = os.cpu_count() or 1
    archive, _ = bench.build_archive(workdir, args.files, seed=1)
    mp3s = bench.extract_mp3s(archive, workdir / "mp3")
    ffmpeg = bench.resolve_ffmpeg()
    (workdir / "dagster").mkdir()
    with (
        bench.running_services(workdir) as services,
        dg.instance_for_test(temp_dir=str(workdir / "dagster")) as instance,
    ):
        services.store.upload_file(archive, bench.ARCHIVE_KEY)
        defs = bench.bench_definitions(services, workdir)
        runner = bench.PipelineRunner(defs, instance, services.store, services.results_db, cores)
        runner.materialize("raw_archive")
        print("| added upload latency | method | median s | ratio vs bare ffmpeg | runs |")
        print("|---:|---|---:|---:|---|")
        for latency_ms in args.latency_ms:
            runs: dict[str, list[float]] = {}
            for _ in range(args.repeats):
                runs.setdefault(f"bare ffmpeg, {cores} workers", []).append(
                    bench.time_pool(bench.bare_ffmpeg, ffmpeg, mp3s, workdir / "out", cores)
                )
                for workers in args.workers:
                    runner.run_config = bench.opus_run_config(workers)  # reconvert: every run converts every file
                    with delayed_uploads(latency_ms / 1000):
                        sample = runner.time_step(services.meter, args.files)
                    runs.setdefault(f"opus_files step, {workers} workers", []).append(sample.seconds)
            base = statistics.median(runs[f"bare ffmpeg, {cores} workers"])
            for name, seconds in runs.items():
                median = statistics.median(seconds)
                print(
                    f"| {latency_ms:g} ms | {name} | {median:.2f} | {base / median:.2f} | "
                    f"{', '.join(f'{s:.2f}' for s in seconds)} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
