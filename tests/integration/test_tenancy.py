"""A tenant's uploads serve its own jobs only, on real processes: a study is admitted like a job alone (another
tenant's model, weights or dataset are "not found" on both paths, and nothing is queued), and a worker refuses a job
row that names another tenant's upload (a row forged past admission fails as ``foreign_resource`` without running).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import uuid

import numpy as np
import pytest

from core.db.engine import make_engine, make_sessionmaker
from core.jobs import repository as job_store
from core.settings import Settings
from tests.model_configs import TINY_GPT2, TINY_LLAMA, hf_model
from tests.stack import BIN, ROOT, wait_job
from workers.publish import Publisher


@pytest.fixture(scope="module")
def service_env(service_env):
    return {**service_env, "GRADLAB_AUTH": "required"}


def make_key(stack, tenant: str) -> dict[str, str]:
    out = subprocess.run(
        [str(BIN / "gradlab"), "keys", "create", "--tenant", tenant],
        env={**os.environ, **stack.env},
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {"Authorization": f"Bearer {dict(line.split(': ', 1) for line in out.strip().splitlines())['key']}"}


@pytest.fixture(scope="module")
def uploads(stack, api, tmp_path_factory):
    """Alice's model without weights, her model with weights, and her labelled dataset; the two tenants' headers."""
    alice, bob = make_key(stack, "alice"), make_key(stack, "bob")
    tmp = tmp_path_factory.mktemp("weights")
    hf_model(TINY_LLAMA).save_pretrained(tmp, safe_serialization=True)
    config = ("config.json", json.dumps(TINY_GPT2).encode(), "application/json")
    bare = api.post("/v1/models", files={"config": config}, headers=alice)
    weighted = api.post(
        "/v1/models",
        files={
            "config": ("config.json", json.dumps(TINY_LLAMA).encode(), "application/json"),
            "weights": ("model.safetensors", (tmp / "model.safetensors").read_bytes(), "application/octet-stream"),
        },
        headers=alice,
    )
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez(buf, x=rng.normal(size=(64, 8)).astype(np.float32), y=rng.integers(0, 2, 64))
    data = api.post("/v1/datasets", files={"file": ("d.npz", buf.getvalue())}, headers=alice)
    assert bare.status_code == weighted.status_code == data.status_code == 201, (bare.text, weighted.text, data.text)
    assert data.json()["status"] == "ready"
    return {
        "alice": alice,
        "bob": bob,
        "model": bare.json()["id"],
        "weights": weighted.json()["id"],
        "dataset": data.json()["id"],
    }


def _refused(resp, field: str, words: str) -> None:
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert body["errors"][0]["field"] == field and words in body["detail"], body


def test_a_study_cannot_use_another_tenants_model_or_weights_any_more_than_a_job(api, uploads):
    """Bob names Alice's uploaded model, then Alice's weights under his own config: 422 "not found" on
    /v1/jobs and on /v1/studies alike (a study used to skip the model checks and run on her model)."""
    bob = uploads["bob"]
    uploaded = {"source": "uploaded", "id": uploads["model"]}
    with_weights = {"source": "hf_config", "config": TINY_LLAMA, "weights": uploads["weights"]}
    for model, words in ((uploaded, f"model {uploads['model']} not found"), (with_weights, "not found")):
        params = {"vocab_sizes": [512], "model": model}
        _refused(
            api.post("/v1/jobs", json={"kind": "embedding_dim", "params": params}, headers=bob), "params.model", words
        )
        study = {"kind": "embedding_dim", "base": params, "seeds": [0, 1]}
        _refused(api.post("/v1/studies", json=study, headers=bob), "base.model", words)
        grid = {"kind": "embedding_dim", "base": {"vocab_sizes": [512]}, "grid": {"model": [model]}}
        _refused(api.post("/v1/studies", json=grid, headers=bob), "base.model", words)
    assert api.get("/v1/jobs", headers=bob).json()["items"] == []  # nothing of his was queued
    ok = {"kind": "embedding_dim", "base": {"vocab_sizes": [512], "model": uploaded}, "seeds": [0]}
    assert api.post("/v1/studies", json=ok, headers=uploads["alice"]).status_code == 201  # hers to use


def test_a_study_cannot_use_another_tenants_dataset(api, uploads):
    study = {"kind": "gradient_penalty_bound", "base": {"dataset": uploads["dataset"], "steps": 4, "every": 2}}
    _refused(api.post("/v1/studies", json=study, headers=uploads["bob"]), "base.dataset", "not found")


def test_a_worker_refuses_a_job_row_naming_another_tenants_upload(stack, api, uploads):
    """Rows forged in the database for tenant bob, past admission, naming Alice's model, her weights and her
    dataset: the worker fails each as ``foreign_resource`` before the technique runs (no metric, no result)."""
    stack.start_worker()
    forged = [
        ("embedding_dim", {"vocab_sizes": [512], "model": {"source": "uploaded", "id": uploads["model"]}}),
        (
            "embedding_dim",
            {
                "vocab_sizes": [512],
                "model": {"source": "hf_config", "config": TINY_LLAMA, "weights": uploads["weights"]},
            },
        ),
        ("gradient_penalty_bound", {"dataset": uploads["dataset"], "steps": 4, "every": 2}),
    ]
    engine = make_engine(stack.env["GRADLAB_DATABASE_URL"])
    with make_sessionmaker(engine)() as s:
        jobs = [
            job_store.create_job(
                s, tenant="bob", kind=kind, params=params, seed=0, device="cpu", timeout_s=120, republish_after_s=60
            )[0]
            for kind, params in forged
        ]
    engine.dispose()
    env = stack.env
    publisher = Publisher(
        Settings(broker_url=env["GRADLAB_BROKER_URL"], broker_key_prefix=env["GRADLAB_BROKER_KEY_PREFIX"])
    )
    for job in jobs:
        assert publisher.publish(job.id, job.queue)
    for job in jobs:
        done = _wait_as(api, uploads["bob"], job.id)
        assert done["status"] == "failed" and done["error"]["type"] == "foreign_resource", done
        assert "is not a" in done["error"]["message"] and "of tenant bob" in done["error"]["message"]
        assert done["result"] is None
        metrics = api.get(f"/v1/jobs/{job.id}/metrics", headers=uploads["bob"]).json()["items"]
        assert metrics == []  # it never ran


def _wait_as(api, headers: dict, job_id: uuid.UUID, timeout: float = 120) -> dict:
    api.headers.update(headers)
    try:
        return wait_job(api, str(job_id), timeout=timeout)
    finally:
        del api.headers["Authorization"]
