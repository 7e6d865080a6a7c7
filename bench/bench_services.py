"""What the benches share: SeaweedFS and PostgreSQL on free ports in temp dirs, a fresh bucket
and migrated results database with the environment the daemon's runs read, `dagster-daemon`
started as the embedded default or the repository's dagster.yaml runs it, and CPU seconds by
process (tree).

The benches build their inputs with the tests' own builders (testing/archive_factory.py) and run
the daemon through testing/daemon_harness.py.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from embedded_services.postgres import (
    LocalPostgres,
    create_database,
    sessions_started,
    start_postgres,
    stop_postgres,
)
from embedded_services.redis import start_redis, stop_redis
from embedded_services.seaweedfs import SeaweedS3, start_seaweedfs, stop_seaweedfs
from models.whisper_models import default_models_root
from resources.object_store import ObjectStore
from resources.results_db import ResultsDatabase
from testing.daemon_harness import DaemonHarness, PipelineEnvironment

ROOT = Path(__file__).resolve().parents[1]
_TICKS = os.sysconf("SC_CLK_TCK")
DAEMON_START_S = 20  # from `dagster-daemon run` to its code server up and the sensor ticking


@dataclass
class BenchServices:
    workdir: Path
    s3: SeaweedS3
    pg: LocalPostgres
    pg_dir: Path

    def pipeline(self, **extra: str) -> tuple[ObjectStore, str, PipelineEnvironment]:
        """A fresh bucket and migrated results database, and the daemon's environment on them
        (`extra` adds or overrides variables)."""
        store = ObjectStore(
            endpoint_url=self.s3.endpoint_url,
            bucket=f"bench-{uuid.uuid4().hex[:8]}",
            access_key=self.s3.access_key,
            secret_key=self.s3.secret_key,
        )
        store.ensure_bucket()
        results_dsn = create_database(self.pg, f"results_{uuid.uuid4().hex[:8]}")
        ResultsDatabase(dsn=results_dsn).migrate()
        environment = PipelineEnvironment.serving(
            store, results_dsn, self.workdir / "scratch", default_models_root(), **extra
        )
        return store, results_dsn, environment

    @contextmanager
    def daemon(
        self, name: str, run_host_slots: int = 0, broker: bool = False, **extra: str
    ) -> Iterator[tuple[DaemonHarness, ObjectStore]]:
        """A DaemonHarness on a fresh bucket and results database, not started yet (call
        start_daemon, then give it DAEMON_START_S). With `run_host_slots`, as the embedded
        default runs it (`audio-pipeline demo`, operations/demo.py): each run a task of the local
        run host, that many processes kept up, on embedded Redis; without, the repository's
        dagster.yaml as it is: a run-worker process per run. `broker`: Redis for Celery workers
        the caller starts (production mode's executor)."""
        with ExitStack() as stack:
            if run_host_slots or broker:
                redis = start_redis(self.workdir / f"redis-{name}")
                stack.callback(stop_redis, redis)
                extra = {"DAGSTER_CELERY_BROKER_URL": redis.url(0), "DAGSTER_CELERY_BACKEND_URL": redis.url(1)} | extra
            store, _, environment = self.pipeline(**extra)
            harness = stack.enter_context(DaemonHarness(self.workdir / name, self.pg, environment))
            if run_host_slots:
                harness.start_run_host(run_host_slots)
            yield harness, store

    def connections_opened(self) -> int:
        """Connections PostgreSQL has accepted so far: Dagster's storage opens one per query."""
        return sessions_started(self.pg)

    def server_cpu_s(self) -> dict[str, float]:
        """CPU seconds so far of the S3 server and of PostgreSQL (its exited backends included)."""
        return {"seaweedfs": process_cpu_s(self.s3.pid), "postgres": process_cpu_s(postmaster_pid(self.pg_dir))}


@contextmanager
def bench_services(name: str, durable: bool = False) -> Iterator[BenchServices]:
    """SeaweedFS and PostgreSQL for one bench run, removed with their data at the end.
    `durable=False` turns fsync off (throwaway cluster); the conversion bench keeps it on."""
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    # As root PostgreSQL runs as `postgres`, which needs a data dir directly under /tmp.
    pg_dir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-pg-"))
    s3 = pg = None
    try:
        s3 = start_seaweedfs(workdir / "seaweedfs")
        pg = start_postgres(pg_dir, durable=durable)
        yield BenchServices(workdir, s3, pg, pg_dir)
    finally:
        if pg is not None:
            stop_postgres(pg)
        if s3 is not None:
            stop_seaweedfs(s3)
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(pg_dir, ignore_errors=True)


def process_cpu_s(pid: int | None) -> float:
    """utime + stime of `pid` and of its children it has reaped (PostgreSQL backends exit per
    connection, run workers and ffmpeg per run)."""
    if pid is None:
        return 0.0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rfind(")") + 2 :].split()
    return sum(int(v) for v in fields[11:15]) / _TICKS


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of `pid` and every descendant, living or already reaped by its parent. A
    process that ends is added to its parent's reaped-children times when the parent waits for
    it, so each second is counted once, before and after."""
    try:
        descendants = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return 0.0
    return process_cpu_s(pid) + sum(process_cpu_s(p.pid) for p in descendants)


def postmaster_pid(pg_dir: Path) -> int | None:
    try:
        return int((pg_dir / "pgdata" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
