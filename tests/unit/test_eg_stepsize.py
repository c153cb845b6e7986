"""Checks of docs/techniques.md#eg_stepsize: EG identities, the ν closed form, the hypergradient, the ½aθ² regimes, the
job."""

from __future__ import annotations

import copy
import io
import json
import math
import uuid

import numpy as np
import pydantic
import pytest
import torch

import core.optim.eg as eg_module
from core.optim.eg import EGFunnel, EGStepSize, HypergradientSGD, eg_step_
from core.techniques import get_kind
from core.techniques.base import JobTimedOut
from core.techniques.eg_stepsize.run import plane_rotation
from core.techniques.eg_stepsize.spec import EGStepSizeParams
from core.techniques.local import LocalContext

KIND = get_kind("eg_stepsize")

F64 = torch.float64


def _feed(opt: torch.optim.Optimizer, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
    """One step with the given gradients (a deterministic gradient sequence, no model needed)."""
    for p, g in zip(params, grads):
        p.grad = g.clone()
    opt.step()


def _loss(theta: torch.Tensor) -> torch.Tensor:
    """A smooth non-quadratic loss, so consecutive gradients are not related by a constant matrix."""
    a = torch.linspace(-1.0, 2.0, theta.numel(), dtype=theta.dtype).reshape(theta.shape)
    return torch.log(torch.cosh(theta * a - 0.3)).sum() + 0.1 * (theta**4).sum()


def _grad(theta: torch.Tensor) -> torch.Tensor:
    theta = theta.detach().clone().requires_grad_()
    _loss(theta).backward()
    return theta.grad


# --- eg_step_ ------------------------------------------------------------------------------------------------------


def test_eg_step_keeps_positive_and_moves_log_by_minus_lr_grad():
    gen = torch.Generator().manual_seed(0)
    theta = torch.rand(50, generator=gen, dtype=F64) + 1e-3
    for lr in (0.01, 1.0, 7.5):
        grad = 5 * torch.randn(50, generator=gen, dtype=F64)
        before = theta.clone()
        out = eg_step_(theta, grad, lr)
        assert out is theta
        assert (theta > 0).all()
        torch.testing.assert_close(theta.log() - before.log(), -lr * grad, rtol=0, atol=1e-12)


def test_eg_step_leaves_zeros_at_zero():
    theta = torch.tensor([0.0, 2.0, 0.0])
    eg_step_(theta, torch.tensor([-3.0, 1.0, 4.0]), 0.5)
    assert theta[0] == 0 and theta[2] == 0 and theta[1] == pytest.approx(2.0 * math.exp(-0.5))


# --- EGStepSize ----------------------------------------------------------------------------------------------------


def _grad_sequence(steps: int, shapes, seed: int = 1) -> list[list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [[0.5 * torch.randn(s, generator=gen, dtype=F64) for s in shapes] for _ in range(steps)]


@pytest.mark.parametrize("granularity", ["coordinate", "layer", "global"])
def test_nu_equals_closed_form_cumulative_product(granularity):
    shapes = [(3, 4), (5,)]
    params = [torch.zeros(s, dtype=F64, requires_grad=True) for s in shapes]
    lr, gamma = 0.2, 0.7
    opt = EGStepSize(params, lr=lr, gamma=gamma, granularity=granularity, max_log_step=1e6, max_log_nu=1e6)
    seq = _grad_sequence(7, shapes)
    expected_theta = [torch.zeros(s, dtype=F64) for s in shapes]
    for t, grads in enumerate(seq):
        _feed(opt, params, grads)
        prods = [[seq[k - 1][i] * seq[k][i] for k in range(1, t + 1)] for i in range(len(shapes))]
        sums = [sum(ps) if ps else torch.zeros(shapes[i], dtype=F64) for i, ps in enumerate(prods)]
        if granularity == "layer":
            sums = [s.sum() for s in sums]
        elif granularity == "global":
            total = sum(s.sum() for s in sums)
            sums = [total, total]
        for i, p in enumerate(params):
            nu = torch.exp(gamma * sums[i])
            torch.testing.assert_close(opt.state[p]["nu"], nu.expand_as(opt.state[p]["nu"]), rtol=1e-12, atol=0)
            # ν is updated before θ: the move uses ν_{t+1}, which already includes g_{t-1} ⊙ g_t
            expected_theta[i] = expected_theta[i] - lr * nu * grads[i]
            torch.testing.assert_close(p.detach(), expected_theta[i], rtol=1e-12, atol=1e-14)


def _compile_or_skip() -> None:
    """Skip, saying why, where torch.compile itself does not work here (no compiler toolchain, unsupported)."""
    try:
        torch.compile(lambda t: t * 2 + 1, dynamic=False)(torch.ones(3, dtype=F64))
    except Exception as exc:  # noqa: BLE001 - any failure of the compiler stack means no fused path to test
        pytest.skip(f"torch.compile does not work on this platform: {type(exc).__name__}: {exc}")


@pytest.mark.parametrize("granularity", ["coordinate", "layer", "global"])
def test_fused_step_equals_eager_step(granularity, monkeypatch):
    _compile_or_skip()
    # a weight past the flat-buffer size (130 x 128 doubles > 128 KiB) keeps its own state, the others share buffers;
    # the compiled update is kept for bigger tensors than that, so the threshold is lowered to reach it
    monkeypatch.setattr(eg_module, "_FUSED_NUMEL", 1000)
    monkeypatch.setattr(eg_module, "_COMPILED", {})
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 130), torch.nn.Tanh(), torch.nn.Linear(130, 128), torch.nn.Tanh(), torch.nn.Linear(128, 3)
    ).double()
    twin = copy.deepcopy(model)
    gamma = 30.0 if granularity == "coordinate" else 3.0
    eager = EGStepSize(
        model.parameters(), lr=0.05, gamma=gamma, granularity=granularity, max_log_step=0.3, max_log_nu=2.0
    )
    fused = EGStepSize(
        twin.parameters(), lr=0.05, gamma=gamma, granularity=granularity, max_log_step=0.3, max_log_nu=2.0, fused=True
    )
    gen = torch.Generator().manual_seed(5)
    x, y = torch.randn(16, 4, generator=gen, dtype=F64), torch.randint(0, 3, (16,), generator=gen)
    for t in range(20):
        if t == 10:  # a new rate (as from a scheduler) takes effect without recompiling or going stale
            for opt in (eager, fused):
                opt.param_groups[0]["lr"] = 0.02
        for m, opt in ((model, eager), (twin, fused)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
    moved = False
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-9)
        assert set(fused.state[b]) == set(eager.state[a]) == {"prev_grad", "log2_nu", "nu"}
        for key, value in eager.state[a].items():
            assert fused.state[b][key].shape == value.shape
            torch.testing.assert_close(fused.state[b][key], value, rtol=1e-6, atol=1e-9)
        moved |= bool((eager.state[a]["nu"] != 1).any())
    assert moved  # the rates did adapt, so the comparison covers the EG update and not just SGD
    assert fused.param_groups[0]["fused"] and not eager.param_groups[0]["fused"]
    assert set(eg_module._COMPILED) == {"rate_move" if granularity == "coordinate" else "move"}  # it did run


