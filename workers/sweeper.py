"""The sweeper: a thread in every worker that re-publishes lost messages and recovers jobs of dead workers."""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

from celery import Celery
from sqlalchemy.orm import sessionmaker

from core.jobs import store
from core.jobs.models import utcnow
from core.settings import Settings
from workers.publish import publish
from workers.telemetry import record_sweep

log = logging.getLogger(__name__)


def broker_started_at(app: Celery) -> datetime | None:
    """A time no earlier than the last start of the Redis server behind the broker, and at most a second or so
    later (an error that costs a duplicate message, never a lost one); None for the filesystem broker, whose queue
    is a folder that survives restarts, or when Redis does not answer.

    Redis counts its uptime in whole seconds from a start time truncated to the second, so the start lies before
    ``now - uptime + 1``. The clocks of the API and worker hosts are assumed to agree to well under a second.
    """
    if not app.conf.broker_url.startswith(("redis://", "rediss://")):
        return None
    try:
        with app.connection_for_write() as conn:
            uptime_s = conn.default_channel.client.info("server")["uptime_in_seconds"]
    except Exception as exc:  # broker down: nothing can be published now anyway
        log.warning("sweeper: cannot read the broker's uptime: %s", exc)
        return None
    return utcnow() - timedelta(seconds=uptime_s - 1)


def sweep_once(sessions: sessionmaker, settings: Settings, app: Celery) -> store.SweepOutcome:
    started = broker_started_at(app)
    with sessions() as s:
        outcome = store.sweep(
            s,
            heartbeat_timeout_s=settings.heartbeat_timeout_s,
            requeue_queued_after_s=settings.requeue_queued_after_s,
            max_attempts=settings.max_attempts,
            broker_started_at=started,
        )
    for job_id, queue in outcome.republish:
        if not publish(app, job_id, queue):
            with sessions() as s:
                store.mark_unpublished(s, job_id)  # the next sweep tries again
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
