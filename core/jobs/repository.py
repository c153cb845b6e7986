"""The jobs table and its artifacts' rows: every change of a job's state as a compare-and-set update (the database
is the source of truth), admission under the tenant's caps, the sweep that recovers lost workers and messages, pages
of jobs, and what retention marks.

A transition only happens when the row is still in the state the caller believes it is in, so a duplicate
message, a second worker or a sweeper racing a slow worker can never run a job twice to completion. The only
module that queries ``jobs`` and ``artifacts`` (a study's children are inserted and cancelled through it).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import (
    Row,
    Select,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.db import paging
from core.db.engine import rowcount
from core.db.tables import (
    ACTIVE_WHERE,
    Artifact,
    Job,
    utcnow,
)
from core.errors import Conflict
from core.jobs.states import JobStatus, queue_for
from core.metrics import repository as metrics


class IdempotencyConflict(Conflict):
    """The Idempotency-Key was used before with a different request body."""


class TransitionRefused(Exception):
    """The job is not in a state that allows the requested transition."""

    def __init__(self, status: str):
        super().__init__(f"job is {status}")
        self.status = status


def request_fingerprint(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def find_replay(session: Session, tenant: str, idempotency_key: str, body_hash: str | None) -> Job | None:
    """The job an earlier request with this key made; IdempotencyConflict if that request had another body."""
    earlier = session.scalar(select(Job).where(Job.tenant == tenant, Job.idempotency_key == idempotency_key))
    if earlier is not None and earlier.request_hash != body_hash:
        raise IdempotencyConflict("Idempotency-Key was already used with a different request body")
    return earlier


@dataclass(frozen=True)
class Usage:
    """What admission weighs, against a cap on a tenant's queued plus running jobs and a cap on its submissions
    in a window: whether it has ``active_cap`` active jobs, and when it made the submission that filled the
    window (its ``window_cap``-th newest in the window; None while the window has room), which says when a slot
    frees."""

    at_active_cap: bool
    window_filled_at: datetime | None


@dataclass(frozen=True)
class Admission:
    """The caps a new job must fit under: ``active_cap`` queued+running jobs of its tenant, and ``window_cap``
    submissions of its tenant created at or after ``since``."""

    active_cap: int
    window_cap: int
    since: datetime


class AdmissionRefused(Exception):
    """The tenant is at one of its caps; ``usage`` says which."""

    def __init__(self, usage: Usage):
        super().__init__("admission refused")
        self.usage = usage


# Built once: it runs on every submission, and building and keying a statement per call cost more CPU than the
# database spent on it. The active jobs' condition is spelled as the partial index's, so the planner uses it.
_NTH_ACTIVE = (
    select(Job.id)
    .where(Job.tenant == bindparam("tenant"), text(ACTIVE_WHERE))
    .offset(bindparam("active_skip"))
    .limit(1)
    .scalar_subquery()
)


_NTH_RECENT = (
    select(Job.created_at)
    .where(Job.tenant == bindparam("tenant"), Job.created_at >= bindparam("since"))
    .order_by(Job.created_at.desc())
    .offset(bindparam("window_skip"))
    .limit(1)
    .scalar_subquery()
)


_USAGE = select(_NTH_ACTIVE.is_not(None), _NTH_RECENT)


_JOB_COLUMNS = (
    "id",
    "tenant",
    "kind",
    "status",
    "params",
    "seed",
    "device_requested",
    "queue",
    "timeout_s",
    "progress",
    "message",
    "attempt",
    "idempotency_key",
    "request_hash",
    "created_at",
    "published_at",
    "republish_at",
)


_INSERT_JOB = insert(Job.__table__)


# The same row, inserted only while the tenant is under both caps: the check and the insert are one statement.
_INSERT_ADMITTED_JOB = (
    insert(Job.__table__)
    .from_select(
        _JOB_COLUMNS,
        select(*[bindparam(f"new_{c}", type_=Job.__table__.c[c].type) for c in _JOB_COLUMNS]).where(
            _NTH_ACTIVE.is_(None), _NTH_RECENT.is_(None)
        ),
    )
    .execution_options(preserve_rowcount=True)
)


# Serialises one tenant's admissions on PostgreSQL until commit (a hash collision only serialises two tenants).
_TENANT_LOCK = select(func.pg_advisory_xact_lock(func.hashtextextended(bindparam("tenant"), 0)))


def usage(session: Session, tenant: str, since: datetime, active_cap: int, window_cap: int) -> Usage:
    """A tenant's ``Usage`` in one statement whose cost is bounded by the caps, not by the tenant's history: each
    part reads at most ``cap`` index entries (the active jobs from a partial index of queued and running ones)."""
    at_cap, filled_at = (
        session.connection()
        .execute(
            _USAGE, {"tenant": tenant, "since": since, "active_skip": active_cap - 1, "window_skip": window_cap - 1}
        )
        .one()
    )
    return Usage(bool(at_cap), filled_at)


def queued_job_row(
    tenant: str,
    kind: str,
    params: dict,
    seed: int,
    device: str,
    timeout_s: int,
    republish_after_s: float,
    now: datetime,
    idempotency_key: str | None = None,
    body_hash: str | None = None,
    quick_max_s: float = 0.0,
) -> dict:
    """The column values of a new queued job, published at ``now`` (a job alone or a study's child); a job whose
    ``timeout_s`` is at most ``quick_max_s`` goes to the quick lane (``states.queue_for``)."""
    return dict(
        id=uuid.uuid4(),
        tenant=tenant,
        kind=kind,
        status=JobStatus.queued,
        params=params,
        seed=seed,
        device_requested=device,
        queue=queue_for(device, timeout_s, quick_max_s),
        timeout_s=timeout_s,
        progress=0.0,
        message="queued",
        attempt=0,
        idempotency_key=idempotency_key,
        request_hash=body_hash,
        created_at=now,
        published_at=now,
        republish_at=now + timedelta(seconds=republish_after_s),
    )


def create_job(
    session: Session,
    *,
    tenant: str,
    kind: str,
    params: dict,
    seed: int,
    device: str,
    timeout_s: int,
    republish_after_s: float,
    admission: Admission | None = None,
    idempotency_key: str | None = None,
    body_hash: str | None = None,
    quick_max_s: float = 0.0,
) -> tuple[Job, bool]:
    """Insert a queued job and commit. Returns (job, created); with a known key, the earlier job and False.

    With ``admission``, the caps are checked and the row inserted atomically, so concurrent submissions cannot
    overshoot them (AdmissionRefused otherwise): the insert is one ``INSERT ... SELECT ... WHERE under the caps``
    statement, which SQLite runs under its write lock; on PostgreSQL, where concurrent statements do not see each
    other's uncommitted rows, it runs after taking a per-tenant advisory lock that the commit releases.
    ``republish_after_s``: when the sweeper first publishes the job again if no worker has claimed it.
    """
    if idempotency_key is not None:
        earlier = find_replay(session, tenant, idempotency_key, body_hash)
        if earlier is not None:
            return earlier, False
    values = queued_job_row(
        tenant,
        kind,
        params,
        seed,
        device,
        timeout_s,
        republish_after_s,
        utcnow(),
        idempotency_key,
        body_hash,
        quick_max_s,
    )
    try:
        # Core inserts: the ORM's unit of work cost about a tenth of the API's CPU per submission
        if admission is None:
            session.connection().execute(_INSERT_JOB, values)
        elif not _insert_admitted(session, values, admission):
            refused = usage(session, tenant, admission.since, admission.active_cap, admission.window_cap)
            session.rollback()
            raise AdmissionRefused(refused)
        session.commit()
    except IntegrityError:
        # Two requests with the same key raced; the other insert won.
        session.rollback()
        earlier = find_replay(session, tenant, idempotency_key, body_hash) if idempotency_key else None
        if earlier is None:
            raise
        return earlier, False
    return Job(**values), True  # not in the session: the row as inserted, for the answer


def _insert_admitted(session: Session, values: dict, admission: Admission) -> bool:
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        conn.execute(_TENANT_LOCK, {"tenant": values["tenant"]})
    res = conn.execute(
        _INSERT_ADMITTED_JOB,
        {
            **{f"new_{c}": values[c] for c in _JOB_COLUMNS},
            "tenant": values["tenant"],
            "since": admission.since,
            "active_skip": admission.active_cap - 1,
            "window_skip": admission.window_cap - 1,
        },
    )
    return rowcount(res) == 1


def insert_queued(session: Session, rows: list[dict]) -> None:
    """Insert rows made by ``queued_job_row`` in the caller's transaction (a study's children, with their study)."""
    session.connection().execute(_INSERT_JOB, rows)


def cancel_children(session: Session, job_ids: Select, message: str, now: datetime) -> int:
    """Cancel the queued and running jobs among ``job_ids`` (a select of ids) in the caller's transaction; returns
    how many were cancelled. Their workers stop at the next heartbeat, as for a single cancel."""
    res = session.execute(
        update(Job)
        .where(Job.id.in_(job_ids), Job.status.in_([JobStatus.queued, JobStatus.running]))
        .values(status=JobStatus.cancelled, finished_at=now, message=message)
        .execution_options(synchronize_session=False)
    )
    return rowcount(res)


def mark_unpublished(session: Session, job_id: uuid.UUID) -> None:
    """Publishing failed: make the job the sweeper's first pick (a new job counts as published when created)."""
    session.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.queued).values(published_at=None))
    session.commit()


