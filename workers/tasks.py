"""The worker process: its Celery app with the one task, and its set-up (kinds, database engine, sweeper thread)."""

from __future__ import annotations

import logging
import time

import torch
from celery import Celery
from celery.signals import celeryd_after_setup, worker_process_init, worker_ready, worker_shutdown

from core.db.engine import make_engine, make_sessionmaker
from core.settings import Settings, get_settings
from core.techniques import kinds
from workers import logcontext, telemetry  # noqa: F401  (connect their Celery signals)
from workers.app import make_celery
from workers.presence import Presence
from workers.publish import RUN_JOB_TASK, VALIDATE_DATASET_TASK
from workers.runner import WORKER_NAME, execute_job
from workers.sweeper import Sweeper
from workers.validation import validate_dataset

log = logging.getLogger(__name__)
_state: dict = {}


def worker_app(settings: Settings) -> Celery:
    """A Celery app for a worker process, with ``run_job`` and ``validate`` registered and the signals below
    connected."""
    app = make_celery(settings)
    app.task(name=RUN_JOB_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)(run_job)
    app.task(name=VALIDATE_DATASET_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)(validate)
    _state["app"] = app
    return app


def _sessions():
    if "sessions" not in _state:
        _state["sessions"] = make_sessionmaker(make_engine(get_settings().resolved_database_url))
    return _state["sessions"]


@celeryd_after_setup.connect
def _load_kinds(**_):
    """Every technique (torch, matplotlib, ...) is imported once logging is set up and before the consumer takes a
    message, so a claimed job starts beating at once instead of after seconds of imports."""
    settings = get_settings()
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    t0 = time.monotonic()
    loaded = kinds()
    log.info("loaded %d kinds in %.1fs: %s", len(loaded), time.monotonic() - t0, ", ".join(loaded))


@worker_process_init.connect
def _fresh_engine(**_):
    _state.pop("sessions", None)  # never share pooled connections across a fork


@worker_ready.connect
def _announce(sender=None, **_):
    """The worker's row (``workers.presence``), naming the queues it consumes."""
    queues = sorted(q.name for q in sender.task_consumer.queues) if sender is not None else None
    presence = Presence(_sessions(), get_settings(), WORKER_NAME, queues or get_settings().queue_list)
    presence.start()
    _state["presence"] = presence


@worker_shutdown.connect
def _leave(**_):
    if "presence" in _state:
        _state["presence"].stop()


@worker_ready.connect
def _start_sweeper(**_):
    sweeper = Sweeper(_sessions(), get_settings(), _state["app"])
    sweeper.start()
    _state["sweeper"] = sweeper


@worker_shutdown.connect
def _stop_sweeper(**_):
    if "sweeper" in _state:
        _state["sweeper"].stopping.set()


def run_job(job_id: str) -> str:
    outcome = execute_job(_sessions(), get_settings(), job_id)
    log.info("job %s: %s", job_id, outcome)
    return outcome


def validate(dataset_id: str) -> str:
    outcome = validate_dataset(_sessions(), get_settings(), dataset_id, WORKER_NAME)
    log.info("dataset %s: %s", dataset_id, outcome)
    return outcome