def test_first_step_is_plain_sgd_and_gamma_zero_is_sgd():
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).double()
    twin = copy.deepcopy(model)
    eg = EGStepSize(model.parameters(), lr=0.3, gamma=0.0)
    sgd = torch.optim.SGD(twin.parameters(), lr=0.3)
    x = torch.randn(32, 6, dtype=F64, generator=torch.Generator().manual_seed(2))
    for _ in range(5):
        for m, opt in ((model, eg), (twin, sgd)):
            opt.zero_grad()
            m(x).pow(2).mean().backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


def test_log_step_and_log_nu_are_clamped():
    p = torch.zeros(2, requires_grad=True)
    opt = EGStepSize([p], lr=1e-3, gamma=1.0, max_log_step=0.25, max_log_nu=1.0)
    _feed(opt, [p], [torch.tensor([100.0, 100.0])])
    _feed(opt, [p], [torch.tensor([100.0, -100.0])])
    torch.testing.assert_close(opt.state[p]["log2_nu"] * math.log(2), torch.tensor([0.25, -0.25]))
    for _ in range(10):
        _feed(opt, [p], [torch.tensor([100.0, -100.0])])
        _feed(opt, [p], [torch.tensor([100.0, 100.0])])
    torch.testing.assert_close(opt.state[p]["log2_nu"] * math.log(2), torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(opt.state[p]["nu"], torch.exp(torch.tensor([1.0, -1.0])))


def test_hypergradient_by_autograd_is_minus_lr_g_prev_times_g():
    gen = torch.Generator().manual_seed(3)
    theta_prev = torch.randn(4, 3, generator=gen, dtype=F64)
    lr = 0.15
    g_prev = _grad(theta_prev)
    nu = (torch.rand(4, 3, generator=gen, dtype=F64) + 0.5).requires_grad_()
    _loss(theta_prev - lr * nu * g_prev).backward()
    g_now = _grad(theta_prev - lr * nu.detach() * g_prev)
    torch.testing.assert_close(nu.grad, -lr * g_prev * g_now, rtol=1e-12, atol=1e-14)


def test_eg_update_is_exponentiated_descent_on_the_autograd_hypergradient():
    """Two optimizer steps from θ_0: the log ν increment equals −(γ/lr) ∂L(θ_1)/∂ν at ν = 1."""
    theta0 = torch.randn(6, generator=torch.Generator().manual_seed(4), dtype=F64)
    lr, gamma = 0.1, 2.0
    p = theta0.clone().requires_grad_()
    opt = EGStepSize([p], lr=lr, gamma=gamma, max_log_step=1e6, max_log_nu=1e6)
    opt.zero_grad()
    _loss(p).backward()
    opt.step()
    nu = torch.ones(6, dtype=F64, requires_grad=True)
    _loss(theta0 - lr * nu * _grad(theta0)).backward()
    opt.zero_grad()
    _loss(p).backward()
    opt.step()
    torch.testing.assert_close(opt.state[p]["log2_nu"] * math.log(2), -(gamma / lr) * nu.grad, rtol=1e-12, atol=1e-14)


def test_shared_step_size_hypergradient_matches_finite_difference():
    theta_prev = torch.randn(8, generator=torch.Generator().manual_seed(5), dtype=F64)
    lr, nu, h = 0.2, 1.3, 1e-6
    g_prev = _grad(theta_prev)
    f = lambda v: float(_loss(theta_prev - lr * v * g_prev))  # noqa: E731
    fd = (f(nu + h) - f(nu - h)) / (2 * h)
    g_now = _grad(theta_prev - lr * nu * g_prev)
    assert fd == pytest.approx(float(-lr * torch.dot(g_prev, g_now)), rel=1e-7)


def test_quadratic_nu_grows_below_one_and_shrinks_between_one_and_two():
    """f = ½ a θ² per coordinate, lr = 1: a = 0.5 keeps the gradient sign, a = 1.5 flips it every step."""
    a = torch.tensor([0.5, 1.5], dtype=F64)
    theta = torch.ones(2, dtype=F64, requires_grad=True)
    opt = EGStepSize([theta], lr=1.0, gamma=0.05, max_log_step=1e6)

    def closure():
        opt.zero_grad()
        loss = 0.5 * (a * theta**2).sum()
        loss.backward()
        return loss

    nus, thetas = [], []
    for _ in range(8):
        loss = opt.step(closure)
        assert float(loss.detach()) > 0
        nus.append(opt.state[theta]["nu"].clone())
        thetas.append(theta.detach().clone())
    nus, thetas = torch.stack(nus), torch.stack(thetas)
    assert (thetas[:, 0] > 0).all()
    assert (thetas[1:, 1] * thetas[:-1, 1] < 0).all()
    assert (torch.diff(nus[1:, 0]) > 0).all() and nus[-1, 0] > 1
    assert (torch.diff(nus[1:, 1]) < 0).all() and nus[-1, 1] < 1
    assert (nus[:, 0] * a[0] < 1).all() and ((nus[:, 1] * a[1] > 1) & (nus[:, 1] * a[1] < 2)).all()


# --- EGFunnel ------------------------------------------------------------------------------------------------------


def test_funnel_without_adaptation_is_momentum_sgd():
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
    twin = copy.deepcopy(model)
    funnel = EGFunnel(model.parameters(), lr=0.05, momentum=0.8, gamma_p=0.0, gamma_s=0.0)
    sgd = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.8)
    x = torch.randn(16, 5, dtype=F64, generator=torch.Generator().manual_seed(6))
    for _ in range(6):
        for m, opt in ((model, funnel), (twin, sgd)):
            opt.zero_grad()
            m(x).pow(2).mean().backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


