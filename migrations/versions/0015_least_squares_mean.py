"""init_averaging: the mean stored as ``quadratic`` becomes ``least_squares`` (issue 29)

Until this revision the ``quadratic`` mean computed σ² = (m+n)/(m²+n²), the least-squares compromise (1 over the
contraharmonic mean); from now on ``quadratic`` is the RMS mean, σ² = 1/√((m²+n²)/2), and the old value is named
``least_squares``. Every stored init_averaging record is renamed to what it computed: a job's ``params.means``, the
keys of its result (``means`` and each layer's ``variance``), its summary (table cells, figure names, headline and
claim), its metric series (``*/quadratic``) with their rollups, and a study's request and settings. A queued job
therefore still runs the least-squares mean it was submitted with. Artifacts (PNG legends) are left as drawn.

The downgrade renames ``least_squares`` back to ``quadratic`` in the jobs and studies that have no ``quadratic``
(RMS) mean of their own; a record that has both cannot be written in the earlier names and is left as it is.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07
"""

import re

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

KIND = "init_averaging"
OLD, NEW = "quadratic", "least_squares"

_jobs = sa.table(
    "jobs",
    sa.column("id", sa.Uuid),
    sa.column("kind", sa.String),
    sa.column("params", sa.JSON),
    sa.column("result", sa.JSON),
)
_studies = sa.table(
    "studies",
    sa.column("id", sa.Uuid),
    sa.column("kind", sa.String),
    sa.column("request", sa.JSON),
    sa.column("settings", sa.JSON),
)
_metrics = sa.table("metrics", sa.column("job_id", sa.Uuid), sa.column("name", sa.String))
_rollups = sa.table("metric_rollups", sa.column("job_id", sa.Uuid), sa.column("name", sa.String))


def _word(old: str, new: str):
    pattern = re.compile(rf"\b{old}\b")
    return lambda text: pattern.sub(new, text)


def _means(value, old: str, new: str):
    """Every ``means`` list under ``value`` (params, a study's base, grid or settings) with ``old`` → ``new``."""
    if isinstance(value, dict):
        return {k: (_names(v, old, new) if k == "means" else _means(v, old, new)) for k, v in value.items()}
    if isinstance(value, list):
        return [_means(v, old, new) for v in value]
    return value


def _names(value, old: str, new: str):
    if isinstance(value, list):
        return [_names(v, old, new) for v in value]
    return new if value == old else value


def _keys(value, old: str, new: str):
    """``value`` with every dict key equal to ``old`` renamed (result ``means`` and each layer's ``variance``)."""
    if isinstance(value, dict):
        return {(new if k == old else k): _keys(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_keys(v, old, new) for v in value]
    return value


def _text(value, swap):
    """A summary with ``swap`` applied to every string and key (cells, figure names, headline, claim)."""
    if isinstance(value, dict):
        return {swap(k): _text(v, swap) for k, v in value.items()}
    if isinstance(value, list):
        return [_text(v, swap) for v in value]
    return swap(value) if isinstance(value, str) else value


def _result(result, old: str, new: str):
    if not isinstance(result, dict):
        return result
    summary = result.get("summary")
    out = _keys({k: v for k, v in result.items() if k != "summary"}, old, new)
    if summary is not None:
        out["summary"] = _text(summary, _word(old, new))
    return out


def _has_mean(params, name: str) -> bool:
    return name in (params or {}).get("means", []) if isinstance(params, dict) else False


def _rename(old: str, new: str, skip_if_has: str | None) -> None:
    conn = op.get_bind()
    renamed = []
    rows = conn.execute(sa.select(_jobs.c.id, _jobs.c.params, _jobs.c.result).where(_jobs.c.kind == KIND))
    for job_id, params, result in rows.fetchall():
        if not _has_mean(params, old) or (skip_if_has and _has_mean(params, skip_if_has)):
            continue
        conn.execute(
            _jobs.update()
            .where(_jobs.c.id == job_id)
            .values(params=_means(params, old, new), result=_result(result, old, new))
        )
        renamed.append(job_id)
    for table in (_metrics, _rollups):
        for chunk in range(0, len(renamed), 500):
            ids = renamed[chunk : chunk + 500]
            names = conn.execute(
                sa.select(table.c.name).distinct().where(table.c.job_id.in_(ids), table.c.name.like(f"%/{old}"))
            ).scalars()
            for name in list(names):
                conn.execute(
                    table.update()
                    .where(table.c.job_id.in_(ids), table.c.name == name)
                    .values(name=name[: -len(old)] + new)
                )
    studies = conn.execute(
        sa.select(_studies.c.id, _studies.c.request, _studies.c.settings).where(_studies.c.kind == KIND)
    )
    for study_id, request, settings in studies.fetchall():
        if skip_if_has and skip_if_has in repr((request, settings)):
            continue
        conn.execute(
            _studies.update()
            .where(_studies.c.id == study_id)
            .values(request=_means(request, old, new), settings=_means(settings, old, new))
        )


def upgrade() -> None:
    _rename(OLD, NEW, skip_if_has=None)


def downgrade() -> None:
    _rename(NEW, OLD, skip_if_has=OLD)
