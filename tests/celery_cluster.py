"""dagster-celery workers as separate hosts would run them, for the multi-worker tests.

Each worker is `dagster-celery worker start -A workers.celery_app -q QUEUE`
with --concurrency=1, in its own working directory with its own DAGSTER_HOME (a copy of
dagster.yaml: the same PostgreSQL instance, no shared files), scratch and models folder,
and its own process group, so the test can take a whole "host" away with one SIGKILL.
What the workers share with the daemon is what hosts share: PostgreSQL, S3 and Redis.
Here the "GPU" workers are CPU processes standing in for GPU hosts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil

from embedded_services.postgres import LocalPostgres, create_database
from embedded_services.redis import LocalRedis
from embedded_services.seaweedfs import SeaweedS3
from resources.object_store import ObjectStore
from resources.results_db import ResultsDatabase
from testing.daemon_harness import BIN, DaemonHarness, PipelineEnvironment, repository


def production_environment(
    root: Path, s3_server: SeaweedS3, postgres_server: LocalPostgres, redis_server: LocalRedis, lease_s: int
) -> tuple[ObjectStore, ResultsDatabase, PipelineEnvironment]:
    """A fresh bucket and migrated results database, and the environment the daemon and every
    worker of a Celery test cluster share: production mode, Redis as broker (db 0) and result
    backend (db 1), the message lease, Whisper batches of 4."""
    object_store = ObjectStore(
        endpoint_url=s3_server.endpoint_url,
        bucket=f"test-{uuid.uuid4().hex[:16]}",
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
    )
    object_store.ensure_bucket()
    results_db = ResultsDatabase(dsn=create_database(postgres_server, f"test_{uuid.uuid4().hex[:16]}"))
    results_db.migrate()
    pipeline = PipelineEnvironment.serving(
        object_store,
        results_db.dsn,
        root / "control" / "scratch",
        root / "control" / "models",
        AUDIO_PIPELINE_ENV="production",
        DAGSTER_CELERY_BROKER_URL=redis_server.url(0),
        DAGSTER_CELERY_BACKEND_URL=redis_server.url(1),
        CELERY_TASK_LEASE_S=str(lease_s),
        WHISPER_BATCH_SIZE="4",
    )
    return object_store, results_db, pipeline


@dataclass
class CeleryWorker:
    name: str
    queue: str
    workdir: Path
    process: subprocess.Popen

    @property
    def log(self) -> Path:
        return self.workdir / "worker.log"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def is_ready(self) -> bool:
        return f"{self.name}@" in self.log_text() and " ready." in self.log_text()

    def pool_processes(self) -> list[psutil.Process]:
        """The worker's pool processes: children of the Celery main process that
        `dagster-celery worker start` runs."""
        with contextlib.suppress(psutil.Error):
            return [pool for main in psutil.Process(self.process.pid).children() for pool in main.children()]
        return []

    def kill_host(self) -> None:
        """SIGKILL the worker and its pool process at once: the host is gone, nothing is
        acknowledged or put back on the way out."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


class CeleryCluster:
    def __init__(self, harness: DaemonHarness, workdir: Path):
        self.harness = harness
        self.workdir = workdir
        self.workers: dict[str, CeleryWorker] = {}

    def start_worker(self, name: str, queue: str, env: dict[str, str] | None = None) -> CeleryWorker:
        """`env`: variables for this worker only (an ffmpeg wrapper, its time limits)."""
        workdir = self.workdir / name
        home = workdir / "dagster_home"
        home.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(repository() / "dagster.yaml", home / "dagster.yaml")
        env = {
            **self.harness.env,
            "DAGSTER_HOME": str(home),
            "WORKER_NAME": name,
            "SCRATCH_ROOT": str(workdir / "scratch"),
            "MODELS_ROOT": str(workdir / "models"),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # dagster-celery runs `celery`
            **(env or {}),
        }
        log = (workdir / "worker.log").open("ab")
        process = subprocess.Popen(
            [
                str(BIN / "dagster-celery"),
                "worker",
                "start",
                "-A",
                "workers.celery_app",
                "-q",
                queue,
                "-n",
                name,
                "--",
                "--concurrency=1",
            ],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        worker = CeleryWorker(name, queue, workdir, process)
        self.workers[name] = worker
        return worker

    def wait_until_ready(self, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(w.is_ready() for w in self.workers.values()):
                return
            for worker in self.workers.values():
                if worker.process.poll() is not None:
                    raise AssertionError(f"worker {worker.name} exited\n{worker.log_text()[-4000:]}")
            time.sleep(0.5)
        raise AssertionError("workers not ready:\n" + "\n".join(w.log_text()[-2000:] for w in self.workers.values()))

    def logs(self) -> str:
        return "\n".join(f"--- {w.name}\n{w.log_text()[-3000:]}" for w in self.workers.values())

    def stop(self) -> None:
        for worker in self.workers.values():
            if worker.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(worker.process.pid, signal.SIGTERM)  # warm shutdown
        for worker in self.workers.values():
            try:
                worker.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(worker.process.pid, signal.SIGKILL)
                worker.process.wait()
        # A pool process whose parent was killed may linger in its own group: end it by pid.
        for proc in psutil.process_iter(["environ"]):
            with contextlib.suppress(psutil.Error):
                if (proc.info.get("environ") or {}).get("DAGSTER_HOME", "").startswith(str(self.workdir)):
                    proc.kill()
