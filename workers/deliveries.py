"""Bounded deliveries and time limits for the step task every worker runs.

A step's message is acknowledged only when the step has finished (late acks), and a pool
process that dies mid-step puts it back at once (`task_reject_on_worker_lost`), so an input
that kills the process working on it (an OOM kill on a parquet bomb, an ffmpeg that takes its
parent down) would be handed to worker after worker forever while its run stays STARTED and
the run queue's one-run-per-partition limit holds back every newer version of the archive.

So each delivery of a step task is counted in Redis (the broker), keyed by the task id, which
a redelivered message keeps: INCR with an expiry when a pool process starts the task, DEL when
the task returns or fails. A step whose worker died CELERY_MAX_DELIVERIES times (3) is not run
again: the next delivery answers with the step's failure, "worker lost 3 times while running
opus_files". Time limits come per queue (workers/settings.py): the soft limit raises
SoftTimeLimitExceeded inside the step; the hard limit kills the pool process, and the step's
answer is again its failure, "opus_files ran past its hard time limit of 7500 s".

Either answer is a STEP_FAILURE event in the task's result, the form in which dagster-celery's
run side receives every step's events (a list of serialized DagsterEvents): the run marks the
step failed, skips what depends on it and fails as a step failure, which run retries leave
alone (`retry_on_asset_or_op_failure: false`), and the dead letter records the step's error.
(A task that raised instead would reach the run as an executor error, after which
dagster-celery submits no further step and can wait forever on one that became ready.) The
event is written in Dagster's serialized event format, the one its event log stores and reads
back across versions; tests/faults/test_celery_bounds.py reads it back through Dagster.
"""

from __future__ import annotations

import json
import logging
import os

import dagster as dg
import redis
from celery import Task
from celery.worker import state
from celery.worker.request import Request

from workers import settings

log = logging.getLogger(__name__)

KEY_PREFIX = "audio-pipeline:step-deliveries:"


class DeliveryCounter:
    def __init__(self, redis_url: str, expire_s: int):
        self._client = redis.Redis.from_url(redis_url, socket_timeout=10)
        self._expire_s = expire_s

    def count(self, task_id: str) -> int:
        """This delivery's number: 1 on the first, 2 on the first redelivery, ..."""
        key = KEY_PREFIX + task_id
        with self._client.pipeline() as pipe:  # MULTI/EXEC: the expiry always comes with the count
            pipe.incr(key)
            pipe.expire(key, self._expire_s)
            deliveries, _ = pipe.execute()
        return int(deliveries)

    def clear(self, task_id: str) -> None:
        self._client.delete(KEY_PREFIX + task_id)


class BoundedStepRequest(Request):
    """A step message without its own time limits gets those of the queue it came from; a
    step killed at its hard time limit answers with its failure."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not any(self.time_limits):  # the message's [hard, soft]: [None, None] unless set
            routing_key = str((self.delivery_info or {}).get("routing_key") or "")
            # With Redis the message comes with its queue's name ("gpu"); dagster-celery publishes
            # it with the routing key "gpu.execute_plan", which other brokers may hand back.
            self.time_limits = settings.time_limits(routing_key.split(".")[0])

    def on_timeout(self, soft, timeout):
        if soft or state.should_terminate:
            return super().on_timeout(soft, timeout)
        state.task_ready(self)
        step_args = _step_args(self.kwargs)
        message = f"{_steps(step_args)} ran past its hard time limit of {timeout:g} s"
        log.error("%s (task %s): its pool process was killed", message, self.id)
        self.task.backend.mark_as_done(self.id, step_failure(step_args, message), request=self._context)
        _forget(self.task, self.id)
        self.acknowledge()


class BoundedStep(Task):
    """Base of dagster-celery's `execute_plan` task on the workers (workers/celery_app.py)."""

    Request = BoundedStepRequest
    _counter: DeliveryCounter | None = None

    def __call__(self, *args, **kwargs):
        deliveries = _count(self, self.request.id)
        if deliveries > settings.max_deliveries():
            step_args = _step_args(kwargs)
            message = f"worker lost {deliveries - 1} times while running {_steps(step_args)}"
            log.error("%s (task %s): not running it again", message, self.request.id)
            _forget(self, self.request.id)
            return step_failure(step_args, message)
        result = super().__call__(*args, **kwargs)
        _forget(self, self.request.id)
        return result

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        _forget(self, task_id)  # the task failed on its own: nothing redelivers it

    def delivery_counter(self) -> DeliveryCounter | None:
        """The counter in the Redis broker; None with another broker (nothing counted)."""
        broker_url = str(self.app.conf.broker_url or "")
        if BoundedStep._counter is None and broker_url.startswith(("redis://", "rediss://")):
            BoundedStep._counter = DeliveryCounter(broker_url, settings.DELIVERY_COUNT_EXPIRE_S)
        return BoundedStep._counter


