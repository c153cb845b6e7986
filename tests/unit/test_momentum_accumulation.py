"""Checks of docs/techniques.md#momentum_accumulation: accumulation inside the momentum equals explicit accumulation
(SGDM), its Adam analogue has the same m and a larger v, β̃^k values, state_dict resumption, and the job end to end."""

from __future__ import annotations

import copy
import json
import math
import uuid

import numpy as np
import pydantic
import pytest
import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from core.optim.accum import AccumAdam, AccumSGDM, beta_tilde, state_bytes
from core.techniques import get_kind
from core.techniques.local import LocalContext
from core.techniques.momentum_accumulation.spec import ARMS

KIND = get_kind("momentum_accumulation")


def _net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()


def _batches(n: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(4, 5, generator=gen, dtype=torch.float64), torch.randint(0, 3, (4,), generator=gen))
        for _ in range(n)
    ]


def _flat(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in net.parameters()])


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
@pytest.mark.parametrize("k", [1, 2, 3, 8])
def test_sgdm_trajectory_equals_explicit_buffer_plus_ema_sgdm(k, weight_decay):
    """(B) = (A) in float64: an independent explicit-buffer EMA SGDM written here, compared after every micro-step."""
    lr, beta, steps = 0.1, 0.9, 120
    ref, net = _net(0), _net(0)
    buf = [torch.zeros_like(p) for p in ref.parameters()]
    mom = [torch.zeros_like(p) for p in ref.parameters()]
    opt = AccumSGDM(net.parameters(), lr=lr, momentum=beta, accum_steps=k, weight_decay=weight_decay)
    start = _flat(net)
    worst = 0.0
    for t, (x, y) in enumerate(_batches(steps), start=1):
        ref.zero_grad()
        F.cross_entropy(ref(x), y).backward()
        with torch.no_grad():
            for b, p in zip(buf, ref.parameters()):
                b += p.grad
            if t % k == 0:
                for b, m, p in zip(buf, mom, ref.parameters()):
                    g = b / k + weight_decay * p
                    m.mul_(beta).add_((1 - beta) * g)
                    p -= lr * m
                    b.zero_()
        before = _flat(net)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()
        if t % k:
            assert torch.equal(_flat(net), before), "parameters moved on a micro-step with χ_t = 0"
        worst = max(worst, float((_flat(net) - _flat(ref)).abs().max()))
    assert worst <= 1e-12
    assert float((_flat(net) - start).abs().max()) > 1e-2
    assert opt.param_groups[0]["micro_step"] == steps
    assert opt.param_groups[0]["updates"] == steps // k


def test_sgdm_first_update_closed_form_is_ema_not_torch_sgd():
    """θ_1 = θ_0 - α(1-β)·mean(g): the EMA form (torch.optim.SGD would move by α·mean(g))."""
    p = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = AccumSGDM([p], lr=0.5, momentum=0.8, accum_steps=3)
    for g in (1.0, 2.0, 6.0):
        p.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
    assert p.item() == pytest.approx(1.0 - 0.5 * 0.2 * 3.0, abs=1e-15)
    for g in (3.0, 3.0, 3.0):
        p.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
    m2 = 0.8 * 0.2 * 3.0 + 0.2 * 3.0
    assert p.item() == pytest.approx(1.0 - 0.5 * 0.2 * 3.0 - 0.5 * m2, abs=1e-15)


def test_parameter_without_gradient_decays_like_a_zero_gradient():
    a = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    b = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt_none = AccumSGDM([a], lr=0.1, momentum=0.9, accum_steps=2)
    opt_zero = AccumSGDM([b], lr=0.1, momentum=0.9, accum_steps=2)
    for t in range(10):
        g = torch.full((3,), 2.0, dtype=torch.float64) if t < 2 else None
        a.grad = g
        b.grad = g if g is not None else torch.zeros(3, dtype=torch.float64)
        opt_none.step()
        opt_zero.step()
        assert torch.equal(a, b)
    assert float(a.detach()[0]) < 1.0 - 0.1 * 0.1 * 2.0  # still moving after the gradient stopped: momentum carries it


