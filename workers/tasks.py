"""The worker process: its Celery app with its two tasks (running a job, validating a dataset), and its set-up
(kinds, database engine, presence and sweeper threads)."""

from __future__ import annotations

import logging
import time

import torch
from celery import Celery
from celery.signals import celeryd_after_setup, worker_process_init, worker_ready, worker_shutdown

from core.settings import Settings
from core.techniques import kinds
from workers import logcontext, process, telemetry  # noqa: F401  (connect their Celery signals)
from workers.app import make_celery
from workers.presence import Presence
from workers.publish import RUN_JOB_TASK, VALIDATE_DATASET_TASK
from workers.runner import execute_job
from workers.sweeper import Sweeper
from workers.validation import validate_dataset

log = logging.getLogger(__name__)
_threads: dict = {}


def worker_app(settings: Settings) -> Celery:
    """A Celery app for a worker process, with ``run_job`` and ``validate`` registered and the signals below
    connected; the process's state (``workers.process``) starts with it."""
    app = make_celery(settings)
    app.task(name=RUN_JOB_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)(run_job)
    app.task(name=VALIDATE_DATASET_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)(validate)
    process.start(settings, app)
    return app


@celeryd_after_setup.connect
def _load_kinds(**_):
    """Every technique (torch, matplotlib, ...) is imported once logging is set up and before the consumer takes a
    message, so a claimed job starts beating at once instead of after seconds of imports."""
    settings = process.settings()
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    t0 = time.monotonic()
    loaded = kinds()
    log.info("loaded %d kinds in %.1fs: %s", len(loaded), time.monotonic() - t0, ", ".join(loaded))


@worker_process_init.connect
def _fresh_engine(**_):
    process.forget_sessions()


@worker_ready.connect
def _announce(sender=None, **_):
    """The worker's row (``workers.presence``), naming the queues it consumes."""
    settings = process.settings()
    queues = sorted(q.name for q in sender.task_consumer.queues) if sender is not None else None
    presence = Presence(process.sessions(), settings, process.WORKER_NAME, queues or settings.queue_list)
    presence.start()
    _threads["presence"] = presence


@worker_shutdown.connect
def _leave(**_):
    if "presence" in _threads:
        _threads["presence"].stop()


@worker_ready.connect
def _start_sweeper(**_):
    sweeper = Sweeper(process.sessions(), process.settings(), process.app())
    sweeper.start()
    _threads["sweeper"] = sweeper


@worker_shutdown.connect
def _stop_sweeper(**_):
    if "sweeper" in _threads:
        _threads["sweeper"].stopping.set()


def run_job(job_id: str) -> str:
    outcome = execute_job(process.sessions(), process.settings(), job_id)
    log.info("job %s: %s", job_id, outcome)
    return outcome


def validate(dataset_id: str) -> str:
    outcome = validate_dataset(process.sessions(), process.settings(), dataset_id, process.WORKER_NAME)
    log.info("dataset %s: %s", dataset_id, outcome)
    return outcome
