"""The ``studies`` and ``study_jobs`` tables, and the only module that queries them: a study and its children made
in one transaction (the children are inserted and cancelled through the jobs repository), and its children's state."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    Row,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.db.tables import (
    Job,
    Study,
    StudyJob,
    utcnow,
)
from core.jobs import repository as jobs
from core.jobs.states import JobStatus


def find_study_replay(session: Session, tenant: str, idempotency_key: str, body_hash: str | None) -> Study | None:
    """The study an earlier request with this key made; IdempotencyConflict if that request had another body."""
    earlier = session.scalar(select(Study).where(Study.tenant == tenant, Study.idempotency_key == idempotency_key))
    if earlier is not None and earlier.request_hash != body_hash:
        raise jobs.IdempotencyConflict("Idempotency-Key was already used with a different study request")
    return earlier


def create_study(
    session: Session,
    *,
    tenant: str,
    kind: str,
    request: dict,
    settings: list[dict],
    seeds: list[int],
    baseline: int,
    device: str,
    timeout_s: int,
    republish_after_s: float,
    idempotency_key: str | None = None,
    body_hash: str | None = None,
) -> tuple[Study, list[tuple[uuid.UUID, str]], bool]:
    """Insert a study, one queued job per (setting, seed) and the links, in one transaction. Returns the study, its
    new jobs as (id, queue) to publish, and whether it was created (False: a replay of the same key and body)."""
    if idempotency_key is not None:
        earlier = find_study_replay(session, tenant, idempotency_key, body_hash)
        if earlier is not None:
            return earlier, [], False
    now = utcnow()
    study = dict(
        id=uuid.uuid4(),
        tenant=tenant,
        kind=kind,
        request=request,
        settings=settings,
        seeds=seeds,
        baseline=baseline,
        idempotency_key=idempotency_key,
        request_hash=body_hash,
        created_at=now,
    )
    children, links = [], []
    for index, setting in enumerate(settings):
        for seed in seeds:
            job = jobs.queued_job_row(tenant, kind, setting["params"], seed, device, timeout_s, republish_after_s, now)
            children.append(job)
            links.append(dict(study_id=study["id"], job_id=job["id"], setting=index, seed=seed))
    try:
        conn = session.connection()
        conn.execute(insert(Study.__table__), study)
        jobs.insert_queued(session, children)
        conn.execute(insert(StudyJob.__table__), links)
        session.commit()
    except IntegrityError:
        session.rollback()
        earlier = find_study_replay(session, tenant, idempotency_key, body_hash) if idempotency_key else None
        if earlier is None:
            raise
        return earlier, [], False
    return Study(**study), [(j["id"], j["queue"]) for j in children], True


def get_study(session: Session, study_id: uuid.UUID) -> Study | None:
    return session.get(Study, study_id)


def child_job_ids(session: Session, study_id: uuid.UUID) -> list[uuid.UUID]:
    return list(session.scalars(select(StudyJob.job_id).where(StudyJob.study_id == study_id)))


def study_children(session: Session, study_id: uuid.UUID) -> Sequence[Row[uuid.UUID, int, int, str, float, Any]]:
    """Each child's (job_id, setting, seed, status, progress, summary): the summary alone, not the whole result."""
    return session.execute(
        select(
            StudyJob.job_id,
            StudyJob.setting,
            StudyJob.seed,
            Job.status,
            Job.progress,
            Job.result["summary"].label("summary"),
        )
        .join(Job, Job.id == StudyJob.job_id)
        .where(StudyJob.study_id == study_id)
        .order_by(StudyJob.setting, StudyJob.seed)
    ).all()


def study_is_finished(session: Session, study_id: uuid.UUID) -> bool:
    """True when no child of the study is queued or running: its curves and figures will not change any more."""
    active = (
        select(StudyJob.job_id)
        .join(Job, Job.id == StudyJob.job_id)
        .where(StudyJob.study_id == study_id, Job.status.in_([JobStatus.queued, JobStatus.running]))
    )
    return session.scalar(select(active.exists())) is False


def cancel_study(session: Session, study_id: uuid.UUID) -> int:
    """Mark the study cancelled and cancel its queued and running children (their workers stop at the next
    heartbeat, as for a single cancel); returns how many children were cancelled."""
    now = utcnow()
    session.execute(
        update(Study)
        .where(Study.id == study_id, Study.cancelled_at.is_(None))
        .values(cancelled_at=now)
        .execution_options(synchronize_session=False)
    )
    children = select(StudyJob.job_id).where(StudyJob.study_id == study_id)
    cancelled = jobs.cancel_children(session, children, "cancelled with its study", now)
    session.commit()
    return cancelled