def claim(session: Session, job_id: uuid.UUID, worker: str, has_cuda: bool = False) -> Job | None:
    """queued -> running for this worker; None when someone else has it (or it is already finished).

    One statement returns the claimed row and records the device the worker will run it on (``has_cuda``: the
    worker has a CUDA device; a cuda job on a worker without one gets none, and fails as unavailable). A retry
    starts clean: metrics and artifacts of an attempt that died are removed in the same transaction.
    """
    now = utcnow()
    device = case(
        {"cpu": "cpu", "cuda": "cuda" if has_cuda else None, "auto": "cuda" if has_cuda else "cpu"},
        value=Job.device_requested,
    )
    job = session.scalars(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.queued)
        .values(
            status=JobStatus.running,
            attempt=Job.attempt + 1,
            worker=worker,
            device=device,
            started_at=now,
            heartbeat_at=now,
            progress=0.0,
            message="running",
        )
        .returning(Job)
        .execution_options(synchronize_session=False, populate_existing=True)
    ).one_or_none()
    if job is None:
        session.rollback()
        return None
    if job.attempt > 1:
        metrics.delete_job_rows(session, job_id)
        session.execute(delete(Artifact).where(Artifact.job_id == job_id))
    session.commit()
    return job


FAIR_WINDOW = 1000


