"""What operators see of the fleet: live workers, each queue's depth and consumers, a queued job's place and its
estimated wait, and the service's state for ``/metrics`` (jobs by status and kind, bytes in the blob store)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from core.datasets import repository as datasets
from core.db.tables import Job, utcnow
from core.errors import Forbidden
from core.fleet import repository as fleet
from core.fleet.outlook import Place, outlooks
from core.jobs import repository as jobs
from core.jobs.service import job_of
from core.jobs.states import LANE_QUEUES, QUEUE_FOR_DEVICE, JobStatus
from core.keys.repository import Principal
from core.networks import repository as networks
from core.settings import Settings


def alive_since(settings: Settings) -> datetime:
    """A worker that has not beaten within the heartbeat timeout counts as gone (as its jobs do for the sweeper)."""
    return utcnow() - timedelta(seconds=settings.heartbeat_timeout_s)


def live_workers(session: Session, settings: Settings, who: Principal) -> list[fleet.WorkerState]:
    """Each live worker with the job it runs; for admin keys only."""
    if not who.admin:
        raise Forbidden("workers are listed for admin keys only")
    return fleet.workers(session, alive_since(settings))


@dataclass(frozen=True)
class QueueView:
    name: str
    depth: int
    running: int
    oldest_wait_s: float | None
    workers: int


def queue_views(session: Session, settings: Settings) -> list[QueueView]:
    """Every queue (the device queues, and any other that holds jobs): queued and running jobs of all tenants, how
    long its oldest queued job has waited, and how many live workers consume it."""
    now = utcnow()
    queues = fleet.queues(session)
    live = fleet.workers(session, alive_since(settings))
    out = []
    for name in known_queues(queues):
        q = queues.get(name, fleet.QueueState(0, None, 0))
        out.append(
            QueueView(
                name=name,
                depth=q.depth,
                running=q.running,
                oldest_wait_s=(now - q.oldest_created_at).total_seconds() if q.oldest_created_at else None,
                workers=sum(1 for s in live if name in s.worker.queues),
            )
        )
    return out


def known_queues(queues: dict[str, fleet.QueueState]) -> list[str]:
    return sorted(set(QUEUE_FOR_DEVICE.values()) | set(LANE_QUEUES) | set(queues))


def place_in_queue(session: Session, settings: Settings, job: Job) -> Place:
    """A queued job's position in its queue (1: next) and the estimated seconds until it starts, from the
    process's snapshot of the queue (``core.fleet.outlook``): its cost does not grow with the queue."""
    shared = outlooks(session, settings.queue_position_exact_up_to, settings.queue_snapshot_max_age_s)
    return shared.place(session, job, alive_since(settings))


def job_with_place(session: Session, settings: Settings, who: Principal, job_id: uuid.UUID) -> tuple[Job, Place | None]:
    """A job the caller may see and, while it is queued, its place in its queue and estimated wait."""
    job = job_of(session, who, job_id)
    return job, place_in_queue(session, settings, job) if job.status == JobStatus.queued else None


@dataclass(frozen=True)
class ServiceState:
    """The service as ``/metrics`` reports it, read in one session."""

    job_counts: list[tuple[str, str, int]]  # (status, kind, jobs)
    queues: dict[str, fleet.QueueState]
    workers: list[fleet.WorkerState]
    blob_bytes: dict[str, int]  # by what they are: artifacts, datasets, models


def service_state(session: Session) -> ServiceState:
    return ServiceState(
        job_counts=jobs.job_counts(session),
        queues=fleet.queues(session),
        workers=fleet.workers(session),
        blob_bytes={
            "artifacts": jobs.artifact_bytes(session),
            "datasets": datasets.stored_bytes(session),
            "models": networks.stored_bytes(session),
        },
    )