def test_funnel_gains_follow_closed_form_when_ema_is_the_last_gradient():
    p = torch.zeros(7, dtype=F64, requires_grad=True)
    gamma_p = 0.4
    opt = EGFunnel([p], lr=0.1, gamma_p=gamma_p, gamma_s=0.0, beta=0.0, max_log_step=1e6, max_log_gain=1e6)
    seq = [g[0] for g in _grad_sequence(6, [(7,)], seed=7)]
    for t, g in enumerate(seq):
        _feed(opt, [p], [g])
        total = sum((seq[k - 1] * seq[k] for k in range(1, t + 1)), torch.zeros(7, dtype=F64))
        torch.testing.assert_close(opt.state[p]["p"], torch.exp(gamma_p * total), rtol=1e-12, atol=0)


@pytest.mark.parametrize("scale", ["global", "layer"])
def test_funnel_scale_is_eg_on_the_autograd_hypergradient(scale):
    """θ_1 = θ_0 − s v_0, so ∂L(θ_1)/∂s = −<v_0, g_1>; the next step must add γ_s <v_0, g_1> to log s."""
    gen = torch.Generator().manual_seed(8)
    w0, b0 = torch.randn(3, 2, generator=gen, dtype=F64), torch.randn(3, generator=gen, dtype=F64)
    w, b = w0.clone().requires_grad_(), b0.clone().requires_grad_()
    gamma_s = 0.6
    opt = EGFunnel([w, b], lr=0.2, momentum=0.5, gamma_p=0.0, gamma_s=gamma_s, scale=scale, max_log_step=1e6)
    loss = lambda w_, b_: _loss(w_) + _loss(b_)  # noqa: E731
    opt.zero_grad()
    loss(w, b).backward()
    opt.step()
    v_w, v_b = opt.state[w]["v"].clone(), opt.state[b]["v"].clone()
    s_w = torch.ones((), dtype=F64, requires_grad=True)
    s_b = torch.ones((), dtype=F64, requires_grad=True)
    loss(w0 - s_w * v_w, b0 - s_b * v_b).backward()
    opt.zero_grad()
    loss(w, b).backward()
    opt.step()
    if scale == "layer":
        expected_w, expected_b = -gamma_s * s_w.grad, -gamma_s * s_b.grad
    else:
        expected_w = expected_b = -gamma_s * (s_w.grad + s_b.grad)
    torch.testing.assert_close(opt.state[w]["log_s"], expected_w, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(opt.state[b]["log_s"], expected_b, rtol=1e-12, atol=1e-14)


# --- HypergradientSGD -----------------------------------------------------------------------------------------------


def test_hypergradient_sgd_rate_is_cumulative_sum_of_inner_products():
    shapes = [(2, 3), (4,)]
    params = [torch.zeros(s, dtype=F64, requires_grad=True) for s in shapes]
    alpha0, beta = 0.5, 0.05
    opt = HypergradientSGD(params, lr=alpha0, beta=beta)
    seq = _grad_sequence(6, shapes, seed=9)
    expected = [torch.zeros(s, dtype=F64) for s in shapes]
    for t, grads in enumerate(seq):
        _feed(opt, params, grads)
        alpha = alpha0 + beta * sum(float((seq[k - 1][i] * seq[k][i]).sum()) for k in range(1, t + 1) for i in range(2))
        assert alpha > 0
        assert opt.param_groups[0]["lr"] == pytest.approx(alpha, rel=1e-12)
        expected = [e - alpha * g for e, g in zip(expected, grads)]
        for p, e in zip(params, expected):
            torch.testing.assert_close(p.detach(), e, rtol=1e-12, atol=1e-14)


def test_hypergradient_sgd_matches_autograd_derivative_in_alpha():
    theta0 = torch.randn(5, generator=torch.Generator().manual_seed(10), dtype=F64)
    alpha0, beta = 0.3, 0.2
    p = theta0.clone().requires_grad_()
    opt = HypergradientSGD([p], lr=alpha0, beta=beta)
    opt.zero_grad()
    _loss(p).backward()
    opt.step()
    alpha = torch.tensor(alpha0, dtype=F64, requires_grad=True)
    _loss(theta0 - alpha * _grad(theta0)).backward()
    opt.zero_grad()
    _loss(p).backward()
    opt.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(alpha0 - beta * float(alpha.grad), rel=1e-12)


def test_hypergradient_sgd_rate_is_floored_at_zero():
    p = torch.ones(3, requires_grad=True)
    opt = HypergradientSGD([p], lr=0.1, beta=10.0, lr_floor=0.0)
    _feed(opt, [p], [torch.ones(3)])
    before = p.detach().clone()
    _feed(opt, [p], [-torch.ones(3)])
    assert opt.param_groups[0]["lr"] == 0.0
    torch.testing.assert_close(p.detach(), before)


# --- shared optimizer behaviour -------------------------------------------------------------------------------------


FACTORIES = {
    "eg_coordinate": lambda ps: EGStepSize(ps, lr=0.1, gamma=3.0),
    "eg_layer": lambda ps: EGStepSize(ps, lr=0.1, gamma=3.0, granularity="layer"),
    "eg_global": lambda ps: EGStepSize(ps, lr=0.1, gamma=3.0, granularity="global"),
    "funnel": lambda ps: EGFunnel(ps, lr=0.05, gamma_p=3.0, gamma_s=1.0),
    "funnel_layer": lambda ps: EGFunnel(ps, lr=0.05, gamma_p=3.0, gamma_s=1.0, scale="layer"),
    "hypergradient": lambda ps: HypergradientSGD(ps, lr=0.1, beta=0.05),
}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_state_dict_round_trip_continues_identically(name):
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
    x = torch.randn(20, 4, generator=torch.Generator().manual_seed(11))
    opt = FACTORIES[name](model.parameters())

    def step(m, o):
        o.zero_grad()
        m(x).pow(2).mean().backward()
        o.step()

    for _ in range(4):
        step(model, opt)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    twin = copy.deepcopy(model)
    twin.load_state_dict(saved["model"])
    restored = FACTORIES[name](twin.parameters())
    restored.load_state_dict(saved["opt"])
    assert restored.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    for _ in range(3):
        step(model, opt)
        step(twin, restored)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for pa, pb in zip(model.parameters(), twin.parameters()):
        for key, value in opt.state[pa].items():
            torch.testing.assert_close(restored.state[pb][key], value, rtol=0, atol=0)


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: EGStepSize(ps, lr=-1.0),
        lambda ps: EGStepSize(ps, granularity="row"),
        lambda ps: EGStepSize(ps, gamma=-0.1),
        lambda ps: EGFunnel(ps, momentum=1.0),
        lambda ps: EGFunnel(ps, scale="coordinate"),
        lambda ps: HypergradientSGD(ps, beta=-1.0),
    ],
)
def test_bad_hyperparameters_are_refused(make):
    with pytest.raises(ValueError):
        make([torch.zeros(2, requires_grad=True)])


