"""The ``workers`` table (each worker process as it reports itself), and the queues as the jobs table holds them:
depth, running jobs, a queued job's place and the recent run times that estimate its wait. The only module that
queries ``workers``."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    and_,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from core.db.engine import rowcount
from core.db.tables import (
    Job,
    Worker,
    utcnow,
)
from core.jobs.states import JobStatus


def register_worker(
    session: Session, *, name: str, host: str, pid: int, queues: list[str], device: dict, forget_before: datetime
) -> None:
    """A worker process announces itself; rows of workers silent since ``forget_before`` are removed."""
    now = utcnow()
    session.execute(delete(Worker).where(or_(Worker.name == name, Worker.heartbeat_at < forget_before)))
    session.add(
        Worker(name=name, host=host, pid=pid, queues=queues, device=device, stats=[], started_at=now, heartbeat_at=now)
    )
    session.commit()


def worker_beat(session: Session, name: str, device: dict, stats: list) -> bool:
    """The worker is alive, with its device's state and its counters; False if its row is gone (re-register)."""
    res = session.execute(
        update(Worker).where(Worker.name == name).values(heartbeat_at=utcnow(), device=device, stats=stats)
    )
    session.commit()
    return rowcount(res) == 1


def unregister_worker(session: Session, name: str) -> None:
    session.execute(delete(Worker).where(Worker.name == name))
    session.commit()


@dataclass(frozen=True)
class WorkerState:
    worker: Worker
    job_id: uuid.UUID | None  # the job it is running, if any
    job_kind: str | None
    job_started_at: datetime | None


def workers(session: Session, alive_since: datetime | None = None) -> list[WorkerState]:
    """Every worker row (those that beat since ``alive_since``, when given) with the job each is running."""
    q = (
        select(Worker, Job.id, Job.kind, Job.started_at)
        .outerjoin(Job, and_(Job.worker == Worker.name, Job.status == JobStatus.running))
        .order_by(Worker.name)
    )
    if alive_since is not None:
        q = q.where(Worker.heartbeat_at >= alive_since)
    return [WorkerState(w, jid, kind, started) for w, jid, kind, started in session.execute(q).all()]


@dataclass(frozen=True)
class QueueState:
    depth: int  # queued jobs
    oldest_created_at: datetime | None  # of the job that has waited longest
    running: int


def queues(session: Session) -> dict[str, QueueState]:
    """Depth, oldest queued job and running jobs of every queue that has any."""
    queued = {
        q: (n, oldest)
        for q, n, oldest in session.execute(
            select(Job.queue, func.count(), func.min(Job.created_at))
            .where(Job.status == JobStatus.queued)
            .group_by(Job.queue)
        ).all()
    }
    running = dict(
        session.execute(
            select(Job.queue, func.count()).where(Job.status == JobStatus.running).group_by(Job.queue)
        ).all()
    )
    return {
        q: QueueState(queued.get(q, (0, None))[0], queued.get(q, (0, None))[1], running.get(q, 0))
        for q in sorted(set(queued) | set(running))
    }


RUN_TIME_SAMPLE = 20


def queue_head(session: Session, queue: str, limit: int) -> list[tuple[datetime | None, uuid.UUID, str]]:
    """(published_at, id, kind) of the first ``limit`` queued jobs of ``queue`` in starting order: publishing order
    (a retried or re-published job goes to the back), then jobs whose publishing failed (they wait for the sweeper).
    A LIMITed walk of the queued-jobs index: it reads ``limit`` rows however long the queue."""
    rows = session.execute(
        select(Job.published_at, Job.id, Job.kind)
        .where(Job.queue == queue, Job.status == JobStatus.queued)
        .order_by(Job.published_at.asc().nulls_last(), Job.id)
        .limit(limit)
    ).all()
    return [(r.published_at, r.id, r.kind) for r in rows]


def recent_run_seconds(session: Session, kind: str, queue: str, n: int = RUN_TIME_SAMPLE) -> list[float]:
    """Run times of the latest ``n`` succeeded jobs of ``kind`` on ``queue`` (on any queue when it has none)."""
    for where in (and_(Job.kind == kind, Job.queue == queue), Job.kind == kind):
        rows = session.execute(
            select(Job.started_at, Job.finished_at)
            .where(where, Job.status == JobStatus.succeeded)
            .order_by(Job.finished_at.desc())
            .limit(n)
        ).all()
        if rows:
            return [(f - s).total_seconds() for s, f in rows if s is not None and f is not None]
    return []
