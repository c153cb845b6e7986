"""The ``studies`` and ``study_jobs`` tables, and the only module that queries them: a study and its children made
in one transaction (the children are inserted and cancelled through the jobs repository), and its children's state."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Exists,
    Row,
    and_,
    exists,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer

from core.db import paging
from core.db.tables import (
    ACTIVE_WHERE,
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


def studies_of_jobs(session: Session, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, uuid.UUID]:
    """The study of each of these jobs that is a study's child (by ``ix_study_jobs_job``)."""
    if not job_ids:
        return {}
    rows = session.execute(select(StudyJob.job_id, StudyJob.study_id).where(StudyJob.job_id.in_(job_ids))).all()
    return {r.job_id: r.study_id for r in rows}


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


# --- the list ---------------------------------------------------------------------------------------------------


def _has_child(*conditions) -> Exists:
    """Whether the study of the row being read has a child job meeting ``conditions``. The child's tenant, the
    study's own, is spelled out so the planner may read the matching jobs from the tenant's job indexes and hash
    them (the active ones: ``ix_jobs_tenant_active``; failed or cancelled: ``ix_jobs_tenant_status_kind_created``)
    or probe each study's children by primary key, whichever it reckons cheaper."""
    return exists().where(
        StudyJob.study_id == Study.id, Job.id == StudyJob.job_id, Job.tenant == Study.tenant, *conditions
    )


def _status_is(status: str) -> ColumnElement[bool]:
    """A study's derived status (``stats.status``) as a condition on its row and its children."""
    active = _has_child(text(f"jobs.{ACTIVE_WHERE}"))  # the partial index's own condition, so it applies
    started = _has_child(Job.status != JobStatus.queued)
    unsuccessful = _has_child(Job.status.in_([JobStatus.failed, JobStatus.cancelled]))
    cancelled = Study.cancelled_at.is_not(None)
    if status == JobStatus.queued:
        return and_(~cancelled, active, ~started)
    if status == JobStatus.running:
        return and_(active, or_(cancelled, started))
    if status == JobStatus.cancelled:
        return and_(cancelled, ~active)
    if status == JobStatus.succeeded:
        return and_(~cancelled, ~active, ~unsuccessful)
    if status == JobStatus.failed:
        return and_(~cancelled, ~active, unsuccessful)
    raise ValueError(f"not a study status: {status}")


def list_studies(
    session: Session, *, tenant: str | None, status: str | None, kind: str | None, limit: int, cursor: str | None
) -> tuple[list[Study], str | None]:
    """A page of studies newest first (tenant None: every tenant's): a range of ``ix_studies_tenant_created`` (or
    ``..._kind_created``). A status filter is a condition on the study's row and on whether it has an active, a
    started and a failed or cancelled child (``_has_child``)."""
    q = select(Study).options(defer(Study.request))
    if tenant is not None:
        q = q.where(Study.tenant == tenant)
    if kind:
        q = q.where(Study.kind == kind)
    if status:
        q = q.where(_status_is(status))
    rows = session.scalars(paging.newest_first(q, Study.created_at, Study.id, limit, cursor)).all()
    return paging.page(rows, limit)


def children_by_status(session: Session, study_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, tuple[int, float]]]:
    """Per study, per status of its children: (how many, their summed progress); one grouped read for a page."""
    out: dict[uuid.UUID, dict[str, tuple[int, float]]] = {sid: {} for sid in study_ids}
    rows = session.execute(
        select(StudyJob.study_id, Job.status, func.count(), func.sum(Job.progress))
        .join(Job, Job.id == StudyJob.job_id)
        .where(StudyJob.study_id.in_(study_ids))
        .group_by(StudyJob.study_id, Job.status)
    ).all()
    for study_id, status, n, progress in rows:
        out[study_id][status] = (n, float(progress or 0.0))
    return out
