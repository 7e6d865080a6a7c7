"""Bounded deliveries and time limits for the step task every worker runs.

A step's message is acknowledged only when the step has finished (late acks), and a pool
process that dies mid-step puts it back at once (`task_reject_on_worker_lost`), so an input
that kills the process working on it (an OOM kill on a parquet bomb, an ffmpeg that takes its
parent down) would be handed to worker after worker forever while its run stays STARTED and
the run queue's one-run-per-partition limit holds back every newer version of the archive.

So each delivery of a step task is counted in Redis (the broker), in a hash keyed by the task
id, which a redelivered message keeps: HINCRBY with an expiry when a pool process starts the
task, DEL when the task returns. A step whose worker died CELERY_MAX_DELIVERIES times (3) is not
run again: the next delivery fails it with "worker lost 3 times while running opus_files".
Time limits come per queue (workers/settings.py): the soft limit raises SoftTimeLimitExceeded
inside the step; the hard limit kills the pool process, and the message goes back on its queue
with the reason beside its count, so its next delivery fails the step with "opus_files ran past
its hard time limit of 7500 s".

Only deaths the input may have caused count. A worker that is stopped on purpose (SIGTERM from a
deploy or a rolling restart: Celery's warm shutdown) gives back, as its shutdown begins, the
count of every step it is running; if its grace period (the unit's TimeoutStopSec) ends before
the step does, the kill that follows is not held against the step. And counting never switches
itself off: when Redis refuses the count (it must keep what it is told: no eviction, an
append-only file; deploy/README.md), the worker tries again for a while and then puts the
message back on its queue (Reject with requeue), logging an error, rather than run the step
uncounted.

A refused delivery is executed like every other, by dagster-celery's own task body, with the
step made to fail at its start (audio_assets/archive_job.py, `refusing`): Dagster records the
STEP_FAILURE with the reason in the run's event log and returns it as the task's result, the
run marks the step failed and skips what depends on it, run retries leave a step failure alone
(`retry_on_asset_or_op_failure: false`), and the dead letter records the reason. (A task that
raised instead would reach the run as an executor error, after which dagster-celery submits no
further step and can wait forever on one that became ready.)
"""

from __future__ import annotations

import json
import logging
import time

import dagster as dg
import redis
from celery import Celery, Task, signals
from celery.exceptions import Reject, TimeLimitExceeded
from celery.worker import state
from celery.worker.request import Request

from audio_assets.archive_job import refusing
from workers import settings

log = logging.getLogger(__name__)

KEY_PREFIX = "audio-pipeline:step-deliveries:"
# How long a delivery waits for Redis to take its count before going back on its queue.
COUNT_RETRY_DELAYS_S = (1, 2, 4, 8)
# Give back a delivery's count only while the hash exists: a step that finished meanwhile
# deleted it, and a hash created here would hold a count of -1 for a step that is gone.
_GIVE_BACK = "if redis.call('exists', KEYS[1]) == 1 then return redis.call('hincrby', KEYS[1], 'deliveries', -1) end"


class DeliveryCounter:
    def __init__(self, redis_url: str, expire_s: int):
        self._client = redis.Redis.from_url(redis_url, socket_timeout=10)
        self._expire_s = expire_s
        self._give_back = self._client.register_script(_GIVE_BACK)

    def count(self, task_id: str) -> tuple[int, str | None]:
        """This delivery's number (1 on the first, 2 on the first redelivery, ...) and the
        reason recorded for failing it instead of running it, if any."""
        key = KEY_PREFIX + task_id
        with self._client.pipeline() as pipe:  # MULTI/EXEC: the expiry always comes with the count
            pipe.hincrby(key, "deliveries", 1)
            pipe.hget(key, "refusal")
            pipe.expire(key, self._expire_s)
            deliveries, refusal, _ = pipe.execute()
        return int(deliveries), refusal.decode() if refusal else None

    def refuse_next(self, task_id: str, reason: str) -> None:
        """The task's next delivery fails its step with `reason` instead of running it."""
        key = KEY_PREFIX + task_id
        with self._client.pipeline() as pipe:
            pipe.hset(key, "refusal", reason)
            pipe.expire(key, self._expire_s)
            pipe.execute()

    def give_back(self, task_id: str) -> None:
        """Uncount the delivery running now (its worker is being stopped on purpose)."""
        self._give_back(keys=[KEY_PREFIX + task_id])

    def clear(self, task_id: str) -> None:
        self._client.delete(KEY_PREFIX + task_id)


