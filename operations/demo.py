"""The README's main command: the whole platform on embedded services, end to end.

It starts (or reuses) SeaweedFS and PostgreSQL on loopback, migrates, uploads the bundled
sample archives to s3://audio-pipeline/archives/, runs the Dagster daemon so that
archive_sensor notices them and launches the runs, waits for those runs and prints what RAs
would see in the SQL views. Running it again reuses services and data: unchanged archives
are not uploaded again and the sensor requests nothing new.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

from archive_identity import ARCHIVE_ETAG_TAG, ARCHIVE_KEY_TAG, ARCHIVE_PREFIX
from embedded_services.ports import LOCAL_POSTGRES_PORT, LOCAL_S3_PORT
from embedded_services.postgres import LocalPostgres, create_database, ensure_postgres, stop_postgres
from embedded_services.seaweedfs import SeaweedS3, ensure_seaweedfs, stop_seaweedfs
from resources.environments import LOCAL_ACCESS_KEY, LOCAL_BUCKET, LOCAL_DB_PASSWORD, LOCAL_DB_USER, LOCAL_SECRET_KEY
from resources.object_store import ObjectStore
from resources.results_db import ResultsDatabase

FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}


def run_demo(
    state_dir: str,
    ui: bool,
    timeout_s: int,
    s3_port: int = LOCAL_S3_PORT,
    postgres_port: int = LOCAL_POSTGRES_PORT,
    stop_services: bool = False,
    review: bool = False,
) -> int:
    started = time.monotonic()
    state = Path(state_dir).resolve()
    s3, _ = ensure_seaweedfs(state / "seaweedfs", s3_port, access_key=LOCAL_ACCESS_KEY, secret_key=LOCAL_SECRET_KEY)
    pg, _ = ensure_postgres(state / "postgres", postgres_port, user=LOCAL_DB_USER, password=LOCAL_DB_PASSWORD)
    print(f"S3 (SeaweedFS) at {s3.endpoint_url}; PostgreSQL at {pg.host}:{pg.port}; data in {state}")
    try:
        status = _run_pipeline(s3, pg, state, ui, timeout_s, started)
        if status == 0:
            status = _review_console(s3, pg, state, serve_now=review)
        return status
    finally:
        if stop_services:
            stop_seaweedfs(s3)
            stop_postgres(pg)


def _run_pipeline(s3: SeaweedS3, pg: LocalPostgres, state: Path, ui: bool, timeout_s: int, started: float) -> int:
    os.environ.update(demo_environment(s3, pg, state))

    results_db = ResultsDatabase(dsn=create_database(pg, "audio_pipeline"))
    create_database(pg, "dagster")
    applied = results_db.migrate()
    print(f"migrations applied: {', '.join(applied) or 'none (current)'}")

    object_store = ObjectStore(
        endpoint_url=s3.endpoint_url, bucket=LOCAL_BUCKET, access_key=s3.access_key, secret_key=s3.secret_key
    )
    object_store.ensure_bucket()
    archives = upload_samples(object_store)
    _write_instance_config(Path(os.environ["DAGSTER_HOME"]))

    import dagster as dg  # after DAGSTER_HOME is set, so the instance is the demo's

    instance = dg.DagsterInstance.get()
    waiting = [a for a in archives if not _runs_for(instance, *a)]
    process = None
    if waiting or ui:
        process = _start_dagster(ui)
    try:
        if waiting:
            print(f"waiting for archive_sensor to run {len(waiting)} archive(s) through Dagster ...")
            if not _wait_for_runs(instance, waiting, timeout_s):
                return 1
        print_summary(results_db, instance, archives)
        print(f"demo wall time: {time.monotonic() - started:.1f} s")
        if ui and process is not None:
            print("Dagster UI on http://127.0.0.1:3000 (Ctrl-C to stop)")
            process.wait()
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def _review_console(s3: SeaweedS3, pg: LocalPostgres, state: Path, serve_now: bool) -> int:
    """The RAs' review console on the demo's data: its login, settings and a demo RA."""
    from review.demo import prepare_demo_console

    results_db = ResultsDatabase(dsn=pg.dsn("audio_pipeline"))
    console = prepare_demo_console(results_db, pg, s3, LOCAL_BUCKET, state)
    print(
        f"\nreview console: {console.waiting_items} flagged item(s) wait for review.\n"
        f"  start it:  .venv/bin/audio-pipeline review   (settings: {console.env_file})\n"
        f"  open http://127.0.0.1:8040 and sign in as {console.username} / {console.password}\n"
        f"  (that password is kept in {state / 'review-demo-ra-password'}; add RAs with "
        "`audio-pipeline review-user add NAME`)"
    )
    if not serve_now:
        return 0
    from review.server import load_env_file, serve
    from review.settings import ReviewSettings

    console_env: dict[str, str] = {}
    load_env_file(str(console.env_file), console_env)
    print("review console on http://127.0.0.1:8040 (Ctrl-C to stop)")
    try:
        serve(ReviewSettings.from_environment({**os.environ, **console_env}))
    except KeyboardInterrupt:
        pass
    return 0


def demo_environment(s3: SeaweedS3, pg: LocalPostgres, state: Path) -> dict[str, str]:
    return {
        "AUDIO_PIPELINE_ENV": "local",
        "S3_ENDPOINT": s3.endpoint_url,
        "S3_BUCKET": LOCAL_BUCKET,
        "S3_ACCESS_KEY": s3.access_key,
        "S3_SECRET_KEY": s3.secret_key,
        "POSTGRES_DSN": pg.dsn("audio_pipeline"),
        "DAGSTER_PG_HOST": pg.host,
        "DAGSTER_PG_PORT": str(pg.port),
        "DAGSTER_PG_USER": pg.user,
        "DAGSTER_PG_PASSWORD": pg.password,
        "DAGSTER_PG_DB": "dagster",
        "DAGSTER_HOME": str(state / "dagster_home"),
        "SCRATCH_ROOT": str(state / "scratch"),
        "MODELS_ROOT": os.environ.get("MODELS_ROOT", str(state / "models")),
        # The demo should not wait long for the first tick.
        "ARCHIVE_SENSOR_INTERVAL_S": os.environ.get("ARCHIVE_SENSOR_INTERVAL_S", "5"),
    }


def upload_samples(object_store: ObjectStore) -> list[tuple[str, str]]:
    """Upload each bundled archive unless the same bytes are already there; returns
    (key, etag) of every sample archive."""
    archives = []
    samples = resources.files("operations") / "samples"
    for entry in sorted(samples.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith((".tar", ".tar.gz")):
            continue
        key = f"{ARCHIVE_PREFIX}{entry.name}"
        data = entry.read_bytes()
        existing = object_store.head(key)
        if existing is None or existing.etag != hashlib.md5(data).hexdigest():
            existing = object_store.put_bytes(key, data, content_type="application/x-tar")
            print(f"uploaded s3://{object_store.bucket}/{key} ({len(data)} bytes)")
        else:
            print(f"already there: s3://{object_store.bucket}/{key}")
        archives.append((key, existing.etag))
    return archives


def _write_instance_config(dagster_home: Path) -> None:
    source = Path.cwd() / "dagster.yaml"
    if not source.exists():
        raise SystemExit("run the demo from the repository root (it uses ./dagster.yaml)")
    dagster_home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, dagster_home / "dagster.yaml")


def _start_dagster(ui: bool) -> subprocess.Popen:
    bin_dir = Path(sys.executable).parent
    if ui:
        command = [str(bin_dir / "dagster"), "dev", "-m", "definitions", "-h", "127.0.0.1", "-p", "3000"]
    else:
        command = [str(bin_dir / "dagster-daemon"), "run", "-m", "definitions"]
    log = open(Path(os.environ["DAGSTER_HOME"]) / "dagster.log", "ab")  # noqa: SIM115 - the child writes to it after we return
    print(f"starting {Path(command[0]).name} {' '.join(command[1:])} (log: {log.name})")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())


def _runs_for(instance, key: str, etag: str) -> list:
    import dagster as dg

    return list(instance.get_runs(filters=dg.RunsFilter(tags={ARCHIVE_KEY_TAG: key, ARCHIVE_ETAG_TAG: etag})))


def _wait_for_runs(instance, archives: list[tuple[str, str]], timeout_s: int) -> bool:
    deadline = time.monotonic() + timeout_s
    reported: dict[str, str] = {}
    while time.monotonic() < deadline:
        statuses = {}
        for key, etag in archives:
            runs = _runs_for(instance, key, etag)
            statuses[key] = runs[0].status.value if runs else "NOT_REQUESTED"
        for key, status in statuses.items():
            if reported.get(key) != status:
                print(f"  {key}: {status}")
                reported[key] = status
        if all(status in FINISHED for status in statuses.values()):
            return True
        time.sleep(2)
    print(f"timed out after {timeout_s} s; see {os.environ['DAGSTER_HOME']}/dagster.log", file=sys.stderr)
    return False


def print_summary(results_db: ResultsDatabase, instance, archives: list[tuple[str, str]]) -> None:
    print("\nruns:")
    for key, etag in archives:
        runs = _runs_for(instance, key, etag)
        if not runs:
            print(f"  {key}: none")
            continue
        launched_by = runs[0].tags.get("dagster/sensor_name", "a person")
        print(f"  {key}: {runs[0].status.value} (run {runs[0].run_id}, launched by {launched_by})")
    for title, rows in results_db.reports.overview():
        _print_table(title, rows)


def _print_table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}:")
    if not rows:
        print("  (no rows)")
        return
    columns = list(rows[0])
    cells = [[("" if row[c] is None else str(row[c])) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  " + "  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in cells:
        print("  " + "  ".join(v.ljust(w) for v, w in zip(r, widths)))
