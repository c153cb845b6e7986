"""Migration 0015: init_averaging records stored when ``quadratic`` meant the least-squares value are renamed to
``least_squares`` (params, result, summary, metrics, rollups, studies), other kinds are untouched, and the
downgrade renames them back."""

from __future__ import annotations

import json
import uuid

import pytest
from alembic import command
from sqlalchemy import text

from core.db.engine import make_engine
from core.db.migrate import alembic_config, upgrade
from tests.stack import create_database, drop_database

OLD_RESULT = {
    "widths": [768, 3072, 768],
    "means": {"arithmetic": {"forward_ratio": 0.64}, "quadratic": {"forward_ratio": 0.346}},
    "layers": [{"name": "quadratic.weight", "variance": {"arithmetic": 5.2e-4, "quadratic": 3.8e-4}}],
    "summary": {
        "headline": "Forward variance ratio through 768→3072→768 (linear): arithmetic 0.64, quadratic 0.346; "
        "geometric stays closest to 1.",
        "claim": "the arithmetic (Xavier) gives 4mn/(m+n)² and the quadratic less",
        "table": {"columns": ["mean", "forward ratio"], "rows": [["arithmetic", 0.64], ["quadratic", 0.346]]},
        "figures": {"forward_ratio/arithmetic": 0.64, "forward_ratio/quadratic": 0.346},
    },
}
NEW_RESULT = {
    "widths": [768, 3072, 768],
    "means": {"arithmetic": {"forward_ratio": 0.64}, "least_squares": {"forward_ratio": 0.346}},
    "layers": [{"name": "quadratic.weight", "variance": {"arithmetic": 5.2e-4, "least_squares": 3.8e-4}}],
    "summary": {
        "headline": "Forward variance ratio through 768→3072→768 (linear): arithmetic 0.64, least_squares 0.346; "
        "geometric stays closest to 1.",
        "claim": "the arithmetic (Xavier) gives 4mn/(m+n)² and the least_squares less",
        "table": {"columns": ["mean", "forward ratio"], "rows": [["arithmetic", 0.64], ["least_squares", 0.346]]},
        "figures": {"forward_ratio/arithmetic": 0.64, "forward_ratio/least_squares": 0.346},
    },
}
OLD_STUDY = {"kind": "init_averaging", "base": {"widths": [8, 2]}, "grid": {"means": [["quadratic"], ["geometric"]]}}


def _insert(conn, backend: str, kind: str, params: dict, result: dict | None) -> uuid.UUID:
    job_id = uuid.uuid4()
    conn.execute(
        text(
            "INSERT INTO jobs (id, tenant, kind, status, params, result, seed, device_requested, queue, timeout_s, "
            "progress, message, attempt, created_at) VALUES (:id, 't', :kind, 'succeeded', :params, :result, 0, "
            "'cpu', 'cpu', 60, 1, '', 1, CURRENT_TIMESTAMP)"
        ),
        {
            "id": job_id.hex if backend == "sqlite" else job_id,
            "kind": kind,
            "params": json.dumps(params),
            "result": json.dumps(result),
        },
    )
    return job_id


def _read(engine, backend: str, job_id: uuid.UUID) -> tuple[dict, dict, list[str], list[str]]:
    key = job_id.hex if backend == "sqlite" else job_id
    with engine.connect() as conn:
        params, result = conn.execute(text("SELECT params, result FROM jobs WHERE id = :id"), {"id": key}).one()
        metrics = conn.execute(text("SELECT name FROM metrics WHERE job_id = :id ORDER BY name"), {"id": key})
        rollups = conn.execute(text("SELECT name FROM metric_rollups WHERE job_id = :id ORDER BY name"), {"id": key})
        metric_names, rollup_names = list(metrics.scalars()), list(rollups.scalars())
    load = lambda v: json.loads(v) if isinstance(v, str) else v  # noqa: E731 (sqlite returns text)
    return load(params), load(result), metric_names, rollup_names


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_0015_renames_the_old_quadratic_to_least_squares_and_back(backend, tmp_path):
    name = None
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'q.sqlite3'}"
    else:
        name, url = create_database()
    try:
        command.upgrade(alembic_config(url), "0013")
        engine = make_engine(url)
        with engine.begin() as conn:
            old = _insert(conn, backend, "init_averaging", {"means": ["arithmetic", "quadratic"]}, OLD_RESULT)
            other = _insert(conn, backend, "embedding_dim", {"means": ["quadratic"]}, {"quadratic": 1})
            key = old.hex if backend == "sqlite" else old
            for metric in ("forward_moment/quadratic", "forward_moment/arithmetic"):
                conn.execute(
                    text("INSERT INTO metrics (job_id, step, name, value) VALUES (:j, 1, :n, 0.5)"),
                    {"j": key, "n": metric},
                )
                conn.execute(
                    text(
                        "INSERT INTO metric_rollups (job_id, name, level, block, n, first_step, last_step, min_step,"
                        " min_value, max_step, max_value) VALUES (:j, :n, 0, 0, 1, 1, 1, 1, 0.5, 1, 0.5)"
                    ),
                    {"j": key, "n": metric},
                )
            study = uuid.uuid4()
            conn.execute(
                text(
                    "INSERT INTO studies (id, tenant, kind, request, settings, seeds, baseline, created_at) VALUES "
                    "(:id, 't', 'init_averaging', :request, :settings, '[0]', 0, CURRENT_TIMESTAMP)"
                ),
                {
                    "id": study.hex if backend == "sqlite" else study,
                    "request": json.dumps(OLD_STUDY),
                    "settings": json.dumps([{"means": ["quadratic"]}, {"means": ["geometric"]}]),
                },
            )
        upgrade(url)
        params, result, metrics, rollups = _read(engine, backend, old)
        assert params == {"means": ["arithmetic", "least_squares"]}
        assert result == NEW_RESULT  # the layer named "quadratic.weight" keeps its name: only mean names change
        assert metrics == rollups == ["forward_moment/arithmetic", "forward_moment/least_squares"]
        assert _read(engine, backend, other)[:2] == ({"means": ["quadratic"]}, {"quadratic": 1})
        with engine.connect() as conn:
            request, settings = conn.execute(text("SELECT request, settings FROM studies")).one()
        request, settings = (json.loads(v) if isinstance(v, str) else v for v in (request, settings))
        assert request["grid"] == {"means": [["least_squares"], ["geometric"]]}
        assert settings == [{"means": ["least_squares"]}, {"means": ["geometric"]}]

        command.downgrade(alembic_config(url), "0013")
        params, result, metrics, rollups = _read(engine, backend, old)
        assert params == {"means": ["arithmetic", "quadratic"]} and result == OLD_RESULT
        assert metrics == rollups == ["forward_moment/arithmetic", "forward_moment/quadratic"]
        engine.dispose()
    finally:
        if name is not None:
            drop_database(name)
