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
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from contextlib import ExitStack
from importlib import resources
from pathlib import Path

import yaml
from dagster_postgres import DagsterPostgresStorage
from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config

from archive_identity import ARCHIVE_ETAG_TAG, ARCHIVE_KEY_TAG, ARCHIVE_PREFIX
from embedded_services.ports import LOCAL_POSTGRES_PORT, LOCAL_S3_PORT
from embedded_services.postgres import LocalPostgres, create_database, ensure_postgres, stop_postgres
from embedded_services.redis import start_redis, stop_redis
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
    with ExitStack() as stack:
        # The run host's broker: nothing in it outlives the runs, so it lives as long as this command.
        redis = start_redis(state / "redis")
        stack.callback(stop_redis, redis)
        os.environ.update({"DAGSTER_CELERY_BROKER_URL": redis.url(0), "DAGSTER_CELERY_BACKEND_URL": redis.url(1)})
        home = Path(os.environ["DAGSTER_HOME"])
        _write_instance_config(home)

        import dagster as dg  # after DAGSTER_HOME is set, so the instance is the demo's

        instance = dg.DagsterInstance.get()
        waiting = [a for a in archives if not _runs_for(instance, *a)]
        process = None
        if waiting or ui:
            stack.callback(stop_process_group, start_run_host(os.environ, home, run_host_slots()))
            process = _start_dagster(ui)
            stack.callback(_stop_dagster, process)
        try:
            if waiting:
                print(f"waiting for archive_sensor to run {len(waiting)} archive(s) through Dagster ...")
                if not _wait_for_runs(instance, waiting, timeout_s):
                    return 1
            print_summary(results_db, instance, archives)
            print(f"demo wall time: {time.monotonic() - started:.1f} s")
            if process is not None and ui:
                print("Dagster UI on http://127.0.0.1:3000 (Ctrl-C to stop)")
                process.wait()
            return 0
        except KeyboardInterrupt:
            return 130


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


# The embedded default runs each run as a task of a local dagster-celery worker whose
# processes stay up (dagster-celery's CeleryRunLauncher), not in a new process per run: a
# one-clip archive then costs what its clip costs, not a process start, Dagster's and the code
# location's imports and the models' load (bench/RESULTS.md, small archives). Each worker
# process runs one run at a time, in process (the local executor), and keeps its models.
# Run monitoring asks the worker's result backend whether a run's task is alive (a killed
# process fails the run, and run_retries starts it again) and terminates a run by revoking its
# task; the queue's limits (one run per archive, max_concurrent_runs) are unchanged.
RUN_HOST_QUEUE = "dagster"  # dagster-celery's queue for run tasks
_RUN_HOST_BROKER = {"broker": {"env": "DAGSTER_CELERY_BROKER_URL"}, "backend": {"env": "DAGSTER_CELERY_BACKEND_URL"}}
RUN_HOST_LAUNCHER = {
    "module": "dagster_celery.launcher",
    "class": "CeleryRunLauncher",
    "config": {**_RUN_HOST_BROKER, "default_queue": RUN_HOST_QUEUE},
}


def run_host_slots() -> int:
    """Runs at once on the run host: one per core (each run also spreads ffmpeg and Whisper
    over every core, so a single big archive still uses them all)."""
    return os.cpu_count() or 1


def local_instance_config(source: Path, slots: int) -> dict:
    """The repository's dagster.yaml as the embedded default uses it: runs on the run host, no
    more runs launched than it has processes, so a launched run never waits for one (run
    monitoring would count that wait against its start timeout), and the same PostgreSQL
    storage through PooledPostgresStorage."""
    config = yaml.safe_load(source.read_text())
    config["run_launcher"] = RUN_HOST_LAUNCHER
    config["concurrency"]["runs"]["max_concurrent_runs"] = slots
    postgres = config["storage"].pop("postgres")
    config["storage"]["custom"] = {"module": __name__, "class": PooledPostgresStorage.__name__, "config": postgres}
    return config


class PooledPostgresStorage(DagsterPostgresStorage):
    """dagster-postgres storage that keeps its connections (a pool of one per storage, up to 20
    more while threads overlap) instead of opening one per query, as dagster-webserver runs it
    (the storages' `optimize_for_webserver`, meant for long-lived processes). The embedded
    default's processes live long: the daemon, and the run host, whose process holds an
    instance for a whole run. Per query, a new connection cost this machine ~10 ms of CPU
    (client and server: fork, SCRAM, catalog), and a one-clip run made ~450 of them; pooled,
    its PostgreSQL CPU fell by ~3/4 (bench/RESULTS.md, section 8). No statement timeout (0),
    as before; connections older than an hour are replaced."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for storage in (self.run_storage, self.event_log_storage, self.schedule_storage):
            storage.optimize_for_webserver(statement_timeout=0, pool_recycle=3600, max_overflow=20)

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        # DagsterPostgresStorage's own builds its own class, not a subclass.
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
        )


def start_run_host(env: Mapping[str, str], dagster_home: Path, slots: int) -> subprocess.Popen:
    """`dagster-celery worker` for the run tasks, `slots` processes, in its own process group
    (stop it with stop_process_group: a warm shutdown lets running runs finish)."""
    worker_config = dagster_home / "run-host.yaml"
    worker_config.write_text(yaml.safe_dump({"execution": {"config": _RUN_HOST_BROKER}}))
    bin_dir = Path(sys.executable).parent
    command = [
        str(bin_dir / "dagster-celery"),
        "worker",
        "start",
        "-A",
        "dagster_celery.app",
        "-n",
        "run-host",
        "-y",
        str(worker_config),
        "-q",
        RUN_HOST_QUEUE,
        "--",
        f"--concurrency={slots}",
        # One worker on loopback: no other worker to sync with or to tell it is alive.
        "--without-mingle",
        "--without-gossip",
    ]
    log = open(dagster_home / "run-host.log", "ab")  # noqa: SIM115 - the child writes to it after we return
    print(f"starting the run host: {' '.join(command[1:])} (log: {log.name})")
    return subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        # dagster-celery runs `celery` from PATH.
        env={**env, "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"},
        start_new_session=True,
    )


def stop_process_group(process: subprocess.Popen, timeout_s: float = 30) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _write_instance_config(dagster_home: Path) -> None:
    source = Path.cwd() / "dagster.yaml"
    if not source.exists():
        raise SystemExit("run the demo from the repository root (it uses ./dagster.yaml)")
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = local_instance_config(source, run_host_slots())
    (dagster_home / "dagster.yaml").write_text(
        "# Written by `audio-pipeline demo` from the repository's dagster.yaml (operations/demo.py).\n"
        + yaml.safe_dump(config, sort_keys=False)
    )


def _start_dagster(ui: bool) -> subprocess.Popen:
    bin_dir = Path(sys.executable).parent
    if ui:
        command = [str(bin_dir / "dagster"), "dev", "-m", "definitions", "-h", "127.0.0.1", "-p", "3000"]
    else:
        command = [str(bin_dir / "dagster-daemon"), "run", "-m", "definitions"]
    log = open(Path(os.environ["DAGSTER_HOME"]) / "dagster.log", "ab")  # noqa: SIM115 - the child writes to it after we return
    print(f"starting {Path(command[0]).name} {' '.join(command[1:])} (log: {log.name})")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())


def _stop_dagster(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


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
