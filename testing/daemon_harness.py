"""The platform as production runs it, on loopback: `dagster-daemon` with the repository's own
dagster.yaml (PostgreSQL run/event storage, the run queue and its per-partition limit, run
monitoring and run retries), runs launched by the sensor or the queue into separate run-worker
processes, and the results database and object store they write to.

Used by the fault suite (tests/faults/) and the concurrency test. Each harness has its own
Dagster storage database and DAGSTER_HOME; the services (SeaweedFS, PostgreSQL) come from the
caller, so a test can put a fault proxy in front of S3 or restart the results database.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psutil
import yaml

from embedded_services.postgres import LocalPostgres, create_database


@functools.cache
def repository() -> Path:
    """The checkout the tests or benches run from (pytest and the benches start at its root),
    whose dagster.yaml is the instance under test: this package is installed, so its own
    location says nothing about the checkout."""
    for folder in (Path.cwd(), *Path.cwd().parents):
        if (folder / "dagster.yaml").is_file() and (folder / "workspace.yaml").is_file():
            return folder
    raise RuntimeError(f"run from the repository's checkout: no dagster.yaml + workspace.yaml at or above {Path.cwd()}")


BIN = Path(sys.executable).parent
FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
# The sensor daemon starts its loop at most every 5 s (Dagster's MIN_INTERVAL_LOOP_TIME).
SENSOR_DAEMON_LOOP_S = 5
_PID_MESSAGE = re.compile(r"Started process for run \(pid: (\d+)\)")


@dataclass(frozen=True)
class PipelineEnvironment:
    """Where the daemon's runs find their services (the variables of .env.example)."""

    s3_endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    results_dsn: str
    scratch_root: Path
    models_root: Path
    extra: tuple[tuple[str, str], ...] = ()

    @classmethod
    def serving(
        cls, object_store, results_dsn: str, scratch_root: Path, models_root: Path, endpoint: str | None = None, **extra
    ) -> PipelineEnvironment:
        """The daemon's runs on this bucket (an ObjectStore; `endpoint` puts e.g. a fault proxy
        in front of its server) and results database; `extra` adds or overrides variables."""
        return cls(
            s3_endpoint=endpoint or object_store.endpoint_url,
            bucket=object_store.bucket,
            access_key=object_store.access_key,
            secret_key=object_store.secret_key,
            results_dsn=results_dsn,
            scratch_root=scratch_root,
            models_root=models_root,
            extra=tuple(extra.items()),
        )

    def variables(self) -> dict[str, str]:
        return {
            "AUDIO_PIPELINE_ENV": "local",
            "S3_ENDPOINT": self.s3_endpoint,
            "S3_BUCKET": self.bucket,
            "S3_ACCESS_KEY": self.access_key,
            "S3_SECRET_KEY": self.secret_key,
            "POSTGRES_DSN": self.results_dsn,
            "SCRATCH_ROOT": str(self.scratch_root),
            "MODELS_ROOT": str(self.models_root),
            "WHISPER_MODEL": "base-bundled",
            "WHISPER_LANGUAGE": "en",
            "CLASSIFIER_BACKEND": "profanity",
            "ARCHIVE_SENSOR_INTERVAL_S": "2",
            "PYANNOTE_METRICS_ENABLED": "false",
            "HF_HUB_OFFLINE": "1",
            **dict(self.extra),
        }


