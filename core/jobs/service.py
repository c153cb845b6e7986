"""Jobs' rules as the API applies them: a submission goes through admission (``core.jobs.admission``), is stored with
its Idempotency-Key and published; every read checks the caller may see the job (another tenant's job is "not
found", like a missing one)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Protocol

from pydantic import BaseModel
from sqlalchemy.orm import Session

from core.blobs import blob_store
from core.blobs.store import read_blob
from core.db.tables import Artifact, Job, utcnow
from core.errors import Conflict, Malformed, NotFound
from core.jobs import admission
from core.jobs import repository as jobs
from core.keys.repository import Principal
from core.metrics import repository as metrics
from core.renders import REPORT, render
from core.report import html_report
from core.settings import Settings

log = logging.getLogger(__name__)


class Publisher(Protocol):
    """Where a new job's wake-up message goes (``workers.publish.Publisher``); False when publishing failed."""

    def publish(self, job_id: uuid.UUID | str, queue: str) -> bool: ...


def publish_new(session: Session, publisher: Publisher, queued: Sequence[tuple[uuid.UUID, str]]) -> None:
    """Publish new jobs (id, queue); one whose message could not be sent is left for the sweeper to publish."""
    for job_id, queue in queued:
        if not publisher.publish(job_id, queue):
            jobs.mark_unpublished(session, job_id)


def submit_job(
    session: Session,
    settings: Settings,
    publisher: Publisher,
    who: Principal,
    *,
    kind: str,
    params: BaseModel,
    seed: int,
    device: str,
    timeout_s: int,
    request: dict,
    idempotency_key: str | None,
) -> tuple[Job, bool]:
    """Admit, store and publish a job; (the job, True), or (the earlier job, False) for a replay of the same
    Idempotency-Key and ``request`` (the body as JSON)."""
    admission.check_job(session, settings, who.tenant, kind, params, device, "params")
    # only a request that may be replayed needs its body's fingerprint
    body_hash = jobs.request_fingerprint(request) if idempotency_key is not None else None
    now = utcnow()
    try:
        job, created = jobs.create_job(
            session,
            tenant=who.tenant,
            kind=kind,
            params=params.model_dump(mode="json"),
            seed=seed,
            device=device,
            timeout_s=timeout_s,
            republish_after_s=settings.requeue_queued_after_s,
            admission=admission.caps(settings, now),
            idempotency_key=idempotency_key,
            body_hash=body_hash,
            quick_max_s=settings.quick_job_max_s,
        )
    except jobs.AdmissionRefused as exc:
        raise admission.busy(settings, who.tenant, exc.usage, now) from None
    if created:
        publish_new(session, publisher, [(job.id, job.queue)])
        log.info(
            "job %s submitted: %s on queue %s",
            job.id,
            job.kind,
            job.queue,
            extra={"job_id": str(job.id), "kind": job.kind, "tenant": job.tenant},
        )
    return job, created


def job_of(session: Session, who: Principal, job_id: uuid.UUID) -> Job:
    """The job, if it exists and the caller may see it."""
    job = jobs.get_job(session, job_id)
    if job is None or not who.owns(job.tenant):
        raise NotFound(f"job {job_id} not found")
    return job


def check_visible(session: Session, who: Principal, job_id: uuid.UUID) -> None:
    """``NotFound`` unless the job exists and the caller may see it (one column read: event streams)."""
    tenant = jobs.job_tenant(session, job_id)
    if tenant is None or not who.owns(tenant):
        raise NotFound(f"job {job_id} not found")


def list_jobs(
    session: Session, who: Principal, *, status: str | None, kind: str | None, limit: int, cursor: str | None
) -> tuple[list[Job], str | None]:
    """The jobs the caller may see, newest first, a page at a time."""
    try:
        return jobs.list_jobs(session, tenant=who.visible_tenant, status=status, kind=kind, limit=limit, cursor=cursor)
    except (ValueError, UnicodeDecodeError):
        raise Malformed("cursor: not a cursor returned by this API") from None


def cancel_job(session: Session, who: Principal, job_id: uuid.UUID) -> Job:
    job = job_of(session, who, job_id)
    try:
        return jobs.cancel(session, job.id)
    except jobs.TransitionRefused as exc:
        raise Conflict(f"job {job_id} is already {exc.status}; only queued or running jobs can be cancelled") from None


def metric_rows(
    session: Session,
    who: Principal,
    job_id: uuid.UUID,
    *,
    name: str | None,
    after_step: int | None,
    cursor: int | None,
    limit: int,
    points: int | None,
) -> tuple[Sequence, int | None]:
    """A page of a job's metric rows (step, name, value) and the next cursor; with ``points``, every series
    downsampled to at most that many rows each, in one page."""
    job = job_of(session, who, job_id)
    if points is not None:
        return metrics.downsampled_metrics(session, job.id, name=name, points=points), None
    return metrics.read_metrics(session, job.id, name=name, after_step=after_step, cursor=cursor, limit=limit)


def artifacts_of(session: Session, settings: Settings, who: Principal, job_id: uuid.UUID) -> tuple[Job, Sequence]:
    """The job and its artifacts (name, media_type, size, sha256), by name; listing them is asking for them, so
    those stored as recipes are rendered first (their sizes and digests are then the real ones)."""
    job = job_of(session, who, job_id)
    for art in jobs.pending_artifacts(session, job.id):
        _render(session, settings, job, art)
    return job, jobs.list_artifacts(session, job.id)


def artifact_of(session: Session, settings: Settings, who: Principal, job_id: uuid.UUID, name: str) -> Artifact:
    """One named artifact's row (where its bytes are) of a job the caller may see; an artifact stored as a recipe
    is rendered now, on its first GET (``core.renders``)."""
    job = job_of(session, who, job_id)
    art = jobs.artifact_row(session, job.id, name)
    if art is None:
        raise NotFound(f"artifact {name!r} not found for job {job_id}")
    if art.recipe is not None:
        _render(session, settings, job, art)
    return art


def _render(session: Session, settings: Settings, job: Job, art: Artifact) -> None:
    """Render a recipe's bytes to the artifact's location and record them; the report first renders the plots it
    shows."""
    store = blob_store(settings)
    recipe = art.recipe or {}
    if recipe.get("renderer") == REPORT:
        images = []
        for png in jobs.png_artifacts(session, job.id):
            if png.recipe is not None:
                _render(session, settings, job, png)
            images.append((png.name, read_blob(store, png.location), png.media_type))
        data = html_report(job.kind, job.params, job.result or {}, images)
    else:
        data = render(recipe)
    stored = store.put(art.location, [data])
    jobs.settle_rendered(session, art.id, stored.size, stored.sha256)
    session.refresh(art)
