"""The sweeper: a thread in every worker that re-publishes lost messages and recovers jobs and dataset validations
of dead workers, removes abandoned uploads, and clears the directory store's stray temporaries."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from datetime import datetime, timedelta

from celery import Celery
from sqlalchemy.orm import sessionmaker

from core.blobs import DirectoryStore, blob_store
from core.blobs.layout import model_prefix, model_upload_prefix
from core.datasets import repository as datasets
from core.datasets.service import drop_upload_bytes, drop_upload_leftovers
from core.db.tables import utcnow
from core.jobs import repository as jobs
from core.networks import repository as networks
from core.settings import Settings
from workers.publish import VALIDATE_DATASET_TASK, VALIDATION_QUEUE, publish
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


def sweep_once(sessions: sessionmaker, settings: Settings, app: Celery) -> jobs.SweepOutcome:
    started = broker_started_at(app)
    with sessions() as s:
        outcome = jobs.sweep(
            s,
            heartbeat_timeout_s=settings.heartbeat_timeout_s,
            requeue_queued_after_s=settings.requeue_queued_after_s,
            max_attempts=settings.max_attempts,
            broker_started_at=started,
        )
    for job_id, queue in outcome.republish:
        if not publish(app, job_id, queue):
            with sessions() as s:
                jobs.mark_unpublished(s, job_id)  # the next sweep tries again
    record_sweep(outcome)
    if outcome.retried or outcome.failed:
        log.warning("sweeper: re-queued %s, failed %s", outcome.retried, outcome.failed)
    sweep_datasets(sessions, settings, app)
    sweep_model_uploads(sessions, settings)
    return outcome


def sweep_datasets(sessions: sessionmaker, settings: Settings, app: Celery) -> datasets.DatasetSweep:
    """Validations of dead workers or lost messages published again; abandoned uploads removed, rows then bytes
    (a row never names missing bytes)."""
    with sessions() as s:
        outcome = datasets.sweep_datasets(
            s,
            heartbeat_timeout_s=settings.heartbeat_timeout_s,
            republish_after_s=settings.requeue_queued_after_s,
            max_attempts=settings.max_attempts,
        )
    for ds_id in outcome.republish:
        publish(app, ds_id, VALIDATION_QUEUE, VALIDATE_DATASET_TASK)  # failing, the next sweep publishes it again
    blobs = blob_store(settings)
    for ds_id in outcome.rejected:
        drop_upload_leftovers(blobs, ds_id)
    for upload_id, ds_id in outcome.expired:
        drop_upload_bytes(blobs, upload_id, ds_id)
    if outcome.republish or outcome.rejected or outcome.expired:
        log.warning(
            "sweeper: validations republished %s, rejected %s; uploads expired %s",
            outcome.republish,
            outcome.rejected,
            [u for u, _ in outcome.expired],
        )
    return outcome


def sweep_model_uploads(sessions: sessionmaker, settings: Settings) -> list[uuid.UUID]:
    """Model uploads that got no chunk before their expiry: rows, then every byte they named."""
    with sessions() as s:
        expired = networks.expired_uploads(s, utcnow())
    blobs = blob_store(settings)
    for upload_id, model_id in expired:
        blobs.delete_prefix(model_upload_prefix(upload_id))
        blobs.delete_prefix(model_prefix(model_id))
    if expired:
        log.warning("sweeper: model uploads expired %s", [u for u, _ in expired])
    return [u for u, _ in expired]


TEMPORARIES_EVERY_S = 600.0  # a walk of the whole directory store: rarely
TEMPORARY_AGE_S = 6 * 3600.0  # older than any write in progress (a multi-GB canonical file takes minutes)


def sweep_temporaries(settings: Settings) -> int:
    """Temporaries left by writers that died (``DirectoryStore.put``); S3 aborts its own."""
    blobs = blob_store(settings)
    return blobs.sweep_temporaries(TEMPORARY_AGE_S) if isinstance(blobs, DirectoryStore) else 0


class Sweeper(threading.Thread):
    def __init__(self, sessions: sessionmaker, settings: Settings, app: Celery):
        super().__init__(name="gradlab-sweeper", daemon=True)
        self.sessions, self.settings, self.app = sessions, settings, app
        self.stopping = threading.Event()

    def run(self) -> None:
        temporaries_at = float("-inf")
        while not self.stopping.wait(self.settings.sweep_interval_s):
            try:
                sweep_once(self.sessions, self.settings, self.app)
                if time.monotonic() - temporaries_at > TEMPORARIES_EVERY_S:
                    temporaries_at = time.monotonic()
                    sweep_temporaries(self.settings)
            except Exception as exc:  # database or broker down: try again next round
                log.warning("sweep failed: %s", exc)
