"""Celery settings the run side (celery_executor) and every worker share, from one place.

Queues: GPU steps carry the op tag `dagster-celery/queue: gpu` (audio_assets/archive_job.py);
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
- `worker_cancel_long_running_tasks_on_connection_loss`: when a worker loses the broker (a
  Redis restart, a network reset), kombu puts the messages it held back on their queues as it
  reconnects ("Restoring 1 unacknowledged message(s)"), and another worker takes the step at
  once. Without this setting the first worker's pool went on with it too: two executions of one
  step in one run, the older fenced out only at its next commit or upload
  (resources/archive_run.py), having spent a chunk's work and a worker (a GPU) for nothing. With
  it the worker stops those steps as it notices the loss (SIGTERM to the pool process, which
  Dagster turns into a retry request under the step's retry policy), so they run again from
  their last commit (measured in tests/faults/test_twin_executions.py: the stopped execution
  ended 0.6 s after its connections were closed).
A redelivered step runs again from its start; transcripts and classifications commit per
chunk and skip files done for the same model/policy version, so a lost worker costs at
most the chunk it was working on.

Bounds (workers/deliveries.py): a step whose worker died CELERY_MAX_DELIVERIES times fails
instead of running again (a worker stopped on purpose does not count), and each step task has a
soft and a hard time limit per queue.
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


# A step whose worker died this many times is failed instead of being delivered again.
DEFAULT_MAX_DELIVERIES = 3
# How long a step's delivery count is kept after its last delivery (a count is deleted when
# the step returns; this only bounds what a step that never returns leaves in Redis).
DELIVERY_COUNT_EXPIRE_S = 7 * 24 * 3600

# Per queue: (soft, hard) seconds one step task may run. The soft limit raises
# SoftTimeLimitExceeded inside the step (it fails, or retries under its RetryPolicy); the hard
# limit kills the pool process and fails the task. CPU steps convert one archive (a 2 GB
# archive takes well under an hour on 8 cores); GPU steps transcribe or score one archive.
DEFAULT_TIME_LIMITS_S = {CPU_QUEUE: (2 * 3600, 2 * 3600 + 300), GPU_QUEUE: (4 * 3600, 4 * 3600 + 300)}


def max_deliveries() -> int:
    return max(1, int(os.environ.get("CELERY_MAX_DELIVERIES", DEFAULT_MAX_DELIVERIES)))


def time_limits(queue: str) -> tuple[float, float]:
    """(hard, soft) time limit in seconds of a step task from `queue` (an unknown queue gets
    the CPU queue's), from CELERY_{CPU,GPU}_TIME_LIMIT_S and CELERY_{CPU,GPU}_SOFT_TIME_LIMIT_S."""
    name = queue if queue in DEFAULT_TIME_LIMITS_S else CPU_QUEUE
    default_soft, default_hard = DEFAULT_TIME_LIMITS_S[name]
    prefix = f"CELERY_{name.upper()}"
    hard = float(os.environ.get(f"{prefix}_TIME_LIMIT_S", default_hard))
    soft = float(os.environ.get(f"{prefix}_SOFT_TIME_LIMIT_S", min(default_soft, hard)))
    return hard, min(soft, hard)


def scratch_sweep_interval_s() -> float:
    """SCRATCH_SWEEP_INTERVAL_S: how often each worker sweeps its host's scratch (default hourly;
    also once when it starts)."""
    return float(os.environ.get("SCRATCH_SWEEP_INTERVAL_S", 3600))


def max_memory_per_child_kib() -> int | None:
    """CELERY_MAX_MEMORY_PER_CHILD_MB: a pool process over this resident size after a step is
    replaced by a fresh one (Celery checks between tasks, never mid-step). Unset (the default):
    never replaced, so a GPU worker keeps its loaded models."""
    raw = os.environ.get("CELERY_MAX_MEMORY_PER_CHILD_MB")
    return int(float(raw) * 1024) if raw else None


def celery_config_source() -> dict:
    """The Celery settings (its lowercase names) for `celery_executor`'s config_source and
    for the workers' app (workers/celery_app.py)."""
    lease_s = lease_seconds()
    memory_kib = max_memory_per_child_kib()
    return {
        "task_default_queue": CPU_QUEUE,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
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
        **({"worker_max_memory_per_child": memory_kib} if memory_kib else {}),
    }


def executor_config() -> dict:
    """celery_executor config: broker and result backend from the environment."""
    return {
        "broker": {"env": "DAGSTER_CELERY_BROKER_URL"},
        "backend": {"env": "DAGSTER_CELERY_BACKEND_URL"},
        "config_source": celery_config_source(),
    }
