"""Jobs: submit, read, list, cancel, metrics and artifacts."""

from __future__ import annotations

import logging
import math
import uuid
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy.orm import Session

from api.auth import owns, principal, visible_tenant
from api.dataset_checks import check_datasets
from api.deps import db, parse_id
from api.problems import Problem
from api.routes.ops import place_in_queue
from api.schemas import ArtifactOut, JobOut, JobPage, JobRequest, MetricPage
from core.blobs import blob_store
from core.blobs.store import iter_blob
from core.db.tables import Job, utcnow
from core.jobs import repository as store
from core.jobs.states import QUEUE_FOR_DEVICE, JobStatus
from core.keys.repository import Principal
from core.networks.budget import estimate, refusal
from core.networks.inspector import InspectionFailed, ModelRejected, inspect_model
from core.networks.spec import BuiltinModel, HFConfigModel, UploadedModel
from core.techniques import specs

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
RATE_WINDOW = timedelta(seconds=60)


def _job(session: Session, raw_id: str, who: Principal) -> Job:
    """The job, if it exists and the caller may see it; another tenant's job is a 404 like a missing one."""
    job = store.get_job(session, parse_id(raw_id))
    if job is None or not owns(who, job.tenant):
        raise Problem(404, f"job {raw_id} not found")
    return job


def _admission(settings, now) -> store.Admission:
    """Per-tenant caps on queued+running jobs and on submissions in the last RATE_WINDOW."""
    return store.Admission(
        active_cap=settings.max_active_jobs_per_tenant,
        window_cap=settings.submissions_per_minute_per_tenant,
        since=now - RATE_WINDOW,
    )


def _refusal(settings, tenant: str, use: store.Usage, now) -> Problem:
    """429 with Retry-After, naming the cap the tenant is at."""
    if use.window_filled_at is not None and not use.at_active_cap:
        wait = max(1, math.ceil((use.window_filled_at + RATE_WINDOW - now).total_seconds()))
        return Problem(
            429,
            f"tenant {tenant} submitted {settings.submissions_per_minute_per_tenant} jobs in the "
            f"last minute (the limit)",
            headers={"Retry-After": str(wait)},
        )
    return Problem(
        429,
        f"tenant {tenant} has {settings.max_active_jobs_per_tenant} queued or running jobs (the "
        f"limit); wait for some to finish",
        headers={"Retry-After": "5"},
    )


def _model_refused(message: str, status: int = 422) -> Problem:
    return Problem(
        status,
        f"params.model: {message}",
        errors=[{"field": "params.model", "message": message, "type": "invalid_model"}],
    )


def _buildable(session: Session, who: Principal, model) -> tuple[dict, list | None]:
    """The spec as the inspector builds it (an uploaded model becomes its stored config), and the tensors of the
    weights it names (None: its own initialisation). Unknown or another tenant's model ids are refused here, like
    datasets."""

    def stored(model_id, field: str):
        row = store.model_meta(session, model_id)
        if row is None or not owns(who, row.tenant):
            raise _model_refused(f"{field}: model {model_id} not found")
        return row

    if isinstance(model, UploadedModel):
        return {"source": "hf_config", "config": stored(model.id, "id").config}, None
    if isinstance(model, HFConfigModel) and model.weights is not None:
        row = stored(model.weights, "weights")
        if row.weights_size is None:
            raise _model_refused(f"weights: model {model.weights} was uploaded without weights")
        return model.model_dump(mode="json", exclude={"weights"}), row.summary["layers"]
    return model.model_dump(mode="json", exclude={"weights"}), None


def _budget_model(session: Session, settings, who: Principal, body) -> None:
    """A job on a model is queued only when the model builds and its memory fits the queue's worker class."""
    model = getattr(body.params, "model", None)
    if not isinstance(model, (BuiltinModel, HFConfigModel, UploadedModel)):
        return
    buildable, weight_layers = _buildable(session, who, model)
    spec = specs()[body.kind]
    dataset = getattr(body.params, "dataset", None)
    columns = None
    if isinstance(dataset, uuid.UUID):
        columns = store.dataset_columns(session, dataset)
    workload = spec.model_workload(body.params, columns) if spec.model_workload else None
    if workload is None and isinstance(model, BuiltinModel):
        return  # nothing to budget, and a built-in spec is fully checked by its own validation
    try:
        summary = inspect_model(
            buildable, input=workload.input() if workload else None, timeout_s=settings.inspect_timeout_s
        )
    except ModelRejected as exc:
        raise _model_refused(str(exc)) from None
    except InspectionFailed as exc:
        raise Problem(
            503, f"params.model: could not be inspected now ({exc}); retry", headers={"Retry-After": "5"}
        ) from None
    if weight_layers is not None and weight_layers != summary["layers"]:
        assert isinstance(model, HFConfigModel)  # only an HF config names separate weights
        raise _model_refused(f"weights: the tensors of model {model.weights} do not match this config's")
    if workload is not None:
        queue = QUEUE_FOR_DEVICE[body.device]
        why = refusal(
            estimate(summary["n_params"], summary["activation_bytes"], workload),
            queue,
            settings.queue_memory_bytes(queue),
        )
        if why is not None:
            raise _model_refused(why)


