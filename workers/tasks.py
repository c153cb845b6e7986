"""The one Celery task, and the worker-process set-up (database engine, sweeper thread)."""
from __future__ import annotations

import logging

import torch
from celery.signals import worker_process_init, worker_ready, worker_shutdown

from core.jobs.db import make_engine, make_sessionmaker
from core.settings import get_settings
from workers import logcontext, telemetry  # noqa: F401  (connect their Celery signals)
from workers.app import app
from workers.presence import Presence
from workers.publish import RUN_JOB_TASK
from workers.runner import WORKER_NAME, execute_job
from workers.sweeper import Sweeper

log = logging.getLogger(__name__)
_state: dict = {}


def _sessions():
    if "sessions" not in _state:
        _state["sessions"] = make_sessionmaker(make_engine(get_settings().resolved_database_url))
    return _state["sessions"]


@worker_process_init.connect
def _fresh_engine(**_):
    _state.clear()  # never share pooled connections across a fork


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
    settings = get_settings()
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    sweeper = Sweeper(_sessions(), settings, app)
    sweeper.start()
    _state["sweeper"] = sweeper


@worker_shutdown.connect
def _stop_sweeper(**_):
    if "sweeper" in _state:
        _state["sweeper"].stopping.set()


@app.task(name=RUN_JOB_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_job(job_id: str) -> str:
    outcome = execute_job(_sessions(), get_settings(), job_id)
    log.info("job %s: %s", job_id, outcome)
    return outcome
