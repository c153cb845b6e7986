"""Job kind gradnorm_gan (docs/techniques.md#gradnorm_gan): the in-region gradient identities of GN / GraN / plain
normalization, the BatchNorm guard, the measurement tools checked on analytic cases, and short training runs."""

from __future__ import annotations

import json
import math
import uuid

import numpy as np
import pydantic
import pytest
import torch
from torch import nn

from core.gan import (
    GradNormalized,
    classifier_scores,
    frechet_distance,
    grid25_centres,
    lipschitz_stats,
    max_pair_slope,
    mixture,
    mode_coverage,
    normalize_discriminator,
    ring8_centres,
    sample_mixture,
)
from core.techniques import get_kind
from core.techniques.base import JobTimedOut
from core.techniques.gradnorm_gan.run import Trainer
from core.techniques.gradnorm_gan.spec import GradnormGanParams, check_budget
from core.techniques.local import LocalContext

KIND = get_kind("gradnorm_gan")


def relu_mlp(d_in: int, width: int = 32, depth: int = 3, seed: int = 0, dtype=torch.float64) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(d_in if i == 0 else width, width), nn.ReLU()]
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers).to(dtype)


def region_gradient(D, x):
    """w = ∇ₓD per sample and D(x), by plain first-order autograd (the reference for the identities)."""
    xg = x.detach().clone().requires_grad_(True)
    d = D(xg).reshape(len(x))
    (w,) = torch.autograd.grad(d.sum(), xg)
    return w.reshape(len(x), -1).norm(dim=1), d.detach()


def normalized_input_grad(D, x, variant, eps):
    """‖∇ₓD̂‖ per sample through the double-backprop graph that normalize_discriminator keeps."""
    xg = x.detach().clone().requires_grad_(True)
    d_hat, _ = normalize_discriminator(D, xg, variant, eps)
    (g,) = torch.autograd.grad(d_hat.sum(), xg)
    return d_hat.detach(), g.reshape(len(x), -1).norm(dim=1)


# ---------------------------------------------------------------------------------------------------------------
# The identities of docs/techniques.md#gradnorm_gan on ReLU nets