def _window_variance_ema(grads: list[torch.Tensor], k: int, beta2: float) -> torch.Tensor:
    """v_B - v_A after the last update: EMA (β2) of the within-window variance mean(g²) - mean(g)²."""
    gap = torch.zeros_like(grads[0])
    for w in range(0, len(grads), k):
        window = torch.stack(grads[w : w + k])
        gap = beta2 * gap + (1 - beta2) * (window.pow(2).mean(0) - window.mean(0).pow(2))
    return gap


def test_adam_m_equals_explicit_and_v_exceeds_it_by_the_window_variance():
    """Same gradient sequence into AccumAdam(k) and torch Adam fed the window means: m equal, v_B ≥ v_A."""
    k, beta1, beta2, steps = 3, 0.9, 0.99, 120
    gen = torch.Generator().manual_seed(3)
    grads = [torch.randn(6, generator=gen, dtype=torch.float64) + 0.5 for _ in range(steps)]
    p = torch.nn.Parameter(torch.zeros(6, dtype=torch.float64))
    q = torch.nn.Parameter(torch.zeros(6, dtype=torch.float64))
    ours = AccumAdam([p], lr=1e-3, betas=(beta1, beta2), accum_steps=k)
    ref = torch.optim.Adam([q], lr=1e-3, betas=(beta1, beta2))
    for t in range(1, steps + 1):
        p.grad = grads[t - 1].clone()
        ours.step()
        if t % k == 0:
            q.grad = torch.stack(grads[t - k : t]).mean(0)
            ref.step()
            m_b, v_b = ours.state[p]["exp_avg"], ours.state[p]["exp_avg_sq"]
            m_a, v_a = ref.state[q]["exp_avg"], ref.state[q]["exp_avg_sq"]
            assert float((m_b - m_a).abs().max()) <= 1e-14
            assert bool((v_b >= v_a - 1e-15).all())
            gap = _window_variance_ema(grads[:t], k, beta2)
            assert float((v_b - v_a - gap).abs().max()) <= 1e-14
    assert float((v_b - v_a).min()) > 1e-3


@pytest.mark.parametrize("k", [1, 2, 5])
def test_adam_with_constant_window_gradient_is_adamw_per_update(k):
    """Full-batch loss: g is constant inside a window (θ does not move), so AccumAdam(k) is torch AdamW taking one
    step per window: checks bias corrections count updates (t/k) and decoupled weight decay only on updates."""
    x, y = _batches(1)[0]
    net, ref = _net(2), _net(2)
    ours = AccumAdam(net.parameters(), lr=0.02, betas=(0.8, 0.95), accum_steps=k, weight_decay=0.1)
    adamw = torch.optim.AdamW(ref.parameters(), lr=0.02, betas=(0.8, 0.95), weight_decay=0.1)
    for t in range(1, 106):
        ours.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        ours.step()
        if t % k == 0:
            adamw.zero_grad()
            F.cross_entropy(ref(x), y).backward()
            adamw.step()
            # float64 rounding, summed in a CPU-dependent order, reaches ~1e-12 over 105 Adam steps; a wrong bias
            # correction or decay would be off by ~1e-3
            assert float((_flat(net) - _flat(ref)).abs().max()) <= 1e-10
    assert ours.param_groups[0]["updates"] == 105 // k


