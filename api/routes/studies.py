"""Studies: a grid of settings × seeds submitted at once as ordinary child jobs, followed and compared as one.

The children spread over every worker like any job (they are jobs), count against the tenant's caps, and are
cancelled with their study. ``GET /v1/studies/{id}`` answers with the study's state and the comparison of its
children's summaries; ``…/comparison.csv`` with the same table as CSV.
"""

from __future__ import annotations

import math
import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.auth import owns, principal
from api.dataset_checks import check_datasets
from api.deps import db, parse_id
from api.problems import Problem
from api.schemas import MAX_SEED
from core.db.tables import Study, utcnow
from core.jobs import repository as store
from core.keys.repository import Principal
from core.studies import stats as studies
from core.techniques import specs

router = APIRouter(prefix="/v1/studies", tags=["studies"])
MAX_STUDY_JOBS = 500
RATE_WINDOW = timedelta(seconds=60)


class StudyRequest(BaseModel):
    """A question asked of several settings over several seeds. Settings come from ``grid`` (every combination of
    the values, applied to ``base``) or from ``settings`` (explicit overrides of ``base``), or ``base`` alone.
    Keys may be dotted paths into nested params (``sweep.steps``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    kind: str = Field(max_length=64)
    base: dict[str, Any] = Field(default_factory=dict, description="params shared by every setting")
    grid: dict[str, list[Any]] | None = Field(None, description="param -> values; every combination is a setting")
    settings: list[dict[str, Any]] | None = Field(
        None, min_length=1, max_length=MAX_STUDY_JOBS, description="explicit param overrides, one per setting"
    )
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] = Field(
        default_factory=lambda: [0], min_length=1, max_length=100
    )
    baseline: int = Field(0, ge=0, description="index of the setting the others are compared with")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    timeout_s: int = Field(3600, ge=1, le=24 * 3600)


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
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: float
    created_at: datetime
    cancelled_at: datetime | None
    settings: list[StudySetting]
    seeds: list[int]
    counts: dict[str, int] = Field(description="children per status")
    jobs: list[StudyChild]
    comparison: Comparison
    links: dict[str, str]


def _study(session, raw_id: str, who: Principal) -> Study:
    study = store.get_study(session, parse_id(raw_id, "study"))
    if study is None or not owns(who, study.tenant):
        raise Problem(404, f"study {raw_id} not found")
    return study


def _out(session, study: Study) -> StudyOut:
    rows = store.study_children(session, study.id)
    children = [studies.Child(r.setting, r.seed, r.status, r.progress, r.summary) for r in rows]
    counts: dict[str, int] = {}
    for c in children:
        counts[c.status] = counts.get(c.status, 0) + 1
    labels = [s["label"] for s in study.settings]
    base = f"/v1/studies/{study.id}"
    return StudyOut(
        id=study.id,
        kind=study.kind,
        status=studies.status(children, study.cancelled_at is not None),
        progress=studies.progress(children),
        created_at=study.created_at,
        cancelled_at=study.cancelled_at,
        settings=[StudySetting(index=i, **s) for i, s in enumerate(study.settings)],
        seeds=study.seeds,
        counts=counts,
        jobs=[StudyChild(id=r.job_id, setting=r.setting, seed=r.seed, status=r.status) for r in rows],
        comparison=Comparison(**studies.compare(labels, study.baseline, children)),
        links={
            "self": base,
            "csv": f"{base}/comparison.csv",
            "cancel": f"{base}/cancel",
            "page": f"/studies/{study.id}",
        },
    )


def _invalid(field: str, message: str) -> Problem:
    return Problem(422, f"{field}: {message}", errors=[{"field": field, "message": message, "type": "value_error"}])


def _settings(body: StudyRequest) -> list[tuple[str, Any]]:
    """The expanded settings as (label, validated params), each validated by the kind's params model (422 naming
    the setting and the field)."""
    if body.kind not in specs():
        raise _invalid("kind", f"unknown kind {body.kind!r}; known kinds: {sorted(specs())}")
    if body.grid is not None and body.settings is not None:
        raise _invalid("grid", "give either grid or settings, not both")
    if body.grid is not None:
        for key, values in body.grid.items():
            if not values:
                raise _invalid(f"grid.{key}", "needs at least one value")
        count = math.prod(len(v) for v in body.grid.values()) if body.grid else 1
        if count * len(body.seeds) > MAX_STUDY_JOBS:
            raise _invalid("grid", f"{count} settings × {len(body.seeds)} seeds exceeds {MAX_STUDY_JOBS} jobs")
    elif body.settings is not None and len(body.settings) * len(body.seeds) > MAX_STUDY_JOBS:
        raise _invalid(
            "settings", f"{len(body.settings)} settings × {len(body.seeds)} seeds exceeds {MAX_STUDY_JOBS} jobs"
        )
    if len(set(body.seeds)) != len(body.seeds):
        raise _invalid("seeds", "each seed may appear once")
    model = specs()[body.kind].params
    out = []
    for i, (label, params) in enumerate(studies.expand(body.base, body.grid, body.settings)):
        try:
            validated = model.model_validate(params)
        except ValidationError as exc:
            where = "grid" if body.grid is not None else f"settings[{i}]" if body.settings is not None else "base"
            errors = [
                {
                    "field": ".".join([where, *map(str, e["loc"])]),
                    "message": f"{e['msg']} (setting {label})",
                    "type": e["type"],
                }
                for e in exc.errors()
            ]
            raise Problem(422, "; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors) from None
        out.append((label, validated))
    if body.baseline >= len(out):
        raise _invalid("baseline", f"setting index {body.baseline} is out of range (there are {len(out)})")
    return out


def _admit(session, settings, tenant: str, n: int) -> None:
    """The study's n children against the tenant's caps, as n submissions at once: 429 when they do not fit."""
    cap, rate = settings.max_active_jobs_per_tenant, settings.submissions_per_minute_per_tenant
    if n > cap or n > rate:
        raise _invalid(
            "seeds", f"the study's {n} jobs exceed the tenant's limits ({cap} active jobs, {rate} submissions a minute)"
        )
    now = utcnow()
    use = store.usage(session, tenant, now - RATE_WINDOW, cap - n + 1, rate - n + 1)
    if use.at_active_cap:
        raise Problem(
            429,
            f"tenant {tenant}: {n} more jobs would pass the limit of {cap} queued or running jobs",
            headers={"Retry-After": "5"},
        )
    if use.window_filled_at is not None:
        wait = max(1, math.ceil((use.window_filled_at + RATE_WINDOW - now).total_seconds()))
        raise Problem(
            429,
            f"tenant {tenant}: {n} more jobs would pass the limit of {rate} submissions a minute",
            headers={"Retry-After": str(wait)},
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
    request: Request,
    response: Response,
    session=Depends(db),
    who: Principal = Depends(principal),
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
):
    expanded = _settings(body)
    for _, params in expanded:
        check_datasets(session, who, body.kind, params, "base.dataset")
    settings = [{"label": label, "params": params.model_dump(mode="json")} for label, params in expanded]
    body_hash = store.request_fingerprint(body.model_dump(mode="json")) if idempotency_key is not None else None
    n = len(settings) * len(body.seeds)
    try:
        if idempotency_key is None or store.find_study_replay(session, who.tenant, idempotency_key, body_hash) is None:
            _admit(session, request.app.state.settings, who.tenant, n)
        study, jobs, created = store.create_study(
            session,
            tenant=who.tenant,
            kind=body.kind,
            request=body.model_dump(mode="json"),
            settings=settings,
            seeds=body.seeds,
            baseline=body.baseline,
            device=body.device,
            timeout_s=body.timeout_s,
            republish_after_s=request.app.state.settings.requeue_queued_after_s,
            idempotency_key=idempotency_key,
            body_hash=body_hash,
        )
    except store.IdempotencyConflict as exc:
        raise Problem(409, str(exc)) from None
    for job_id, queue in jobs:
        if not request.app.state.publisher.publish(job_id, queue):
            store.mark_unpublished(session, job_id)
    if not created:
        response.status_code = 200
    response.headers["Location"] = f"/v1/studies/{study.id}"
    return _out(session, study)


@router.get("/{study_id}", response_model=StudyOut)
def get_study(study_id: str, session=Depends(db), who: Principal = Depends(principal)):
    return _out(session, _study(session, study_id, who))


@router.get("/{study_id}/comparison.csv", response_class=Response, responses={200: {"content": {"text/csv": {}}}})
def comparison_csv(study_id: str, session=Depends(db), who: Principal = Depends(principal)):
    out = _out(session, _study(session, study_id, who))
    return Response(
        studies.to_csv(out.comparison.model_dump()),
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
    session=Depends(db),
    who: Principal = Depends(principal),
):
    """One metric of every child job, each series downsampled (min and max per step bucket), in one answer."""
    study = _study(session, study_id, who)
    rows = store.study_downsampled_metrics(session, study.id, name=name, points=points)
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
    session=Depends(db),
    who: Principal = Depends(principal),
):
    """One metric per setting as the mean over its seeds with the min–max band and sd: each child's series is cut
    into at most ``points`` buckets of equal step span shared by every child, and averaged per bucket first. A study
    page draws 20 bands of ``points`` points, not 200 raw curves."""
    study = _study(session, study_id, who)
    key = (study.id, name, points)
    cached = _finished_bands.get(key)
    if cached is not None:
        return Response(cached, media_type="application/json")
    finished = store.study_is_finished(session, study.id)  # read first: a child finishing meanwhile is not cached
    span = store.study_metric_span(session, study.id, name=name)
    width = 1 if span is None else studies.bucket_width(*span, points)
    rows = [] if span is None else store.study_bands(session, study.id, name=name, first=span[0], width=width)
    out = studies.bands(rows, len(study.settings))
    for band in out:
        band["label"] = study.settings[band["setting"]]["label"]
    body = bytes(JSONResponse({"name": name, "width": width, "settings": out}).body)
    if finished:
        _finished_bands[key] = body
        while len(_finished_bands) > FINISHED_BANDS_KEPT:
            _finished_bands.pop(next(iter(_finished_bands)), None)
    return Response(body, media_type="application/json")


@router.post("/{study_id}/cancel", response_model=StudyOut)
def cancel_study(study_id: str, session=Depends(db), who: Principal = Depends(principal)):
    """Cancel the study and its queued and running children; finished children keep their results."""
    study = _study(session, study_id, who)
    store.cancel_study(session, study.id)
    session.expire_all()
    cancelled = store.get_study(session, study.id)
    assert cancelled is not None  # found just above; cancelling keeps the row
    return _out(session, cancelled)
