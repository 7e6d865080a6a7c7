"""Which worker ran a step, and how many models its process has loaded so far, as
materialization metadata: the UI shows where each partition's GPU steps ran, and a test
reads it back from the event log to check routing and the per-process model cache.

WORKER_NAME is set per worker in deploy/ (the systemd instance, e.g. gpu0); it falls back
to the host name.
"""

from __future__ import annotations

import os
import socket


def worker_metadata() -> dict[str, str | int]:
    """Where this step ran."""
    host = socket.gethostname()
    return {"worker_name": os.environ.get("WORKER_NAME") or host, "worker_host": host, "worker_pid": os.getpid()}


def gpu_worker_metadata() -> dict[str, str | int]:
    """Where this step ran, and the model loads its process has done since it started: 1 on a
    long-lived GPU worker however many partitions it has run (the model cache is per process)."""
    # Imported here: CPU steps and the run worker's start need neither torch nor WhisperX.
    from audio_assets.ml import cope_scorer, transcriber

    return worker_metadata() | {
        "whisper_loads_in_process": transcriber.load_count(),
        "whisper_files_in_process": transcriber.transcribed_files_count(),
        "cope_loads_in_process": cope_scorer.load_count(),
    }
