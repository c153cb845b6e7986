"""Users' own models through the API on real processes: uploads of tiny BERT, GPT-2 and Llama configs (with and
without safetensors weights), tenant scoping, and every refusal naming its field and reason."""
from __future__ import annotations

import io
import json
import os
import subprocess

import pytest
import torch

from tests.model_configs import TINY, TINY_GPT2, hf_model
from tests.stack import BIN, ROOT


@pytest.fixture(scope="module")
def service_env(service_env):
    return {**service_env, "GRADLAB_AUTH": "required"}


def make_key(stack, tenant: str) -> str:
    out = subprocess.run([str(BIN / "gradlab"), "keys", "create", "--tenant", tenant], env={**os.environ, **stack.env},
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return dict(line.split(": ", 1) for line in out.strip().splitlines())["key"]


@pytest.fixture(scope="module")
def alice(stack, api):
    api.headers["Authorization"] = f"Bearer {make_key(stack, 'alice')}"
    return api


def config_file(config: dict) -> tuple[str, bytes, str]:
    return ("config.json", json.dumps(config).encode(), "application/json")


def safetensors_of(model, tmp_path) -> bytes:
    model.save_pretrained(tmp_path, safe_serialization=True)
    return (tmp_path / "model.safetensors").read_bytes()


def refused(resp, field: str, words: str) -> None:
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert body["errors"][0]["field"] == field, body
    assert words in body["detail"], body


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_config_upload_counts_the_parameters_the_family_has(alice, family):
    resp = alice.post("/v1/models", files={"config": config_file(TINY[family])})
    assert resp.status_code == 201, resp.text
    out = resp.json()
    model = hf_model(TINY[family])
    assert out["n_params"] == sum(p.numel() for p in model.parameters())
    assert out["task"] == ("masked_lm" if family == "bert" else "causal_lm")
    assert out["has_weights"] is False and out["use_as"] == {"source": "uploaded", "id": out["id"]}
    shown = alice.get(f"/v1/models/{out['id']}").json()
    assert shown["config"] == TINY[family]
    assert {(l["name"], tuple(l["shape"])) for l in shown["layers"]} == \
        {(n, tuple(p.shape)) for n, p in model.named_parameters()}


def test_weights_upload_is_stored_and_scoped_to_the_tenant(alice, stack, tmp_path):
    blob = safetensors_of(hf_model(TINY_GPT2), tmp_path)
    resp = alice.post("/v1/models", files={"config": config_file(TINY_GPT2),
                                           "weights": ("model.safetensors", blob, "application/octet-stream")})
    assert resp.status_code == 201, resp.text
    out = resp.json()
    assert out["has_weights"] and out["weights_size"] == len(blob)
    assert out["id"] in [m["id"] for m in alice.get("/v1/models").json()]
    bob = {"Authorization": f"Bearer {make_key(stack, 'bob')}"}
    assert alice.get(f"/v1/models/{out['id']}", headers=bob).status_code == 404
    assert out["id"] not in [m["id"] for m in alice.get("/v1/models", headers=bob).json()]


def test_remote_code_unknown_families_and_oversize_configs_are_refused(alice):
    remote = {**TINY_GPT2, "auto_map": {"AutoModelForCausalLM": "evil.Model"}}
    refused(alice.post("/v1/models", files={"config": config_file(remote)}), "config.auto_map", "remote code")
    refused(alice.post("/v1/models", files={"config": config_file({**TINY_GPT2, "model_type": "my_own_llm"})}),
            "config.model_type", "not a family this service builds")
    refused(alice.post("/v1/models", files={"config": config_file({**TINY_GPT2, "n_layer": 100_000})}),
            "config.n_layer", "outside")
    huge = {**TINY_GPT2, "n_embd": 65_536, "n_head": 64, "n_layer": 512}
    refused(alice.post("/v1/models", files={"config": config_file(huge)}), "config", "parameters exceed")
    padded = {**TINY_GPT2, "padding": "x" * 70_000}
    resp = alice.post("/v1/models", files={"config": config_file(padded)})
    assert resp.status_code == 413 and "config" in resp.json()["detail"]


def test_pickled_and_mismatched_weights_are_refused(alice, tmp_path):
    buf = io.BytesIO()
    torch.save(hf_model(TINY_GPT2).state_dict(), buf)
    config = config_file(TINY_GPT2)
    refused(alice.post("/v1/models", files={"config": config, "weights": ("pytorch_model.bin", buf.getvalue())}),
            "weights", "pickled")
    refused(alice.post("/v1/models", files={"config": config, "weights": ("model.safetensors", buf.getvalue())}),
            "weights", "pickle")
    other = safetensors_of(hf_model({**TINY_GPT2, "n_embd": 32}), tmp_path)
    refused(alice.post("/v1/models", files={"config": config, "weights": ("model.safetensors", other)}),
            "weights", "do not match the config")
