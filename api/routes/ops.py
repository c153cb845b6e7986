"""Workers and queues, for whoever runs the service: ``GET /v1/workers`` (admin) and ``GET /v1/queues``."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel
from sqlalchemy.orm import Session

from api.auth import principal
from api.deps import db
from api.problems import Problem
from core.db.tables import utcnow
from core.fleet.queueing import estimate_wait_s
from core.jobs import repository as store
from core.jobs.states import QUEUE_FOR_DEVICE
from core.keys.repository import Principal

router = APIRouter(prefix="/v1", tags=["operations"])


class CurrentJob(BaseModel):
    id: UUID
    kind: str
    started_at: datetime | None


class WorkerOut(BaseModel):
    name: str
    host: str
    pid: int
    queues: list[str]
    device: dict[str, Any]
    current_job: CurrentJob | None
    started_at: datetime
    last_heartbeat: datetime
    heartbeat_age_s: float


class QueueOut(BaseModel):
    name: str
    depth: int
    running: int
    oldest_wait_s: float | None
    workers: int


def alive_since(settings) -> datetime:
    """A worker that has not beaten within the heartbeat timeout counts as gone (as its jobs do for the sweeper)."""
    return utcnow() - timedelta(seconds=settings.heartbeat_timeout_s)


@router.get("/workers", response_model=list[WorkerOut], responses={403: {"description": "not an admin key"}})
def list_workers(request: Request, session: Session = Depends(db), who: Principal = Depends(principal)):
    """Each live worker: host, pid, queues, device (GPU name and memory under CUDA), current job, last beat."""
    if not who.admin:
        raise Problem(403, "workers are listed for admin keys only")
    now = utcnow()
    return [
        WorkerOut(
            name=s.worker.name,
            host=s.worker.host,
            pid=s.worker.pid,
            queues=s.worker.queues,
            device=s.worker.device,
            current_job=CurrentJob(id=s.job_id, kind=s.job_kind, started_at=s.job_started_at) if s.job_id else None,
            started_at=s.worker.started_at,
            last_heartbeat=s.worker.heartbeat_at,
            heartbeat_age_s=(now - s.worker.heartbeat_at).total_seconds(),
        )
        for s in store.workers(session, alive_since(request.app.state.settings))
    ]


@router.get("/queues", response_model=list[QueueOut])
def list_queues(request: Request, session: Session = Depends(db), who: Principal = Depends(principal)):
    """Every queue: queued and running jobs (all tenants), how long its oldest queued job has waited, and how
    many live workers consume it."""
    now = utcnow()
    queues = store.queues(session)
    live = store.workers(session, alive_since(request.app.state.settings))
    out = []
    for name in sorted(set(QUEUE_FOR_DEVICE.values()) | set(queues)):
        q = queues.get(name, store.QueueState(0, None, 0))
        out.append(
            QueueOut(
                name=name,
                depth=q.depth,
                running=q.running,
                oldest_wait_s=(now - q.oldest_created_at).total_seconds() if q.oldest_created_at else None,
                workers=sum(1 for s in live if name in s.worker.queues),
            )
        )
    return out


def place_in_queue(session: Session, settings, job) -> tuple[int, float | None]:
    """A queued job's position in its queue (1: next) and the estimated seconds until it starts."""
    look = store.queue_outlook(session, job, alive_since(settings))
    eta = estimate_wait_s(look.ahead, look.running, look.workers, look.run_s)
    return look.position, None if eta is None else round(eta, 1)