def test_gn_gradient_identity_float64():
    D = relu_mlp(5)
    x = torch.randn(256, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 3
    w, d = region_gradient(D, x)
    d_hat, g = normalized_input_grad(D, x, "gn", 1e-12)
    expected = w**2 / (w + d.abs()) ** 2
    assert torch.allclose(g, expected, rtol=1e-12, atol=1e-15)
    assert torch.allclose(d_hat, d / (w + d.abs()), rtol=1e-12, atol=0)
    assert (g <= 1).all() and (d_hat.abs() <= 1).all()
    # the bound is attained only where D = 0 and nearly so where |D| ≪ ‖w‖: not a vacuous check
    assert g.max() > 0.5 and g.min() < 0.5


def test_gn_gradient_identity_float32():
    D = relu_mlp(3, dtype=torch.float32)
    x = torch.randn(512, 3, generator=torch.Generator().manual_seed(2))
    w, d = region_gradient(D, x)
    _, g = normalized_input_grad(D, x, "gn", 1e-12)
    assert torch.allclose(g, w**2 / (w + d.abs()) ** 2, rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("variant", ["gran", "plain"])
def test_gran_and_plain_gradient_identities(variant):
    D = relu_mlp(4, seed=3)
    x = torch.randn(256, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    w, d = region_gradient(D, x)
    eps = float(w.median() ** 2)  # ε comparable to ‖w‖², so the factor is visibly below 1
    d_hat, g = normalized_input_grad(D, x, variant, eps)
    if variant == "gran":
        expected_g, expected_d = w**2 / (w**2 + eps), d * w / (w**2 + eps)
    else:
        expected_g, expected_d = w / (w + eps), d / (w + eps)
    assert torch.allclose(g, expected_g, rtol=1e-12, atol=1e-15)
    assert torch.allclose(d_hat, expected_d, rtol=1e-12, atol=1e-15)
    assert (g < 1).all() and g.max() > 0.5 and g.min() < 0.9


def test_per_sample_norm_is_over_the_flattened_image():
    torch.manual_seed(4)
    D = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(4, 4, 4, 2, 1),
        nn.LeakyReLU(0.2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 1),
    ).double()
    x = torch.rand(16, 1, 8, 8, dtype=torch.float64)
    _, grad_norm = normalize_discriminator(D, x, "gn")
    for i in range(3):  # each sample alone: its own gradient, flattened over channels and pixels
        xi = x[i : i + 1].clone().requires_grad_(True)
        (gi,) = torch.autograd.grad(D(xi).sum(), xi)
        assert math.isclose(float(grad_norm[i].detach()), float(gi.flatten().norm()), rel_tol=1e-12)
    w, d = region_gradient(D, x)
    _, g = normalized_input_grad(D, x, "gn", 1e-12)
    assert torch.allclose(g, w**2 / (w + d.abs()) ** 2, rtol=1e-12)


def test_normalized_critic_is_discontinuous_across_regions():
    """D(x) = c + a·x (x < 0), c + b·x (x > 0): D is continuous, D̂ = D/(‖∇D‖+ε) jumps by c·|1/a − 1/b| at 0."""
    a, b, c = 0.5, 2.0, 3.0

    def D(x):
        return c + a * x + (b - a) * torch.relu(x)

    delta = 1e-6
    x = torch.tensor([[-delta], [delta]], dtype=torch.float64)
    d_hat, g = (t.detach() for t in normalize_discriminator(D, x, "plain", eps=1e-12))
    assert torch.allclose(g, torch.tensor([a, b], dtype=torch.float64))
    jump = float(d_hat[0] - d_hat[1])
    assert math.isclose(jump, c * (1 / a - 1 / b), rel_tol=1e-5)
    slope, share = max_pair_slope(x, d_hat)
    assert slope > 1e6 and share == 1.0  # the gradient is ≤ 1 on both sides, the function is not 1-Lipschitz
    d_gn = normalize_discriminator(D, x, "gn")[0].detach()
    assert math.isclose(float(d_gn[0] - d_gn[1]), c / (a + c) - c / (b + c), rel_tol=1e-5)


def test_zero_critic_gives_zero_not_nan():
    d_hat, g = normalize_discriminator(lambda x: 0 * x.sum(1), torch.randn(4, 3), "gn")
    assert torch.equal(d_hat, torch.zeros(4)) and torch.equal(g, torch.zeros(4))


def test_normalize_rejects_bad_arguments():
    D = relu_mlp(2)
    x = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="variant"):
        normalize_discriminator(D, x, "nope")
    with pytest.raises(ValueError, match="one score per sample"):
        normalize_discriminator(lambda t: t, x, "gn")


# ---------------------------------------------------------------------------------------------------------------
# BatchNorm


def bn_critic() -> nn.Sequential:
    torch.manual_seed(5)
    return nn.Sequential(nn.Linear(3, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 1))


def test_batchnorm_critic_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="BatchNorm.*mixes the samples"):
        GradNormalized(bn_critic(), "gn")


def test_batchnorm_replaced_by_per_sample_norm():
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(6))
    other = torch.randn(8, 3, generator=torch.Generator().manual_seed(7))
    raw = bn_critic().train()
    # the reason is real: in train mode the score of sample 0 depends on the rest of the batch
    assert not torch.allclose(raw(x)[0], raw(torch.cat([x[:1], other[1:]]))[0])
    with pytest.warns(UserWarning, match="GroupNorm"):
        wrapped = GradNormalized(bn_critic(), "gn", batchnorm="replace")
    assert wrapped.replacements and "BatchNorm" in wrapped.replacements[0]
    assert not any(isinstance(m, nn.BatchNorm1d) for m in wrapped.modules())
    full = wrapped(x)
    mixed = wrapped(torch.cat([x[:1], other[1:]]))
    alone = wrapped(x[:1])
    assert torch.allclose(full[0], mixed[0], atol=1e-6) and torch.allclose(full[0], alone[0], atol=1e-6)
    assert wrapped.last_grad_norm.shape == (1,)


# ---------------------------------------------------------------------------------------------------------------
# Measurement tools on analytic cases


def test_mixture_geometry():
    ring = ring8_centres(2.0)
    assert torch.allclose(ring.norm(dim=1), torch.full((8,), 2.0))
    neighbours = (ring - ring.roll(1, 0)).norm(dim=1)
    assert torch.allclose(neighbours, torch.full((8,), 2 * 2.0 * math.sin(math.pi / 8)), atol=1e-6)
    grid = grid25_centres(2.0)
    assert grid.shape == (25, 2) and set(grid[:, 0].tolist()) == {-4.0, -2.0, 0.0, 2.0, 4.0}
    assert len(torch.unique(grid, dim=0)) == 25


