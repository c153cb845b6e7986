"""The kinds that take exported programs, run on archives exported in the test (torch.export.export + save) through
an in-memory RunContext: gradient_penalty_bound on a chain in its dense form, vae_density on an exported encoder and
decoder, gradnorm_gan on an exported critic and generator."""

from __future__ import annotations

import math
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from core.networks.exported.archive import read_archive
from core.networks.exported.chain import find_chain
from core.networks.exported.dense import dense_chain
from core.networks.exported.describe import describe
from core.networks.exported.graph import build_module
from core.networks.exported.roles import ROLES, refusal, sizes_refusal, step_bytes
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


class PosteriorEncoder(nn.Module):
    """x → (mean, log-variance) of a diagonal Gaussian, affine in x."""

    def __init__(self, weight: torch.Tensor, shift: torch.Tensor, log_var: torch.Tensor):
        super().__init__()
        self.mean = nn.Linear(weight.shape[1], weight.shape[0])
        self.log_var = nn.Parameter(log_var.clone())
        with torch.no_grad():
            self.mean.weight.copy_(weight)
            self.mean.bias.copy_(shift)

    def forward(self, x):
        mean = self.mean(x)
        return mean, self.log_var.expand_as(mean)


class GaussianDecoder(nn.Module):
    """z → (A z + c, log σ): a linear Gaussian decoder, whose log p(x) is known in closed form."""

    def __init__(self, A: torch.Tensor, c: torch.Tensor, log_sigma: float):
        super().__init__()
        self.lin = nn.Linear(A.shape[1], A.shape[0])
        self.log_scale = nn.Parameter(torch.full((A.shape[0],), log_sigma))
        with torch.no_grad():
            self.lin.weight.copy_(A)
            self.lin.bias.copy_(c)

    def forward(self, z):
        mean = self.lin(z)
        return mean, self.log_scale.expand_as(mean)


def linear_gaussian_vae(tmp_path: Path, mean_scale: float = 1.0, seed: int = 4):
    """A linear Gaussian decoder with orthogonal columns (so its posterior is diagonal) and the encoder that gives
    that posterior exactly (its mean scaled by ``mean_scale``): archives, the data and their exact log p(x)."""
    gen = torch.Generator().manual_seed(seed)
    d, k, sigma = 6, 2, 0.5
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=gen))
    A, c = q * torch.tensor([2.0, 0.7]), torch.randn(d, generator=gen) * 0.3
    precision = torch.eye(k) + A.T @ A / sigma**2  # diagonal: A's columns are orthogonal
    cov = torch.linalg.inv(precision)
    encoder = PosteriorEncoder(mean_scale * cov @ A.T / sigma**2, -mean_scale * cov @ A.T @ c / sigma**2,
                               torch.log(torch.diagonal(cov)))  # fmt: skip
    decoder = GaussianDecoder(A, c, math.log(sigma))
    x = (torch.randn(300, k, generator=gen) @ A.T + c + sigma * torch.randn(300, d, generator=gen)).double()
    marginal = torch.distributions.MultivariateNormal(c.double(), (A @ A.T + sigma**2 * torch.eye(d)).double())
    paths = (export(encoder, (torch.randn(4, d),), tmp_path / "enc.pt2"),
             export(decoder, (torch.randn(4, k),), tmp_path / "dec.pt2"))  # fmt: skip
    return paths, x.float().numpy(), marginal.log_prob(x)


def vae_params(ids: dict, **extra) -> dict:
    return {"dataset": ids["dataset"], "likelihood": "gaussian", "encoder": {"source": "exported", "id": ids["enc"]},
            "decoder": {"source": "exported", "id": ids["dec"]}, "eval_k": [1, 10, 100], "eval_samples": 300,
            **extra}  # fmt: skip