@router.post(
    "",
    status_code=201,
    response_model=JobOut,
    responses={
        200: {"description": "replay of an earlier request with the same Idempotency-Key"},
        409: {"description": "Idempotency-Key reused with another body"},
    },
)
def submit(
    body: JobRequest,
    request: Request,
    response: Response,
    session: Session = Depends(db),
    who: Principal = Depends(principal),
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
):
    params = body.params.model_dump(mode="json")
    check_datasets(session, who, body.kind, body.params, "params.dataset")
    _budget_model(session, request.app.state.settings, who, body)
    # only a request that may be replayed needs its body's fingerprint
    body_hash = store.request_fingerprint(body.model_dump(mode="json")) if idempotency_key is not None else None
    settings, now = request.app.state.settings, utcnow()
    try:
        job, created = store.create_job(
            session,
            tenant=who.tenant,
            kind=body.kind,
            params=params,
            seed=body.seed,
            device=body.device,
            timeout_s=body.timeout_s,
            republish_after_s=settings.requeue_queued_after_s,
            admission=_admission(settings, now),
            idempotency_key=idempotency_key,
            body_hash=body_hash,
        )
    except store.IdempotencyConflict as exc:
        raise Problem(409, str(exc)) from None
    except store.AdmissionRefused as exc:
        raise _refusal(settings, who.tenant, exc.usage, now) from None
    if created:
        if not request.app.state.publisher.publish(job.id, job.queue):
            store.mark_unpublished(session, job.id)
        log.info(
            "job %s submitted: %s on queue %s",
            job.id,
            job.kind,
            job.queue,
            extra={"job_id": str(job.id), "kind": job.kind, "tenant": job.tenant},
        )
    else:
        response.status_code = 200
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobOut.of(job)


@router.get("", response_model=JobPage)
def list_jobs(
    session: Session = Depends(db),
    who: Principal = Depends(principal),
    status: JobStatus | None = None,
    kind: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
):
    try:
        jobs, nxt = store.list_jobs(
            session, tenant=visible_tenant(who), status=status, kind=kind, limit=limit, cursor=cursor
        )
    except (ValueError, UnicodeDecodeError):
        raise Problem(400, "cursor: not a cursor returned by this API") from None
    return JobPage(items=[JobOut.of(j) for j in jobs], next_cursor=nxt)


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: str, request: Request, session: Session = Depends(db), who: Principal = Depends(principal)):
    job = _job(session, job_id, who)
    out = JobOut.of(job)
    if job.status == JobStatus.queued:
        out.queue_position, out.eta_s = place_in_queue(session, request.app.state.settings, job)
    return out


@router.post("/{job_id}/cancel", response_model=JobOut, responses={409: {"description": "job already finished"}})
def cancel_job(job_id: str, session: Session = Depends(db), who: Principal = Depends(principal)):
    job = _job(session, job_id, who)
    try:
        return JobOut.of(store.cancel(session, job.id))
    except store.TransitionRefused as exc:
        raise Problem(
            409, f"job {job_id} is already {exc.status}; only queued or running jobs can be cancelled"
        ) from None


@router.get("/{job_id}/metrics", response_model=MetricPage)
def metrics(
    job_id: str,
    session: Session = Depends(db),
    who: Principal = Depends(principal),
    name: Annotated[str | None, Query(max_length=128)] = None,
    after_step: Annotated[int | None, Query(ge=-1, le=2**62)] = None,
    cursor: Annotated[int | None, Query(ge=0, le=2**62)] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    points: Annotated[
        int | None,
        Query(
            ge=2,
            le=2000,
            description=(
                "downsample: each series in at most this many rows (min and max per step bucket), all in one page; "
                "after_step, cursor and limit do not apply"
            ),
        ),
    ] = None,
):
    job = _job(session, job_id, who)
    if points is not None:
        kept = store.downsampled_metrics(session, job.id, name=name, points=points)
        return JSONResponse(
            {"items": [{"step": r.step, "name": r.name, "value": r.value} for r in kept], "next_cursor": None}
        )
    rows, nxt = store.read_metrics(session, job.id, name=name, after_step=after_step, cursor=cursor, limit=limit)
    # Plain dicts straight to JSON: a model per row was a third of the API's time when paging large series.
    return JSONResponse(
        {"items": [{"step": r.step, "name": r.name, "value": r.value} for r in rows], "next_cursor": nxt}
    )


@router.get("/{job_id}/artifacts", response_model=list[ArtifactOut])
def list_artifacts(job_id: str, session: Session = Depends(db), who: Principal = Depends(principal)):
    job = _job(session, job_id, who)
    rows = store.list_artifacts(session, job.id)
    return [
        ArtifactOut(name=n, media_type=m, size=s, sha256=h, url=f"/v1/jobs/{job.id}/artifacts/{n}")
        for n, m, s, h in rows
    ]


@router.get(
    "/{job_id}/artifacts/{name}",
    response_class=Response,
    responses={200: {"content": {"image/png": {}, "application/json": {}, "application/x-npy": {}}}},
)
def get_artifact(
    request: Request, job_id: str, name: str, session: Session = Depends(db), who: Principal = Depends(principal)
):
    job = _job(session, job_id, who)
    art = store.artifact_row(session, job.id, name)
    if art is None:
        raise Problem(404, f"artifact {name!r} not found for job {job_id}")
    return StreamingResponse(
        iter_blob(blob_store(request.app.state.settings), art.location),
        media_type=art.media_type,
        headers={
            "Content-Disposition": f'attachment; filename="{art.name}"',
            "Content-Length": str(art.size),
            "X-Content-Type-Options": "nosniff",
            "ETag": f'"{art.sha256}"',
        },
    )
