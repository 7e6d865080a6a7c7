"""Sensor benchmark: archive_sensor ticks over a bucket of 100,000 archives on real SeaweedFS.

    PYTHONPATH=. .venv/bin/python bench/bench_sensor.py [--archives 100000] [--new 1000]
        [--bootstrap-cap 5000] [--graphql]

Starts SeaweedFS and PostgreSQL on free ports in temp dirs; the Dagster instance keeps its
runs, event log and dynamic partitions in that PostgreSQL, as production's dagster.yaml does.
Seeds `--archives` small objects under archives/ (not timed as a tick), then times, with the
sensor's own code and the daemon's handling of a tick's partition requests:

* bootstrap: ticks over the full bucket until nothing is left to request, each requesting at
  most `--bootstrap-cap` runs (the production default, ARCHIVE_SENSOR_MAX_RUNS_PER_TICK, is
  smaller: more ticks of the same cost each);
* steady: `--new` more archives uploaded, one tick that requests them; then an idle tick.

Prints per tick: wall seconds (evaluation + adding its partitions), run requests, cursor bytes.
Runs are not launched: creating them is the daemon's work after the tick, not the sensor's.
With `--graphql`, starts dagster-webserver on the same instance and times the GraphQL query
the asset page's partition bar makes, at the number of partitions the bootstrap registered.
No assertion on time: the table is the result.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
from bench_services import ROOT, bench_services

from embedded_services.ports import free_tcp_ports
from embedded_services.postgres import create_database
from resources.object_store import ObjectStore
from resources.results_db import ResultsDatabase
from sensors import archive_sensor as archive_sensor_module
from sensors.archive_sensor import archive_sensor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archives", type=int, default=100_000)
    parser.add_argument("--new", type=int, default=1000)
    parser.add_argument("--bootstrap-cap", type=int, default=5000)
    parser.add_argument("--graphql", action="store_true")
    args = parser.parse_args()

    with bench_services("sensor") as services:
        workdir, pg = services.workdir, services.pg
        store, results_dsn, _ = services.pipeline()
        results_db = ResultsDatabase(dsn=results_dsn)
        dagster_url = pg.url(dbname_of(create_database(pg, "dagster"))).replace(
            "postgresql://", "postgresql+psycopg2://", 1
        )
        home = workdir / "dagster_home"
        home.mkdir()
        (home / "dagster.yaml").write_text(f"storage:\n  postgres:\n    postgres_url: {json.dumps(dagster_url)}\n")
        os.environ["DAGSTER_HOME"] = str(home)
        with dg.DagsterInstance.get() as instance:
            run(args, store, results_db, instance, home)


def dbname_of(dsn: str) -> str:
    return dict(part.split("=", 1) for part in dsn.split())["dbname"]


def run(args, store: ObjectStore, results_db: ResultsDatabase, instance, home: Path) -> None:
    started = time.monotonic()
    seed(store, [f"archives/batch_{i:06d}.tar.gz" for i in range(args.archives)])
    print(f"seeded {args.archives} archives in {time.monotonic() - started:.0f} s")

    rows = []
    archive_sensor_module.MAX_RUNS_PER_TICK = args.bootstrap_cap
    cursor, requested = None, 0
    while True:
        seconds, result, cursor = tick(instance, store, results_db, cursor)
        n = len(result.run_requests) if isinstance(result, dg.SensorResult) else 0
        requested += n
        rows.append(("bootstrap", seconds, n, len(cursor or "")))
        print(f"bootstrap tick: {seconds:.1f} s, {n} runs requested, cursor {len(cursor or '')} B", flush=True)
        if n == 0:
            break
    assert requested == args.archives, (requested, args.archives)

    archive_sensor_module.MAX_RUNS_PER_TICK = int(os.environ.get("ARCHIVE_SENSOR_MAX_RUNS_PER_TICK", "500"))
    seed(store, [f"archives/new_{i:06d}.tar.gz" for i in range(args.new)])
    for label in ("steady (new archives)", "steady (idle)"):
        if label.startswith("steady (new") and args.new > archive_sensor_module.MAX_RUNS_PER_TICK:
            archive_sensor_module.MAX_RUNS_PER_TICK = args.new
        seconds, result, cursor = tick(instance, store, results_db, cursor)
        n = len(result.run_requests) if isinstance(result, dg.SensorResult) else 0
        rows.append((label, seconds, n, len(cursor or "")))

    # Where an idle tick's time goes: the listing, and the registry's "already requested?".
    started = time.monotonic()
    listed = [(o.key, o.etag) for o in store.iter_objects("archives/")]
    list_s = time.monotonic() - started
    started = time.monotonic()
    results_db.archives.not_yet_requested(listed)
    check_s = time.monotonic() - started

    total = args.archives + args.new
    print(f"\n{total} archive keys in the bucket; bootstrap cap {args.bootstrap_cap} runs per tick\n")
    print("| tick | wall s | runs requested | cursor bytes |")
    print("|---|---|---|---|")
    boot = [r for r in rows if r[0] == "bootstrap"]
    print(
        f"| bootstrap: {len(boot)} ticks, median | {sorted(r[1] for r in boot)[len(boot) // 2]:.1f} | "
        f"{args.bootstrap_cap} (last: {boot[-2][2]}) | {max(r[3] for r in boot)} (max) |"
    )
    print(f"| bootstrap: slowest tick | {max(r[1] for r in boot):.1f} | | |")
    for label, seconds, n, size in rows[len(boot) :]:
        print(f"| {label} | {seconds:.1f} | {n} | {size} |")
    print(
        f"\nidle tick's parts, measured alone: listing {len(listed)} keys {list_s:.1f} s, "
        f"registry check {check_s:.1f} s"
    )
    if args.graphql:
        graphql_bench(instance, home)


def seed(store: ObjectStore, keys: list[str]) -> None:
    client = store.client()

    def put(key: str) -> None:
        client.put_object(Bucket=store.bucket, Key=key, Body=b"archive placeholder: the sensor reads no bodies")

    with ThreadPoolExecutor(max_workers=32) as pool:
        list(pool.map(put, keys))


def tick(instance, store, results_db, cursor):
    """One tick as the daemon runs it: evaluate, then add the partitions it asks for."""
    started = time.monotonic()
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"object_store": store, "results_db": results_db}
    )
    result = archive_sensor(context)
    if isinstance(result, dg.SensorResult):
        for request in result.dynamic_partitions_requests:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        cursor = result.cursor
    else:
        cursor = context.cursor
    return time.monotonic() - started, result, cursor


PARTITION_QUERY = """
query PartitionBar($key: AssetKeyInput!) {
  assetNodes(assetKeys: [$key]) {
    partitionKeysByDimension { name partitionKeys }
    assetPartitionStatuses {
      ... on DefaultPartitionStatuses { materializedPartitions failedPartitions unmaterializedPartitions }
    }
  }
}
"""


def graphql_bench(instance, home: Path) -> None:
    """Time the query behind an asset's partition bar at this many partitions."""
    [port] = free_tcp_ports(1)
    env = os.environ | {"DAGSTER_HOME": str(home), "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "dagster-webserver"),
            "-m",
            "definitions",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/graphql"
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        partitions = len(instance.get_dynamic_partitions("archives"))
        print(f"\nGraphQL at {partitions} partitions (asset page partition bar):")
        print("| asset | wall s (3 queries) | response bytes |")
        print("|---|---|---|")
        for asset in ("raw_archive", "classifications"):
            times, size = [], 0
            for _ in range(3):
                body = json.dumps({"query": PARTITION_QUERY, "variables": {"key": {"path": [asset]}}}).encode()
                request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
                started = time.monotonic()
                with urllib.request.urlopen(request, timeout=600) as response:
                    payload = response.read()
                times.append(time.monotonic() - started)
                size = len(payload)
                errors = json.loads(payload).get("errors")
                if errors:
                    raise RuntimeError(errors)
            print(f"| {asset} | {' / '.join(f'{t:.1f}' for t in times)} | {size} |")
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
