"""`audio-pipeline doctor`: can this host run the pipeline? One line per dependency.

Every check runs in its own daemon thread with a deadline, so a service that is down or a
host that drops packets costs a few seconds, not a TCP timeout, and one hung check cannot
keep the command (or the others) from finishing. Checks that reach a service also set their
own socket timeouts, so they usually fail with the real reason before the deadline.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import queue
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from operations import ResourceConfigError, configured_resource
from operations.service_probes import broker_target, postgres_target, probe_redis, short_error

LABELS = {"ok": "[ ok ]", "warn": "[warn]", "fail": "[FAIL]", "skip": "[skip]"}
CELERY_BROKER_VARS = ("DAGSTER_CELERY_BROKER_URL", "CELERY_BROKER_URL")
# Checks that need no network still get a deadline: a broken GPU driver can hang CUDA init.
LOCAL_DEADLINE_S = 30.0
GB = 1_000_000_000


@dataclass(frozen=True)
class CheckResult:
    name: str
    state: str  # ok | warn | fail | skip
    detail: str

    def line(self) -> str:
        return f"{LABELS[self.state]} {self.name}: {self.detail}"


@dataclass(frozen=True)
class DoctorSettings:
    timeout_s: float = 5.0
    scratch_warn_gb: float = 5.0
    scratch_fail_gb: float = 1.0


class ResolvedResources:
    """The resources the checks need, resolved once in the main thread: Dagster resolves them
    with a throwaway SQLite-backed instance, and SQLite objects must not cross threads. A
    resource that cannot be configured (a missing variable) fails only the checks using it."""

    NAMES = ("object_store", "results_db", "transcriber", "classifier", "scratch")

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}
        for name in self.NAMES:
            try:
                self._values[name] = configured_resource(name)
            except (ResourceConfigError, ValueError) as exc:  # ValueError: an unknown AUDIO_PIPELINE_ENV
                self._values[name] = exc

    def __call__(self, name: str) -> Any:
        value = self._values[name]
        if isinstance(value, Exception):
            raise value
        return value


def check_s3(settings: DoctorSettings, resources: ResolvedResources) -> CheckResult:
    """Reachable, bucket present and writable: put and delete a probe object."""
    import boto3
    import botocore.config
    import botocore.exceptions

    store = resources("object_store")
    where = f"{store.endpoint_url or 'AWS S3'} bucket {store.bucket}"
    shared = store.client()
    # The pipeline's client retries for minutes by design; the probe must fail fast.
    fast = botocore.config.Config(
        connect_timeout=settings.timeout_s, read_timeout=settings.timeout_s, retries={"total_max_attempts": 1}
    )
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=shared.meta.endpoint_url,
        region_name=shared.meta.region_name,
        aws_access_key_id=store.access_key,
        aws_secret_access_key=store.secret_key,
        config=shared.meta.config.merge(fast),
    )
    probe_key = f"dagster/doctor/probe-{uuid.uuid4().hex}"
    steps = [
        ("bucket lookup", lambda: client.head_bucket(Bucket=store.bucket)),
        ("probe upload", lambda: client.put_object(Bucket=store.bucket, Key=probe_key, Body=b"doctor probe")),
        ("probe delete", lambda: client.delete_object(Bucket=store.bucket, Key=probe_key)),
    ]
    for step, call in steps:
        try:
            call()
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            return CheckResult("s3", "fail", f"{where}: {step} failed: {short_error(exc)}")
    return CheckResult("s3", "ok", f"{where} writable")


def check_postgres(settings: DoctorSettings, resources: ResolvedResources) -> CheckResult:
    import psycopg2
    from psycopg2.extensions import make_dsn

    from sql.migrate import MigrationError, pending_migrations

    results_db = resources("results_db")
    # make_dsn merges: the configured DSN (or URL) plus a connect timeout of our own.
    dsn = make_dsn(results_db.connection_string(), connect_timeout=max(1, round(settings.timeout_s)))
    where = postgres_target(dsn)
    try:
        pending = pending_migrations(dsn)
    except (psycopg2.Error, MigrationError) as exc:
        return CheckResult("postgres", "fail", f"{short_error(exc)} ({where})")
    if pending:
        return CheckResult(
            "postgres", "fail", f"{where}: migrations pending ({', '.join(pending)}); run `audio-pipeline migrate`"
        )
    return CheckResult("postgres", "ok", f"{where} reachable, migrations current")


def check_ffmpeg(settings: DoctorSettings, resources: ResolvedResources) -> CheckResult:
    from media.ffmpeg_binary import FFmpegNotFound, resolve_ffmpeg

    try:
        ffmpeg = resolve_ffmpeg()  # only returns a binary whose encoders include libopus
    except FFmpegNotFound as exc:
        return CheckResult("ffmpeg", "fail", short_error(exc))
    banner = subprocess.run([ffmpeg, "-version"], check=False, capture_output=True, text=True, timeout=LOCAL_DEADLINE_S)
    version = (banner.stdout.split() + ["?"] * 3)[2]
    return CheckResult("ffmpeg", "ok", f"{ffmpeg} (version {version}) with libopus")


def check_whisper(settings: DoctorSettings, resources: ResolvedResources) -> CheckResult:
    from models.whisper_models import BUNDLED_ALIASES, BUNDLED_PACKAGES, resolve_whisper_model

    model_settings = resources("transcriber").settings()
    model = model_settings.model
    if model in BUNDLED_ALIASES:
        # Not resolve_whisper_model: that would assemble the 140 MB model as a side effect.
        missing = [name for name in BUNDLED_PACKAGES if importlib.util.find_spec(name) is None]
        if missing:
            return CheckResult("whisper", "fail", f"{model}: packages not installed: {', '.join(missing)}")
        return CheckResult(
            "whisper", "ok", f"{model} (weights in the installed packages {', '.join(BUNDLED_PACKAGES)})"
        )
    resolved = Path(
        resolve_whisper_model(model, Path(model_settings.models_root) if model_settings.models_root else None)
    )
    if (resolved / "model.bin").is_file():
        return CheckResult("whisper", "ok", f"{model} at {resolved}")
    return CheckResult(
        "whisper",
        "fail",
        f"{model}: no local CTranslate2 model (model.bin) under MODELS_ROOT={model_settings.models_root}",
    )


def check_classifier(settings: DoctorSettings, resources: ResolvedResources) -> CheckResult:
    classifier = resources("classifier")
    if classifier.backend == "profanity":
        importlib.import_module("profanity_check")  # unpickles the bundled model
        return CheckResult("classifier", "ok", "profanity (alt-profanity-check imports)")
    if classifier.backend != "cope-a":
        return CheckResult("classifier", "fail", f"unknown backend {classifier.backend!r}")
    from models.cope_scorer import resolve_model_path

    root = str(Path(classifier.models_root).expanduser()) if classifier.models_root else None
    wanted = {"base model": classifier.base_model, "adapter": classifier.adapter}
    found = {role: resolve_model_path(name, root) for role, name in wanted.items() if name}
    missing = [f"{role} {wanted[role]}" for role, path in found.items() if not Path(path).is_dir()]
    if missing:
        return CheckResult("classifier", "fail", f"cope-a: not found under MODELS_ROOT={root}: {', '.join(missing)}")
    return CheckResult("classifier", "ok", f"cope-a: {', '.join(found.values())}")


def check_gpu(settings: DoctorSettings, resources: ResolvedResources) -> CheckResult:
    """Reported, never required: the CPU path works, only slower."""
    try:
        import torch  # lazily: a second or more, and absent on slim ingest-only hosts
    except ImportError:
        return CheckResult("gpu", "warn", "torch not installed (CPU only)")
    if not torch.cuda.is_available():
        return CheckResult("gpu", "warn", "none (CPU only)")
    count = torch.cuda.device_count()
    return CheckResult("gpu", "ok", f"{torch.cuda.get_device_name(0)} ({count} device(s), CUDA {torch.version.cuda})")


def check_whisper_gpu(settings: DoctorSettings, resources: ResolvedResources) -> CheckResult:
    """CTranslate2's first float16 product on every visible GPU, in this process: it opens CUDA
    12's libcublas.so.12 (nothing else: the CUDA runtime is linked in, no cuDNN), which a
    CUDA-13-only host lacks. The GPU worker checks its own process as it starts."""
    if importlib.util.find_spec("ctranslate2") is None:
        return CheckResult("whisper-gpu", "skip", "ctranslate2 not installed")
    from models.ctranslate2_check import check_ctranslate2_gpus

    results = check_ctranslate2_gpus()
    if not results:
        return CheckResult("whisper-gpu", "skip", "no CUDA device visible to CTranslate2 (CPU only)")
    failed = [r for r in results if not r.ok]
    if failed:
        return CheckResult("whisper-gpu", "fail", "; ".join(f"cuda:{r.device_index} {r.detail}" for r in failed))
    return CheckResult("whisper-gpu", "ok", f"float16 products on {len(results)} GPU(s)")


def check_scratch(settings: DoctorSettings, resources: ResolvedResources) -> CheckResult:
    root = Path(resources("scratch").root).expanduser()
    existing = next(p for p in (root, *root.parents) if p.exists())  # the root may not exist yet
    if not os.access(existing, os.W_OK):
        return CheckResult("scratch", "fail", f"{root}: {existing} is not writable")
    free_gb = shutil.disk_usage(existing).free / GB
    detail = f"{root}: {free_gb:.1f} GB free"
    if free_gb < settings.scratch_fail_gb:
        return CheckResult("scratch", "fail", f"{detail} (< {settings.scratch_fail_gb:g} GB)")
    if free_gb < settings.scratch_warn_gb:
        return CheckResult("scratch", "warn", f"{detail} (< {settings.scratch_warn_gb:g} GB)")
    return CheckResult("scratch", "ok", detail)


def check_redis(settings: DoctorSettings, resources: ResolvedResources) -> CheckResult:
    """Only where a Celery executor is configured: its broker must answer."""
    url = next((os.environ[var] for var in CELERY_BROKER_VARS if os.environ.get(var)), None)
    if url is None:
        return CheckResult("redis", "skip", f"no Celery broker configured ({' / '.join(CELERY_BROKER_VARS)} unset)")
    try:
        return CheckResult("redis", "ok", probe_redis(url, settings.timeout_s))
    except (OSError, RuntimeError, ValueError) as exc:  # socket and TLS errors are OSErrors
        return CheckResult("redis", "fail", f"{short_error(exc)} ({broker_target(url)})")


def check_host_settings(settings: DoctorSettings, resources: ResolvedResources) -> CheckResult:
    """Only where a Celery executor is configured: every live worker's values of the settings
    all hosts must agree on (lease, caps, claim, attempts, time limits, code version) are
    this host's. Workers answer a broadcast (workers/celery_app.py); one that differs fails."""
    from celery import Celery

    from resources.archive_run import host_settings, settings_mismatches

    url = next((os.environ[var] for var in CELERY_BROKER_VARS if os.environ.get(var)), None)
    if url is None:
        return CheckResult("host-settings", "skip", "no Celery broker configured")
    with Celery(broker=url, set_as_current=False) as app:
        replies = app.control.broadcast("agreed_settings", reply=True, timeout=settings.timeout_s)
    workers = {name: values for reply in replies for name, values in reply.items()}
    if not workers:
        return CheckResult("host-settings", "warn", f"no worker answered within {settings.timeout_s:g} s")
    ours = host_settings()
    differ = {name: settings_mismatches(values, ours) for name, values in sorted(workers.items())}
    differ = {name: found for name, found in differ.items() if found}
    if differ:
        return CheckResult(
            "host-settings", "fail", "; ".join(f"{name}: {', '.join(found)}" for name, found in differ.items())
        )
    return CheckResult("host-settings", "ok", f"{len(workers)} worker(s) agree with this host")


