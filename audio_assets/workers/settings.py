"""Celery settings the run side (celery_executor) and every worker share, from one place.

Queues: GPU steps carry the op tag `dagster-celery/queue: gpu` (audio_assets/gpu_routing.py);
every other step goes to the executor's default queue, named `cpu` here. A CPU worker
consumes `cpu`, one worker per GPU consumes `gpu`.

Delivery (measured in tests/distributed/test_celery_workers.py):
- `task_acks_late`: a step's message is acknowledged when the step has finished, not when a
  worker takes it. A worker that dies mid-step has not acknowledged it, so the broker still
  holds it and hands it out again (with Redis, once `visibility_timeout` has passed since its
  holder last renewed it: workers/message_lease.py).
- `task_reject_on_worker_lost`: if only the pool process dies (the kernel's OOM killer on a
  GPU host), the worker puts the message back at once instead of failing the step.
- `worker_prefetch_multiplier` 1 with late acks: a busy worker holds no second step, so a
  waiting step goes to an idle worker instead of queueing behind a long transcription.
A redelivered step runs again from its start; transcripts and classifications commit per
chunk and skip files done for the same model/policy version, so a lost worker costs at
most the chunk it was working on.
"""

from __future__ import annotations

import os

CPU_QUEUE = "cpu"
GPU_QUEUE = "gpu"

# How long a held message may go unrenewed before another worker may take it: how long a
# step of a dead GPU host waits before it runs elsewhere. Live workers renew every
# lease_s / 4, so a long transcription is never handed out twice.
DEFAULT_LEASE_S = 300


def lease_seconds() -> float:
    return float(os.environ.get("CELERY_TASK_LEASE_S", DEFAULT_LEASE_S))


def celery_config_source() -> dict:
    """The Celery settings (its lowercase names) for `celery_executor`'s config_source and
    for the workers' app (workers/celery_app.py)."""
    lease_s = lease_seconds()
    return {
        "task_default_queue": CPU_QUEUE,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": {
            "visibility_timeout": lease_s,
            # How often live workers look for expired messages to put back (kombu scans
            # every interval x throttle seconds; throttle 1 makes the interval the period).
            "unacked_restore_interval": max(1, min(10, lease_s / 4)),
            "unacked_restore_throttle": 1,
            # dagster-celery's defaults for publishing retries, kept.
            "max_retries": 3,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        # Results (each step's events) are read once by the run; keep them a day, not forever.
        "result_expires": 24 * 3600,
    }


def executor_config() -> dict:
    """celery_executor config: broker and result backend from the environment."""
    return {
        "broker": {"env": "DAGSTER_CELERY_BROKER_URL"},
        "backend": {"env": "DAGSTER_CELERY_BACKEND_URL"},
        "config_source": celery_config_source(),
    }