@pytest.mark.parametrize("name", ["ring8", "grid25"])
def test_true_mixture_has_the_analytic_high_quality_share(name):
    x, _, centres, std = mixture(name, 40000, torch.Generator().manual_seed(8))
    cov = mode_coverage(x, centres, std)
    p = 1 - math.exp(-4.5)  # P(‖N(0, σ²I₂)‖ ≤ 3σ)
    assert abs(cov["high_quality_share"] - p) < 4 * math.sqrt(p * (1 - p) / len(x))
    assert cov["modes_covered"] == cov["n_modes"] == len(centres)


def test_mode_coverage_collapsed_and_off_support():
    centres = ring8_centres()
    collapsed = centres[3].repeat(500, 1)
    cov = mode_coverage(collapsed, centres, 0.02)
    assert cov["modes_covered"] == 1 and cov["high_quality_share"] == 1.0 and cov["counts"][3] == 500
    cov = mode_coverage(torch.zeros(500, 2), centres, 0.02)  # the centre of the ring: far from every mode
    assert cov["modes_covered"] == 0 and cov["high_quality_share"] == 0.0
    # 1000 samples over 8 modes: an even share is 125, so a mode needs 12.5 high-quality samples to count
    few = torch.cat([centres[:1].repeat(12, 1), centres[1:2].repeat(988, 1)])
    assert mode_coverage(few, centres, 0.02)["modes_covered"] == 1
    enough = torch.cat([centres[:1].repeat(13, 1), centres[1:2].repeat(987, 1)])
    assert mode_coverage(enough, centres, 0.02)["modes_covered"] == 2


def test_lipschitz_stats_of_a_linear_critic():
    w = torch.tensor([0.3, -0.4])  # ‖w‖ = 0.5 everywhere

    def critic(x):
        return x @ w + 1.0

    gen = torch.Generator().manual_seed(9)
    stats = lipschitz_stats(critic, torch.randn(64, 2, generator=gen), torch.randn(64, 2, generator=gen) + 3, gen)
    for key in ("real", "fake", "interp"):
        assert math.isclose(stats[f"grad_max_{key}"], 0.5, rel_tol=1e-6)
        assert math.isclose(stats[f"grad_mean_{key}"], 0.5, rel_tol=1e-6)
    assert 0.45 < stats["max_pair_slope"] <= 0.5 * (1 + 1e-6)  # float32 scores: rounding only
    assert stats["share_pairs_over_1"] == 0.0
    x1 = torch.linspace(-3, 3, 50, dtype=torch.float64)[:, None]
    assert math.isclose(max_pair_slope(x1, 0.5 * x1[:, 0] + 3)[0], 0.5, rel_tol=1e-12)


def whitened(n: int, d: int, seed: int) -> np.ndarray:
    """n points in d dimensions with sample mean exactly 0 and sample covariance exactly I."""
    z = np.random.default_rng(seed).standard_normal((n, d))
    z -= z.mean(0)
    vals, vecs = np.linalg.eigh(np.cov(z, rowvar=False))
    return z @ vecs @ np.diag(vals**-0.5) @ vecs.T


def test_frechet_distance_analytic():
    mu_a, sd_a = np.array([1.0, -2.0, 0.5]), np.array([1.0, 2.0, 0.5])
    mu_b, sd_b = np.array([0.0, 1.0, 0.5]), np.array([3.0, 1.0, 0.25])
    a = mu_a + whitened(400, 3, 0) * sd_a
    b = mu_b + whitened(300, 3, 1) * sd_b
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((sd_a - sd_b) ** 2)  # diagonal covariances
    assert math.isclose(frechet_distance(a, b), expected, rel_tol=1e-9)
    rot = np.linalg.qr(np.random.default_rng(2).standard_normal((3, 3)))[0]
    assert math.isclose(frechet_distance(a @ rot, b @ rot), expected, rel_tol=1e-9)
    assert abs(frechet_distance(a, a)) < 1e-9


def test_classifier_scores_extremes():
    eye = torch.eye(10)
    spread = classifier_scores(eye.repeat(20, 1))
    assert math.isclose(spread["inception_score"], 10.0, rel_tol=1e-6)
    assert spread["confident_share"] == 1.0 and spread["classes_covered"] == 10
    one = classifier_scores(eye[[4]].repeat(200, 1))
    assert math.isclose(one["inception_score"], 1.0, rel_tol=1e-6) and one["classes_covered"] == 1
    flat = classifier_scores(torch.full((50, 10), 0.1))
    assert math.isclose(flat["inception_score"], 1.0, rel_tol=1e-6) and flat["confident_share"] == 0.0


