"""Alembic migrations are the only way a schema is made, and they agree with the models on both backends."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from core.db.engine import make_engine
from core.db.migrate import alembic_config, upgrade
from core.db.tables import Base


def assert_models_match(url: str) -> None:
    engine = make_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    engine.dispose()
    assert diff == []


def test_sqlite_upgrade_matches_models_and_downgrades(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.sqlite3'}"
    upgrade(url)
    assert_models_match(url)
    command.downgrade(alembic_config(url), "base")
    engine = make_engine(url)
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    engine.dispose()


def test_postgres_upgrade_matches_models(pg_database):
    assert_models_match(pg_database[1])


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_0010_backfills_the_rollup_as_ingest_computes_it(backend, tmp_path):
    """Metrics logged before the rollup existed get the rollup that logging them now would give (ties, nulls and
    negative steps included)."""
    import random
    import uuid

    from sqlalchemy import text

    from core.metrics import repository as metric_store
    from tests.stack import create_database, drop_database

    name = None
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'r.sqlite3'}"
    else:
        name, url = create_database()
    try:
        command.upgrade(alembic_config(url), "0009")
        rng = random.Random(3)
        job_id = uuid.uuid4()
        rows = [
            (rng.randint(-500, 90_000), rng.choice("ab"), rng.choice([None, float(rng.randint(0, 20))]))
            for _ in range(3000)
        ]
        engine = make_engine(url)
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO jobs (id, tenant, kind, status, params, seed, device_requested, queue, timeout_s, "
                    "progress, message, attempt, created_at) VALUES (:id, 't', 'k', 'running', '{}', 0, 'cpu', "
                    "'cpu', 60, 0, '', 1, CURRENT_TIMESTAMP)"
                ),
                {"id": job_id.hex if backend == "sqlite" else job_id},
            )
            conn.execute(
                text("INSERT INTO metrics (job_id, step, name, value) VALUES (:j, :s, :n, :v)"),
                [{"j": job_id.hex if backend == "sqlite" else job_id, "s": s, "n": n, "v": v} for s, n, v in rows],
            )
        upgrade(url)
        columns = (
            "name",
            "level",
            "block",
            "n",
            "first_step",
            "last_step",
            "min_step",
            "min_value",
            "max_step",
            "max_value",
        )
        with engine.connect() as conn:
            got = sorted(tuple(r) for r in conn.execute(text(f"SELECT {', '.join(columns)} FROM metric_rollups")))
        engine.dispose()
        expected = sorted(tuple(r[c] for c in columns) for r in metric_store.rollup_rows(job_id, rows))
        assert got == expected
    finally:
        if name:
            drop_database(name)
