"""Studies' rules: a request expanded into settings, each validated by its kind's params and admitted like a job
alone (``core.jobs.admission``); the children, as many submissions at once, against the tenant's caps; then the
study and its children stored in one transaction and published. Reads give the study's state and the comparison of
its children's summaries (``core.studies.stats``).

The children spread over every worker like any job (they are jobs), count against the tenant's caps, and are
cancelled with their study.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session

from core.db.tables import Study, utcnow
from core.errors import Invalid, Malformed, NotFound
from core.jobs import admission
from core.jobs import repository as jobs
from core.jobs.service import Publisher, publish_new
from core.keys.repository import Principal
from core.metrics import repository as metrics
from core.settings import Settings
from core.studies import repository as studies
from core.studies import stats
from core.studies.schemas import MAX_STUDY_JOBS, StudyRequest
from core.techniques import specs


def _check_size(body: StudyRequest) -> None:
    if body.kind not in specs():
        raise Invalid.of("kind", f"unknown kind {body.kind!r}; known kinds: {sorted(specs())}")
    if body.grid is not None and body.settings is not None:
        raise Invalid.of("grid", "give either grid or settings, not both")
    if body.grid is not None:
        for key, values in body.grid.items():
            if not values:
                raise Invalid.of(f"grid.{key}", "needs at least one value")
        count = math.prod(len(v) for v in body.grid.values()) if body.grid else 1
        if count * len(body.seeds) > MAX_STUDY_JOBS:
            raise Invalid.of("grid", f"{count} settings × {len(body.seeds)} seeds exceeds {MAX_STUDY_JOBS} jobs")
    elif body.settings is not None and len(body.settings) * len(body.seeds) > MAX_STUDY_JOBS:
        raise Invalid.of(
            "settings", f"{len(body.settings)} settings × {len(body.seeds)} seeds exceeds {MAX_STUDY_JOBS} jobs"
        )
    if len(set(body.seeds)) != len(body.seeds):
        raise Invalid.of("seeds", "each seed may appear once")


def expand(body: StudyRequest) -> list[tuple[str, BaseModel]]:
    """The expanded settings as (label, validated params), each validated by the kind's params model (``Invalid``
    naming the setting and the field)."""
    _check_size(body)
    model = specs()[body.kind].params
    out: list[tuple[str, BaseModel]] = []
    for i, (label, params) in enumerate(stats.expand(body.base, body.grid, body.settings)):
        try:
            validated = model.model_validate(params)
        except ValidationError as exc:
            where = "grid" if body.grid is not None else f"settings[{i}]" if body.settings is not None else "base"
            raise Invalid.many(
                [
                    {
                        "field": ".".join([where, *map(str, e["loc"])]),
                        "message": f"{e['msg']} (setting {label})",
                        "type": e["type"],
                    }
                    for e in exc.errors()
                ]
            ) from None
        out.append((label, validated))
    if body.baseline >= len(out):
        raise Invalid.of("baseline", f"setting index {body.baseline} is out of range (there are {len(out)})")
    return out


def _check_caps(session: Session, settings: Settings, tenant: str, n: int) -> None:
    """The study's n children against the tenant's caps, as n submissions at once."""
    admission.check_batch(settings, n, "seeds")
    now = utcnow()
    caps = admission.caps(settings, now, n)
    use = jobs.usage(session, tenant, caps.since, caps.active_cap, caps.window_cap)
    if use.at_active_cap or use.window_filled_at is not None:
        raise admission.busy(settings, tenant, use, now, study_jobs=n)


def submit_study(
    session: Session,
    settings: Settings,
    publisher: Publisher,
    who: Principal,
    body: StudyRequest,
    idempotency_key: str | None,
) -> tuple[Study, bool]:
    """Admit, store and publish a study's children; (the study, True), or (the earlier one, False) for a replay of
    the same Idempotency-Key and body."""
    expanded = expand(body)
    for _, params in expanded:  # a setting's seeds share its params: one admission per setting
        admission.check_job(session, settings, who.tenant, body.kind, params, body.device, "base")
    settings_out = [{"label": label, "params": params.model_dump(mode="json")} for label, params in expanded]
    request = body.model_dump(mode="json")
    body_hash = jobs.request_fingerprint(request) if idempotency_key is not None else None
    if idempotency_key is None or studies.find_study_replay(session, who.tenant, idempotency_key, body_hash) is None:
        _check_caps(session, settings, who.tenant, len(settings_out) * len(body.seeds))
    study, queued, created = studies.create_study(
        session,
        tenant=who.tenant,
        kind=body.kind,
        request=request,
        settings=settings_out,
        seeds=body.seeds,
        baseline=body.baseline,
        device=body.device,
        timeout_s=body.timeout_s,
        republish_after_s=settings.requeue_queued_after_s,
        idempotency_key=idempotency_key,
        body_hash=body_hash,
    )
    publish_new(session, publisher, queued)
    return study, created


def study_of(session: Session, who: Principal, study_id: uuid.UUID) -> Study:
    study = studies.get_study(session, study_id)
    if study is None or not who.owns(study.tenant):
        raise NotFound(f"study {study_id} not found")
    return study


def describe(session: Session, study: Study) -> dict[str, Any]:
    """The study's state: its settings, its children and their counts per status, and the comparison of their
    summaries (mean ± 95 % CI per setting, paired differences from the baseline)."""
    rows = studies.study_children(session, study.id)
    children = [stats.Child(r.setting, r.seed, r.status, r.progress, r.summary) for r in rows]
    counts: dict[str, int] = {}
    for c in children:
        counts[c.status] = counts.get(c.status, 0) + 1
    labels = [s["label"] for s in study.settings]
    return {
        "status": stats.status(children, study.cancelled_at is not None),
        "progress": stats.progress(children),
        "counts": counts,
        "jobs": [{"id": r.job_id, "setting": r.setting, "seed": r.seed, "status": r.status} for r in rows],
        "comparison": stats.compare(labels, study.baseline, children),
    }


def child_metrics(session: Session, study: Study, name: str, points: int) -> list:
    """One metric of every child job, each series downsampled (min and max per step bucket)."""
    return metrics.downsampled_series(session, studies.child_job_ids(session, study.id), name=name, points=points)


def bands(session: Session, study: Study, name: str, points: int) -> tuple[dict, bool]:
    """One metric per setting as the mean over its seeds with the min–max band and sd, over at most ``points``
    buckets of equal step span shared by every child (each child's series averaged per bucket first); and whether
    the study had finished before it was read (its bands will not change)."""
    finished = studies.study_is_finished(session, study.id)  # read first: a child finishing meanwhile is not final
    span = metrics.study_metric_span(session, study.id, name=name)
    width = 1 if span is None else stats.bucket_width(*span, points)
    rows = [] if span is None else metrics.study_bands(session, study.id, name=name, first=span[0], width=width)
    out = stats.bands(rows, len(study.settings))
    for band in out:
        band["label"] = study.settings[band["setting"]]["label"]
    return {"name": name, "width": width, "settings": out}, finished


def cancel(session: Session, who: Principal, study_id: uuid.UUID) -> Study:
    """Cancel the study and its queued and running children; finished children keep their results."""
    study = study_of(session, who, study_id)
    studies.cancel_study(session, study.id)
    session.expire_all()
    cancelled = studies.get_study(session, study.id)
    assert cancelled is not None  # found just above; cancelling keeps the row
    return cancelled


# --- the list -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyBrief:
    """A study as the list shows it: its row, and its state read from its children's counts (no comparison)."""

    study: Study
    status: stats.StudyStatus
    progress: float
    counts: dict[str, int]


def list_studies(
    session: Session, who: Principal, *, status: str | None, kind: str | None, limit: int, cursor: str | None
) -> tuple[list[StudyBrief], str | None]:
    """The studies the caller may see (an admin: every tenant's), newest first, a page at a time."""
    try:
        rows, nxt = studies.list_studies(
            session, tenant=who.visible_tenant, status=status, kind=kind, limit=limit, cursor=cursor
        )
    except (ValueError, UnicodeDecodeError):
        raise Malformed("cursor: not a cursor returned by this API") from None
    children = studies.children_by_status(session, [s.id for s in rows])
    briefs = []
    for study in rows:
        by_status = children[study.id]
        counts = {s: n for s, (n, _) in by_status.items()}
        briefs.append(
            StudyBrief(
                study,
                stats.status_of_counts(counts, study.cancelled_at is not None),
                stats.progress_of_counts(by_status),
                counts,
            )
        )
    return briefs, nxt


def studies_of_jobs(session: Session, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, uuid.UUID]:
    """The study each of these jobs belongs to, for those that are a study's children (the job pages link to it)."""
    return studies.studies_of_jobs(session, job_ids)