# ---------------------------------------------------------------------------------------------------------------
# Training


def ring_params(**over) -> GradnormGanParams:
    return KIND.params(**{**KIND.example, **over})


def train(params: GradnormGanParams, seed: int) -> Trainer:
    x, _, _, _ = mixture(params.dataset, params.n_data, torch.Generator().manual_seed(seed), params.mixture_std)
    trainer = Trainer(params, x, False, seed, torch.device("cpu"))
    for _ in range(params.steps):
        trainer.step()
    return trainer


def test_gn_covers_more_modes_than_unconstrained_wgan_critic():
    """Same nets, lrs, steps, n_critic and WGAN loss; only the critic constraint differs. Fixed seeds, totals."""
    seeds = (0, 1, 2)
    totals = {}
    for constraint in ("gn", "none"):
        covered = 0
        for seed in seeds:
            p = ring_params(constraint=constraint, loss="wasserstein", steps=400)
            trainer = train(p, seed)
            covered += mode_coverage(trainer.sample(1000), ring8_centres(), p.mixture_std)["modes_covered"]
        totals[constraint] = covered
    assert totals["gn"] > totals["none"]
    assert totals["gn"] >= 8 * len(seeds) // 2, totals  # GN finds at least half of all modes, not a lucky one


def test_hinge_equals_wasserstein_for_gn():
    """|D̂| ≤ 1 under GN, so relu(1 − D̂) = 1 − D̂ and relu(1 + D̂) = 1 + D̂: the hinge critic loss is the WGAN loss
    plus 2, with the same gradients, so training is the same."""
    a = Trainer(
        ring_params(steps=15, loss="hinge"),
        sample_mixture(ring8_centres(), 0.05, 1000, torch.Generator().manual_seed(0))[0],
        False,
        0,
        torch.device("cpu"),
    )
    b = Trainer(ring_params(steps=15, loss="wasserstein"), a.data, False, 0, torch.device("cpu"))
    for _ in range(15):
        out_a, out_b = a.step(), b.step()
        assert math.isclose(out_a["loss_d"] - out_b["loss_d"], 2.0, abs_tol=1e-5)
    for pa, pb in zip(a.G.parameters(), b.G.parameters()):
        assert torch.allclose(pa, pb, atol=1e-5)


def test_job_example_end_to_end():
    ctx = LocalContext(seed=0)
    result = KIND.run(KIND.params(**KIND.example), ctx)
    json.dumps(result, allow_nan=False)
    assert {"lipschitz", "quality", "cost", "curves", "constraint", "steps_run"} <= set(result)
    assert result["steps_run"] == KIND.example["steps"] and result["diverged_at_step"] is None
    lip = result["lipschitz"]
    for key in ("real", "fake", "interp"):  # GN's in-region bound, on a LeakyReLU critic
        assert 0 < lip[f"grad_max_{key}"] <= 1 + 1e-5
    assert lip["max_pair_slope"] > 0
    q = result["quality"]
    assert q["n_modes"] == 8 and 0 <= q["modes_covered"] <= 8 and 0 <= q["high_quality_share"] <= 1
    cost = result["cost"]
    assert cost["time_per_step_ms"] > 0 and cost["saved_bytes_critic_update"] > 0
    assert len(ctx.series("loss_d")) == len(ctx.series("loss_g")) > 10
    assert ctx.series("modes_covered") and ctx.series("raw_grad_norm_fake")
    for name in ("losses.png", "samples.png", "lipschitz.png"):
        data, media = ctx.artifacts[name]
        assert data.startswith(b"\x89PNG") and media == "image/png"
    assert ctx.artifacts["samples.npy"][0].startswith(b"\x93NUMPY")
    assert ctx.progress_log[-1][0] == 1.0


