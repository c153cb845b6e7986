"""Checks of docs/techniques.md#gradient_penalty_bound: exact equality cases, the inequality on random MLPs, the
per-layer identity against independent autograd, jacrev vs power iteration, and the job end to end."""

from __future__ import annotations

import io
import math
import uuid

import numpy as np
import pydantic
import pytest
import torch
from torch import nn

from core import costs
from core.penalty import auto_method, gradient_bound_terms, jacobian_spectral_norms, spectral_norm_power, split_layers
from core.techniques import get_kind
from core.techniques.local import LocalContext

KIND = get_kind("gradient_penalty_bound")

DT = torch.float64
ACTS = [nn.Identity, nn.ReLU, nn.Tanh, nn.GELU, nn.Sigmoid, nn.Softplus, nn.SiLU, nn.ELU, nn.LeakyReLU]


def random_mlp(rng: np.random.Generator, d_in: int, hidden: list[int], out: int) -> nn.Sequential:
    """float64 MLP with a random activation after each hidden layer, random bias on/off and random weight scale."""
    dims = [d_in, *hidden, out]
    mods: list[nn.Module] = []
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        lin = nn.Linear(a, b, bias=bool(rng.random() < 0.8)).to(DT)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(b, a, generator=gen, dtype=DT) * rng.uniform(0.3, 3.0) / math.sqrt(a))
            if lin.bias is not None:
                lin.bias.copy_(torch.randn(b, generator=gen, dtype=DT) * 0.5)
        mods.append(lin)
        if i < len(dims) - 2 or rng.random() < 0.3:
            mods.append(ACTS[int(rng.integers(len(ACTS)))]())
    return nn.Sequential(*mods)


def close(a, b, rtol=1e-10, atol=1e-13):
    return torch.allclose(torch.as_tensor(a, dtype=DT), torch.as_tensor(b, dtype=DT), rtol=rtol, atol=atol)


# ---------------------------------------------------------------- exact cases


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("bias", [True, False])
def test_single_layer_scalar_output_is_equality(act, bias):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(7, 1, bias=bias), act()).to(DT)
    x = torch.randn(12, 7, dtype=DT) * 2
    r = gradient_bound_terms(model, x)
    # by hand: f = g(w·x + b), ∇_x f = g'(z) w, ‖∇_θ f‖² = g'(z)² (‖x‖² + [bias])
    xg = x.clone().requires_grad_(True)
    gz = torch.autograd.grad(model(xg).sum(), xg)[0] @ model[0].weight[0] / model[0].weight[0].square().sum()
    expected = gz.square() * (x.square().sum(1) + (1.0 if bias else 0.0))
    assert close(r["rhs"], expected)
    assert close(r["lhs"], r["rhs"], rtol=1e-10, atol=1e-14)
    alive = r["rhs"] > 1e-12
    assert alive.sum() >= 4
    assert torch.allclose(r["ratio"][alive], torch.ones_like(r["ratio"][alive]), rtol=0, atol=1e-10)


@pytest.mark.parametrize("method", ["jacrev", "power"])
def test_deep_linear_scaled_orthogonal_is_equality(method):
    # W_t = c_t Q_t (Q orthogonal), last layer a row w, no activation: every factor is attained, so lhs = rhs;
    # Frobenius: ‖Q‖_F² = n and ‖∂h^(t)/∂x‖_F² = n Π c², so layer t's term shrinks by n (‖W‖_F) times n (‖J‖_F)
    # except the last row vector, whose Frobenius norm is its spectral norm.
    n, scales = 5, [0.7, 1.9, 1.3]
    gen = torch.Generator().manual_seed(3)
    mods = []
    for c in scales:
        lin = nn.Linear(n, n).to(DT)
        with torch.no_grad():
            q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=DT))
            lin.weight.copy_(c * q)
            lin.bias.copy_(torch.randn(n, generator=gen, dtype=DT))
        mods += [lin, nn.Identity()]
    last = nn.Linear(n, 1).to(DT)
    model = nn.Sequential(*mods, last)
    x = torch.randn(6, n, generator=gen, dtype=DT)
    r = gradient_bound_terms(model, x, method=method, tol=1e-15, max_iter=50)
    assert torch.allclose(r["ratio"], torch.ones(6, dtype=DT), rtol=0, atol=1e-10)
    prod = 1.0
    for t, layer in enumerate(r["layers"]):
        assert close(layer["jac_norm"], torch.full((6,), prod, dtype=DT))
        if t < len(scales):
            prod *= scales[t]
    fro_w = [n, n, n, 1]
    expected_f = sum(layer["param_grad_sq"] / (fw * n) for layer, fw in zip(r["layers"], fro_w)) / r["rhs"]
    assert close(r["ratio_frobenius"], expected_f)


# ---------------------------------------------------------------- the inequality on random MLPs