def test_params_without_grad_are_skipped():
    used, unused = torch.ones(2, requires_grad=True), torch.ones(2, requires_grad=True)
    opt = EGStepSize([used, unused], lr=0.5)
    _feed(opt, [used], [torch.ones(2)])
    assert unused not in opt.state
    torch.testing.assert_close(unused.detach(), torch.ones(2))
    torch.testing.assert_close(used.detach(), torch.full((2,), 0.5))


# --- the distribution shift ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [2, 8, 64])
def test_plane_rotation_turns_every_vector_by_the_angle(dim):
    angle = math.radians(50)
    r = plane_rotation(dim, angle, np.random.default_rng(0))
    np.testing.assert_allclose(r @ r.T, np.eye(dim), atol=1e-12)
    x = np.random.default_rng(1).standard_normal((10, dim))
    np.testing.assert_allclose(np.sum(x * (x @ r), axis=1), math.cos(angle) * np.sum(x * x, axis=1), rtol=1e-10)


def test_plane_rotation_odd_dimension_keeps_one_axis():
    r = plane_rotation(5, math.radians(90), np.random.default_rng(2))
    np.testing.assert_allclose(r @ r.T, np.eye(5), atol=1e-12)
    values = np.linalg.eigvals(r)
    assert np.sum(np.isclose(values, 1.0)) == 1
    np.testing.assert_allclose(np.sort(np.abs(values.imag)), [0, 1, 1, 1, 1], atol=1e-10)