def test_weight_decay_is_gated_by_chi():
    """Zero gradients: Adam's update is only decay, θ_n = θ_0 (1 - lr·λ)^n with n counting updates, not micro-steps."""
    p = torch.nn.Parameter(torch.full((4,), 2.0, dtype=torch.float64))
    opt = AccumAdam([p], lr=0.1, accum_steps=4, weight_decay=0.5)
    for t in range(1, 21):
        p.grad = torch.zeros(4, dtype=torch.float64)
        opt.step()
        assert float(p.detach()[0]) == pytest.approx(2.0 * (1 - 0.05) ** (t // 4), abs=1e-15)
    q = torch.nn.Parameter(torch.full((4,), 2.0, dtype=torch.float64))
    sgd = AccumSGDM([q], lr=0.1, momentum=0.5, accum_steps=4, weight_decay=0.5)
    theta, m = 2.0, 0.0
    for t in range(1, 21):
        q.grad = torch.zeros(4, dtype=torch.float64)
        sgd.step()
        if t % 4 == 0:
            m = 0.5 * m + 0.5 * 0.5 * theta
            theta -= 0.1 * m
        assert float(q.detach()[0]) == pytest.approx(theta, abs=1e-15)


def test_beta_tilde_power_k_matches_the_documented_values():
    for k, expected in ((2, 0.9025), (4, 0.90369), (8, 0.90427)):
        assert beta_tilde(0.9, k) ** k == pytest.approx(expected, abs=5e-6)
    assert beta_tilde(0.9, 10**6) ** (10**6) == pytest.approx(math.exp(-0.1), abs=1e-6)
    assert math.exp(-0.1) == pytest.approx(0.90484, abs=5e-6)


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: AccumSGDM(ps, lr=0.1, momentum=0.9, accum_steps=3, weight_decay=0.01),
        lambda ps: AccumAdam(ps, lr=0.01, accum_steps=3, weight_decay=0.01),
    ],
)
def test_state_dict_round_trip_mid_window_resumes_identically(make):
    data = _batches(40, seed=5)
    net = _net(4)
    opt = make(net.parameters())

    def micro(model, optimizer, batch):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(batch[0]), batch[1]).backward()
        optimizer.step()

    for b in data[:10]:  # 10 = 3·3 + 1: saved in the middle of a window
        micro(net, opt, b)
    saved_opt, saved_net = copy.deepcopy(opt.state_dict()), copy.deepcopy(net.state_dict())
    for b in data[10:]:
        micro(net, opt, b)
    twin = _net(9)
    twin.load_state_dict(saved_net)
    twin_opt = make(twin.parameters())
    twin_opt.load_state_dict(saved_opt)
    assert twin_opt.param_groups[0]["micro_step"] == 10 and twin_opt.param_groups[0]["updates"] == 3
    for b in data[10:]:
        micro(twin, twin_opt, b)
    assert torch.equal(_flat(twin), _flat(net))
    assert twin_opt.param_groups[0]["updates"] == opt.param_groups[0]["updates"] == 13


def test_state_is_one_parameter_sized_tensor_per_moment():
    net = _net(0)
    n_bytes = sum(p.numel() * p.element_size() for p in net.parameters())
    x, y = _batches(1)[0]
    for opt, moments in ((AccumSGDM(net.parameters(), lr=0.1), 1), (AccumAdam(net.parameters()), 2)):
        F.cross_entropy(net(x), y).backward()
        opt.step()
        assert state_bytes(opt) == moments * n_bytes


@pytest.mark.parametrize(
    "kwargs", [dict(accum_steps=0), dict(accum_steps=2.0), dict(momentum=1.0), dict(lr=-1.0), dict(weight_decay=-0.1)]
)
def test_sgdm_rejects_bad_hyperparameters(kwargs):
    args = dict(lr=0.1) | kwargs
    with pytest.raises(ValueError):
        AccumSGDM([torch.nn.Parameter(torch.zeros(2))], **args)