def test_inequality_holds_on_hundreds_of_random_mlps():
    rng = np.random.default_rng(7)
    worst = 0.0
    for case in range(300):
        d_in = int(rng.integers(1, 7))
        hidden = [int(rng.integers(1, 9)) for _ in range(int(rng.integers(0, 4)))]
        out = int(rng.integers(1, 5))
        model = random_mlp(rng, d_in, hidden, out)
        b = int(rng.integers(1, 6))
        x = torch.from_numpy(rng.normal(size=(b, d_in)) * rng.uniform(0.2, 3.0))
        kind = ["sum", "mean", "logit", "loss", "square"][int(rng.integers(5))]
        target = torch.from_numpy(rng.integers(0, out, size=b))
        reduce = (lambda o: o.square().sum(1)) if kind == "square" else kind
        if kind == "loss" and out < 2:
            reduce = "sum"
        # power with very few iterations too: the warm start must keep the bound valid when it stops early
        method = ["jacrev", "power"][case % 2]
        r = gradient_bound_terms(
            model, x, reduce=reduce, target=target, method=method, max_iter=int(rng.integers(1, 30))
        )
        msg = f"case {case}: {model} {kind} {method}"
        assert torch.all(r["lhs"] <= r["rhs"] * (1 + 1e-10) + 1e-300), msg
        assert torch.all(r["lhs_frobenius"] <= r["lhs"] * (1 + 1e-10) + 1e-300), msg
        for layer in r["layers"]:
            assert torch.all(layer["term"] <= layer["param_grad_sq"] * (1 + 1e-10) + 1e-300), msg
            assert torch.all(layer["residual"] <= 1e-10), msg
        assert close(sum(layer["share"] for layer in r["layers"])[r["rhs"] > 0], 1.0), msg
        worst = max(worst, float(torch.nan_to_num(r["ratio"]).max()))
    assert 0.5 < worst <= 1 + 1e-10  # the sample does reach near-tight cases, so the check is not vacuous


# ---------------------------------------------------------------- identities against independent autograd


@pytest.mark.parametrize("seed", range(6))
def test_per_layer_identity_and_parameter_gradient_against_autograd(seed):
    rng = np.random.default_rng(100 + seed)
    d_in = int(rng.integers(2, 6))
    model = random_mlp(rng, d_in, [int(rng.integers(2, 7)) for _ in range(3)], int(rng.integers(2, 4)))
    x = torch.from_numpy(rng.normal(size=(4, d_in)))
    target = torch.from_numpy(rng.integers(0, 2, size=4))
    r = gradient_bound_terms(model, x, reduce="loss", target=target)
    linear_at = [i for i, m in enumerate(model) if isinstance(m, nn.Linear)]
    params = dict(model.named_parameters())

    for i in range(4):
        xi = x[i]

        def f_of(p, xx):
            out = torch.func.functional_call(model, p, (xx[None],))
            return nn.functional.cross_entropy(out, target[i : i + 1])

        g_theta = torch.func.grad(f_of)(params, xi)
        g_x = torch.func.grad(f_of, argnums=1)(params, xi)
        assert close(r["rhs"][i], sum(g.square().sum() for g in g_theta.values()))
        assert close(r["grad_x_norm"][i], g_x.norm())
        for t, pos in enumerate(linear_at):
            layer = r["layers"][t]
            lin = model[pos]
            h = model[:pos](xi) if pos else xi
            jac = (
                torch.autograd.functional.jacobian(lambda xx: model[:pos](xx), xi) if pos else torch.eye(d_in, dtype=DT)
            )
            g_w = g_theta[f"{pos}.weight"]
            g_b_sq = g_theta[f"{pos}.bias"].square().sum() if lin.bias is not None else 0.0
            # h (∇_x f)ᵀ = (∇_W f)ᵀ W ∂h/∂x, with every piece from plain autograd
            lhs_m = torch.outer(h, g_x)
            rhs_m = g_w.T @ lin.weight @ jac
            assert (lhs_m - rhs_m).abs().max() <= 1e-10 * (1 + lhs_m.abs().max())
            assert close(layer["param_grad_sq"][i], g_w.square().sum() + g_b_sq)
            assert close(layer["h_norm"][i], h.norm())
            assert close(layer["jac_norm"][i], torch.linalg.matrix_norm(jac, ord=2))
            assert close(layer["jac_fro"][i], torch.linalg.matrix_norm(jac, ord="fro"))
            assert close(layer["w_norm"], torch.linalg.svdvals(lin.weight)[0])
            assert layer["residual"][i] <= 1e-10