def test_same_seed_same_result_and_constraints_run():
    spec = {**KIND.example, "steps": 12, "eval_samples": 256, "n_data": 512}
    for constraint in ("gp", "spectral", "clip", "gran", "plain_norm"):
        r1 = KIND.run(KIND.params(**{**spec, "constraint": constraint}), LocalContext(seed=3))
        r2 = KIND.run(KIND.params(**{**spec, "constraint": constraint}), LocalContext(seed=3))
        assert r1["curves"] == r2["curves"] and r1["quality"] == r2["quality"]
        assert r1["lipschitz"] == r2["lipschitz"]
    clipped = KIND.run(KIND.params(**{**spec, "constraint": "clip", "clip_value": 1e-3}), LocalContext(seed=3))
    # every weight in [−c, c], so ‖W‖₂ ≤ ‖W‖_F ≤ c·√(fan_in·fan_out) and, with LeakyReLU slopes ≤ 1,
    # ‖∇D‖ ≤ Π ‖W‖₂ for the 2 → 64 → 64 → 1 critic
    bound = (1e-3 * math.sqrt(2 * 64)) * (1e-3 * 64) * (1e-3 * math.sqrt(64))
    assert 0 < clipped["lipschitz"]["grad_max_real"] <= bound


def test_digits_conv_job_uses_a_trained_judge():
    spec = {
        "dataset": "digits",
        "arch": "conv",
        "channels": 4,
        "z_dim": 8,
        "steps": 4,
        "n_critic": 1,
        "batch": 32,
        "eval_samples": 256,
    }
    result = KIND.run(KIND.params(**spec), LocalContext(seed=0))
    q = result["quality"]
    assert q["classifier_test_accuracy"] > 0.85  # the judge recognises real digits
    assert q["frechet_classifier_features"] > q["frechet_real_vs_real"]  # 4 steps of training is far from real
    assert 1.0 <= q["inception_score"] <= 10.0 and 0 <= q["confident_share"] <= 1


def test_uploaded_dataset_and_timeout():
    ref = uuid.uuid4()
    x = np.random.default_rng(0).standard_normal((300, 3)).astype(np.float32)
    ctx = LocalContext(seed=0, datasets={str(ref): {"x": x}})
    spec = {**KIND.example, "dataset": str(ref), "steps": 3, "eval_samples": 256}
    result = KIND.run(KIND.params(**spec), ctx)
    assert result["quality"]["frechet_raw"] >= 0
    with pytest.raises(JobTimedOut):
        KIND.run(KIND.params(**spec), LocalContext(seed=0, timeout_s=0.0, datasets=ctx.datasets))


@pytest.mark.parametrize(
    "bad",
    [
        {"constraint": "lasso"},
        {"loss": "mse"},
        {"width": 4},
        {"steps": 0},
        {"eps": 0.0},
        {"dataset": "clusters"},
        {"arch": "conv"},  # conv on a 2-D mixture
        {"steps": 20000, "batch": 2048, "width": 1024, "depth": 6, "n_critic": 10},  # work budget
        {"lr_d": float("nan")},
        {"unknown_field": 1},
    ],
)
def test_bad_params_are_refused(bad):
    with pytest.raises(pydantic.ValidationError):
        KIND.params(**{**KIND.example, **bad})


def test_budget_checked_for_uploads_at_run_time():
    p = KIND.params(dataset=str(uuid.uuid4()), arch="conv", channels=128, batch=2048)
    with pytest.raises(ValueError, match="batch"):
        check_budget(p, 64 * 64)
    with pytest.raises(ValueError, match="conv"):
        check_budget(p, 50)


def test_divergence_stops_the_run_and_reports_none(monkeypatch):
    """A run whose losses turn NaN stops there; the result stays JSON-safe (None where a figure is undefined)."""
    real_step = Trainer.step
    calls = {"n": 0}

    def poisoned(self, *args):
        out = real_step(self, *args)
        calls["n"] += 1
        if calls["n"] == 4:  # the fourth step (index 3) blows up: weights and loss become NaN
            with torch.no_grad():
                for w in list(self.G.parameters()) + list(self.D.parameters()):
                    w.fill_(float("nan"))
            out["loss_d"] = float("nan")
        return out

    monkeypatch.setattr(Trainer, "step", poisoned)
    for dataset in ("ring8", "digits"):
        calls["n"] = 0
        result = KIND.run(
            KIND.params(**{**KIND.example, "dataset": dataset, "steps": 10, "eval_samples": 256}), LocalContext(seed=0)
        )
        json.dumps(result, allow_nan=False)
        assert result["diverged_at_step"] == 3 and result["steps_run"] == 3
        assert result["lipschitz"]["grad_max_real"] is None
