"""EG optimizers: defaults are the published rules, the safety clamps do what they say, and every code path (flat
buffers, big tensors with their own state, the fused update run eagerly) computes the same closed form."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import core.optim.eg as eg_module
from core.optim.eg import EGFunnel, EGStepSize, HypergradientSGD

F64 = torch.float64
GRANULARITIES = ("coordinate", "layer", "global")
# A small tensor (its state lives in the group's flat buffers) beside two big ones (130 x 128 doubles is past the
# 128 KiB flat-buffer size, so each keeps its own state: the big-tensor eager path).
SHAPES = [(3, 4), (130, 128), (5,), (129, 130)]


def _feed(opt: torch.optim.Optimizer, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
    for p, g in zip(params, grads):
        p.grad = g.clone()
    opt.step()


def _grads(steps: int, shapes, scale: float, seed: int) -> list[list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [[scale * torch.randn(s, generator=gen, dtype=F64) for s in shapes] for _ in range(steps)]


def _closed_form_log_nu(seq, t: int, granularity: str, gamma: float) -> list[torch.Tensor]:
    """log ν_{t+1} = γ Σ_{k≤t} g_{k−1} ⊙ g_k, summed per tensor (layer) or over the group (global)."""
    sums = [
        sum((seq[k - 1][i] * seq[k][i] for k in range(1, t + 1)), torch.zeros_like(seq[0][i]))
        for i in range(len(seq[0]))
    ]
    if granularity == "layer":
        sums = [s.sum() for s in sums]
    elif granularity == "global":
        total = sum(s.sum() for s in sums)
        sums = [total] * len(sums)
    return [gamma * s for s in sums]


def _is_view(t: torch.Tensor) -> bool:
    return t._base is not None


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_defaults_compute_the_published_rule_on_small_and_big_tensors(granularity):
    """ν = exp(γ Σ g_{k−1} ⊙ g_k) with default clamps, although single products reach far beyond any clamp."""
    params = [torch.zeros(s, dtype=F64, requires_grad=True) for s in SHAPES]
    gamma, lr = (0.3, 1e-3) if granularity == "coordinate" else (1e-3, 1e-3)
    opt = EGStepSize(params, lr=lr, gamma=gamma, granularity=granularity)
    assert opt.defaults["max_log_step"] is None and opt.defaults["max_log_nu"] is None
    seq = _grads(6, SHAPES, scale=3.0, seed=1)
    theta = [torch.zeros(s, dtype=F64) for s in SHAPES]
    biggest_step = 0.0
    for t, grads in enumerate(seq):
        _feed(opt, params, grads)
        expected = _closed_form_log_nu(seq, t, granularity, gamma)
        if t:
            step = _closed_form_log_nu(seq[t - 1 : t + 1], 1, granularity, gamma)
            biggest_step = max(biggest_step, max(float(s.abs().max()) for s in step))
        for i, p in enumerate(params):
            state = opt.state[p]
            torch.testing.assert_close(
                state["log2_nu"] * math.log(2), expected[i].expand_as(state["log2_nu"]), rtol=1e-12, atol=1e-12
            )
            torch.testing.assert_close(state["nu"], torch.exp(expected[i]).expand_as(state["nu"]), rtol=1e-12, atol=0)
            theta[i] = theta[i] - lr * state["nu"] * grads[i]
            torch.testing.assert_close(p.detach(), theta[i], rtol=1e-12, atol=1e-15)
    assert biggest_step > 1.0  # far past the old default clamp of 0.5 per step
    if granularity == "coordinate":
        # both code paths ran: the small tensors share flat buffers, the big ones keep their own state
        assert _is_view(opt.state[params[0]]["nu"]) and not _is_view(opt.state[params[1]]["nu"])


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_max_log_step_clamps_each_exponent_on_every_path(granularity):
    params = [torch.zeros(s, dtype=F64, requires_grad=True) for s in SHAPES]
    cap = 0.25
    opt = EGStepSize(params, lr=1e-6, gamma=1.0, granularity=granularity, max_log_step=cap)
    ones = [torch.full(s, 10.0, dtype=F64) for s in SHAPES]
    _feed(opt, params, ones)
    _feed(opt, params, ones)  # products of 100 (sums of far more for layer/global), clamped to +cap
    _feed(opt, params, [-g for g in ones])  # products of −100, clamped to −cap: back to 0
    for p in params:
        torch.testing.assert_close(
            opt.state[p]["log2_nu"] * math.log(2), torch.full_like(opt.state[p]["log2_nu"], 0.0), atol=1e-12, rtol=0
        )
    _feed(opt, params, [g * 1e-3 for g in ones])  # −0.1 per coordinate: inside the clamp for coordinates only
    for p in params:
        log_nu = opt.state[p]["log2_nu"] * math.log(2)
        expected = -0.1 if granularity == "coordinate" else -cap
        torch.testing.assert_close(log_nu, torch.full_like(log_nu, expected), atol=1e-12, rtol=0)


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_max_log_nu_bounds_log_nu_on_every_path(granularity):
    params = [torch.zeros(s, dtype=F64, requires_grad=True) for s in SHAPES]
    opt = EGStepSize(params, lr=1e-6, gamma=1.0, granularity=granularity, max_log_nu=1.5)
    g = [torch.full(s, 3.0, dtype=F64) for s in SHAPES]
    for _ in range(3):  # products 0, +9, +9 per coordinate: log ν bounded at +1.5
        _feed(opt, params, g)
    for p in params:
        log_nu = opt.state[p]["log2_nu"] * math.log(2)
        torch.testing.assert_close(log_nu, torch.full_like(log_nu, 1.5), atol=1e-12, rtol=0)
    _feed(opt, params, [-x for x in g])  # 1.5 − 9, bounded at −1.5
    for p in params:
        log_nu = opt.state[p]["log2_nu"] * math.log(2)
        torch.testing.assert_close(log_nu, torch.full_like(log_nu, -1.5), atol=1e-12, rtol=0)
        torch.testing.assert_close(opt.state[p]["nu"], torch.full_like(log_nu, math.exp(-1.5)), rtol=1e-12, atol=0)


def test_clamps_must_be_positive_or_off():
    p = [torch.zeros(2, requires_grad=True)]
    for bad in ({"max_log_step": 0.0}, {"max_log_nu": -1.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            EGStepSize(p, **bad)
    with pytest.raises(ValueError, match="max_log_gain"):
        EGFunnel(p, max_log_gain=0.0)
    with pytest.raises(ValueError, match="lr_floor"):
        HypergradientSGD(p, lr_floor=-0.1)


def _fused_reference(hp, g, prev, log2_nu, nu, p):
    """The coordinate update written out: what the fused function must compute."""
    lr, gamma, cap, bound = (float(v) for v in hp)
    step = (prev * g).clamp(-cap / gamma, cap / gamma) * gamma
    log_nu = (log2_nu * math.log(2) + step).clamp(-bound, bound)
    return p - lr * torch.exp(log_nu) * g, log_nu / math.log(2), torch.exp(log_nu)


@pytest.mark.parametrize("cap, bound", [(math.inf, math.inf), (0.2, 0.5)])
def test_fused_rate_move_run_eagerly_is_the_coordinate_update(cap, bound):
    gen = torch.Generator().manual_seed(4)
    p, g, prev = (torch.randn(40, 30, generator=gen, dtype=F64) for _ in range(3))
    log2_nu = 0.3 * torch.randn(40, 30, generator=gen, dtype=F64)
    nu = torch.exp2(log2_nu)
    hp = torch.tensor([0.05, 0.7, cap, bound], dtype=F64)
    want_p, want_log2, want_nu = _fused_reference(hp, g, prev, log2_nu, nu, p)
    got = [t.clone() for t in (p, g, prev, log2_nu, nu)]
    eg_module._FUSED["rate_move"](hp, True, [got[0]], [got[1]], [got[2]], [got[3]], [got[4]])
    torch.testing.assert_close(got[0], want_p, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got[3], want_log2, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got[4], want_nu, rtol=1e-12, atol=0)
    torch.testing.assert_close(got[2], g, rtol=0, atol=0)  # prev ← g
    frozen = [t.clone() for t in (p, g, prev, log2_nu, nu)]
    eg_module._FUSED["rate_move"](hp, False, [frozen[0]], [frozen[1]], [frozen[2]], [frozen[3]], [frozen[4]])
    torch.testing.assert_close(frozen[0], p - 0.05 * nu * g, rtol=1e-12, atol=1e-14)  # γ = 0: ν stays
    torch.testing.assert_close(frozen[3], log2_nu, rtol=0, atol=0)


def test_fused_move_reads_nu_from_a_vector_or_a_list():
    gen = torch.Generator().manual_seed(6)
    ps = [torch.randn(5, 4, generator=gen, dtype=F64) for _ in range(2)]
    gs = [torch.randn(5, 4, generator=gen, dtype=F64) for _ in range(2)]
    vec = torch.tensor([9.0, 2.0, 3.0], dtype=F64)
    hp = torch.tensor([0.1, 1.0, math.inf, math.inf], dtype=F64)
    for nu, pos, want in ((vec, (2, 1), (3.0, 2.0)), ([vec[0], vec[2]], (), (9.0, 3.0))):
        got_p, got_prev = [p.clone() for p in ps], [torch.zeros_like(g) for g in gs]
        eg_module._FUSED["move"](hp, got_p, gs, got_prev, nu, pos)
        for p, g, a, prev, w in zip(ps, gs, got_p, got_prev, want):
            torch.testing.assert_close(a, p - 0.1 * w * g, rtol=1e-12, atol=1e-15)
            torch.testing.assert_close(prev, g, rtol=0, atol=0)


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_fused_branch_of_step_equals_eager_step_without_compiling(granularity, monkeypatch):
    """``step``'s fused branch (which tensors go to the fused update, where their ν sit) with the fused functions
    run as plain Python: the same numbers as the eager path, and no torch.compile needed."""
    monkeypatch.setattr(eg_module, "_compiled", lambda name: eg_module._FUSED[name])
    monkeypatch.setattr(eg_module, "_FUSED_NUMEL", 1000)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 130), torch.nn.Tanh(), torch.nn.Linear(130, 128), torch.nn.Tanh(), torch.nn.Linear(128, 3)
    ).double()
    twin = copy.deepcopy(model)
    gamma = 30.0 if granularity == "coordinate" else 3.0
    eager = EGStepSize(model.parameters(), lr=0.05, gamma=gamma, granularity=granularity, max_log_step=0.3)
    fused = EGStepSize(twin.parameters(), lr=0.05, gamma=gamma, granularity=granularity, max_log_step=0.3, fused=True)
    gen = torch.Generator().manual_seed(5)
    x, y = torch.randn(16, 4, generator=gen, dtype=F64), torch.randint(0, 3, (16,), generator=gen)
    for t in range(6):
        if t == 3:  # a lower rate (as from a scheduler) reaches the fused update: its cached hyperparameters follow
            for opt in (eager, fused):
                opt.param_groups[0]["lr"] = 0.02
        for m, opt in ((model, eager), (twin, fused)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
    moved = False
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14)
        for key, value in eager.state[a].items():
            torch.testing.assert_close(fused.state[b][key], value, rtol=1e-12, atol=1e-14)
        moved |= bool((eager.state[a]["nu"] != 1).any())
    assert moved


def test_funnel_defaults_compute_the_published_gains_and_scale():
    """p = exp(γ_p Σ m_{t−1} ⊙ g_t) (β = 0: m is the last gradient) and log s = γ_s Σ <v_prev, g>, unclamped."""
    shapes = [(3,), (130, 128)]
    params = [torch.zeros(s, dtype=F64, requires_grad=True) for s in shapes]
    gamma_p, gamma_s, lr, mu = 0.5, 1e-5, 0.01, 0.5
    opt = EGFunnel(params, lr=lr, momentum=mu, gamma_p=gamma_p, gamma_s=gamma_s, beta=0.0, scale="layer")
    seq = _grads(5, shapes, scale=1.0, seed=2)
    log_p = [torch.zeros(s, dtype=F64) for s in shapes]
    v = [torch.zeros(s, dtype=F64) for s in shapes]
    log_s = [0.0, 0.0]
    for t, grads in enumerate(seq):
        _feed(opt, params, grads)
        for i, p in enumerate(params):
            if t:
                log_p[i] = log_p[i] + gamma_p * seq[t - 1][i] * grads[i]
            log_s[i] += gamma_s * float(torch.vdot(v[i].flatten(), grads[i].flatten()))
            v[i] = mu * v[i] + lr * torch.exp(log_p[i]) * grads[i]
            torch.testing.assert_close(opt.state[p]["p"], torch.exp(log_p[i]), rtol=1e-12, atol=0)
            torch.testing.assert_close(float(opt.state[p]["log_s"]), log_s[i], rtol=1e-12, atol=1e-14)
    assert max(float((seq[t - 1][1] * seq[t][1]).abs().max()) * gamma_p for t in range(1, 5)) > 0.5


def test_funnel_clamps_bound_the_gain_exponent_and_the_gain():
    p = torch.zeros(2, dtype=F64, requires_grad=True)
    opt = EGFunnel([p], lr=1e-6, gamma_p=1.0, gamma_s=0.0, beta=0.0, max_log_step=0.25, max_log_gain=0.6)
    for g in ([10.0, -10.0], [10.0, 10.0], [10.0, -10.0]):  # products 0, then ±100: ±0.25 each step
        _feed(opt, [p], [torch.tensor(g, dtype=F64)])
    torch.testing.assert_close(opt.state[p]["log_p"], torch.tensor([0.5, -0.5], dtype=F64), rtol=0, atol=1e-15)
    _feed(opt, [p], [torch.tensor([10.0, 10.0], dtype=F64)])  # ±0.75, bounded at ±0.6
    torch.testing.assert_close(opt.state[p]["log_p"], torch.tensor([0.6, -0.6], dtype=F64), rtol=0, atol=1e-15)
    torch.testing.assert_close(opt.state[p]["p"], torch.exp(torch.tensor([0.6, -0.6], dtype=F64)), rtol=1e-15, atol=0)


def test_hypergradient_sgd_default_follows_the_paper_below_zero_and_the_floor_is_opt_in():
    p = torch.ones(3, dtype=F64, requires_grad=True)
    opt = HypergradientSGD([p], lr=0.1, beta=10.0)
    _feed(opt, [p], [torch.ones(3, dtype=F64)])
    before = p.detach().clone()
    _feed(opt, [p], [-torch.ones(3, dtype=F64)])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 - 30.0, rel=1e-12)  # α + β <g_0, g_1>, negative
    torch.testing.assert_close(p.detach(), before - (0.1 - 30.0) * -torch.ones(3, dtype=F64))
    q = torch.ones(3, dtype=F64, requires_grad=True)
    floored = HypergradientSGD([q], lr=0.1, beta=10.0, lr_floor=0.02)
    _feed(floored, [q], [torch.ones(3, dtype=F64)])
    _feed(floored, [q], [-torch.ones(3, dtype=F64)])
    assert floored.param_groups[0]["lr"] == 0.02


def test_a_parameter_that_gets_its_first_gradient_later_joins_the_update():
    """The flat buffers are rebuilt when the set of parameters with gradients grows: b (no gradient at step 1) then
    follows the closed form from its own first gradient on, as if it had its own optimizer."""
    a, b = torch.zeros(3, dtype=F64, requires_grad=True), torch.zeros(4, dtype=F64, requires_grad=True)
    opt = EGStepSize([a, b], lr=0.1, gamma=0.5)
    seq = _grads(4, [(3,), (4,)], scale=1.0, seed=9)
    _feed(opt, [a], [seq[0][0]])
    for grads in seq[1:]:
        _feed(opt, [a, b], grads)
    b_seq = [[g[1]] for g in seq[1:]]
    log_nu_b = _closed_form_log_nu(b_seq, len(b_seq) - 1, "coordinate", 0.5)[0]
    torch.testing.assert_close(opt.state[b]["nu"], torch.exp(log_nu_b), rtol=1e-12, atol=0)
    log_nu_a = _closed_form_log_nu([[g[0]] for g in seq], len(seq) - 1, "coordinate", 0.5)[0]
    torch.testing.assert_close(opt.state[a]["nu"], torch.exp(log_nu_a), rtol=1e-12, atol=0)
    expected_b = -0.1 * sum(
        torch.exp(_closed_form_log_nu(b_seq, t, "coordinate", 0.5)[0]) * b_seq[t][0] for t in range(len(b_seq))
    )
    torch.testing.assert_close(b.detach(), expected_b, rtol=1e-12, atol=1e-15)


def test_funnel_momentum_range_and_a_state_without_the_fused_flag_loads_unfused():
    p = [torch.zeros(2, requires_grad=True)]
    EGFunnel(p, momentum=0.0)
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="momentum"):
            EGFunnel(p, momentum=bad)
    opt = EGStepSize(p)
    state = opt.__getstate__()
    for group in state["param_groups"]:
        del group["fused"]  # as saved before fused existed
    old = EGStepSize.__new__(EGStepSize)
    old.__setstate__(state)
    assert old.param_groups[0]["fused"] is False