def step_failure(step_args, message: str) -> list[str]:
    """The task's result for a step that is not run (again): its STEP_FAILURE event, stored in
    the run's event log (as a worker stores the events of a step it runs; the run side only
    acts on them) and returned serialized, as dagster-celery's task returns them."""
    step_key = step_args.step_keys_to_execute[0]
    job_name = step_args.job_origin.job_name
    handle: dict | None = None
    for name in step_key.split("[")[0].split("."):  # a step in a graph: its node's path
        handle = {"__class__": "SolidHandle", "name": name, "parent": handle}
    error: dict = {
        "__class__": "SerializableErrorInfo",
        "message": f"{StepNotRun.__name__}: {message}\n",
        "stack": [],
        "cls_name": StepNotRun.__name__,
        "cause": None,
        "context": None,
    }
    event = {
        "__class__": "DagsterEvent",
        "event_type_value": "STEP_FAILURE",
        "pipeline_name": job_name,
        "step_key": step_key,
        "solid_handle": handle,
        "step_handle": {"__class__": "StepHandle", "key": step_key, "solid_handle": handle},
        "step_kind_value": "COMPUTE",
        "logging_tags": {
            "job_name": job_name,
            "op_name": step_key.split("[")[0].split(".")[-1],
            "run_id": step_args.run_id,
            "step_key": step_key,
        },
        "event_specific_data": {
            "__class__": "StepFailureData",
            "error": error,
            "error_source": {"__enum__": "ErrorSource.FRAMEWORK_ERROR"},
            "user_failure_data": None,
        },
        "message": f'Execution of step "{step_key}" failed: {message}.',
        "pid": os.getpid(),
    }
    serialized = json.dumps(event)
    try:
        with dg.DagsterInstance.from_ref(step_args.instance_ref) as instance:
            instance.report_dagster_event(
                dg.deserialize_value(serialized, dg.DagsterEvent), step_args.run_id, log_level=logging.ERROR
            )
    except Exception:  # the run still fails the step; only the event log lacks the reason
        log.warning("could not store the failure of %s in run %s", step_key, step_args.run_id, exc_info=True)
    return [serialized]


class StepNotRun(Exception):
    """The name the dead letter and the UI show for a step a worker bound stopped."""


def _step_args(kwargs: dict):
    """dagster-celery's ExecuteStepArgs (run id, step keys, job origin) from the task's kwargs."""
    return dg.deserialize_value(json.dumps(kwargs["execute_step_args_packed"]))


def _steps(step_args) -> str:
    return ", ".join(step_args.step_keys_to_execute or []) or "a step"


def _count(task: BoundedStep, task_id: str) -> int:
    counter = task.delivery_counter()
    if counter is None:
        return 1  # no Redis broker, no count (with RabbitMQ, use a quorum queue's delivery-limit)
    try:
        return counter.count(task_id)
    except redis.RedisError:
        # The broker just handed us this message, so this is a blip: run the step rather than
        # fail it; the next delivery is counted again.
        log.warning("could not count the delivery of task %s", task_id, exc_info=True)
        return 1


def _forget(task: BoundedStep, task_id: str) -> None:
    counter = task.delivery_counter()
    if counter is None:
        return
    try:
        counter.clear(task_id)
    except redis.RedisError:  # the count expires on its own
        log.warning("could not clear the delivery count of task %s", task_id, exc_info=True)
