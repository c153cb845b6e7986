"""The done test of issue 32: a small VAE (encoder + decoder), a GAN critic and generator and a tanh MLP are exported
here (torch.export.export + torch.export.save), uploaded through the API, and vae_density, gradnorm_gan,
gradient_penalty_bound and init_averaging run on them on a real worker; answers checked against closed forms (a
linear Gaussian decoder's exact log p(x), the chain bound's identities, GN's unit gradient bound). Programs that
cannot play a kind's part are refused at submit naming the field and the node or reason."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
import torch
from torch import nn

from tests.integration.test_own_model import make_key, refused, run_job
from tests.unit.test_exported_archive import export
from tests.unit.test_exported_kinds import Residual, leaky_critic, linear_gaussian_vae

CPU_MIB = 2
"""A 'cpu' worker's memory here: ample for the small networks below, too little for a 4096-wide layer."""


@pytest.fixture(scope="module")
def service_env(service_env):
    return {**service_env, "GRADLAB_AUTH": "required", "GRADLAB_CPU_WORKER_MEMORY_GIB": str(CPU_MIB / 1024)}


@pytest.fixture(scope="module")
def alice(stack, api):
    api.headers["Authorization"] = f"Bearer {make_key(stack, 'alice')}"
    return api


@pytest.fixture(scope="module")
def worker(stack, alice):
    return stack.start_worker(queues="cpu,auto")


def upload_program(client, path) -> dict:
    resp = client.post("/v1/models", files={"program": (path.name, path.read_bytes())})
    assert resp.status_code == 201, resp.text
    return {"source": "exported", "id": resp.json()["id"]}


def upload_rows(client, **arrays) -> str:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    resp = client.post("/v1/datasets", files={"file": ("rows.npz", buf.getvalue())})
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def test_gradient_penalty_bound_on_an_exported_tanh_mlp(alice, worker, tmp_path):
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, 3))
    model = upload_program(alice, export(mlp, (torch.randn(6, 5),), tmp_path / "mlp.pt2"))
    chain = alice.get(f"/v1/models/{model['id']}").json()["exported"]["chain"]
    assert chain["is_chain"] and [layer["activations"] for layer in chain["layers"]] == [["tanh"], ["tanh"], []]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, 5)).astype(np.float32)
    dataset = upload_rows(alice, x=x, y=(x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1))
    params = {"dataset": dataset, "model": model, "steps": 30, "every": 15, "samples": 16, "batch_size": 32}
    result = run_job(alice, "gradient_penalty_bound", params)
    assert result["layer_dims"] == [5, 12, 12, 3] and result["measured_steps"] == [0, 15, 30]
    assert result["violations"] == 0  # the inequality holds on every sample at every measurement
    assert result["max_identity_residual"] < 1e-9  # per-layer ‖∇_W f‖² + ‖∇_b f‖² = ‖δ‖²(1 + ‖h‖²)
    assert all(0 < r <= 1 + 1e-9 for r in result["ratio"]["max"])

    table = run_job(alice, "init_averaging", {"dataset": dataset, "model": model, "batch": 64, "trials": 1})
    assert [row["name"] for row in table["layers"]] == ["0.weight", "4.weight"]  # 12×5 and 3×12; 12×12 is square
    assert table["layers"][0]["current_variance"] == pytest.approx(float(mlp[0].weight.double().var()), rel=1e-6)

    wide = upload_rows(alice, x=np.zeros((20, 7), np.float32), y=np.arange(20) % 3)
    refused(
        alice.post("/v1/jobs", json={"kind": "gradient_penalty_bound", "params": {**params, "dataset": wide}}),
        "params.model",
        "the program takes 5 values per row; the dataset's rows have 7",
    )
    wide_mlp = nn.Sequential(nn.Linear(5, 4096), nn.Tanh(), nn.Linear(4096, 3))
    big = upload_program(alice, export(wide_mlp, (torch.randn(6, 5),), tmp_path / "wide.pt2"))
    # 16 bytes for each of its 36,867 parameters, and 3 copies of its values for a batch: the weights once (4 bytes
    # each) and 32 rows × 4 × (5 + 4096 + 4096 + 3) bytes: 4,181,076 bytes
    refused(
        alice.post("/v1/jobs", json={"kind": "gradient_penalty_bound", "params": {**params, "model": big}}),
        "params.model",
        f"about 4.0 MiB needed (weights, gradients, Adam state and the graphs' values for one batch) exceeds the "
        f"{CPU_MIB:.1f} MiB of a 'auto' worker",
    )
    broken = upload_program(alice, export(Residual(), (torch.randn(6, 5),), tmp_path / "residual.pt2"))
    refused(
        alice.post("/v1/jobs", json={"kind": "gradient_penalty_bound", "params": {**params, "model": broken}}),
        "params.model",
        "node 'add' breaks it",
    )


