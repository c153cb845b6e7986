"""The sweeper: a thread in every worker that re-publishes lost messages and recovers jobs of dead workers."""
from __future__ import annotations

import logging
import threading

from celery import Celery
from sqlalchemy.orm import sessionmaker

from core.jobs import store
from core.settings import Settings
from workers.publish import publish
from workers.telemetry import record_sweep

log = logging.getLogger(__name__)


def sweep_once(sessions: sessionmaker, settings: Settings, app: Celery) -> store.SweepOutcome:
    with sessions() as s:
        outcome = store.sweep(s, heartbeat_timeout_s=settings.heartbeat_timeout_s,
                              requeue_queued_after_s=settings.requeue_queued_after_s,
                              max_attempts=settings.max_attempts)
    for job_id, queue in outcome.republish:
        publish(app, job_id, queue)
    record_sweep(outcome)
    if outcome.retried or outcome.failed:
        log.warning("sweeper: re-queued %s, failed %s", outcome.retried, outcome.failed)
    return outcome


class Sweeper(threading.Thread):
    def __init__(self, sessions: sessionmaker, settings: Settings, app: Celery):
        super().__init__(name="gradlab-sweeper", daemon=True)
        self.sessions, self.settings, self.app = sessions, settings, app
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.settings.sweep_interval_s):
            try:
                sweep_once(self.sessions, self.settings, self.app)
            except Exception as exc:  # database or broker down: try again next round
                log.warning("sweep failed: %s", exc)