def fair_pick(session: Session, job_id: uuid.UUID) -> uuid.UUID | None:
    """The job a worker should run for the wake-up message of job ``job_id``: per-tenant fairness within a queue.

    A message wakes a worker for its queue, not for its job. Among the first ``FAIR_WINDOW`` queued jobs of the
    queue (in starting order), the tenant with the fewest goes first, with its oldest job (ties: whoever's job is
    older), so one tenant's 500 jobs do not hold back another's one; a queue of one tenant runs in order. A message
    whose job was taken that way (or was cancelled) runs the next pick, so every queued job keeps a message of its
    own in the broker. Bounded: at most ``FAIR_WINDOW`` queued rows are read, however long the queue."""
    queue = session.scalar(select(Job.queue).where(Job.id == job_id))
    if queue is None:
        return None
    order = (Job.published_at.asc().nulls_last(), Job.id)
    head = (
        select(Job.id, Job.tenant, func.row_number().over(order_by=order).label("pos"))
        .where(Job.queue == queue, Job.status == JobStatus.queued)
        .order_by(*order)
        .limit(FAIR_WINDOW)
        .subquery()
    )
    first = (
        select(head.c.tenant)
        .group_by(head.c.tenant)
        .order_by(func.count(), func.min(head.c.pos))
        .limit(1)
        .scalar_subquery()
    )
    return session.scalar(select(head.c.id).where(head.c.tenant == first).order_by(head.c.pos).limit(1))


def _owned(job_id: uuid.UUID, attempt: int):
    return and_(Job.id == job_id, Job.status == JobStatus.running, Job.attempt == attempt)