# (check, uses the network): network checks get the --timeout budget, local ones a fixed one.
CHECKS: list[tuple[str, Callable[[DoctorSettings, ResolvedResources], CheckResult], bool]] = [
    ("s3", check_s3, True),
    ("postgres", check_postgres, True),
    ("ffmpeg", check_ffmpeg, False),
    ("whisper", check_whisper, False),
    ("classifier", check_classifier, False),
    ("gpu", check_gpu, False),
    ("whisper-gpu", check_whisper_gpu, False),
    ("scratch", check_scratch, False),
    ("redis", check_redis, True),
    ("host-settings", check_host_settings, True),
]


def run_checks(settings: DoctorSettings, print_line: Callable[[str], None] = print) -> list[CheckResult]:
    """Start every check at once, then report them in a fixed order as each finishes."""
    resources = ResolvedResources()
    began = time.monotonic()
    started = [(name, _start(name, check, settings, resources), network) for name, check, network in CHECKS]
    results = []
    for name, answer, network in started:
        # Deadlines count from the common start, so waiting on one check does not add to
        # the next one's budget. Network checks make a few requests of timeout_s each.
        budget = 2 * settings.timeout_s + 1 if network else LOCAL_DEADLINE_S
        try:
            result = answer.get(timeout=max(0.0, began + budget - time.monotonic()))
        except queue.Empty:
            result = CheckResult(name, "fail", f"no answer within {budget:g} s")
        print_line(result.line())
        results.append(result)
    return results


def _start(name: str, check, settings: DoctorSettings, resources: ResolvedResources) -> queue.Queue:
    answer: queue.Queue = queue.Queue(maxsize=1)

    def body() -> None:
        try:
            answer.put(check(settings, resources))
        except Exception as exc:  # noqa: BLE001 - a check that crashes is a failed check, not a crashed doctor
            answer.put(CheckResult(name, "fail", short_error(exc)))

    # daemon: a check stuck past its deadline must not keep the process alive at exit
    threading.Thread(target=body, name=f"doctor-{name}", daemon=True).start()
    return answer


def run_doctor(settings: DoctorSettings) -> int:
    results = run_checks(settings)
    failed = [r.name for r in results if r.state == "fail"]
    print(
        f"doctor: {len(failed)} check(s) failed: {', '.join(failed)}"
        if failed
        else "doctor: all required checks passed"
    )
    return 1 if failed else 0
