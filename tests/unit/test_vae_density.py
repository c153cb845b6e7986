"""vae_density: importance-sampled log p(x) (docs/techniques.md#vae_density) checked on cases with a known answer."""

from __future__ import annotations

import io
import json
import math
import uuid

import numpy as np
import pydantic
import pytest
import torch

from core.techniques import get_kind
from core.techniques.base import JobTimedOut
from core.techniques.local import LocalContext
from core.vae import (
    VAE,
    DiagonalGaussian,
    FullGaussian,
    LinearGaussian,
    bits_per_dim,
    importance_log_likelihood,
    importance_statistics,
)

KIND = get_kind("vae_density")


def _model(seed: int = 0, data_dim: int = 4, latent_dim: int = 2, sigma: float = 0.5, n: int = 300):
    gen = torch.Generator().manual_seed(seed)
    model = LinearGaussian.random(data_dim, latent_dim, sigma, gen)
    return model, model.sample(n, gen), gen


def test_linear_gaussian_log_marginal_and_posterior_are_exact():
    model, x, gen = _model()
    reference = torch.distributions.MultivariateNormal(model.c, model.A @ model.A.T + 0.25 * torch.eye(4))
    torch.testing.assert_close(model.log_marginal(x), reference.log_prob(x), rtol=0, atol=1e-10)
    # Bayes: log p(x, z) − log p(z|x) = log p(x) at any z, not only at posterior draws.
    z = 3.0 * torch.randn(5, x.shape[0], 2, generator=gen, dtype=torch.float64)
    posterior = model.posterior_proposal(x)
    torch.testing.assert_close(
        model.log_joint(x, z) - posterior.log_prob(z, x), model.log_marginal(x).expand(5, -1), rtol=0, atol=1e-9
    )


