"""Upload → first step, as production starts a run: `dagster-daemon` with the repository's
dagster.yaml (testing/daemon_harness.py), the archive sensor polling every 2 s, the run queue,
a run worker per run (`--run-host`: as the embedded default starts it, a task of the local run
host). Uploads tiny one-file archives one after another (each run is left to finish before the
next upload, so runs never share the cores) and reads each run's event log.

    PYTHONPATH=. HF_HUB_OFFLINE=1 PYANNOTE_METRICS_ENABLED=false \
        .venv/bin/python bench/run_start_probe.py [--uploads 8] [--run-host]

Prints, per upload and as medians, where the time goes: upload → run created (the sensor
daemon's loop and the tick), → RUN_STARTING (the queue daemon dequeues and launches), → the
run worker's first event (the code server spawns it; it imports Dagster and loads the
instance), → RUN_START (it imports the code location and plans), → the first STEP_START
(resources). No assertion: the table is the result.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import dagster as dg
from bench_services import DAEMON_START_S, BenchServices, bench_services

from operations.demo import run_host_slots
from testing.archive_factory import build_tar, make_tone_mp3

E = dg.DagsterEventType
STARTED_PROCESS = "Started process for run"  # the run worker's first engine event
# (label, event that ends the phase); each phase starts where the previous one ended.
PHASES = [
    ("upload → run created (sensor loop + tick)", None),
    ("created → RUN_STARTING (queue daemon dequeues)", E.RUN_STARTING),
    ("→ worker up (spawn, import dagster, instance)", STARTED_PROCESS),
    ("→ RUN_START (import the code location, plan)", E.RUN_START),
    ("→ first STEP_START (resources)", E.STEP_START),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=8)
    parser.add_argument("--run-host", action="store_true", help="runs on the local run host (embedded default)")
    args = parser.parse_args()
    with bench_services("run-start") as services:
        probe(args.uploads, services, run_host_slots() if args.run_host else 0)


def probe(uploads: int, services: BenchServices, slots: int) -> None:
    tone = make_tone_mp3(services.workdir / "tone.mp3", seconds=1.0)
    rows: list[list[float]] = []
    print(f"load average at the start (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    with services.daemon("probe", run_host_slots=slots) as (harness, store):
        harness.start_daemon()
        time.sleep(DAEMON_START_S)  # the daemon and its code server up before the first upload
        for index in range(uploads):
            partition = f"probe_{index:02d}"
            archive = build_tar(services.workdir / f"{partition}.tar.gz", [("tone.mp3", tone)], gzip=True)
            store.upload_file(archive, f"archives/{archive.name}")
            uploaded_at = time.time()
            [run] = harness.wait_for_partition_success(partition, timeout_s=600)[-1:]
            rows.append(phases(harness.instance, run.run_id, uploaded_at))
            print(
                f"upload {index + 1}: " + ", ".join(f"{s:.2f}" for s in rows[-1]) + f" = {sum(rows[-1]):.2f} s",
                flush=True,
            )
    print(f"\n{uploads} uploads; seconds, median (min-max)\n")
    print("| phase | median | min | max |")
    print("|---|---:|---:|---:|")
    for column, (label, _) in enumerate(PHASES):
        values = [row[column] for row in rows]
        print(f"| {label} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |")
    totals = [sum(row) for row in rows]
    print(f"| **upload → first step** | **{statistics.median(totals):.2f}** | {min(totals):.2f} | {max(totals):.2f} |")
    print(f"\nall totals: {', '.join(f'{t:.2f}' for t in totals)}")
    print(f"load average at the end (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


def phases(instance: dg.DagsterInstance, run_id: str, uploaded_at: float) -> list[float]:
    created = instance.get_run_record_by_id(run_id).create_timestamp.timestamp()
    first: dict[object, float] = {}
    for entry in instance.all_logs(run_id):
        if entry.dagster_event is not None:
            first.setdefault(entry.dagster_event.event_type, entry.timestamp)
            if STARTED_PROCESS in (entry.message or ""):
                first.setdefault(STARTED_PROCESS, entry.timestamp)
    missing = [event for _, event in PHASES[1:] if event not in first]
    if missing:
        seen = [
            (e.timestamp - created, e.dagster_event and e.dagster_event.event_type, e.message)
            for e in instance.all_logs(run_id)
        ]
        raise RuntimeError(f"run {run_id} has no {missing}; its events: {seen}")
    marks = [uploaded_at, created] + [first[event] for _, event in PHASES[1:]]
    return [later - earlier for earlier, later in zip(marks, marks[1:])]


if __name__ == "__main__":
    main()