def test_single_input_matches_batch_row_and_leaves_grads_alone():
    rng = np.random.default_rng(5)
    model = random_mlp(rng, 4, [6, 5], 3)
    x = torch.from_numpy(rng.normal(size=(3, 4)))
    batch = gradient_bound_terms(model, x, reduce="logit", target=2)
    one = gradient_bound_terms(model, x[1], reduce="logit", target=2)
    assert one["lhs"].dim() == 0 and one["layers"][1]["jac_norm"].dim() == 0
    assert close(one["lhs"], batch["lhs"][1]) and close(one["rhs"], batch["rhs"][1])
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------- jacrev vs power iteration


@pytest.mark.parametrize("seed", range(8))
def test_power_iteration_agrees_with_jacrev(seed):
    rng = np.random.default_rng(200 + seed)
    d_in = int(rng.integers(3, 12))
    model = random_mlp(rng, d_in, [int(rng.integers(3, 14)) for _ in range(int(rng.integers(1, 4)))], 2)
    x = torch.from_numpy(rng.normal(size=(5, d_in)))
    exact = jacobian_spectral_norms(model, x, "jacrev")
    approx = jacobian_spectral_norms(model, x, "power", tol=1e-15, max_iter=3000)
    rough = jacobian_spectral_norms(model, x, "power", tol=0.0, max_iter=2)
    for e, a, q in zip(exact, approx, rough):
        assert close(a, e, rtol=1e-6, atol=1e-12)
        assert torch.all(q <= e * (1 + 1e-12))  # every power estimate is a lower bound
    full = gradient_bound_terms(model, x, method="jacrev")
    pw = gradient_bound_terms(model, x, method="power", tol=1e-15, max_iter=3000)
    assert close(pw["ratio"], full["ratio"], rtol=1e-5, atol=1e-12)
    assert close(pw["ratio_frobenius"], full["ratio_frobenius"])  # Frobenius is exact in both paths


def test_power_iteration_on_a_known_matrix():
    a = torch.diag(torch.tensor([3.0, 2.0, 0.5], dtype=DT))
    x = torch.zeros(2, 3, dtype=DT)
    sigma, iters = spectral_norm_power(lambda v: v @ a.T, x, tol=1e-14, max_iter=500)
    assert torch.allclose(sigma, torch.full((2,), 3.0, dtype=DT), atol=1e-12) and 1 < iters < 500


def test_auto_picks_jacrev_for_small_inputs_and_power_when_jacobians_are_too_big(monkeypatch):
    assert auto_method(64, [256, 256]) == "jacrev" and auto_method(5, []) == "jacrev"
    assert auto_method(3072, [1024] * 3, batch=32) == "power"  # 2.4 GB of Jacobians
    # a flop estimate that favours power only because jacrev's rows (Σ d_t vjps) outnumber the iterations
    assert auto_method(4, [1024] * 7, max_iter=2) == "power"
    model = nn.Sequential(nn.Linear(6, 9), nn.Tanh(), nn.Linear(9, 1)).to(DT)
    x = torch.randn(3, 6, dtype=DT)
    assert gradient_bound_terms(model, x)["method"] == "jacrev"
    monkeypatch.setattr(costs, "JACREV_MAX_BYTES", 6 * 9 * 3 * 8 - 1)
    r = gradient_bound_terms(model, x)
    assert r["method"] == "power" and torch.all(r["lhs"] <= r["rhs"])


def test_rejects_what_is_outside_the_stated_form():
    with pytest.raises(ValueError, match="BatchNorm1d"):
        split_layers(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)))
    with pytest.raises(ValueError, match="start with"):
        split_layers(nn.Sequential(nn.ReLU(), nn.Linear(3, 1)))
    with pytest.raises(ValueError, match="chain"):
        split_layers(nn.Sequential(nn.Linear(3, 4), nn.Linear(5, 1)))
    model = nn.Sequential(nn.Linear(3, 2)).to(DT)
    x = torch.randn(2, 3, dtype=DT)
    with pytest.raises(ValueError, match="target"):
        gradient_bound_terms(model, x, reduce="logit")
    with pytest.raises(ValueError, match="one scalar per sample"):
        gradient_bound_terms(model, x, reduce=lambda o: o)
    with pytest.raises(ValueError, match="method"):
        gradient_bound_terms(model, x, method="svd")
    with pytest.raises(ValueError, match="x must be"):
        gradient_bound_terms(model, torch.randn(2, 4, dtype=DT))


# ---------------------------------------------------------------- the job