def test_vae_density_of_an_exact_posterior_is_log_p_for_every_k(tmp_path):
    (enc, dec), x, exact = linear_gaussian_vae(tmp_path)
    ctx, ids = context_with({"enc": enc, "dec": dec}, x=x)
    result = get_kind("vae_density").run(spec("vae_density", vae_params(ids, steps=0)), ctx)
    n_train, n_heldout = result["n_train"], result["n_heldout"]
    assert n_train + n_heldout == 300 and result["latent_dim"] == 2 and result["exported"]
    exact_mean = float(exact.mean())
    for split in ("train", "heldout"):
        assert result[split]["elbo_nats"] is not None
    pooled = [(n_train * t["nats"] + n_heldout * h["nats"]) / 300 for t, h in
              zip(result["train"]["bounds"], result["heldout"]["bounds"])]  # fmt: skip
    # q(z|x) = p(z|x): every weight p(x, z)/q(z|x) is p(x), so L_K = log p(x) for each row and K
    assert pooled == pytest.approx([exact_mean] * 3, abs=2e-4)
    assert result["train"]["ess_fraction_at_max_k"] == pytest.approx(1.0, abs=1e-3)


def test_vae_density_of_a_poor_encoder_climbs_in_k_towards_log_p(tmp_path):
    (enc, dec), x, exact = linear_gaussian_vae(tmp_path, mean_scale=0.4)
    ctx, ids = context_with({"enc": enc, "dec": dec}, x=x)
    result = get_kind("vae_density").run(spec("vae_density", vae_params(ids, steps=0, eval_k=[1, 10, 100, 1000])), ctx)
    pooled = [(result["n_train"] * t["nats"] + result["n_heldout"] * h["nats"]) / 300 for t, h in
              zip(result["train"]["bounds"], result["heldout"]["bounds"])]  # fmt: skip
    assert all(a < b for a, b in zip(pooled, pooled[1:])), pooled
    assert pooled[-1] <= float(exact.mean()) + 0.01
    assert float(exact.mean()) - pooled[0] > 0.5  # the gap the poor proposal opens at K = 1


def test_vae_density_trains_an_exported_pair(tmp_path):
    (enc, dec), x, _ = linear_gaussian_vae(tmp_path, mean_scale=0.4)
    ctx, ids = context_with({"enc": enc, "dec": dec}, x=x)
    result = get_kind("vae_density").run(spec("vae_density", vae_params(ids, steps=60, lr=0.01)), ctx)
    losses = ctx.series("train_loss")
    assert len(losses) == 60 and np.mean(losses[-10:]) < np.mean(losses[:10])
    assert result["final_heldout_neg_elbo"] is not None


def test_vae_density_refuses_half_a_pair_and_mlp_sizes_with_exported_networks():
    one = {"source": "exported", "id": str(uuid.uuid4())}
    with pytest.raises(ValueError, match="decoder: exported networks come in pairs"):
        spec("vae_density", {"encoder": one})
    with pytest.raises(ValueError, match="hidden: set by the exported networks"):
        spec("vae_density", {"encoder": one, "decoder": one, "hidden": [8]})
    with pytest.raises(ValueError, match="steps: 0 evaluates an exported"):
        spec("vae_density", {"steps": 0})


def leaky_critic(width: int = 16) -> nn.Sequential:
    return nn.Sequential(nn.Linear(2, width), nn.LeakyReLU(0.2), nn.Linear(width, width), nn.LeakyReLU(0.2),
                         nn.Linear(width, 1))  # fmt: skip


def gan_job(tmp_path: Path, constraint: str, **extra) -> tuple[dict, LocalContext]:
    torch.manual_seed(5)
    critic = export(leaky_critic(), (torch.randn(4, 2),), tmp_path / "critic.pt2")
    generator = export(nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 2)), (torch.randn(4, 3),),
                       tmp_path / "gen.pt2")  # fmt: skip
    ctx, ids = context_with({"critic": critic, "generator": generator})
    params = {"dataset": "ring8", "n_data": 512, "constraint": constraint, "steps": 12, "batch": 64, "n_critic": 2,
              "eval_samples": 256, "critic": {"source": "exported", "id": ids["critic"]},
              "generator": {"source": "exported", "id": ids["generator"]}, **extra}  # fmt: skip
    return get_kind("gradnorm_gan").run(spec("gradnorm_gan", params), ctx), ctx


