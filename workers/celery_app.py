"""The Celery app every worker runs: `celery -A workers.celery_app worker -Q QUEUE`
(deploy/ starts it so, which `dagster-celery worker start -A workers.celery_app` also does).

It is dagster-celery's own step task (`execute_plan`) on an app built from the same
settings the run side's celery_executor uses (workers/settings.py), so the two cannot
drift the way a separate worker YAML could; broker and result backend come from
DAGSTER_CELERY_BROKER_URL / DAGSTER_CELERY_BACKEND_URL, as on the run side. The task's base
(workers/deliveries.py) counts its deliveries and applies its queue's time limits. The worker's
main process also keeps the messages of its running steps leased (workers/message_lease.py),
gives back their deliveries when it is stopped on purpose, answers `audio-pipeline doctor`'s
question for its host's settings, and sweeps its host's scratch when it starts and hourly; on
GPU workers each pool process checks that Whisper's CTranslate2 can run (ml/ctranslate2_check.py).
"""

import logging
import os
import threading
import time

import dagster as dg
from celery import signals
from celery.worker.control import inspect_command
from dagster_celery.executor import CeleryExecutor
from dagster_celery.make_app import make_app
from dagster_celery.tasks import create_task

from audio_assets.scratch_sweep import sweep_host_scratch
from models.ctranslate2_check import worker_process_check
from resources.archive_run import host_settings
from resources.scratch import ScratchSpace
from workers import deliveries, message_lease
from workers.deliveries import BoundedStep
from workers.settings import celery_config_source, scratch_sweep_interval_s

log = logging.getLogger(__name__)

app = make_app(
    CeleryExecutor.for_cli(
        broker=os.environ["DAGSTER_CELERY_BROKER_URL"],
        backend=os.environ["DAGSTER_CELERY_BACKEND_URL"],
        config_source=celery_config_source(),
    ).app_args()
)

execute_plan = create_task(app, base=BoundedStep)

message_lease.install(app)
deliveries.install(app)
signals.worker_process_init.connect(worker_process_check, weak=False)


@inspect_command()
def agreed_settings(state):
    """This worker's values of the settings every host must agree on (resources/archive_run.py);
    `audio-pipeline doctor` asks every live worker and compares."""
    return host_settings()


@signals.worker_ready.connect(weak=False)
def sweep_scratch_now_and_hourly(**_):
    """Scratch is per host and the scratch sweep job reaches one CPU worker's host at a time (a
    GPU host never), so each worker sweeps its own: what a killed step left behind."""
    root = os.environ.get("SCRATCH_ROOT")
    scratch = ScratchSpace(root=root) if root else ScratchSpace()

    def sweep_forever() -> None:
        while True:
            try:
                with dg.DagsterInstance.get() as instance:
                    removed, freed = sweep_host_scratch(instance, scratch)
                log.info(
                    "scratch sweep of %s: %d folder(s) removed, %.1f MB freed", scratch.root, len(removed), freed / 1e6
                )
            except Exception:  # the instance or the disk unreachable: the next sweep tries again
                log.warning("scratch sweep of %s failed", scratch.root, exc_info=True)
            time.sleep(scratch_sweep_interval_s())

    threading.Thread(target=sweep_forever, name="scratch-sweep", daemon=True).start()
