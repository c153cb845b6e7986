"""Jobs: submit, read, list, cancel, metrics and artifacts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Response
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy.orm import Session

from api.auth import principal
from api.deps import app_settings, db, parse_id, publisher
from api.schemas import ArtifactOut, JobOut, JobPage, JobRequest, MetricPage
from core.blobs import blob_store
from core.blobs.store import iter_blob
from core.fleet import service as fleet
from core.jobs import service
from core.jobs.states import JobStatus
from core.keys.repository import Principal
from core.settings import Settings
from core.studies import service as study_service
from workers.publish import Publisher

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


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
    response: Response,
    session: Session = Depends(db),
    who: Principal = Depends(principal),
    settings: Settings = Depends(app_settings),
    wakeups: Publisher = Depends(publisher),
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
):
    job, created = service.submit_job(
        session,
        settings,
        wakeups,
        who,
        kind=body.kind,
        params=body.params,
        seed=body.seed,
        device=body.device,
        timeout_s=body.timeout_s,
        request=body.model_dump(mode="json"),
        idempotency_key=idempotency_key,
    )
    if not created:
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
    jobs, nxt = service.list_jobs(session, who, status=status, kind=kind, limit=limit, cursor=cursor)
    parents = study_service.studies_of_jobs(session, [j.id for j in jobs])
    return JobPage(items=[JobOut.of(j, parents.get(j.id)) for j in jobs], next_cursor=nxt)


@router.get("/{job_id}", response_model=JobOut)
def get_job(
    job_id: str,
    session: Session = Depends(db),
    who: Principal = Depends(principal),
    settings: Settings = Depends(app_settings),
):
    job, place = fleet.job_with_place(session, settings, who, parse_id(job_id))
    out = JobOut.of(job, study_service.studies_of_jobs(session, [job.id]).get(job.id))
    if place is not None:
        out.queue_position, out.eta_s, out.queue_ahead_over = place.position, place.eta_s, place.ahead_over
    return out


@router.post("/{job_id}/cancel", response_model=JobOut, responses={409: {"description": "job already finished"}})
def cancel_job(job_id: str, session: Session = Depends(db), who: Principal = Depends(principal)):
    return JobOut.of(service.cancel_job(session, who, parse_id(job_id)))


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
    rows, nxt = service.metric_rows(
        session,
        who,
        parse_id(job_id),
        name=name,
        after_step=after_step,
        cursor=cursor,
        limit=limit,
        points=points,
    )
    # Plain dicts straight to JSON: a model per row was a third of the API's time when paging large series.
    return JSONResponse(
        {"items": [{"step": r.step, "name": r.name, "value": r.value} for r in rows], "next_cursor": nxt}
    )


@router.get("/{job_id}/artifacts", response_model=list[ArtifactOut])
def list_artifacts(
    job_id: str,
    session: Session = Depends(db),
    who: Principal = Depends(principal),
    settings: Settings = Depends(app_settings),
):
    job, rows = service.artifacts_of(session, settings, who, parse_id(job_id))
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
    job_id: str,
    name: str,
    session: Session = Depends(db),
    who: Principal = Depends(principal),
    settings: Settings = Depends(app_settings),
):
    art = service.artifact_of(session, settings, who, parse_id(job_id), name)
    return StreamingResponse(
        iter_blob(blob_store(settings), art.location),
        media_type=art.media_type,
        headers={
            "Content-Disposition": f'attachment; filename="{art.name}"',
            "Content-Length": str(art.size),
            "X-Content-Type-Options": "nosniff",
            "ETag": f'"{art.sha256}"',
        },
    )