def test_job_example_end_to_end():
    ctx = LocalContext()
    result = KIND.run(KIND.params(**KIND.example), ctx)
    for key in (
        "measured_steps",
        "ratio",
        "ratio_frobenius",
        "violations",
        "layers",
        "max_identity_residual",
        "final_accuracy",
        "jacobian_method",
    ):
        assert key in result
    assert result["violations"] == 0 and result["violations_frobenius"] == 0
    assert result["max_identity_residual"] <= 1e-10
    n_meas = len(result["measured_steps"])
    assert result["measured_steps"][0] == 0 and result["measured_steps"][-1] == KIND.example["steps"]
    assert len(result["layers"]) == len(KIND.example["widths"]) + 1
    for q10, med, q90, hi in zip(*(result["ratio"][k] for k in ("q10", "median", "q90", "max"))):
        assert 0 < q10 <= med <= q90 <= hi <= 1
    for fro, med in zip(result["ratio_frobenius"]["median"], result["ratio"]["median"]):
        assert fro <= med
    assert result["final_accuracy"] > 0.5  # digits with a small MLP: it trained
    assert len(ctx.series("loss")) == KIND.example["steps"]
    assert len(ctx.series("ratio/median")) == n_meas and len(ctx.series("layer2/jac_norm")) == n_meas
    for name in ("bound_ratio.png", "layer_factors.png"):
        data, media = ctx.artifacts[name]
        assert data.startswith(b"\x89PNG") and media == "image/png"
    ratios = np.load(io.BytesIO(ctx.artifacts["ratios.npy"][0]), allow_pickle=False)
    assert ratios.shape == (n_meas, KIND.example["samples"])
    assert ctx.progress_log[-1][0] == 1.0


def test_job_other_targets_on_uploaded_data_and_determinism():
    rng = np.random.default_rng(0)
    key = str(uuid.uuid4())
    data = {"x": rng.normal(size=(120, 5)).astype(np.float32), "y": rng.integers(0, 3, size=120)}
    spec = {
        "dataset": key,
        "widths": [6, 6],
        "activation": "gelu",
        "init": "orthogonal",
        "f": "logit",
        "target_class": 1,
        "steps": 12,
        "lr": 0.05,
        "optimizer": "adam",
        "every": 4,
        "samples": 6,
        "method": "power",
    }
    runs = [KIND.run(KIND.params(**spec), LocalContext(seed=3, datasets={key: data})) for _ in range(2)]
    assert runs[0] == runs[1]
    assert runs[0]["violations"] == 0 and runs[0]["jacobian_method"] == "power"
    summed = KIND.run(
        KIND.params(**{**spec, "f": "sum", "target_class": None, "activation": "linear"}),
        LocalContext(seed=3, datasets={key: data}),
    )
    assert summed["violations"] == 0 and summed["classes"] == 3
    with pytest.raises(ValueError, match="target_class"):
        KIND.run(KIND.params(**{**spec, "target_class": 5}), LocalContext(datasets={key: data}))
    with pytest.raises(ValueError, match="labels"):
        KIND.run(KIND.params(**spec), LocalContext(datasets={key: {"x": data["x"]}}))
    # an upload's shape is known only at run time: Jacobians of 7 x 1024 x 4096 per sample cannot be materialized
    wide = {"x": np.zeros((4, 4096), dtype=np.float32), "y": np.arange(4) % 2}
    with pytest.raises(ValueError, match="method: needs about"):
        KIND.run(
            KIND.params(**{**spec, "widths": [1024] * 7, "samples": 256, "method": "jacrev"}),
            LocalContext(datasets={key: wide}),
        )


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"widths": [2000]}, "widths"),
        ({"widths": [8] * 8}, "widths"),
        ({"steps": 10, "every": 20}, "every"),
        ({"steps": 5000, "every": 1}, "every"),
        ({"samples": 0}, "samples"),
        ({"lr": 0.0}, "lr"),
        ({"activation": "softsign"}, "activation"),
        ({"dataset": "mnist"}, "dataset"),
        ({"unknown": 1}, "unknown"),
        ({"widths": [1024] * 7, "steps": 5000, "batch_size": 1024, "every": 100}, "steps"),
    ],
)
def test_bad_params_are_refused(bad, field):
    with pytest.raises(pydantic.ValidationError, match=field):
        KIND.params(**{**KIND.example, **bad})


def test_violations_count_the_samples_whose_lhs_exceeds_the_rhs(monkeypatch):
    """The bound always holds, so a reported 0 says nothing by itself: with three samples per measurement pushed
    over it (and one exactly at it, not a violation), the job must count three per measurement."""
    import core.techniques.gradient_penalty_bound.run as gpb_run

    real = gpb_run.gradient_bound_terms

    def three_over(*args, **kwargs):
        r = real(*args, **kwargs)
        r["lhs"] = torch.cat([2 * r["rhs"][:3], r["rhs"][3:4], r["lhs"][4:]])
        r["lhs_frobenius"] = torch.cat([2 * r["rhs"][:1], r["lhs_frobenius"][1:]])
        return r

    monkeypatch.setattr(gpb_run, "gradient_bound_terms", three_over)
    result = KIND.run(KIND.params(**KIND.example), LocalContext())
    n_meas = len(result["measured_steps"])
    assert n_meas >= 2
    assert result["violations"] == 3 * n_meas
    assert result["violations_frobenius"] == n_meas
