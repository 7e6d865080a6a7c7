"""The run side (celery_executor) and the workers' Celery app are built from one set of settings."""

from __future__ import annotations

import importlib

BROKER, BACKEND = "redis://127.0.0.1:6399/0", "redis://127.0.0.1:6399/1"


def _worker_app(monkeypatch):
    monkeypatch.setenv("DAGSTER_CELERY_BROKER_URL", BROKER)
    monkeypatch.setenv("DAGSTER_CELERY_BACKEND_URL", BACKEND)
    monkeypatch.setenv("CELERY_TASK_LEASE_S", "40")
    import workers.celery_app as module

    return importlib.reload(module).app


def test_workers_ack_late_and_take_one_step_at_a_time(monkeypatch):
    conf = _worker_app(monkeypatch).conf
    assert (conf.broker_url, conf.result_backend) == (BROKER, BACKEND)
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    assert conf.worker_cancel_long_running_tasks_on_connection_loss  # no twin left running after a broker loss
    assert conf.broker_transport_options["visibility_timeout"] == 40
    assert conf.broker_transport_options["unacked_restore_interval"] == 10


def test_the_workers_app_runs_dagster_celerys_step_task(monkeypatch):
    from dagster_celery.config import TASK_EXECUTE_PLAN_NAME

    assert TASK_EXECUTE_PLAN_NAME in _worker_app(monkeypatch).tasks


def test_the_run_side_uses_the_same_settings_and_sends_untagged_steps_to_cpu(monkeypatch):
    from definitions import executor_for
    from workers.settings import celery_config_source, executor_config

    conf = _worker_app(monkeypatch).conf
    assert executor_for("production").name == "celery"
    source = executor_config()["config_source"]
    assert source == celery_config_source() and source["task_default_queue"] == "cpu"
    assert all(conf[name] == value for name, value in source.items())


def test_step_tasks_are_bounded_and_time_limited_per_queue(monkeypatch):
    from workers.deliveries import BoundedStep, BoundedStepRequest
    from workers.settings import max_deliveries, time_limits

    task = _worker_app(monkeypatch).tasks["execute_plan"]
    assert isinstance(task, BoundedStep) and task.Request is BoundedStepRequest
    assert max_deliveries() == 3
    assert time_limits("cpu") == (7500, 7200) and time_limits("gpu") == (14700, 14400)
    assert time_limits("some-other-queue") == time_limits("cpu")
    monkeypatch.setenv("CELERY_GPU_TIME_LIMIT_S", "60")
    monkeypatch.setenv("CELERY_MAX_DELIVERIES", "5")
    assert time_limits("gpu") == (60, 60) and max_deliveries() == 5  # soft never above hard


def test_every_step_of_the_code_location_starts_at_the_gate():
    """A delivery the worker refuses is executed by Dagster with the step made to fail at its
    start (workers/deliveries.py): that holds only for steps whose body starts at gated_step."""
    from audio_assets.archive_job import gated_step
    from definitions import defs

    gate = gated_step(lambda: None).__code__
    ungated = [
        f"{job.name}: {node.name}"
        for job in defs.resolve_all_job_defs()
        for node in job.all_node_defs
        if getattr(getattr(node.compute_fn, "decorated_fn", None), "__code__", None) is not gate
    ]
    assert ungated == []