class DaemonHarness:
    def __init__(self, workdir: Path, dagster_pg: LocalPostgres, pipeline: PipelineEnvironment):
        self.workdir = workdir
        self.home = workdir / "dagster_home"
        self.home.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(repository() / "dagster.yaml", self.home / "dagster.yaml")
        database = f"dagster_{uuid.uuid4().hex[:12]}"
        create_database(dagster_pg, database)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("S3_", "POSTGRES_", "DAGSTER_"))},
            **pipeline.variables(),
            "DAGSTER_HOME": str(self.home),
            "DAGSTER_PG_HOST": dagster_pg.host,
            "DAGSTER_PG_PORT": str(dagster_pg.port),
            "DAGSTER_PG_USER": dagster_pg.user,
            "DAGSTER_PG_PASSWORD": dagster_pg.password,
            "DAGSTER_PG_DB": database,
        }
        self.daemon: subprocess.Popen | None = None
        self.run_host: subprocess.Popen | None = None
        self._logs = 0
        self._saved_environ: dict[str, str | None] = {}

    # --- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> DaemonHarness:
        # The test process reads the same instance (dagster.yaml resolves {env: ...} from here).
        for name in [k for k in self.env if k.startswith(("DAGSTER_", "S3_", "POSTGRES_"))]:
            self._saved_environ[name] = os.environ.get(name)
            os.environ[name] = self.env[name]
        self.instance = dg.DagsterInstance.from_config(str(self.home))
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.stop_everything()
        finally:
            self.instance.dispose()
            for name, value in self._saved_environ.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def start_daemon(self) -> None:
        self._logs += 1
        log = (self.workdir / f"dagster-daemon-{self._logs}.log").open("wb")
        self.daemon = subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-m", "definitions"],
            cwd=self.workdir,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the test can stop all of it
        )

    def start_run_host(self, slots: int = 2) -> None:
        """Run this harness's runs as the embedded default does (operations/demo.py): each run a
        task of a local dagster-celery worker whose `slots` processes stay up. Call before
        start_daemon, with the broker in the pipeline environment (DAGSTER_CELERY_BROKER_URL,
        DAGSTER_CELERY_BACKEND_URL)."""
        from operations.demo import local_instance_config, start_run_host

        (self.home / "dagster.yaml").write_text(
            yaml.safe_dump(local_instance_config(repository() / "dagster.yaml", slots))
        )
        self.instance.dispose()
        self.instance = dg.DagsterInstance.from_config(str(self.home))
        self.run_host = start_run_host(self.env, self.home, slots)

    def stop_daemon(self, sig: int = signal.SIGTERM, timeout_s: float = 60) -> None:
        """Signal the daemon process alone (what systemd's KillMode=process does on a stop);
        its code server and the runs it started are left alone."""
        if self.daemon is None or self.daemon.poll() is not None:
            return
        self.daemon.send_signal(sig)
        try:
            self.daemon.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.daemon.kill()
            self.daemon.wait()

    def stop_everything(self) -> None:
        """End of the test: the daemon, then whatever it left running (code servers, runs)."""
        leftovers = _descendants(self.daemon.pid) if self.daemon and self.daemon.poll() is None else []
        self.stop_daemon()
        if self.run_host is not None:
            from operations.demo import stop_process_group

            stop_process_group(self.run_host, timeout_s=10)
        leftovers += [p for p in psutil.process_iter(["environ", "cmdline"]) if _in_harness(p, self.home)]
        for process in leftovers:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(leftovers, timeout=30)

    def daemon_log(self) -> str:
        return "\n".join(
            p.read_text(errors="replace")[-4000:] for p in sorted(self.workdir.glob("dagster-daemon-*.log"))
        )

    # --- runs ----------------------------------------------------------------------------------

    def runs(self, **filters) -> list[dg.DagsterRun]:
        return list(self.instance.get_runs(filters=dg.RunsFilter(**filters)))

    def wait_until(self, condition: Callable[[], object], timeout_s: float, what: str, poll_s: float = 1.0):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            time.sleep(poll_s)
        raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}\n{self.daemon_log()}")

    def stop_sensor(self, name: str, timeout_s: float = 120) -> None:
        """Stop sensor `name` as the UI's toggle does (its stored state set to STOPPED) and make
        it stick. The sensor daemon writes the whole stored state back, status included, from
        the copy it read when a tick started, both at the tick's start and at its end; a stop
        stored while a tick is in flight is undone by it (seen in CI: the sensor went on and
        launched a second run of an archive submitted by hand). So the stop is stored again
        until it has lasted a whole sensor-daemon loop with no tick in flight."""
        from dagster._core.scheduler.instigation import InstigatorStatus, TickStatus

        def state():
            return next((s for s in self.instance.all_instigator_state() if s.instigator_name == name), None)

        deadline = time.monotonic() + timeout_s
        while True:
            assert time.monotonic() < deadline, f"{name} could not be stopped\n{self.daemon_log()}"
            current = state()
            if current is None:  # the daemon stores the state at the sensor's first tick
                time.sleep(0.5)
                continue
            if current.status != InstigatorStatus.STOPPED:
                self.instance.update_instigator_state(current.with_status(InstigatorStatus.STOPPED))
            time.sleep(SENSOR_DAEMON_LOOP_S + 1)
            current = state()
            ticks = self.instance.get_ticks(current.instigator_origin_id, current.selector_id, limit=1)
            if current.status == InstigatorStatus.STOPPED and not (ticks and ticks[0].status == TickStatus.STARTED):
                return

    def first_run(self, partition_key: str, timeout_s: float = 180) -> dg.DagsterRun:
        """The first run of the partition (the sensor's, once it has seen the archive)."""
        return self.wait_until(
            lambda: next(iter(reversed(self.runs(tags={"dagster/partition": partition_key}))), None),
            timeout_s,
            f"a run of partition {partition_key}",
        )

    def wait_for_step(self, run_id: str, step_key: str, timeout_s: float = 300) -> None:
        self.wait_until(lambda: self.step_started(run_id, step_key), timeout_s, f"{step_key} to start", 0.5)

    def wait_for_partition_success(self, partition_key: str, timeout_s: float = 600) -> list[dg.DagsterRun]:
        """Until the partition's latest run succeeded (after any retries); all its runs, oldest first."""

        def succeeded():
            runs = self.runs(tags={"dagster/partition": partition_key})
            if runs and runs[0].status == dg.DagsterRunStatus.SUCCESS:
                return list(reversed(runs))
            return None

        return self.wait_until(succeeded, timeout_s, f"a successful run of partition {partition_key}")

    def run_worker_pid(self, run_id: str) -> int | None:
        for entry in self.instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
            match = _PID_MESSAGE.search(entry.message or "")
            if match:
                return int(match.group(1))
        return None

    def step_started(self, run_id: str, step_key: str) -> bool:
        return any(
            entry.step_key == step_key
            for entry in self.instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)
        )

    def log_messages(self, run_id: str) -> list[str]:
        return [entry.user_message or "" for entry in self.instance.all_logs(run_id)]


def _descendants(pid: int) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).children(recursive=True)
    return []


def _in_harness(process: psutil.Process, home: Path) -> bool:
    """A Dagster process started for this harness: it carries its DAGSTER_HOME. (Servers the
    test itself restarted inherit that variable too, hence the look at the command line.)"""
    with contextlib.suppress(psutil.Error):
        started_here = (process.info.get("environ") or {}).get("DAGSTER_HOME") == str(home)
        return started_here and any("dagster" in part for part in process.info.get("cmdline") or [])
    return False


@contextlib.contextmanager
def running_daemon(harness: DaemonHarness) -> Iterator[DaemonHarness]:
    harness.start_daemon()
    try:
        yield harness
    except BaseException:
        sys.stderr.write(harness.daemon_log())
        raise