def test_gradnorm_gan_trains_an_exported_critic_and_generator_with_gn(tmp_path):
    result, ctx = gan_job(tmp_path, "gn")
    assert result["exported"] == ["critic", "generator"] and result["steps_run"] == 12
    lip = result["lipschitz"]
    for key in ("real", "fake", "interp"):  # GN's bound on a piecewise-linear critic: ‖∇D̂‖ ≤ 1
        assert 0 < lip[f"grad_max_{key}"] <= 1 + 1e-5
    assert len(ctx.series("loss_d")) > 1


def test_gradnorm_gan_clips_an_exported_critic_s_weights(tmp_path):
    c = 1e-3
    result, _ = gan_job(tmp_path, "clip", clip_value=c)
    # every weight in [−c, c]: ‖∇D‖ ≤ Π ‖W‖₂ ≤ Π c·√(fan_in·fan_out) for the 2 → 16 → 16 → 1 critic
    bound = (c * math.sqrt(2 * 16)) * (c * 16) * (c * math.sqrt(16))
    assert 0 < result["lipschitz"]["grad_max_real"] <= bound


def test_gradnorm_gan_penalises_an_exported_critic_by_double_backward(tmp_path):
    result, _ = gan_job(tmp_path, "gp")
    assert result["diverged_at_step"] is None and result["lipschitz"]["grad_mean_interp"] > 0


def test_gradnorm_gan_refuses_spectral_norm_on_an_exported_critic():
    with pytest.raises(ValueError, match="constraint: spectral norm needs"):
        spec("gradnorm_gan", {"constraint": "spectral", "critic": {"source": "exported", "id": str(uuid.uuid4())}})


def test_the_footprint_counts_batch_sized_values_per_row_and_the_rest_once(tmp_path):
    path = export(
        nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3)), (torch.randn(6, 5),), tmp_path / "m.pt2"
    )
    with read_archive(path) as archive:
        described = describe(archive)
    # per row: the input (5), linear (16), tanh (16), linear_1 (3) in float32; once: the 16·5 + 16 + 3·16 + 3 weights
    assert described["footprint"] == {"bytes_per_row": 4 * (5 + 16 + 16 + 3), "fixed_bytes": 4 * (80 + 16 + 48 + 3)}
    role = ROLES["gradient_penalty_bound"][0]
    params = spec(
        "gradient_penalty_bound", {"model": {"source": "exported", "id": str(uuid.uuid4())}, "batch_size": 10}
    )
    # weights, gradients, two Adam moments (16 bytes a parameter) and three copies of one batch's values
    assert step_bytes(role, described, params) == 16 * 147 + 3 * (588 + 10 * 160)
    assert refusal(role, described) is None


def test_each_part_refuses_a_program_of_the_wrong_shape(tmp_path):
    def described(model, args):
        with read_archive(export(model, args, tmp_path / "m.pt2")) as archive:
            return describe(archive)

    encoder, critic, gpb = ROLES["vae_density"][0], ROLES["gradnorm_gan"][0], ROLES["gradient_penalty_bound"][0]
    two_scores = described(nn.Linear(2, 2), (torch.randn(4, 2),))
    assert refusal(encoder, two_scores) == "the program returns 1 tensors; encoder maps x -> (mean, log-variance)"
    assert refusal(critic, two_scores) == "the program returns [2] values per row; critic maps x -> score (one)"
    assert "node 'add' breaks it" in str(refusal(gpb, described(Residual(), (torch.randn(4, 5),))))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(5, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)) + x)


