"""Every family of ``tests.model_configs`` end to end on real processes (API, its inspector child, one worker):
embedding_dim checks each model's own sizes and init_averaging tables its non-square weights; a sequence
classifier is refused by a kind that trains a language model; a full inspector queue is answered 429; a dataset's
token ids are checked against the model's vocabulary before a job or a study is queued."""

from __future__ import annotations

import io
import json
import math
import threading

import numpy as np
import pytest

from tests.model_configs import FAMILIES, LLAMA_3_70B, TINY_BERT_CLASSIFIER, hf_model
from tests.stack import wait_job


@pytest.fixture(scope="module")
def service_env(service_env):
    return {**service_env, "GRADLAB_INSPECT_QUEUE": "0"}  # one inspection at a time per API process, none waiting


@pytest.fixture(scope="module")
def worker(stack):
    return stack.start_worker(queues="cpu")


def submit(api, kind: str, params: dict) -> str:
    resp = api.post("/v1/jobs", json={"kind": kind, "params": params, "device": "cpu"})
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


@pytest.fixture(scope="module")
def results(api, worker) -> dict[tuple[str, str], dict]:
    """Both kinds on every family, submitted together and awaited together."""
    ids = {}
    for name, (cfg, _) in FAMILIES.items():
        model = {"source": "hf_config", "config": cfg}
        ids[name, "embedding_dim"] = submit(
            api, "embedding_dim", {"vocab_sizes": [512], "entropy_dims": [16], "model": model}
        )
        ids[name, "init_averaging"] = submit(
            api,
            "init_averaging",
            {"model": model, "means": ["arithmetic", "geometric"], "batch": 2, "seq_len": 8, "trials": 1},
        )
    done = {key: wait_job(api, job, timeout=600) for key, job in ids.items()}
    failed = {key: job["error"] for key, job in done.items() if job["status"] != "succeeded"}
    assert not failed, failed
    return {key: job["result"] for key, job in done.items()}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_embedding_dim_checks_each_familys_own_sizes(results, name):
    cfg, _ = FAMILIES[name]
    token, head = results[name, "embedding_dim"]["model_checks"]
    assert (token["what"], token["n"], token["N"]) == ("token_embedding", 64, 512)
    assert token["bound"] == pytest.approx(8.33 * math.log(512)) and token["ok"] is True
    if name == "mamba":
        assert head["applies"] is False and head["ok"] is None and "no attention heads" in head["why"]
        return
    heads = cfg.get("num_attention_heads") or cfg.get("n_head") or cfg.get("n_heads")
    head_dim = cfg.get("head_dim") or 64 // heads
    assert (head["n"], head["N"]) == (head_dim, cfg.get("max_position_embeddings") or cfg.get("n_positions") or 512)
    assert head["ok"] == (head_dim > 8.33 * math.log(head["N"]))


def test_an_explicit_head_dim_is_the_one_checked(results):
    head = results["qwen3", "embedding_dim"]["model_checks"][1]
    assert head["n"] == 32 != 64 // 4 and head["ok"] is False  # 32 < 8.33·ln 64 = 34.6


@pytest.mark.parametrize("name", list(FAMILIES))
def test_init_averaging_tables_each_familys_nonsquare_weights(results, name):
    cfg, task = FAMILIES[name]
    out = results[name, "init_averaging"]
    model = hf_model(cfg, task)
    expected = {n: list(p.shape) for n, p in model.named_parameters() if p.dim() >= 2 and _fans_differ(p)}
    assert {row["name"]: row["shape"] for row in out["layers"]} == expected
    assert out["model"]["task"] == task and out["model"]["n_params"] == sum(p.numel() for p in model.parameters())
    for row in out["layers"]:
        m, n = row["fan_in"], row["fan_out"]
        assert row["variance"] == pytest.approx({"arithmetic": 2 / (m + n), "geometric": 1 / math.sqrt(m * n)})
    for ratios in [out["own_init"], *out["means"].values()]:
        assert ratios["forward_ratio"] > 0 and ratios["backward_ratio"] > 0


def _fans_differ(p) -> bool:
    """torch's fans of a weight (fan_in = size(1)·receptive field, fan_out = size(0)·receptive field)."""
    receptive = p[0][0].numel() if p.dim() > 2 else 1
    return p.shape[1] * receptive != p.shape[0] * receptive