def test_job_example_end_to_end():
    ctx = LocalContext()
    params = KIND.params(**KIND.example)
    result = KIND.run(params, ctx)
    json.dumps(result, allow_nan=False)  # plain JSON: no tensors, no NaN
    assert {"optimizer", "accum_steps", "eval_steps", "arms", "best_arm", "n_params", "param_bytes"} <= set(result)
    assert list(result["arms"]) == list(ARMS)
    n_eval = len(result["eval_steps"])
    k = params.accum_steps
    for arm, res in result["arms"].items():
        assert len(res["train_loss"]) == len(res["heldout_loss"]) == n_eval
        assert len(res["final_heldout_accuracies"]) == params.seeds
        assert 0.0 <= res["final_heldout_accuracy_mean"] <= 1.0
        assert len(ctx.series(f"{arm}/heldout_loss")) == n_eval
        seeds = [ctx.series(f"{arm}/seed{i}/heldout_loss") for i in range(params.seeds)]  # charts draw their band
        assert np.allclose(np.mean(seeds, axis=0), ctx.series(f"{arm}/heldout_loss"), rtol=1e-12)
        assert not ctx.series(f"{arm}/seed{params.seeds}/heldout_loss")
        assert res["updates"] == (params.steps if arm == "per_micro_batch" else params.steps // k)
    arms = result["arms"]
    assert arms["chi_exact"]["identity_error_vs_explicit"] <= 1e-10  # float64 SGDM: (B) = (A)
    assert arms["lr_chi_only"]["identity_error_vs_explicit"] > 1e-6  # a different method really differs
    assert arms["explicit_buffer"]["state_bytes"] - arms["chi_exact"]["state_bytes"] == result["param_bytes"]
    assert arms["beta_tilde_lr_chi"]["betas"][0] == pytest.approx(1 - (1 - params.betas[0]) / k)
    # the initial held-out loss is chance level for 10 classes and falls for the exact arm
    assert arms["chi_exact"]["heldout_loss"][0] == pytest.approx(math.log(10), abs=0.1)
    assert arms["chi_exact"]["heldout_loss"][-1] < arms["chi_exact"]["heldout_loss"][0] - 0.5
    png = ctx.artifacts["curves.png"]
    assert png[0].startswith(b"\x89PNG") and png[1] == "image/png"
    assert ctx.progress_log[-1][0] == 1.0


def test_job_cnn_adam_uploaded_dataset_and_determinism():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 120)
    x = rng.standard_normal((120, 16)).astype(np.float32) + y[:, None]
    ds = str(uuid.uuid4())
    spec = dict(
        dataset=ds,
        model="cnn",
        channels=2,
        hidden=8,
        optimizer="adam",
        lr=0.01,
        accum_steps=4,
        micro_batch=4,
        steps=24,
        seeds=2,
        eval_every=8,
        arms=["chi_exact", "explicit_buffer"],
    )
    runs = []
    for _ in range(2):
        ctx = LocalContext(seed=3, datasets={ds: {"x": x, "y": y}})
        runs.append(KIND.run(KIND.params(**spec), ctx))
    assert runs[0] == runs[1]
    arms = runs[0]["arms"]
    assert list(arms) == ["explicit_buffer", "chi_exact"]  # explicit first so the others compare against it
    # float32 Adam: v_B ≠ v_A, so (B) only approximates (A); the gap is reported, small but not zero
    assert 0.0 < arms["chi_exact"]["identity_error_vs_explicit"] < 0.05
    assert arms["explicit_buffer"]["state_bytes"] - arms["chi_exact"]["state_bytes"] == runs[0]["param_bytes"]
    with pytest.raises(ValueError, match="dataset"):
        KIND.run(KIND.params(**spec), LocalContext(datasets={ds: {"x": x}}))


@pytest.mark.parametrize(
    "bad",
    [
        dict(arms=["chi_exact", "chi_exact"]),
        dict(arms=[]),
        dict(arms=["sgd_only"]),
        dict(steps=3, accum_steps=4),
        dict(model="cnn", dataset="clusters"),
        dict(betas=[1.0, 0.999]),
        dict(eval_every=1000, steps=100),
        dict(steps=100_000, seeds=10),
        dict(hidden=1024, micro_batch=1024, steps=20_000),
        dict(lr=float("nan")),
        dict(unknown_field=1),
    ],
)
def test_bad_params_raise_validation_error(bad):
    with pytest.raises(pydantic.ValidationError):
        KIND.params(**(KIND.example | bad))