# --- the job -------------------------------------------------------------------------------------------------------


def _small(**overrides) -> dict:
    spec = {
        "dataset": "clusters",
        "model": "mlp",
        "hidden": 16,
        "steps": 40,
        "batch_size": 32,
        "eval_every": 10,
        "optimizers": [{"name": "sgd"}, {"name": "eg_stepsize"}],
        "lr_scales": [1.0],
        "shift_every": 20,
    }
    spec.update(overrides)
    return spec


def test_example_job_end_to_end():
    ctx = LocalContext()
    params = KIND.params(**KIND.example)
    out = KIND.run(params, ctx)
    json.dumps(out, allow_nan=False)
    assert {"optimizers", "lr_scales", "eval_steps", "shift_steps", "settings", "runs", "curves", "rates"} <= set(out)
    assert out["optimizers"] == ["sgd", "momentum", "adam", "hypergradient", "eg_stepsize", "eg_funnel"]
    n_runs = len(out["optimizers"]) * len(params.lr_scales) * params.seeds
    assert len(out["runs"]) == n_runs and len(out["settings"]) == n_runs
    assert out["shift_steps"] == list(range(params.shift_every, params.steps, params.shift_every))
    assert out["eval_steps"][0] == 0 and out["eval_steps"][-1] == params.steps
    for per_scale in out["curves"].values():
        for curve in per_scale.values():
            assert all(len(v) == len(out["eval_steps"]) for v in curve.values())
    assert set(out["rates"]) == {"hypergradient", "eg_stepsize", "eg_funnel"}
    assert set(out["rates"]["eg_funnel"]["x1"]) == {"p", "s"}
    layers = out["rates"]["eg_stepsize"]["x1"]["nu"]
    assert set(layers) == {"fc1.weight", "fc1.bias", "out.weight", "out.bias"}
    for series in layers.values():
        assert all(lo <= m <= hi for lo, m, hi in zip(series["min"], series["mean"], series["max"]))
    for run in out["runs"]:
        if run["diverged_at"] is None:
            assert len(run["shifts"]) == len(out["shift_steps"])
    # the point of the technique: a rate 10x too small is raised by the EG rules
    small = {(s["optimizer"], s["lr_scale"]): s for s in out["settings"]}
    assert small[("eg_stepsize", 0.1)]["rate_factor"] > 1
    assert small[("eg_funnel", 0.1)]["rate_factor"] > 1
    assert small[("sgd", 1.0)]["rate_factor"] is None
    names = {name for _, name, _ in ctx.metrics}
    assert "eg_stepsize/x1/seed0/test_loss" in names and "eg_stepsize/x1/seed0/nu/fc1.weight/mean" in names
    assert len(ctx.series("sgd/x1/seed0/test_acc")) == len(out["eval_steps"])
    for png in ("loss.png", "accuracy.png", "rates.png"):
        data, media = ctx.artifacts[png]
        assert data.startswith(b"\x89PNG") and media == "image/png"
    assert ctx.progress_log[-1][0] == pytest.approx(1.0)