def beat(
    session: Session,
    job_id: uuid.UUID,
    attempt: int,
    progress: float | None,
    message: str | None,
    metric_rows: list[tuple[int, str, float | None]],
    artifacts: list[dict] | None = None,
) -> bool:
    """Heartbeat, latest progress, buffered metrics and artifact rows (``Artifact`` column values: recipes, whose
    bytes come later) in one transaction; False if the job is no longer ours."""
    values: dict = {"heartbeat_at": utcnow()}
    if progress is not None:
        values["progress"] = progress
    if message is not None:
        values["message"] = message
    res = session.execute(
        update(Job).where(_owned(job_id, attempt)).values(**values).execution_options(synchronize_session=False)
    )
    if rowcount(res) != 1:
        session.rollback()
        return False
    if metric_rows:
        metrics.insert_rows(session, job_id, metric_rows)
    if artifacts:
        names = [a["name"] for a in artifacts]
        session.execute(delete(Artifact).where(Artifact.job_id == job_id, Artifact.name.in_(names)))
        session.execute(insert(Artifact), [{**a, "job_id": job_id, "created_at": utcnow()} for a in artifacts])
    session.commit()
    return True


def finish(
    session: Session,
    job_id: uuid.UUID,
    attempt: int,
    status: JobStatus,
    *,
    result: dict | None = None,
    error_type: str | None = None,
    error_message: str | None = None,
) -> bool:
    """running -> terminal, only for the attempt that owns the job."""
    values = {
        "status": status,
        "finished_at": utcnow(),
        "result": result,
        "error_type": error_type,
        "error_message": error_message,
    }
    if status == JobStatus.succeeded:
        values.update(progress=1.0, message="succeeded")
    else:
        values["message"] = status.value
    res = session.execute(
        update(Job).where(_owned(job_id, attempt)).values(**values).execution_options(synchronize_session=False)
    )
    session.commit()
    return rowcount(res) == 1


def cancel(session: Session, job_id: uuid.UUID) -> Job:
    """queued or running -> cancelled. A running job's worker sees it at its next heartbeat and stops."""
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_([JobStatus.queued, JobStatus.running]))
        .values(status=JobStatus.cancelled, finished_at=utcnow(), message="cancelled")
        .execution_options(synchronize_session=False)
    )
    session.commit()
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None  # the caller found it; jobs are not deleted
    if rowcount(res) != 1:
        raise TransitionRefused(job.status)
    return job


def get_job(session: Session, job_id: uuid.UUID) -> Job | None:
    return session.get(Job, job_id)


def job_tenant(session: Session, job_id: uuid.UUID) -> str | None:
    return session.scalar(select(Job.tenant).where(Job.id == job_id))


def status_of(session: Session, job_id: uuid.UUID) -> tuple[str, int] | None:
    row = session.execute(select(Job.status, Job.attempt).where(Job.id == job_id)).first()
    return (row[0], row[1]) if row else None


def active_params(session: Session, tenant: str) -> list[tuple[uuid.UUID, dict]]:
    """(id, params) of the tenant's queued and running jobs: what they hold (at most its cap on active jobs)."""
    rows = session.execute(select(Job.id, Job.params).where(Job.tenant == tenant, text(ACTIVE_WHERE))).all()
    return [(r.id, r.params) for r in rows]


def jobs_progress(session: Session, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict]:
    """What event streams report of each job, {status, progress, message, attempt}, by job id, in one query (a job
    that does not exist is absent)."""
    rows = session.execute(
        select(Job.id, Job.status, Job.progress, Job.message, Job.attempt).where(Job.id.in_(job_ids))
    ).all()
    return {
        r.id: {"status": r.status, "progress": r.progress, "message": r.message, "attempt": r.attempt} for r in rows
    }


def job_timing(session: Session, job_id: uuid.UUID):
    """(kind, queue, status, attempt, worker, error_type, created_at, started_at, finished_at) of a job."""
    return session.execute(
        select(
            Job.kind,
            Job.queue,
            Job.status,
            Job.attempt,
            Job.worker,
            Job.error_type,
            Job.created_at,
            Job.started_at,
            Job.finished_at,
        ).where(Job.id == job_id)
    ).first()


def job_counts(session: Session) -> list[tuple[str, str, int]]:
    """(status, kind, number of jobs) for every pair that has jobs."""
    return [
        (status, kind, n)
        for status, kind, n in session.execute(
            select(Job.status, Job.kind, func.count()).group_by(Job.status, Job.kind)
        ).all()
    ]


@dataclass
class SweepOutcome:
    republish: list[tuple[uuid.UUID, str]]  # (job id, queue)
    retried: list[uuid.UUID]
    failed: list[uuid.UUID]