@pytest.mark.parametrize("optimizer", ["sgdm", "adam"])
def test_reported_updates_are_the_weight_changes_that_happened(optimizer):
    """``updates`` per arm is the number of optimizer steps that moved the weights, counted here independently by
    global step hooks: steps//k for the accumulating arms (a stock arm that lost its χ gating would move on every
    micro-step and report it), steps for per-micro-batch. steps = 22 is not a multiple of k = 4: the partial last
    window makes no update."""
    # Optimizers are told apart by identity, held here: an arm's optimizer is freed when the arm ends, and a later
    # arm's could then get the same id() and be counted as the same optimizer.
    seen: list[torch.optim.Optimizer] = []
    moved: list[int] = []
    snapshots: list[list[torch.Tensor]] = []

    def index(opt) -> int:
        for i, known in enumerate(seen):
            if known is opt:
                return i
        seen.append(opt)
        moved.append(0)
        snapshots.append([])
        return len(seen) - 1

    def before(opt, args, kwargs):
        snapshots[index(opt)] = [p.detach().clone() for g in opt.param_groups for p in g["params"]]

    def after(opt, args, kwargs):
        i = index(opt)
        params = [p for g in opt.param_groups for p in g["params"]]
        moved[i] += int(any(not torch.equal(a, p) for a, p in zip(snapshots[i], params, strict=True)))

    hooks = [register_optimizer_step_pre_hook(before), register_optimizer_step_post_hook(after)]
    try:
        params = KIND.params(
            dataset="digits",
            hidden=8,
            optimizer=optimizer,
            lr=0.1,
            accum_steps=4,
            micro_batch=4,
            steps=22,
            seeds=1,
            eval_every=22,
        )
        result = KIND.run(params, LocalContext())
    finally:
        for h in hooks:
            h.remove()
    counted = moved  # one optimizer per arm, created in the order of ARMS
    assert len(counted) == len(ARMS)
    for arm, n in zip(ARMS, counted):
        assert result["arms"][arm]["updates"] == n, arm
        assert n == (22 if arm == "per_micro_batch" else 5), arm


def test_eval_rows_caps_what_each_evaluation_scores():
    """digits: 1797 rows, 20 % held out = 359. eval_rows = 5 scores 5 held-out rows and a 5-row train probe; a cap
    above the held-out rows keeps all 359 and the 512-row probe."""
    from core.techniques.momentum_accumulation.run import _data

    base = {"steps": 8, "eval_every": 4, "seeds": 1, "arms": ["chi_exact"]}
    capped, _, _ = _data(KIND.params(**base, eval_rows=5), LocalContext(), torch.float32)
    assert capped.hold_x.shape == (5, 64) and capped.probe_x.shape == (5, 64)
    full, _, _ = _data(KIND.params(**base, eval_rows=1000), LocalContext(), torch.float32)
    assert full.hold_x.shape == (359, 64) and full.probe_x.shape == (512, 64)
    assert torch.equal(capped.hold_x, full.hold_x[:5])  # the cap keeps a prefix of the same held-out rows
    result = KIND.run(KIND.params(**base, eval_rows=5), LocalContext())
    accuracy = result["arms"]["chi_exact"]["heldout_accuracy"]
    assert all(round(a * 5) == pytest.approx(a * 5, abs=1e-9) for a in accuracy)  # a fraction of 5 rows


def test_eval_rows_enters_the_budget():
    """An MLP of 1,126,410 parameters evaluated every micro-step: the budget counts every digits row (1797, the
    split is not known before the run) and the 512-row probe, 15 runs × 2,252,820 × (3000 + 1002·2309) ≈ 7.8e13
    FLOP > 2e12; with eval_rows = 1 it is 15 × 2,252,820 × (3000 + 1002·2) ≈ 1.7e11."""
    heavy = {"hidden": 1024, "micro_batch": 1, "steps": 1000, "eval_every": 1, "accum_steps": 1}
    with pytest.raises(pydantic.ValidationError, match="floating-point operations"):
        KIND.params(**heavy)
    assert KIND.params(**heavy, eval_rows=1).eval_rows == 1
    with pytest.raises(pydantic.ValidationError, match="eval_rows"):
        KIND.params(eval_rows=0)