@pytest.mark.parametrize("k, chunk_size", [(1, None), (2, 1), (17, 5), (300, None), (5000, 700)])
def test_exact_posterior_proposal_gives_exact_estimate_for_any_k(k, chunk_size):
    model, x, gen = _model(n=40)
    q = model.posterior_proposal(x, gen)
    estimate = importance_log_likelihood(x, q.sample, q.log_prob, model.log_joint, k, chunk_size)
    torch.testing.assert_close(estimate, model.log_marginal(x), rtol=0, atol=1e-6)
    stats = importance_statistics(x, q.sample, q.log_prob, model.log_joint, k, chunk_size)
    torch.testing.assert_close(stats.elbo, model.log_marginal(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(stats.ess, torch.full_like(stats.ess, float(k)), rtol=1e-9, atol=0)


def test_poorer_proposal_estimate_rises_with_k_toward_truth():
    model, x, gen = _model(seed=3, n=400)
    mean, scale_tril = model.posterior(x)
    q = FullGaussian(mean + 0.5, 1.5 * scale_tril, gen)  # shifted and too wide
    truth = model.log_marginal(x).mean().item()
    estimates = [
        importance_log_likelihood(x, q.sample, q.log_prob, model.log_joint, k).mean().item() for k in (1, 5, 50, 500)
    ]
    assert all(b > a for a, b in zip(estimates, estimates[1:])), estimates
    assert estimates[-1] <= truth + 0.02
    assert truth - estimates[0] > 1.0 and truth - estimates[-1] < 0.1, (truth, estimates)


def test_chunked_equals_unchunked_on_the_same_draws():
    model, x, gen = _model(n=25)
    k = 103
    bank = torch.randn(k, x.shape[0], 2, generator=gen, dtype=torch.float64) * 2.0 + 0.3
    q = DiagonalGaussian(
        torch.full((x.shape[0], 2), 0.3, dtype=torch.float64),
        torch.full((x.shape[0], 2), math.log(2.0), dtype=torch.float64),
    )
    log_w = model.log_joint(x, bank) - q.log_prob(bank, x)

    def banked(chunk_size):
        calls, cursor = [], [0]

        def sample(xx, c):
            calls.append(c)
            out = bank[cursor[0] : cursor[0] + c]
            cursor[0] += c
            return out

        value = importance_log_likelihood(x, sample, q.log_prob, model.log_joint, k, chunk_size)
        cursor[0] = 0
        stats = importance_statistics(x, sample, q.log_prob, model.log_joint, k, chunk_size)
        return value, stats, calls

    whole, whole_stats, calls = banked(k)
    assert calls == [k, k]
    torch.testing.assert_close(whole, torch.logsumexp(log_w, 0) - math.log(k), rtol=0, atol=1e-12)
    torch.testing.assert_close(whole_stats.elbo, log_w.mean(0), rtol=0, atol=1e-12)
    w = torch.exp(log_w)
    torch.testing.assert_close(whole_stats.ess, w.sum(0) ** 2 / (w**2).sum(0), rtol=1e-9, atol=0)
    for chunk_size in (1, 7, 50, None):
        value, stats, calls = banked(chunk_size)
        assert sum(calls) == 2 * k and (chunk_size is None or max(calls) <= chunk_size)
        torch.testing.assert_close(value, whole, rtol=0, atol=1e-12)
        for got, want in zip(stats, whole_stats):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_tiny_weights_use_logsumexp_not_raw_weights():
    x = torch.zeros(3, 2, dtype=torch.float64)
    offsets = torch.tensor([-2000.0, -2001.0, -1999.5], dtype=torch.float64)

    def sample(xx, c):
        return torch.zeros(c, 3, 1, dtype=torch.float64)

    def log_joint(xx, z):  # weights e^-2000: a mean of raw weights underflows to 0 (−inf after log)
        return offsets + torch.zeros(z.shape[:2], dtype=torch.float64)

    def log_proposal(z, xx):
        return torch.zeros(z.shape[:2], dtype=torch.float64)

    assert torch.log(torch.exp(offsets)).isinf().all()
    estimate = importance_log_likelihood(x, sample, log_proposal, log_joint, 1000, chunk_size=64)
    torch.testing.assert_close(estimate, offsets, rtol=0, atol=1e-9)


def test_vae_likelihoods_are_full_normalized_densities():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(6, 5, generator=gen)
    z = torch.randn(3, 6, 2, generator=gen)
    gauss = VAE(5, 2, [7], "gaussian", generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        gauss.log_sigma.copy_(torch.linspace(-1.0, 0.5, 5))
        want = torch.distributions.Normal(gauss.decoder(z), torch.exp(gauss.log_sigma)).log_prob(x).sum(-1)
        torch.testing.assert_close(gauss.log_conditional(x, z), want)
        deq = VAE(5, 2, [7], "dequantized", levels=256, generator=torch.Generator().manual_seed(2))
        deq.log_sigma.copy_(gauss.log_sigma)
        torch.testing.assert_close(deq.log_conditional(x, z), want - 5 * math.log(256.0))
        fixed = VAE(5, 2, [7], "gaussian", fixed_sigma=0.3, generator=torch.Generator().manual_seed(2))
        want_fixed = torch.distributions.Normal(fixed.decoder(z), 0.3).log_prob(x).sum(-1)
        torch.testing.assert_close(fixed.log_conditional(x, z), want_fixed)
        assert not any(p is fixed.log_sigma for p in fixed.parameters())
        xb = (x > 0.5).float()
        bern = VAE(5, 2, [7], "bernoulli", generator=torch.Generator().manual_seed(2))
        want_b = torch.distributions.Bernoulli(logits=bern.decoder(z)).log_prob(xb.expand(3, -1, -1)).sum(-1)
        torch.testing.assert_close(bern.log_conditional(xb, z), want_b)
    # A uniform density on [0, 1]^D for 8-bit data is exactly 8 bits/dim once the −D ln 256 offset is applied.
    assert bits_per_dim(0.0 - 5 * math.log(256.0), 5) == pytest.approx(8.0, abs=1e-12)
    with pytest.raises(ValueError):
        VAE(5, 2, [7], "bernoulli", fixed_sigma=0.3)


def test_dequantize_stays_inside_each_level_bin():
    model = VAE(4, 1, [], "dequantized", levels=256)
    v = torch.randint(0, 256, (500, 4), generator=torch.Generator().manual_seed(0)).float()
    y = model.dequantize(v, torch.Generator().manual_seed(1))
    assert torch.all(y >= v / 256) and torch.all(y < (v + 1) / 256)
    assert torch.all(torch.floor(y * 256) == v)
    frac = y * 256 - v  # U[0, 1) over the whole bin: mean 1/2, variance 1/12
    assert abs(frac.mean().item() - 0.5) < 0.03 and abs(frac.var().item() - 1 / 12) < 0.01


def test_training_losses_are_elbo_and_iwae_bounds():
    gen_x = torch.Generator().manual_seed(0)
    x = torch.rand(20, 6, generator=gen_x)
    model = VAE(6, 3, [8], "gaussian", generator=torch.Generator().manual_seed(4))
    # k > 1: the IWAE loss is −mean L_k on the very same draws the estimator would take.
    loss = model.loss(x, 9, torch.Generator().manual_seed(5))
    estimate = model.log_likelihood(x, 9, chunk_size=9, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(loss, -estimate.mean())
    # k = 1: reconstruction at one reparameterized draw minus the analytic KL(q(z|x) || N(0, I)).
    q = model.proposal(x)
    z = q.mean + torch.exp(q.log_std) * torch.randn((1, 20, 3), generator=torch.Generator().manual_seed(6))
    kl = torch.distributions.kl_divergence(
        torch.distributions.Normal(q.mean, torch.exp(q.log_std)), torch.distributions.Normal(0.0, 1.0)
    ).sum(-1)
    torch.testing.assert_close(
        model.loss(x, 1, torch.Generator().manual_seed(6)), -(model.log_conditional(x, z)[0] - kl).mean()
    )


def _run(ctx=None, **overrides):
    spec = {**KIND.example, **overrides}
    ctx = ctx or LocalContext()
    return KIND.run(KIND.params(**spec), ctx), ctx


def _bound(result, split, k):
    return next(b for b in result[split]["bounds"] if b["k"] == k)


def test_example_runs_end_to_end():
    result, ctx = _run()
    expected = {
        "dataset",
        "likelihood",
        "data_dim",
        "n_train",
        "n_heldout",
        "train",
        "heldout",
        "eval_k",
        "final_train_loss",
        "heldout_npy_columns",
        "decoder_sigma",
        "true_sigma",
    }
    assert expected <= set(result)
    json.dumps(result, allow_nan=False)  # plain JSON, no NaN/inf
    assert result["likelihood"] == "gaussian" and result["data_dim"] == KIND.example["synthetic_dim"]
    assert len(ctx.series("train_loss")) == KIND.example["steps"]
    assert len(ctx.series("heldout_neg_elbo")) >= 2
    assert len(ctx.series("heldout_log_likelihood_vs_k")) == len(KIND.example["eval_k"])
    for name in ("lk_vs_k.png", "training.png"):
        data, media = ctx.artifacts[name]
        assert media == "image/png" and data.startswith(b"\x89PNG")
    data, media = ctx.artifacts["heldout_log_px.npy"]
    table = np.load(io.BytesIO(data), allow_pickle=False)
    assert media == "application/x-npy" and table.shape == (result["heldout"]["n_rows"], 4)
    k_max = KIND.example["eval_k"][-1]
    held = result["heldout"]
    assert table[:, 1].mean() == pytest.approx(_bound(result, "heldout", k_max)["nats"], abs=1e-6)
    assert table[:, 3].mean() == pytest.approx(held["exact_nats"], abs=1e-9)
    np.testing.assert_allclose(table[:, 2], -table[:, 1] / (result["data_dim"] * math.log(2.0)))
    assert held["elbo_nats"] <= _bound(result, "heldout", k_max)["nats"] + 0.02
    assert ctx.progress_log[-1][0] == 1.0


def test_trained_model_on_linear_gaussian_within_five_hundredths_of_a_nat_at_k_1000():
    """An affine VAE on linear-Gaussian data can match the truth: L_1000 sits 0.018 (train) and 0.022 (held-out)
    nats below the exact log p(x) here; the bound allows 0.05, and a held-out gap must be a shortfall."""
    result, _ = _run(
        synthetic_dim=4,
        synthetic_latent=2,
        synthetic_n=1200,
        latent_dim=2,
        hidden=[],
        steps=600,
        lr=0.02,
        eval_k=[1000],
        eval_samples=200,
    )
    assert 0.0 < _bound(result, "heldout", 1000)["gap_to_exact_nats"]
    for split in ("train", "heldout"):
        bound = _bound(result, split, 1000)
        assert abs(bound["nats"] - result[split]["exact_nats"]) < 0.05, (split, bound, result[split]["exact_nats"])
        assert abs(bound["gap_to_exact_nats"] - (result[split]["exact_nats"] - bound["nats"])) < 1e-9


def test_same_seed_same_result_and_seed_matters():
    small = dict(steps=30, eval_k=[1, 20], eval_samples=30, synthetic_n=200)
    first, _ = _run(LocalContext(seed=7), **small)
    again, _ = _run(LocalContext(seed=7), **small)
    other, _ = _run(LocalContext(seed=8), **small)
    assert first == again
    assert first["heldout"]["exact_nats"] != other["heldout"]["exact_nats"]


def test_builtin_digits_sets_pick_their_likelihood():
    small = dict(synthetic_dim=8, hidden=[16], latent_dim=4, steps=5, eval_k=[1, 5], eval_samples=20)
    binar, _ = _run(dataset="digits_binarized", train_k=3, **small)  # IWAE training
    deq, ctx = _run(dataset="digits_dequantized", **small)
    assert binar["likelihood"] == "bernoulli" and binar["decoder_sigma"] is None and binar["train_k"] == 3
    assert deq["likelihood"] == "dequantized" and binar["data_dim"] == deq["data_dim"] == 64
    for bound in deq["heldout"]["bounds"]:
        assert bound["bits_per_dim"] == pytest.approx(-bound["nats"] / (64 * math.log(2.0)))


def test_uploaded_arrays_choose_and_check_the_likelihood():
    rng = np.random.default_rng(0)
    arrays = {
        "binary": (rng.random((60, 5)) < 0.4).astype(np.float32),
        "bytes": rng.integers(0, 256, (60, 5)).astype(np.float32),
        "real": rng.standard_normal((60, 5)).astype(np.float32),
    }
    ids = {name: str(uuid.uuid4()) for name in arrays}
    ctx_data = {ids[name]: {"x": x} for name, x in arrays.items()}
    small = dict(hidden=[8], steps=3, eval_k=[2], eval_samples=10)
    for name, want in (("binary", "bernoulli"), ("bytes", "dequantized"), ("real", "gaussian")):
        result, _ = _run(LocalContext(datasets=ctx_data), dataset=ids[name], **small)
        assert result["likelihood"] == want
    for name, likelihood in (("real", "bernoulli"), ("real", "dequantized"), ("binary", "gaussian")):
        with pytest.raises(ValueError, match="likelihood"):
            _run(LocalContext(datasets=ctx_data), dataset=ids[name], likelihood=likelihood, **small)


def test_training_checks_for_cancellation():
    with pytest.raises(JobTimedOut):
        _run(LocalContext(timeout_s=0.0))


@pytest.mark.parametrize(
    "bad",
    [
        {"eval_k": [1, 6000]},
        {"eval_k": [10, 5]},
        {"eval_k": []},
        {"likelihood": "bernoulli"},  # linear_gaussian is continuous
        {"dataset": "digits_binarized", "fixed_sigma": 0.1},
        {"dataset": "digits_dequantized", "likelihood": "gaussian"},
        {"latent_dim": 0},
        {"hidden": [2048]},
        {"lr": float("nan")},
        {"no_such_field": 1},
        {"dataset": "digits"},  # discrete pixels: only the binarized / dequantized variants have a proper likelihood
    ],
)
def test_bad_params_are_refused(bad):
    with pytest.raises(pydantic.ValidationError):
        KIND.params(**{**KIND.example, **bad})


@pytest.mark.parametrize(
    "field, bad",
    [
        ("steps", {"steps": 100_000, "batch_size": 1024, "train_k": 8, "hidden": [1024, 1024]}),  # ~6e15 FLOP
        ("batch_size", {"batch_size": 1024, "train_k": 64, "hidden": [1024] * 4}),  # ~8 GiB of activations
        ("eval_k", {"eval_k": [5000], "eval_samples": 5000, "hidden": [1024] * 4, "steps": 1}),
    ],
)
def test_budget_errors_name_the_field(field, bad):
    with pytest.raises(pydantic.ValidationError, match=f"{field}:"):
        KIND.params(**{**KIND.example, **bad})


def test_heldout_exact_log_px_is_taken_on_the_heldout_rows():
    """The artifact's exact column is log p(x) of the rows it names, which are held-out rows (never trained on), and
    the reported exact_nats per split are the means over that split's evaluated rows."""
    small = dict(steps=20, eval_k=[1, 10], eval_samples=40, synthetic_n=200)
    result, ctx = _run(**small)
    params = KIND.params(**{**KIND.example, **small})
    gen = torch.Generator().manual_seed(ctx.seed)
    truth = LinearGaussian.random(params.synthetic_dim, params.synthetic_latent, params.synthetic_sigma, gen)
    x = truth.sample(params.synthetic_n, gen).float().double()
    table = np.load(io.BytesIO(ctx.artifacts["heldout_log_px.npy"][0]), allow_pickle=False)
    columns = result["heldout_npy_columns"]
    rows = table[:, columns.index("row_index")].astype(np.int64)
    exact = truth.log_marginal(x[torch.from_numpy(rows)])
    np.testing.assert_allclose(table[:, columns.index("exact_log_px_nats")], exact.numpy(), rtol=0, atol=1e-9)
    assert result["heldout"]["exact_nats"] == pytest.approx(float(exact.mean()), abs=1e-9)
    order = np.random.default_rng(ctx.seed).permutation(params.synthetic_n)
    heldout = order[: result["n_heldout"]]
    assert set(rows) <= set(heldout) and len(rows) == min(40, len(heldout))
    train_rows = torch.from_numpy(order[result["n_heldout"] :][:40])
    assert result["train"]["exact_nats"] == pytest.approx(float(truth.log_marginal(x[train_rows]).mean()), abs=1e-9)
    assert result["train"]["exact_nats"] != pytest.approx(result["heldout"]["exact_nats"], abs=1e-3)


def test_digits_17_levels_has_17_levels_and_its_former_name_runs_the_same_job():
    small = dict(hidden=[16], latent_dim=4, steps=2, eval_k=[1, 5], eval_samples=10)
    new, ctx = _run(dataset="digits_17_levels", **small)
    old, _ = _run(dataset="digits_dequantized", **small)
    assert {k: v for k, v in new.items() if k != "dataset"} == {k: v for k, v in old.items() if k != "dataset"}
    assert new["dataset"] == "digits_17_levels" and new["likelihood"] == "dequantized"
    from core.techniques.vae_density.run import _load

    x, _, _ = _load(KIND.params(**{**KIND.example, "dataset": "digits_17_levels"}), ctx)
    assert len(np.unique(x)) == 17 and x.min() == 0 and x.max() == 255