def test_a_classifier_is_refused_by_a_kind_that_trains_a_language_model(api):
    resp = api.post(
        "/v1/jobs",
        json={
            "kind": "momentum_accumulation",
            "params": {"dataset": "digits", "model": {"source": "hf_config", "config": TINY_BERT_CLASSIFIER}},
            "device": "cpu",
        },
    )
    assert resp.status_code == 422, resp.text
    assert resp.json()["errors"][0]["field"] == "params.model" and "sequence classifier" in resp.json()["detail"]


def test_a_full_inspector_queue_is_answered_429_with_retry_after(api):
    slow = {**LLAMA_3_70B, "num_hidden_layers": 512, "vocab_size": 1009}  # seconds of meta build, then refused
    answers: list = []

    def upload(config: dict) -> None:
        files = {"config": ("config.json", json.dumps(config).encode(), "application/json")}
        answers.append(api.post("/v1/models", files=files))

    threads = [threading.Thread(target=upload, args=({**slow, "rope_theta": 1000.0 + i},)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted(r.status_code for r in answers)
    assert 422 in statuses and 429 in statuses, [r.text for r in answers]
    busy = next(r for r in answers if r.status_code == 429)
    assert busy.headers["content-type"].startswith("application/problem+json")
    assert int(busy.headers["Retry-After"]) >= 1 and "could not be inspected now" in busy.json()["detail"]


def token_dataset(api, top: int) -> str:
    """A ready arrays dataset of token ids whose largest is ``top`` (the fact its validation records)."""
    rows = np.random.default_rng(0).integers(0, top, size=(24, 16))
    rows[0, 0], rows[3, 5] = 0, top
    buf = io.BytesIO()
    np.savez(buf, x=rows)
    resp = api.post("/v1/datasets", files={"file": ("tokens.npz", buf.getvalue())})
    assert resp.status_code == 201 and resp.json()["status"] == "ready", resp.text
    assert api.get(f"/v1/datasets/{resp.json()['id']}").json()["preview"]["token_ids"] == {"min": 0, "max": top}
    return resp.json()["id"]


def momentum(model: dict, dataset: str) -> dict:
    return {
        "kind": "momentum_accumulation",
        "device": "cpu",
        "params": {"dataset": dataset, "model": model, "optimizer": "adam", "accum_steps": 2, "micro_batch": 4,
                   "steps": 2, "seeds": 1, "eval_every": 2, "lr": 1e-3},
    }  # fmt: skip


def test_token_ids_are_checked_against_the_vocabulary_before_queueing(api):
    gpt2 = {"source": "hf_config", "config": {**FAMILIES["gpt2"][0], "vocab_size": 50257}}
    last = token_dataset(api, 50256)  # GPT-2's end-of-text: a causal LM reserves no id
    resp = api.post("/v1/jobs", json=momentum(gpt2, last))
    assert resp.status_code == 201, resp.text
    api.post(f"/v1/jobs/{resp.json()['id']}/cancel")
    beyond = token_dataset(api, 50257)
    resp = api.post("/v1/jobs", json=momentum(gpt2, beyond))
    assert resp.status_code == 422, resp.text
    error = resp.json()["errors"][0]
    assert error["field"] == "params.dataset" and "0..50256" in error["message"] and "50257" in error["message"]
    bert = {"source": "hf_config", "config": FAMILIES["bert"][0]}  # vocabulary 512: 511 is the mask token
    resp = api.post("/v1/jobs", json=momentum(bert, token_dataset(api, 511)))
    assert resp.status_code == 422 and "mask token" in resp.json()["detail"], resp.text
    study = {"kind": "momentum_accumulation", "device": "cpu", "base": momentum(gpt2, beyond)["params"],
             "grid": {"lr": [1e-3, 1e-2]}}  # fmt: skip
    resp = api.post("/v1/studies", json=study)
    assert resp.status_code == 422 and resp.json()["errors"][0]["field"] == "base.dataset", resp.text


def test_a_bert_classifier_checkpoint_is_stored_as_a_classifier(api, tmp_path):
    model = hf_model(TINY_BERT_CLASSIFIER, "sequence_classification")
    model.save_pretrained(tmp_path, safe_serialization=True)
    files = {
        "config": ("config.json", json.dumps(TINY_BERT_CLASSIFIER).encode(), "application/json"),
        "weights": ("model.safetensors", (tmp_path / "model.safetensors").read_bytes(), "application/octet-stream"),
    }
    resp = api.post("/v1/models", files=files)
    assert resp.status_code == 201, resp.text
    assert resp.json()["task"] == "sequence_classification"
    assert resp.json()["n_params"] == sum(p.numel() for p in model.parameters())
