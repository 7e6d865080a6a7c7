"""The Celery app every worker runs: `dagster-celery worker start -A workers.celery_app`.

It is dagster-celery's own step task (`execute_plan`) on an app built from the same
settings the run side's celery_executor uses (workers/settings.py), so the two cannot
drift the way a separate worker YAML could; broker and result backend come from
DAGSTER_CELERY_BROKER_URL / DAGSTER_CELERY_BACKEND_URL, as on the run side. The task's base
(workers/deliveries.py) counts its deliveries and applies its queue's time limits. It also
starts the message lease (workers/message_lease.py) in the worker's main process, and on GPU
workers checks in each pool process that Whisper's CTranslate2 can run (ml/ctranslate2_check.py).
"""

import os

from celery.signals import worker_process_init
from dagster_celery.executor import CeleryExecutor
from dagster_celery.make_app import make_app
from dagster_celery.tasks import create_task

from models.ctranslate2_check import worker_process_check
from workers import message_lease
from workers.deliveries import BoundedStep
from workers.settings import celery_config_source

app = make_app(
    CeleryExecutor.for_cli(
        broker=os.environ["DAGSTER_CELERY_BROKER_URL"],
        backend=os.environ["DAGSTER_CELERY_BACKEND_URL"],
        config_source=celery_config_source(),
    ).app_args()
)

execute_plan = create_task(app, base=BoundedStep)

message_lease.install(app)
worker_process_init.connect(worker_process_check, weak=False)