def test_vae_density_on_an_exported_encoder_and_decoder(alice, worker, tmp_path):
    (enc, dec), x, exact = linear_gaussian_vae(tmp_path)
    encoder, decoder = upload_program(alice, enc), upload_program(alice, dec)
    dataset = upload_rows(alice, x=x)
    params = {"dataset": dataset, "likelihood": "gaussian", "encoder": encoder, "decoder": decoder, "steps": 0,
              "eval_k": [1, 10, 100], "eval_samples": 300}  # fmt: skip
    result = run_job(alice, "vae_density", params)
    n_train, n_heldout = result["n_train"], result["n_heldout"]

    def pooled(r):
        return [(n_train * t["nats"] + n_heldout * h["nats"]) / 300 for t, h in
                zip(r["train"]["bounds"], r["heldout"]["bounds"])]  # fmt: skip

    # the encoder is the exact posterior: every importance weight is p(x), so L_K = log p(x) for every K
    assert pooled(result) == pytest.approx([float(exact.mean())] * 3, abs=2e-4)

    (enc, dec), x, exact = linear_gaussian_vae(tmp_path, mean_scale=0.4)
    poor = {**params, "encoder": upload_program(alice, enc), "decoder": upload_program(alice, dec),
            "eval_k": [1, 10, 100, 1000]}  # fmt: skip
    climbing = pooled(run_job(alice, "vae_density", poor))
    assert all(a < b for a, b in zip(climbing, climbing[1:])), climbing  # L_K nondecreasing in K
    assert climbing[-1] <= float(exact.mean()) + 0.01  # and below log p(x)

    trained = run_job(alice, "vae_density", {**poor, "steps": 40, "lr": 0.01, "eval_k": [1, 10]})
    assert trained["final_heldout_neg_elbo"] is not None and trained["latent_dim"] == 2

    one_output = upload_program(alice, export(nn.Linear(6, 2), (torch.randn(4, 6),), tmp_path / "linear.pt2"))
    refused(
        alice.post("/v1/jobs", json={"kind": "vae_density", "params": {**params, "encoder": one_output}}),
        "params.encoder",
        "returns 1 tensors; encoder maps x -> (mean, log-variance)",
    )


def test_gradnorm_gan_on_an_exported_critic_and_generator(alice, worker, stack, tmp_path):
    torch.manual_seed(5)
    critic = upload_program(alice, export(leaky_critic(), (torch.randn(4, 2),), tmp_path / "critic.pt2"))
    gen_net = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 2))
    generator = upload_program(alice, export(gen_net, (torch.randn(4, 3),), tmp_path / "generator.pt2"))
    params = {"dataset": "ring8", "n_data": 512, "constraint": "gn", "steps": 15, "batch": 64, "n_critic": 2,
              "eval_samples": 256, "critic": critic, "generator": generator}  # fmt: skip
    result = run_job(alice, "gradnorm_gan", params)
    assert result["exported"] == ["critic", "generator"] and result["steps_run"] == 15
    for key in ("real", "fake", "interp"):  # GN on a piecewise-linear critic: ‖∇D̂‖ ≤ 1
        assert 0 < result["lipschitz"][f"grad_max_{key}"] <= 1 + 1e-5
    refused(
        alice.post("/v1/jobs", json={"kind": "gradnorm_gan", "params": {**params, "critic": generator}}),
        "params.critic",
        "returns [2] values per row",
    )
    held = alice.post("/v1/jobs", json={"kind": "gradnorm_gan", "params": {**params, "steps": 20000}})
    assert held.status_code == 201, held.text
    deleting = alice.delete(f"/v1/models/{generator['id']}")  # a queued job's generator is held, not deleted
    assert deleting.status_code == 409 and "is used by job" in deleting.json()["detail"], deleting.text
    assert alice.post(f"/v1/jobs/{held.json()['id']}/cancel").status_code in (200, 202)
    with httpx.Client(base_url=stack.api_url, headers={"Authorization": f"Bearer {make_key(stack, 'bob')}"}) as bob:
        refused(
            bob.post("/v1/jobs", json={"kind": "gradnorm_gan", "params": params}),
            "params.critic",
            f"model {critic['id']} not found",
        )
