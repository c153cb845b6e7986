"""A job (or study) naming an uploaded dataset that is not what its kind needs is refused before queueing with a 422
on ``params.dataset`` (``base.dataset`` for a study) saying why; a fitting one is queued. Real API process on
PostgreSQL; the dataset rows are written with the store, as the upload pipeline writes them."""

from __future__ import annotations

import uuid

import pytest

from core.datasets import repository as dataset_store
from core.db.engine import make_engine, make_sessionmaker
from core.db.tables import Dataset, utcnow

TOKEN_MODEL = {
    "source": "builtin",
    "arch": "causal_lm",
    "hidden": 32,
    "heads": 2,
    "depth": 1,
    "vocab_size": 300,
    "context": 16,
}


@pytest.fixture(scope="module")
def datasets(pg_database) -> dict[str, str]:
    """Ids of uploaded datasets by name: labelled arrays, unlabelled arrays, non-square arrays, text, pairs."""
    engine = make_engine(pg_database[1])
    shapes = {
        "labelled": ("arrays", 64, True),
        "unlabelled": ("arrays", 64, False),
        "not_square": ("arrays", 10, True),
        "text": ("text", None, False),
        "pairs": ("pairs", None, False),
    }
    ids = {}
    with make_sessionmaker(engine)() as s:
        for name, (kind, columns, labels) in shapes.items():
            ds = Dataset(
                id=uuid.uuid4(),
                tenant="local",
                filename=f"{name}.bin",
                format="jsonl" if columns is None else "npy",
                kind=kind,
                rows=100,
                columns=columns,
                has_labels=labels,
                status="ready",
                upload_size=1,
                size=1,
                sha256="0" * 64,
                location=f"datasets/{name}",
                created_at=utcnow(),
            )
            dataset_store.add_dataset(s, ds)
            ids[name] = str(ds.id)
    engine.dispose()
    return ids


def _momentum(dataset: str, **params) -> dict:
    return {
        "kind": "momentum_accumulation",
        "params": {"dataset": dataset, "steps": 8, "seeds": 1, "eval_every": 4, "arms": ["chi_exact"], **params},
    }


def _refused(resp, field: str, reason: str) -> None:
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert body["detail"].startswith(f"{field}: ") and reason in body["detail"], body
    assert any(e["field"] == field and reason in e["message"] for e in body["errors"]), body


@pytest.mark.parametrize(
    ("name", "params", "reason"),
    [
        ("text", {}, "is a text dataset; this job needs arrays"),
        ("pairs", {"model": TOKEN_MODEL}, "is a pairs dataset; this job needs arrays or text"),
        ("unlabelled", {}, "has no labels (y); this job classifies its rows"),
        ("not_square", {"model": "cnn"}, "has 10 columns; a cnn needs square images"),
    ],
)
def test_a_dataset_of_the_wrong_kind_is_refused_naming_params_dataset(api, datasets, name, params, reason):
    _refused(api.post("/v1/jobs", json=_momentum(datasets[name], **params)), "params.dataset", reason)


@pytest.mark.parametrize(
    ("name", "params"),
    [("labelled", {}), ("labelled", {"model": "cnn"}), ("text", {"model": TOKEN_MODEL})],
)
def test_a_fitting_dataset_is_queued(api, datasets, name, params):
    resp = api.post("/v1/jobs", json=_momentum(datasets[name], **params))
    assert resp.status_code == 201, resp.text


def test_other_kinds_declare_their_needs(api, datasets):
    penalty = {"kind": "gradient_penalty_bound", "params": {"dataset": datasets["unlabelled"], "steps": 10, "every": 5}}
    _refused(api.post("/v1/jobs", json=penalty), "params.dataset", "has no labels")
    init = {"kind": "init_averaging", "params": {"widths": [8, 8], "dataset": datasets["text"]}}
    _refused(api.post("/v1/jobs", json=init), "params.dataset", "is a text dataset")
    _refused(api.post("/v1/jobs", json=_momentum(str(uuid.uuid4()))), "params.dataset", "not found")


def test_a_study_is_refused_whole(api, datasets):
    study = {
        "kind": "momentum_accumulation",
        "base": _momentum(datasets["text"])["params"],
        "grid": {"lr": [0.1, 0.2]},
        "seeds": [0],
    }
    _refused(api.post("/v1/studies", json=study), "base.dataset", "is a text dataset")
