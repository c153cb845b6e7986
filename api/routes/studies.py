"""Studies: a grid of settings × seeds submitted at once as ordinary child jobs, followed and compared as one.

The children spread over every worker like any job (they are jobs), count against the tenant's caps, and are
cancelled with their study. ``GET /v1/studies/{id}`` answers with the study's state and the comparison of its
children's summaries; ``…/comparison.csv`` with the same table as CSV.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from api.auth import principal
from api.deps import app_settings, db, parse_id, publisher
from api.schemas import StudyBriefOut, StudyPage
from core.db.tables import Study
from core.keys.repository import Principal
from core.settings import Settings
from core.studies import service, stats
from core.studies.schemas import StudyRequest
from workers.publish import Publisher

router = APIRouter(prefix="/v1/studies", tags=["studies"])


class FigureStat(BaseModel):
    mean: float | None
    ci95: float | None = Field(description="half-width of the 95 % confidence interval (Student t)")
    n: int


class ComparisonRow(BaseModel):
    setting: int
    label: str
    jobs: int
    succeeded: int
    failed: int
    verdicts: dict[str, int] = Field(description="how many children's summaries support, contradict, …")
    figures: dict[str, FigureStat] = Field(description="each summary figure: mean ± 95 % CI over seeds")
    paired: dict[str, FigureStat] | None = Field(
        description="difference from the baseline setting over the seeds both ran (None for the baseline)"
    )


class Comparison(BaseModel):
    baseline: int
    figures: list[str]
    rows: list[ComparisonRow]


class StudySetting(BaseModel):
    index: int
    label: str
    params: dict[str, Any]


class StudyChild(BaseModel):
    id: uuid.UUID
    setting: int
    seed: int
    status: str


class StudyOut(BaseModel):
    id: uuid.UUID
    kind: str
    status: stats.StudyStatus
    progress: float
    created_at: datetime
    cancelled_at: datetime | None
    settings: list[StudySetting]
    seeds: list[int]
    counts: dict[str, int] = Field(description="children per status")
    jobs: list[StudyChild]
    comparison: Comparison
    links: dict[str, str]


def _out(session: Session, study: Study) -> StudyOut:
    base = f"/v1/studies/{study.id}"
    return StudyOut(
        id=study.id,
        kind=study.kind,
        created_at=study.created_at,
        cancelled_at=study.cancelled_at,
        settings=[StudySetting(index=i, **s) for i, s in enumerate(study.settings)],
        seeds=study.seeds,
        **service.describe(session, study),
        links={
            "self": base,
            "csv": f"{base}/comparison.csv",
            "cancel": f"{base}/cancel",
            "page": f"/studies/{study.id}",
        },
    )


@router.post(
    "",
    status_code=201,
    response_model=StudyOut,
    responses={
        200: {"description": "replay of an earlier request with the same Idempotency-Key"},
        409: {"description": "Idempotency-Key reused with another body"},
    },
)
def submit_study(
    body: StudyRequest,
    response: Response,
    session: Session = Depends(db),
    who: Principal = Depends(principal),
    settings: Settings = Depends(app_settings),
    wakeups: Publisher = Depends(publisher),
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
):
    study, created = service.submit_study(session, settings, wakeups, who, body, idempotency_key)
    if not created:
        response.status_code = 200
    response.headers["Location"] = f"/v1/studies/{study.id}"
    return _out(session, study)


def _brief(brief: service.StudyBrief) -> StudyBriefOut:
    study = brief.study
    return StudyBriefOut(
        id=study.id,
        kind=study.kind,
        status=brief.status,
        progress=brief.progress,
        counts=brief.counts,
        jobs=sum(brief.counts.values()),
        settings=[s["label"] for s in study.settings],
        seeds=study.seeds,
        created_at=study.created_at,
        cancelled_at=study.cancelled_at,
        links={"self": f"/v1/studies/{study.id}", "page": f"/studies/{study.id}"},
    )


@router.get("", response_model=StudyPage)
def list_studies(
    session: Session = Depends(db),
    who: Principal = Depends(principal),
    status: stats.StudyStatus | None = None,
    kind: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
):
    """The caller's studies (an admin key: every tenant's), newest first, ``next_cursor`` to the next page; each
    with its status and counts of children per status, without the comparison (``GET /v1/studies/{id}``)."""
    briefs, nxt = service.list_studies(session, who, status=status, kind=kind, limit=limit, cursor=cursor)
    return StudyPage(items=[_brief(b) for b in briefs], next_cursor=nxt)


@router.get("/{study_id}", response_model=StudyOut)
def get_study(study_id: str, session: Session = Depends(db), who: Principal = Depends(principal)):
    return _out(session, service.study_of(session, who, parse_id(study_id, "study")))


@router.get("/{study_id}/comparison.csv", response_class=Response, responses={200: {"content": {"text/csv": {}}}})
def comparison_csv(study_id: str, session: Session = Depends(db), who: Principal = Depends(principal)):
    out = _out(session, service.study_of(session, who, parse_id(study_id, "study")))
    return Response(
        stats.to_csv(out.comparison.model_dump()),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="study-{out.id}.csv"'},
    )


class StudyMetricRow(BaseModel):
    job_id: uuid.UUID
    step: int
    name: str
    value: float | None


class StudyMetrics(BaseModel):
    items: list[StudyMetricRow]


@router.get("/{study_id}/metrics", response_model=StudyMetrics)
def study_metrics(
    study_id: str,
    name: Annotated[str, Query(min_length=1, max_length=128)],
    points: Annotated[int, Query(ge=2, le=2000)] = 500,
    session: Session = Depends(db),
    who: Principal = Depends(principal),
):
    """One metric of every child job, each series downsampled (min and max per step bucket), in one answer."""
    study = service.study_of(session, who, parse_id(study_id, "study"))
    rows = service.child_metrics(session, study, name, points)
    return JSONResponse(
        {"items": [{"job_id": str(r.job_id), "step": r.step, "name": r.name, "value": r.value} for r in rows]}
    )


class SettingBand(BaseModel):
    setting: int
    label: str
    steps: list[int] = Field(description="each bucket's first step")
    mean: list[float] = Field(description="mean over the setting's children of their bucket means")
    sd: list[float | None] = Field(description="sample standard deviation over the children (None below two)")
    min: list[float]
    max: list[float]
    n: list[int] = Field(description="children that logged the bucket")


class StudyBands(BaseModel):
    name: str
    width: int = Field(description="steps per bucket (1: every step)")
    settings: list[SettingBand]


# A finished study's bands never change: the last answers made, per API process (about 0.4 MB each at 200 points ×
# 20 settings), are sent again without reading the study's metric rows.
FINISHED_BANDS_KEPT = 32
_finished_bands: dict[tuple[uuid.UUID, str, int], bytes] = {}


@router.get("/{study_id}/bands", response_model=StudyBands)
def study_bands(
    study_id: str,
    name: Annotated[str, Query(min_length=1, max_length=128)],
    points: Annotated[int, Query(ge=2, le=2000)] = 200,
    session: Session = Depends(db),
    who: Principal = Depends(principal),
):
    """One metric per setting as the mean over its seeds with the min–max band and sd: each child's series is cut
    into at most ``points`` buckets of equal step span shared by every child, and averaged per bucket first. A study
    page draws 20 bands of ``points`` points, not 200 raw curves."""
    study = service.study_of(session, who, parse_id(study_id, "study"))
    key = (study.id, name, points)
    cached = _finished_bands.get(key)
    if cached is not None:
        return Response(cached, media_type="application/json")
    out, finished = service.bands(session, study, name, points)
    body = bytes(JSONResponse(out).body)
    if finished:
        _finished_bands[key] = body
        while len(_finished_bands) > FINISHED_BANDS_KEPT:
            _finished_bands.pop(next(iter(_finished_bands)), None)
    return Response(body, media_type="application/json")


@router.post("/{study_id}/cancel", response_model=StudyOut)
def cancel_study(study_id: str, session: Session = Depends(db), who: Principal = Depends(principal)):
    """Cancel the study and its queued and running children; finished children keep their results."""
    return _out(session, service.cancel(session, who, parse_id(study_id, "study")))