def sweep(
    session: Session,
    *,
    heartbeat_timeout_s: float,
    requeue_queued_after_s: float,
    max_attempts: int,
    broker_started_at: datetime | None = None,
    now: datetime | None = None,
) -> SweepOutcome:
    """Recover from dead workers and lost messages.

    - running with a stale heartbeat: back to queued (a retry) while attempts remain, else failed;
    - queued, with a message that is known lost or may be: publish again (see ``_due_for_publishing``).
    Each change is a compare-and-set, so several sweepers at once are harmless.
    """
    now = now or utcnow()
    out = SweepOutcome([], [], [])
    stale = now - timedelta(seconds=heartbeat_timeout_s)
    dead = session.execute(
        select(Job.id, Job.attempt, Job.queue).where(Job.status == JobStatus.running, Job.heartbeat_at < stale)
    ).all()
    for job_id, attempt, queue in dead:
        if attempt >= max_attempts:
            res = session.execute(
                update(Job)
                .where(_owned(job_id, attempt), Job.heartbeat_at < stale)
                .values(
                    status=JobStatus.failed,
                    finished_at=now,
                    message="failed",
                    error_type="worker_lost",
                    error_message=f"the worker running this job stopped responding on each of {attempt} attempts "
                    f"(killed, out of memory, or lost); giving up",
                )
            )
            if rowcount(res) == 1:
                out.failed.append(job_id)
        else:
            res = session.execute(
                update(Job)
                .where(_owned(job_id, attempt), Job.heartbeat_at < stale)
                .values(
                    status=JobStatus.queued,
                    published_at=now,
                    republish_at=now + timedelta(seconds=requeue_queued_after_s),
                    worker=None,
                    message=f"retrying: worker lost on attempt {attempt}",
                )
            )
            if rowcount(res) == 1:
                out.retried.append(job_id)
                out.republish.append((job_id, queue))
        session.commit()
    due = _due_for_publishing(now, broker_started_at)
    waiting = session.execute(
        select(Job.id, Job.queue, Job.published_at).where(Job.status == JobStatus.queued, due)
    ).all()
    for job_id, queue, published_at in waiting:
        # the gap between blind re-publishes doubles: a job waiting in a long queue gets a handful of messages
        gap = max(requeue_queued_after_s, 2 * (now - published_at).total_seconds() if published_at else 0.0)
        res = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.queued, due)
            .values(published_at=now, republish_at=now + timedelta(seconds=gap))
        )
        if rowcount(res) == 1:
            out.republish.append((job_id, queue))
        session.commit()
    return out


def _due_for_publishing(now: datetime, broker_started_at: datetime | None):
    """Which queued jobs to publish again, so that a waiting job has a handful of messages however long it waits
    (one more per doubling of its wait: 6 after an hour, 7 after two) while a lost message is replaced within a
    sweep:

    - never published (publishing failed: ``mark_unpublished``);
    - published before the broker last started (``broker_started_at``, from Redis's uptime): a broker that
      restarted empty has lost the message; one that kept its data gets one duplicate per restart;
    - past ``republish_at``, a blind re-publish whose interval doubles each time (60 s, then 120, 240, ...), for
      losses nothing observes: an API process killed between its commit and its publish, a flushed Redis, a
      message held by a dead consumer.

    A duplicate message costs a worker one no-op claim; a missing one would leave the job queued forever. Backoff
    alone would replace a message lost after an hour of waiting only an hour later, and comparing the broker's
    queue with the queued rows would tie the sweeper to kombu's key layout and miss prefetched and unacked
    messages; the broker's start time is one cheap question (Redis INFO) that names exactly the lost messages.
    """
    lost = [Job.published_at.is_(None), Job.republish_at <= now]
    if broker_started_at is not None:
        lost.append(Job.published_at < broker_started_at)
    return or_(*lost)


def list_jobs(
    session: Session, *, tenant: str | None, status: str | None, kind: str | None, limit: int, cursor: str | None
) -> tuple[list[Job], str | None]:
    """Newest first, keyset-paginated on (created_at, id): stable while new jobs arrive. tenant None: all."""
    q = select(Job)
    if tenant is not None:
        q = q.where(Job.tenant == tenant)
    if status:
        q = q.where(Job.status == status)
    if kind:
        q = q.where(Job.kind == kind)
    return paging.page(list(session.scalars(paging.newest_first(q, Job.created_at, Job.id, limit, cursor))), limit)


