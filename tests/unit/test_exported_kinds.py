"""The kinds that take exported programs, run on archives exported in the test (torch.export.export + save) through
an in-memory RunContext: gradient_penalty_bound on a chain in its dense form, vae_density on an exported encoder and
decoder, gradnorm_gan on an exported critic and generator."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from core.networks.exported.archive import read_archive
from core.networks.exported.chain import find_chain
from core.networks.exported.dense import dense_chain
from core.networks.exported.graph import build_module
from core.networks.stored import ModelFiles
from core.penalty import gradient_bound_terms
from core.techniques import get_kind
from core.techniques.local import LocalContext
from tests.unit.test_exported_archive import export

DT = torch.float64


class ConvChain(nn.Module):
    """conv → GELU → flatten → linear (no bias): a chain whose first layer is a convolution."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(1, 3, 3, padding=1), nn.Linear(3 * 16, 4, bias=False)

    def forward(self, x):
        return self.head(torch.flatten(nn.functional.gelu(self.conv(x)), 1))


class MatmulChain(nn.Module):
    """x @ W + b written by hand, then SiLU: mm and add count as one affine layer."""

    def __init__(self):
        super().__init__()
        self.w, self.b = nn.Parameter(torch.randn(5, 6)), nn.Parameter(torch.randn(6))
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        return self.out(nn.functional.silu(x @ self.w + self.b))


def module_and_chain(path: Path):
    with read_archive(path) as archive:
        return build_module(archive), find_chain(archive.program)


CHAINS = {
    "tanh_mlp": (lambda: nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)), (6, 5)),
    "leaky_mlp": (lambda: nn.Sequential(nn.Linear(5, 8), nn.LeakyReLU(0.3), nn.Linear(8, 8), nn.ELU()), (6, 5)),
    "conv": (ConvChain, (6, 1, 4, 4)),
    "matmul": (MatmulChain, (6, 5)),
}


@pytest.mark.parametrize("decompose", [False, True], ids=["aten", "core_aten"])
@pytest.mark.parametrize("name", CHAINS)
def test_the_dense_form_computes_the_program_and_keeps_the_bound_identities(name, decompose, tmp_path):
    torch.manual_seed(0)
    make, shape = CHAINS[name]
    original = make()
    path = export(original, (torch.randn(*shape),), tmp_path / "m.pt2", decompose=decompose)
    module, chain = module_and_chain(path)
    if name == "matmul" and decompose:  # SiLU decomposed is x · sigmoid(x): x feeds two nodes, not one activation
        assert chain.breaks_at == "mul_4" and "feeds 2 nodes" in str(chain.reason)
        return
    assert chain.is_chain, chain.reason
    dense = dense_chain(module, chain, torch.zeros(2, *shape[1:]))
    x = torch.randn(9, *shape[1:])
    assert torch.allclose(dense(x.double().flatten(1)), original(x).double(), atol=1e-5)
    r = gradient_bound_terms(dense, x.double().flatten(1), reduce="sum")
    assert max(float(layer["residual"].max()) for layer in r["layers"]) < 1e-9  # per-layer identity, by autograd
    assert bool((r["lhs"] <= r["rhs"] * (1 + 1e-9)).all())


def test_a_linear_chain_s_dense_parameters_are_its_own(tmp_path):
    """For linear layers the dense form is the same parametrization: ‖∇_θ f‖² equals the original's."""
    torch.manual_seed(1)
    original = nn.Sequential(nn.Linear(5, 8), nn.GELU(), nn.Linear(8, 1)).double()
    path = export(original.float(), (torch.randn(6, 5),), tmp_path / "m.pt2")
    original = original.double()
    module, chain = module_and_chain(path)
    dense = dense_chain(module, chain, torch.zeros(2, 5))
    x = torch.randn(7, 5, dtype=DT)
    r = gradient_bound_terms(dense, x, reduce="sum")
    for i in range(len(x)):
        grads = torch.autograd.grad(original(x[i : i + 1]).sum(), list(original.parameters()))
        assert float(r["rhs"][i]) == pytest.approx(float(sum(g.square().sum() for g in grads)), rel=1e-5)


def test_a_single_affine_layer_with_scalar_output_meets_the_bound_with_equality(tmp_path):
    torch.manual_seed(2)
    path = export(nn.Sequential(nn.Linear(6, 1), nn.Tanh()), (torch.randn(4, 6),), tmp_path / "m.pt2")
    module, chain = module_and_chain(path)
    r = gradient_bound_terms(dense_chain(module, chain, torch.zeros(2, 6)), torch.randn(10, 6, dtype=DT))
    assert torch.allclose(r["lhs"], r["rhs"], rtol=1e-9)


def context_with(models: dict[str, Path], **arrays) -> tuple[LocalContext, dict[str, str]]:
    ids = {name: str(uuid.uuid4()) for name in models}
    files = {ids[name]: ModelFiles(ids[name], "exported", archive=path) for name, path in models.items()}
    data_id = str(uuid.uuid4())
    ctx = LocalContext(models=files, datasets={data_id: arrays})
    return ctx, {**ids, "dataset": data_id}


def spec(kind: str, params: dict):
    return get_kind(kind).params.model_validate(params)


def test_gradient_penalty_bound_trains_and_measures_an_exported_conv_chain(tmp_path):
    torch.manual_seed(3)
    path = export(ConvChain(), (torch.randn(6, 1, 4, 4),), tmp_path / "conv.pt2")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 16)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 5] > 0)
    ctx, ids = context_with({"model": path}, x=x, y=y)
    params = spec(
        "gradient_penalty_bound",
        {"dataset": ids["dataset"], "model": {"source": "exported", "id": ids["model"]}, "steps": 20, "every": 10,
         "samples": 8, "batch_size": 32},
    )  # fmt: skip
    result = get_kind("gradient_penalty_bound").run(params, ctx)
    assert result["layer_dims"] == [16, 48, 4]
    assert result["violations"] == 0
    assert result["max_identity_residual"] < 1e-9
    assert len(result["layers"]) == 2 and result["measured_steps"] == [0, 10, 20]
    losses = ctx.series("loss")
    assert losses[-1] < losses[0]


def test_gradient_penalty_bound_refuses_widths_with_an_exported_model():
    with pytest.raises(ValueError, match="widths: an exported model brings its own"):
        spec("gradient_penalty_bound", {"model": {"source": "exported", "id": str(uuid.uuid4())}, "widths": [8]})