class BoundedStepRequest(Request):
    """A step message without its own time limits gets those of the queue it came from; a
    step killed at its hard time limit goes back on its queue to be answered with its failure."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not any(self.time_limits):  # the message's [hard, soft]: [None, None] unless set
            routing_key = str((self.delivery_info or {}).get("routing_key") or "")
            # With Redis the message comes with its queue's name ("gpu"); dagster-celery publishes
            # it with the routing key "gpu.execute_plan", which other brokers may hand back.
            self.time_limits = settings.time_limits(routing_key.split(".")[0])

    def on_failure(self, exc_info, send_failed_event=True, return_ok=False):
        # Called first when the hard limit kills the pool process (then on_timeout): record why
        # before the message goes back on the queue (BoundedStep.acks_on_timeout is False).
        exc = getattr(exc_info.exception, "exc", exc_info.exception)  # unwrap ExceptionWithTraceback
        if isinstance(exc, TimeLimitExceeded) and not state.should_terminate:
            limit = exc.args[0] if exc.args else self.time_limits[0]
            reason = f"{_steps(self.kwargs)} ran past its hard time limit of {float(limit):g} s"
            log.error("%s (task %s): its pool process was killed; its next delivery fails it", reason, self.id)
            _refuse_next(self.task, self.id, reason)
        return super().on_failure(exc_info, send_failed_event, return_ok)

    def on_timeout(self, soft, timeout):
        if soft or state.should_terminate:
            return super().on_timeout(soft, timeout)
        # Not Celery's own handling, which stores the task's result as a failure: the run would
        # see an executor error. on_failure has put the message back with its reason.


class BoundedStep(Task):
    """Base of dagster-celery's `execute_plan` task on the workers (workers/celery_app.py)."""

    Request = BoundedStepRequest
    acks_on_timeout = False  # a step killed at its hard limit is requeued, then answered
    _counter: DeliveryCounter | None = None

    def __call__(self, *args, **kwargs):
        deliveries, refusal = _count(self, self.request.id)
        if refusal is None and deliveries > settings.max_deliveries():
            refusal = f"worker lost {deliveries - 1} times while running {_steps(kwargs)}"
        try:
            if refusal is None:
                return super().__call__(*args, **kwargs)
            log.error("%s (task %s): failing the step at its start", refusal, self.request.id)
            with refusing(refusal):  # dagster-celery's own body: Dagster fails and records the step
                return super().__call__(*args, **kwargs)
        finally:
            _forget(self, self.request.id)

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        _forget(self, task_id)  # the task failed on its own: nothing redelivers it

    def delivery_counter(self) -> DeliveryCounter | None:
        """The counter in the Redis broker; None with another broker (nothing counted)."""
        if BoundedStep._counter is None and _is_redis(self.app):
            BoundedStep._counter = DeliveryCounter(self.app.conf.broker_url, settings.DELIVERY_COUNT_EXPIRE_S)
        return BoundedStep._counter


def install(app: Celery) -> None:
    """A worker of `app` that is told to stop (SIGTERM, SIGINT, SIGQUIT: a deploy, a rolling
    restart, an operator) gives back the deliveries of the steps it is running."""

    @signals.worker_shutting_down.connect(weak=False)
    def give_back_running_steps(sig=None, how=None, **_):
        if not _is_redis(app):
            return
        # Runs in the signal handler: a client of its own, never one the interrupted code holds.
        counter = DeliveryCounter(app.conf.broker_url, settings.DELIVERY_COUNT_EXPIRE_S)
        for request in _running_steps():
            if request.id in _given_back:
                continue
            try:
                counter.give_back(request.id)
                _given_back.add(request.id)
                log.warning("%s shutdown (%s): the delivery of task %s does not count", how, sig, request.id)
            except redis.RedisError:  # then it counts: the bound errs on the side of stopping
                log.warning("could not give back the delivery of task %s", request.id, exc_info=True)


_given_back: set[str] = set()  # a second signal must not give back the same delivery twice


def _running_steps() -> list[Request]:
    for _ in range(3):
        try:
            return [r for r in state.active_requests if isinstance(r.task, BoundedStep)]
        except RuntimeError:  # the set changed while we read it
            continue
    return []


def _steps(kwargs: dict) -> str:
    """The step keys of a step task, from dagster-celery's packed ExecuteStepArgs."""
    step_args = dg.deserialize_value(json.dumps(kwargs["execute_step_args_packed"]))
    return ", ".join(getattr(step_args, "step_keys_to_execute", None) or []) or "a step"


def _is_redis(app: Celery) -> bool:
    return str(app.conf.broker_url or "").startswith(("redis://", "rediss://"))


def _count(task: BoundedStep, task_id: str) -> tuple[int, str | None]:
    counter = task.delivery_counter()
    if counter is None:
        return 1, None  # no Redis broker, no count (with RabbitMQ, use a quorum queue's delivery-limit)
    for delay_s in (*COUNT_RETRY_DELAYS_S, None):
        try:
            return counter.count(task_id)
        except redis.RedisError as exc:
            if delay_s is None:
                log.error("could not count the delivery of task %s: back on its queue, not run uncounted", task_id)
                raise Reject(f"delivery count unavailable: {exc}", requeue=True) from exc
            log.warning("could not count the delivery of task %s (%s); trying again", task_id, exc)
            time.sleep(delay_s)
    raise AssertionError("unreachable")


def _refuse_next(task: BoundedStep, task_id: str, reason: str) -> None:
    counter = task.delivery_counter()
    if counter is None:
        return
    try:
        counter.refuse_next(task_id, reason)
    except redis.RedisError:  # the step then runs again, and its deaths are counted
        log.warning("could not record why task %s must not run again", task_id, exc_info=True)


def _forget(task: BoundedStep, task_id: str) -> None:
    counter = task.delivery_counter()
    if counter is None:
        return
    try:
        counter.clear(task_id)
    except redis.RedisError:  # the count expires on its own
        log.warning("could not clear the delivery count of task %s", task_id, exc_info=True)