_FINISHED = (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


def prunable_jobs(session: Session, finished_before: datetime, limit: int) -> list[uuid.UUID]:
    """Up to ``limit`` finished jobs, oldest first, finished before the cutoff and not pruned yet (a partial index
    holds exactly the unpruned finished jobs, so this reads no more than it returns)."""
    return list(
        session.scalars(
            select(Job.id)
            .where(
                Job.pruned_at.is_(None),
                Job.finished_at.is_not(None),
                Job.finished_at < finished_before,
                Job.status.in_(_FINISHED),
            )
            .order_by(Job.finished_at)
            .limit(limit)
        )
    )


def mark_pruned(session: Session, job_ids: list[uuid.UUID]) -> None:
    session.execute(
        update(Job).where(Job.id.in_(job_ids)).values(pruned_at=utcnow()).execution_options(synchronize_session=False)
    )
    session.commit()


def put_artifact(
    session: Session,
    job_id: uuid.UUID,
    attempt: int,
    name: str,
    *,
    media_type: str,
    size: int,
    sha256: str,
    location: str,
    recipe: dict | None = None,
) -> bool:
    """Record (or replace) a named artifact whose bytes are already in the blob store, or with ``recipe``, that
    renders them to ``location`` when first asked for; False if the job is no longer ours (the caller then removes
    the blob it wrote)."""
    if session.scalar(select(Job.id).where(_owned(job_id, attempt))) is None:
        return False
    session.execute(delete(Artifact).where(Artifact.job_id == job_id, Artifact.name == name))
    session.add(
        Artifact(
            job_id=job_id,
            name=name,
            media_type=media_type,
            size=size,
            sha256=sha256,
            location=location,
            created_at=utcnow(),
            recipe=recipe,
        )
    )
    session.commit()
    return True


def settle_rendered(session: Session, artifact_id: int, size: int, sha256: str) -> None:
    """A rendered artifact's bytes are at its location: record them and drop its recipe (a second renderer racing
    wrote the same bytes)."""
    session.execute(
        update(Artifact)
        .where(Artifact.id == artifact_id, Artifact.recipe.is_not(None))
        .values(size=size, sha256=sha256, recipe=None)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def pending_artifacts(session: Session, job_id: uuid.UUID) -> Sequence[Artifact]:
    """A job's artifacts still stored as recipes, PNGs first (the report shows them)."""
    return session.scalars(
        select(Artifact)
        .where(Artifact.job_id == job_id, Artifact.recipe.is_not(None))
        .order_by(Artifact.media_type != "image/png", Artifact.name)
    ).all()


def png_artifacts(session: Session, job_id: uuid.UUID) -> Sequence[Artifact]:
    """A job's PNG artifacts' rows, by name (what its report shows)."""
    return session.scalars(
        select(Artifact).where(Artifact.job_id == job_id, Artifact.media_type == "image/png").order_by(Artifact.name)
    ).all()


def list_artifacts(session: Session, job_id: uuid.UUID) -> Sequence[Row[str, str, int, str]]:
    """(name, media_type, size, sha256) of a job's artifacts, by name; the bytes stay in the database."""
    return session.execute(
        select(Artifact.name, Artifact.media_type, Artifact.size, Artifact.sha256)
        .where(Artifact.job_id == job_id)
        .order_by(Artifact.name)
    ).all()


def artifact_row(session: Session, job_id: uuid.UUID, name: str) -> Artifact | None:
    return session.scalar(select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name))


def artifact_locations(session: Session, job_ids: list[uuid.UUID]) -> list[tuple[int, str]]:
    """(row id, blob key) of each of these jobs' artifacts."""
    found = session.execute(select(Artifact.id, Artifact.location).where(Artifact.job_id.in_(job_ids)))
    return [(row_id, location) for row_id, location in found]


def delete_artifact_rows(session: Session, ids: list[int]) -> None:
    session.execute(delete(Artifact).where(Artifact.id.in_(ids)).execution_options(synchronize_session=False))
    session.commit()


def artifact_bytes(session: Session) -> int:
    """Bytes of every artifact in the blob store (from the rows' recorded sizes)."""
    return session.execute(select(func.coalesce(func.sum(Artifact.size), 0))).scalar_one()
