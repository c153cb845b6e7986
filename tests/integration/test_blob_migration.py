"""Migration 0007 moves the bytes of rows made at revision 0005 into the blob store and back, on both backends;
migration 0011 then copies a dataset's canonical .npz into its x.npy and y.npy files (and its downgrade back)."""

from __future__ import annotations

import hashlib
import io
import uuid
from datetime import UTC, datetime

import numpy as np
import pytest
import sqlalchemy as sa
from alembic import command

from core.blobs import DirectoryStore
from core.blobs.store import read_blob
from core.db.engine import make_engine
from core.db.migrate import alembic_config
from tests.integration.test_migrations import assert_models_match
from tests.stack import create_database, drop_database

NOW = datetime(2026, 11, 1, tzinfo=UTC)
X = np.arange(6, dtype="<f4").reshape(3, 2)
Y = np.array([0, 1, 1], dtype="<i8")


def _npz() -> bytes:
    """A dataset as the parser of those revisions stored it: x float32 and y int64 in an uncompressed .npz."""
    buf = io.BytesIO()
    np.savez(buf, x=X, y=Y)
    return buf.getvalue()


def _sql(statement: str) -> sa.TextClause:
    return sa.text(statement).bindparams(
        *(sa.bindparam(n, type_=sa.Uuid) for n in ("id", "job") if f":{n}" in statement),
        sa.bindparam("now", type_=sa.DateTime(timezone=True)),
    )


def _old_rows(url: str) -> dict[str, bytes]:
    """Rows with bytes in them, written with plain SQL as revision 0005 stored them."""
    job, ds, model = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    payload = {
        "ds": _npz(),
        "png": b"\x89PNG artifact \x00\xff",
        "weights": b"safetensors " + b"\x01" * 5000,
    }
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(
            _sql(
                "INSERT INTO jobs (id, tenant, kind, status, params, seed, device_requested, queue, timeout_s,"
                " progress, message, attempt, created_at)"
                " VALUES (:id, 't', 'k', 'succeeded', '{}', 1, 'cpu', 'cpu', 60, 1.0, '', 2, :now)"
            ),
            {"id": job, "now": NOW},
        )
        conn.execute(
            _sql(
                "INSERT INTO artifacts (job_id, name, media_type, size, sha256, data, created_at)"
                " VALUES (:job, 'loss curve.png', 'image/png', :size, :sha, :data, :now)"
            ),
            {
                "job": job,
                "size": len(payload["png"]),
                "sha": hashlib.sha256(payload["png"]).hexdigest(),
                "data": payload["png"],
                "now": NOW,
            },
        )
        conn.execute(
            _sql(
                "INSERT INTO datasets (id, tenant, filename, format, rows, columns, has_labels, size, sha256, data,"
                " created_at) VALUES (:id, 't', 'a.npz', 'npz', 3, 2, true, :size, :sha, :data, :now)"
            ),
            {
                "id": ds,
                "size": len(payload["ds"]),
                "sha": hashlib.sha256(payload["ds"]).hexdigest(),
                "data": payload["ds"],
                "now": NOW,
            },
        )
        for mid, weights in ((model, payload["weights"]), (uuid.uuid4(), None)):
            conn.execute(
                _sql(
                    "INSERT INTO models (id, tenant, filename, format, model_type, task, config, n_params, summary,"
                    " weights, weights_size, weights_sha256, created_at) VALUES (:id, 't', 'config.json', 'hf_config',"
                    " 'bert', 'mlm', '{}', 10, '{}', :w, :ws, :wh, :now)"
                ),
                {
                    "id": mid,
                    "w": weights,
                    "ws": None if weights is None else len(weights),
                    "wh": None if weights is None else hashlib.sha256(weights).hexdigest(),
                    "now": NOW,
                },
            )
    engine.dispose()
    return {
        f"datasets/{ds}.npz": payload["ds"],
        f"artifacts/{job}/2/loss%20curve.png": payload["png"],
        f"models/{model}/model.safetensors": payload["weights"],
    }


def _check_round_trip(url: str, blob_dir) -> None:
    cfg = alembic_config(url)
    cfg.set_main_option("blob_url", blob_dir.as_uri())
    command.upgrade(cfg, "0005")
    expected = _old_rows(url)
    command.upgrade(cfg, "head")  # through the blob-store migration (0007) to the schema the models describe
    assert_models_match(url)
    store = DirectoryStore(blob_dir)
    for key, data in expected.items():
        assert read_blob(store, key) == data
    engine = make_engine(url)
    with engine.connect() as conn:
        locations = {
            *conn.execute(sa.text("SELECT location FROM datasets")).scalars(),
            *conn.execute(sa.text("SELECT location FROM artifacts")).scalars(),
            *conn.execute(sa.text("SELECT weights_location FROM models")).scalars(),
        }
        ds = conn.execute(sa.text("SELECT id, status, kind, files FROM datasets")).one()
    npz_key = next(k for k in expected if k.startswith("datasets/"))
    prefix = npz_key.removesuffix(".npz") + "/"
    assert locations == {*(k for k in expected if k != npz_key), prefix, None}
    assert (ds.status, ds.kind) == ("ready", "arrays")
    with store.open(prefix + "x.npy") as fx, store.open(prefix + "y.npy") as fy:
        x, y = np.load(fx), np.load(fy)
    assert x.dtype == X.dtype and (x == X).all() and y.dtype == Y.dtype and (y == Y).all()
    command.downgrade(cfg, "0005")
    with engine.connect() as conn:
        back = {
            *conn.execute(sa.text("SELECT data FROM datasets")).scalars(),
            *conn.execute(sa.text("SELECT data FROM artifacts")).scalars(),
            *conn.execute(sa.text("SELECT weights FROM models")).scalars(),
        }
    engine.dispose()
    assert {bytes(b) if b is not None else None for b in back} == {*expected.values(), None}


def test_sqlite_rows_move_to_the_store_and_back(tmp_path):
    _check_round_trip(f"sqlite:///{tmp_path / 'm.sqlite3'}", tmp_path / "blobs")


@pytest.mark.integration
def test_postgres_rows_move_to_the_store_and_back(tmp_path):
    name, url = create_database()
    try:
        _check_round_trip(url, tmp_path / "blobs")
    finally:
        drop_database(name)