def test_same_spec_and_seed_give_same_result_and_seeds_differ():
    params = KIND.params(**_small(seeds=2))
    first, second = KIND.run(params, LocalContext(seed=3)), KIND.run(params, LocalContext(seed=3))
    assert first == second
    other = KIND.run(params, LocalContext(seed=4))
    assert other["curves"] != first["curves"]


def test_optimizers_share_initialization_and_batches():
    """With γ = 0 EG is plain SGD, so on the same init and minibatches the two curves must coincide."""
    params = KIND.params(
        **_small(optimizers=[{"name": "sgd", "lr": 0.2}, {"name": "eg_stepsize", "lr": 0.2, "gamma": 0.0}])
    )
    out = KIND.run(params, LocalContext())
    sgd, eg = out["curves"]["sgd"]["x1"]["test_loss"], out["curves"]["eg_stepsize"]["x1"]["test_loss"]
    np.testing.assert_allclose(sgd, eg, rtol=1e-5)


def test_divergence_is_reported_without_nan():
    params = KIND.params(**_small(optimizers=[{"name": "sgd", "lr": 100.0}], lr_scales=[100.0], shift_every=0))
    out = KIND.run(params, LocalContext())
    json.dumps(out, allow_nan=False)
    run = out["runs"][0]
    assert run["diverged_at"] is not None and run["final_test_loss"] is None
    assert out["settings"][0]["diverged_runs"] == 1


