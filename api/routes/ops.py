"""Workers and queues, for whoever runs the service: ``GET /v1/workers`` (admin) and ``GET /v1/queues``."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from fastapi import APIRouter, Depends
from pydantic import BaseModel
from sqlalchemy.orm import Session

from api.auth import principal
from api.deps import app_settings, db
from core.db.tables import utcnow
from core.fleet import service
from core.keys.repository import Principal
from core.settings import Settings

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


@router.get("/workers", response_model=list[WorkerOut], responses={403: {"description": "not an admin key"}})
def list_workers(
    session: Session = Depends(db), who: Principal = Depends(principal), settings: Settings = Depends(app_settings)
):
    """Each live worker: host, pid, queues, device (GPU name and memory under CUDA), current job, last beat."""
    live = service.live_workers(session, settings, who)
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
        for s in live
    ]


@router.get("/queues", response_model=list[QueueOut])
def list_queues(
    session: Session = Depends(db), who: Principal = Depends(principal), settings: Settings = Depends(app_settings)
):
    """Every queue: queued and running jobs (all tenants), how long its oldest queued job has waited, and how
    many live workers consume it."""
    return [QueueOut(**vars(q)) for q in service.queue_views(session, settings)]