def test_widths_must_agree_between_parts_and_with_the_dataset(tmp_path):
    def described(model, args):
        with read_archive(export(model, args, tmp_path / "m.pt2")) as archive:
            return describe(archive)

    (enc, dec), _, _ = linear_gaussian_vae(tmp_path)
    with read_archive(enc) as a, read_archive(dec) as b:
        pair = {"encoder": describe(a), "decoder": describe(b)}
    assert sizes_refusal(pair, 6) is None
    assert sizes_refusal(pair, 5) == ("encoder", "the program takes 6 values per row; the dataset's rows have 5")
    wrong_latent = described(GaussianDecoder(torch.randn(6, 3), torch.zeros(6), 0.0), (torch.randn(4, 3),))
    assert sizes_refusal({**pair, "decoder": wrong_latent}, None) == (
        "decoder",
        "the program takes 3 values per row; the encoder gives 2",
    )
    critic = described(leaky_critic(), (torch.randn(4, 2),))
    generator = described(nn.Linear(3, 4), (torch.randn(4, 3),))
    assert sizes_refusal({"critic": critic, "generator": generator}, None) == (
        "critic",
        "the program takes 2 values per row; the generator gives 4",
    )


def _saved_bytes(module: nn.Module, x: torch.Tensor, double: bool) -> int:
    """Bytes of the distinct tensors autograd saves for one backward (``double``: a gradient penalty's)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[id(t)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        x = x.requires_grad_(True)
        out = module(x).sum()
        if double:
            (g,) = torch.autograd.grad(out, x, create_graph=True)
            out = g.square().sum()
    return sum(seen.values())


@pytest.mark.parametrize(
    "make, shape",
    [(CHAINS["tanh_mlp"][0], (5,)), (ConvChain, (1, 4, 4)), (leaky_critic, (2,))],
    ids=["mlp", "conv", "critic"],
)
def test_the_footprint_bounds_what_a_meta_device_trace_saves(make, shape, tmp_path):
    """A batch of 64 through the program built on ``meta`` (no bytes): autograd saves at most the graph's values for
    a backward, and under three times them for a double backward (the copies ``roles`` budgets)."""
    path = export(make(), (torch.randn(6, *shape),), tmp_path / "m.pt2")
    with read_archive(path) as archive:
        module, foot = build_module(archive, device="meta"), describe(archive)["footprint"]
    one_batch = foot["fixed_bytes"] + 64 * foot["bytes_per_row"]
    assert 0 < _saved_bytes(module, torch.empty(64, *shape, device="meta"), double=False) <= one_batch
    assert one_batch < _saved_bytes(module, torch.empty(64, *shape, device="meta"), double=True) <= 3 * one_batch


def test_init_averaging_tables_an_exported_program_s_weights_and_its_variance_ratios(tmp_path):
    torch.manual_seed(6)
    original = ConvChain()
    path = export(original, (torch.randn(6, 1, 4, 4),), tmp_path / "conv.pt2")
    x = np.random.default_rng(1).normal(size=(50, 16)).astype(np.float32)
    ctx, ids = context_with({"model": path}, x=x)
    params = {"dataset": ids["dataset"], "model": {"source": "exported", "id": ids["model"]}, "batch": 32,
              "means": ["arithmetic", "geometric"], "trials": 2}  # fmt: skip
    result = get_kind("init_averaging").run(spec("init_averaging", params), ctx)
    rows = {row["name"]: row for row in result["layers"]}
    assert set(rows) == {"conv.weight", "head.weight"}  # 3×1×3×3 (fans 9, 27) and 4×48; the biases are 1-D
    assert rows["conv.weight"]["fan_in"] == 9 and rows["conv.weight"]["fan_out"] == 27
    assert rows["head.weight"]["current_variance"] == pytest.approx(float(original.head.weight.double().var()))
    assert rows["head.weight"]["variance"]["arithmetic"] == pytest.approx(2 / (48 + 4))
    rows_in = torch.as_tensor(x[:32])
    rows_in = ((rows_in - rows_in.mean()) / (rows_in.std() + 1e-8)).reshape(32, 1, 4, 4)
    out = original(rows_in).detach().double()
    assert result["own_init"]["forward_ratio"] == pytest.approx(
        float(out.square().mean() / rows_in.double().square().mean()), rel=1e-5
    )
    assert set(result["means"]) == {"arithmetic", "geometric"}


def test_vae_density_with_a_bernoulli_decoder_stays_below_log_p_by_quadrature(tmp_path):
    """One latent dimension: log p(x) = log ∫ N(z; 0, 1) Π_d Bern(x_d; σ(a_d z + c_d)) dz by quadrature on a fine
    grid, against which L_K climbs and stays below."""
    gen = torch.Generator().manual_seed(7)
    d = 5
    decoder = nn.Linear(1, d)
    with torch.no_grad():
        decoder.weight.copy_(torch.randn(d, 1, generator=gen) * 2)
        decoder.bias.copy_(torch.randn(d, generator=gen) * 0.5)
    encoder = PosteriorEncoder(torch.randn(1, d, generator=gen) * 0.3, torch.zeros(1), torch.zeros(1))
    z = torch.randn(200, 1, generator=gen)
    x = torch.bernoulli(torch.sigmoid(decoder(z).detach()), generator=gen)
    grid = torch.linspace(-9, 9, 20001, dtype=DT)
    logits = grid[:, None] * decoder.weight.detach().double()[:, 0] + decoder.bias.detach().double()
    log_lik = -nn.functional.binary_cross_entropy_with_logits(
        logits[:, None, :].expand(-1, 200, -1), x.double()[None].expand(len(grid), -1, -1), reduction="none"
    ).sum(-1)
    log_prior = -0.5 * grid.square() - 0.5 * math.log(2 * math.pi)
    exact = torch.logsumexp(log_lik + log_prior[:, None], dim=0) + math.log(float(grid[1] - grid[0]))
    paths = {
        "enc": export(encoder, (torch.randn(4, d),), tmp_path / "enc.pt2"),
        "dec": export(decoder, (torch.randn(4, 1),), tmp_path / "dec.pt2"),
    }
    ctx, ids = context_with(paths, x=x.numpy())
    params = {**vae_params(ids, steps=0, eval_k=[1, 10, 100, 1000], eval_samples=200), "likelihood": "bernoulli"}
    result = get_kind("vae_density").run(spec("vae_density", params), ctx)
    assert result["likelihood"] == "bernoulli" and result["decoder_sigma"] is None
    pooled = [
        (result["n_train"] * t["nats"] + result["n_heldout"] * h["nats"]) / 200
        for t, h in zip(result["train"]["bounds"], result["heldout"]["bounds"])
    ]
    # nondecreasing in K up to the sampling noise of 200 rows, where it has converged (L_100 and L_1000 both at log p)
    assert pooled[0] < pooled[1] < pooled[2] and pooled[3] > pooled[2] - 0.02, pooled
    assert float(exact.mean()) - 0.02 < pooled[-1] <= float(exact.mean()) + 0.01, float(exact.mean())


def test_a_convolution_too_large_to_unroll_is_refused_before_it_is_unrolled(tmp_path):
    class Wide(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.head = nn.Conv2d(1, 64, 3, padding=1), nn.Linear(64 * 64 * 64, 2)

        def forward(self, x):
            return self.head(torch.flatten(torch.tanh(self.conv(x)), 1))

    path = export(Wide(), (torch.randn(2, 1, 64, 64),), tmp_path / "wide.pt2")
    x = np.zeros((4, 4096), np.float32)
    ctx, ids = context_with({"model": path}, x=x, y=np.arange(4) % 2)
    params = spec(
        "gradient_penalty_bound", {"dataset": ids["dataset"], "model": {"source": "exported", "id": ids["model"]}}
    )
    # unrolled, the convolution is a 262144 × 4096 matrix: terabytes in float64
    with pytest.raises(ValueError, match=r"model: needs about \d+\.\d GiB, more than 4 GiB"):
        get_kind("gradient_penalty_bound").run(params, ctx)