def test_recovery_is_measured_against_the_pre_shift_loss():
    params = KIND.params(**_small(steps=60, shift_every=20, shift_angle=90.0, recovery_tol=0.5))
    out = KIND.run(params, LocalContext())
    for run in out["runs"]:
        idx = {s: i for i, s in enumerate(out["eval_steps"])}
        losses = out["curves"][run["optimizer"]]["x1"]["test_loss"]
        for shift in run["shifts"]:
            assert shift["pre_shift_loss"] == pytest.approx(losses[idx[shift["step"]]])
            k = shift["recovery_steps"]
            later = [s for s in out["eval_steps"] if shift["step"] < s <= shift["step"] + params.shift_every]
            hits = [
                s - shift["step"]
                for s in later
                if losses[idx[s]] <= shift["pre_shift_loss"] * (1 + params.recovery_tol)
            ]
            assert k == (hits[0] if hits else None)


def test_uploaded_dataset_and_missing_labels():
    rng = np.random.default_rng(0)
    ds = str(uuid.uuid4())
    x = rng.standard_normal((120, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) * 7  # labels need not be 0..C-1
    params = KIND.params(**_small(dataset=ds, steps=20))
    out = KIND.run(params, LocalContext(datasets={ds: {"x": x, "y": y}}))
    assert out["classes"] == 2 and out["input_dim"] == 6
    with pytest.raises(ValueError, match="dataset"):
        KIND.run(params, LocalContext(datasets={ds: {"x": x}}))


def test_timeout_stops_the_job():
    with pytest.raises(JobTimedOut):
        KIND.run(KIND.params(**_small()), LocalContext(timeout_s=0.0))


@pytest.mark.parametrize(
    "bad",
    [
        {"lr_scales": [0.0]},
        {"lr_scales": []},
        {"shift_every": 15},
        {"steps": 20000, "eval_every": 1},
        {"optimizers": [{"name": "rmsprop"}]},
        {"optimizers": [{"name": "eg_stepsize", "granularity": "row"}]},
        {"optimizers": [{"name": "sgd", "lr": float("nan")}]},
        {"hidden": 1024, "depth": 4, "batch_size": 4096, "steps": 20000, "eval_every": 100, "seeds": 5},
        {"momentum": 0.9},
    ],
)
def test_bad_params_raise_validation_error(bad):
    with pytest.raises(pydantic.ValidationError):
        EGStepSizeParams(**_small(**bad))


def test_state_saved_with_log_nu_in_nats_loads_as_log2_nu():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64))
    opt = EGStepSize([p], lr=0.1, gamma=2.0)
    for g in ([0.5, -0.2, 0.1], [0.4, 0.3, 0.1]):
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    old = copy.deepcopy(opt.state_dict())
    for st in old["state"].values():  # the layout before log2_nu
        st["log_nu"] = st.pop("log2_nu") * math.log(2)
    q = torch.nn.Parameter(p.detach().clone())
    restored = EGStepSize([q], lr=0.1, gamma=2.0)
    restored.load_state_dict(old)
    torch.testing.assert_close(restored.state[q]["log2_nu"], opt.state[p]["log2_nu"], rtol=1e-15, atol=0)
    assert "log_nu" not in restored.state[q]
