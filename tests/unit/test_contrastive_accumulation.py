"""Checks of docs/techniques.md#contrastive_accumulation: the InfoNCE definition and its analytic cases, the exactness
of the chunked gradient (several chunk sizes, dropout on, both towers), the naive accumulation being different,
BatchNorm refused, the job."""

import math

import numpy as np
import pydantic
import pytest
import torch
from torch import nn

from core.contrastive import (
    accumulated_backward,
    accumulated_backward_two_tower,
    info_nce_loss,
    naive_accumulated_backward,
    naive_accumulated_backward_two_tower,
    two_tower_info_nce_loss,
)
from core.techniques import get_kind
from core.techniques.contrastive_accumulation.run import PeakMemory
from core.techniques.local import LocalContext

KIND = get_kind("contrastive_accumulation")

B = 22
PAIRS = torch.arange(B) ^ 1


def mlp(dtype, dropout=0.3, seed=0, in_dim=6, out_dim=5):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(in_dim, 12), nn.Tanh(), nn.Dropout(dropout), nn.Linear(12, out_dim)).to(dtype)


def flat_grad(*modules):
    return torch.cat([p.grad.flatten() for m in modules for p in m.parameters()])


def zero(*modules):
    for m in modules:
        m.zero_grad(set_to_none=True)


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def chunked_graph(enc, x, chunk):
    """Whole-batch graph, forwarded chunk by chunk so dropout draws the same masks as the chunked method."""
    return torch.cat([enc(x[s : s + chunk]) for s in range(0, x.shape[0], chunk)])


# ---- the loss itself -------------------------------------------------------------------------------------------


def test_info_nce_matches_direct_formula():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(7, 3, dtype=torch.float64, generator=g)
    pos = torch.tensor([3, 2, 1, 0, 5, 4, 0])
    tau = 0.3
    z = (h / h.norm(dim=1, keepdim=True)).numpy()
    total = 0.0
    for i in range(7):
        others = [z[i] @ z[j] / tau for j in range(7) if j != i]
        total += math.log(sum(math.exp(s) for s in others)) - z[i] @ z[pos[i]] / tau
    assert float(info_nce_loss(h, pos, tau)) == pytest.approx(total / 7, rel=1e-12)


def test_info_nce_analytic_cases():
    two = torch.randn(2, 4, dtype=torch.float64)
    assert float(info_nce_loss(two, torch.tensor([1, 0]))) == pytest.approx(0.0, abs=1e-12)  # one candidate only
    same = torch.ones(9, 4, dtype=torch.float64)
    shifted = torch.roll(torch.arange(9), 1)
    # all scores equal, self excluded: uniform over the B-1 others
    assert float(info_nce_loss(same, shifted)) == pytest.approx(math.log(8), rel=1e-12)
    assert float(two_tower_info_nce_loss(same, same)) == pytest.approx(math.log(9), rel=1e-12)


def test_gradient_matches_techniques_formula():
    """Unnormalised reps: G_i = Σ_j (p_ij + p_ji − 2 t_ij) h_j / (Bτ) (pairing), two-tower (p − t)k and (p − t)ᵀq."""
    tau = 0.7
    h = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    pos = torch.arange(8) ^ 1
    info_nce_loss(h, pos, tau, normalize=False).backward()
    s = (h @ h.T / tau).detach().fill_diagonal_(float("-inf"))
    p = torch.softmax(s, dim=1)
    t = torch.zeros(8, 8, dtype=torch.float64)
    t[torch.arange(8), pos] = 1
    expected = (p + p.T - 2 * t) @ h.detach() / (8 * tau)
    assert torch.allclose(h.grad, expected, rtol=1e-12, atol=1e-14)

    q = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    k = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    two_tower_info_nce_loss(q, k, temperature=tau, normalize=False).backward()
    w = torch.softmax((q @ k.T / tau).detach(), dim=1) - torch.eye(5, dtype=torch.float64)
    assert torch.allclose(q.grad, w @ k.detach() / (5 * tau), rtol=1e-12, atol=1e-14)
    assert torch.allclose(k.grad, w.T @ q.detach() / (5 * tau), rtol=1e-12, atol=1e-14)


def test_self_positive_refused():
    with pytest.raises(ValueError, match="own positive"):
        info_nce_loss(torch.randn(4, 3), torch.tensor([0, 0, 1, 2]))


# ---- exactness: single encoder ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("chunk", [1, 3, 5, 8, B])
def test_accumulated_equals_full_batch_with_dropout(dtype, tol, chunk):
    enc = mlp(dtype)
    x = torch.randn(B, 6, dtype=dtype)
    torch.manual_seed(7)
    loss = accumulated_backward(enc, x, PAIRS, chunk, temperature=0.1, max_score_elements=3 * B)
    got = flat_grad(enc).clone()
    zero(enc)
    torch.manual_seed(7)
    ref_loss = info_nce_loss(chunked_graph(enc, x, chunk), PAIRS, 0.1)
    ref_loss.backward()
    assert rel(got, flat_grad(enc)) <= tol
    assert loss == pytest.approx(float(ref_loss.detach()), rel=tol)


def test_dropout_masks_matter_so_the_replay_is_tested():
    """The dropout reference drawn from another seed differs: the equality above depends on replaying RNG state."""
    enc = mlp(torch.float64)
    x = torch.randn(B, 6, dtype=torch.float64)
    torch.manual_seed(7)
    accumulated_backward(enc, x, PAIRS, 4)
    got = flat_grad(enc).clone()
    zero(enc)
    torch.manual_seed(8)
    info_nce_loss(chunked_graph(enc, x, 4), PAIRS).backward()
    assert rel(got, flat_grad(enc)) > 1e-3


def test_equals_plain_full_batch_without_dropout_and_accumulates_into_grad():
    enc = mlp(torch.float64, dropout=0.0)
    x = torch.randn(B, 6, dtype=torch.float64)
    info_nce_loss(enc(x), PAIRS, normalize=False).backward()
    ref = flat_grad(enc).clone()
    zero(enc)
    for p in enc.parameters():
        p.grad = torch.ones_like(p)
    accumulated_backward(enc, x, PAIRS, 6, normalize=False)
    assert rel(flat_grad(enc) - 1.0, ref) <= 1e-10


def test_rng_left_as_after_one_forward_pass():
    enc = mlp(torch.float32)
    x = torch.randn(B, 6)
    torch.manual_seed(3)
    accumulated_backward(enc, x, PAIRS, 5)
    after = torch.rand(4)
    torch.manual_seed(3)
    with torch.no_grad():
        chunked_graph(enc, x, 5)
    assert torch.equal(after, torch.rand(4))


# ---- exactness: two towers -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("chunk", [1, 4, 7, B])
@pytest.mark.parametrize("symmetric", [False, True])
def test_two_tower_accumulated_equals_full_batch(dtype, tol, chunk, symmetric):
    qe, ke = mlp(dtype, seed=0), mlp(dtype, seed=1, in_dim=4)
    xq, xk = torch.randn(B, 6, dtype=dtype), torch.randn(B, 4, dtype=dtype)
    torch.manual_seed(11)
    loss = accumulated_backward_two_tower(qe, ke, xq, xk, chunk, symmetric=symmetric, max_score_elements=2 * B)
    got = flat_grad(qe, ke).clone()
    zero(qe, ke)
    torch.manual_seed(11)
    qs, ks = [], []
    for s in range(0, B, chunk):  # query chunk i then key chunk i, as the method runs them
        qs.append(qe(xq[s : s + chunk]))
        ks.append(ke(xk[s : s + chunk]))
    ref_loss = two_tower_info_nce_loss(torch.cat(qs), torch.cat(ks), symmetric=symmetric)
    ref_loss.backward()
    assert rel(got, flat_grad(qe, ke)) <= tol
    assert loss == pytest.approx(float(ref_loss.detach()), rel=tol)


def test_two_tower_more_keys_than_queries_and_shared_weights():
    enc = mlp(torch.float64, dropout=0.0)
    xq, xk = torch.randn(9, 6, dtype=torch.float64), torch.randn(15, 6, dtype=torch.float64)
    pos = torch.tensor([14, 0, 3, 3, 7, 1, 2, 9, 10])
    accumulated_backward_two_tower(enc, enc, xq, xk, 4, positives=pos)
    got = flat_grad(enc).clone()
    zero(enc)
    two_tower_info_nce_loss(enc(xq), enc(xk), pos).backward()
    assert rel(got, flat_grad(enc)) <= 1e-10


# ---- naive accumulation is a different objective ---------------------------------------------------------------


def test_naive_differs_but_is_exact_with_one_chunk():
    enc = mlp(torch.float64)
    x = torch.randn(B, 6, dtype=torch.float64)
    torch.manual_seed(2)
    exact_loss = accumulated_backward(enc, x, PAIRS, 6)
    exact = flat_grad(enc).clone()
    zero(enc)
    torch.manual_seed(2)
    naive = naive_accumulated_backward(enc, x, PAIRS, 6)
    assert rel(flat_grad(enc), exact) > 1e-2
    assert naive.full == pytest.approx(exact_loss, rel=1e-12)  # same masks, same reps: same true loss
    assert naive.chunk_mean < exact_loss  # fewer negatives per row: an easier objective
    zero(enc)
    torch.manual_seed(2)
    naive_accumulated_backward(enc, x, PAIRS, B)
    assert rel(flat_grad(enc), exact) <= 1e-10


def test_naive_two_tower_differs():
    qe, ke = mlp(torch.float64, seed=0), mlp(torch.float64, seed=1)
    xq, xk = torch.randn(B, 6, dtype=torch.float64), torch.randn(B, 6, dtype=torch.float64)
    torch.manual_seed(4)
    accumulated_backward_two_tower(qe, ke, xq, xk, 5, symmetric=True)
    exact = flat_grad(qe, ke).clone()
    zero(qe, ke)
    torch.manual_seed(4)
    naive_accumulated_backward_two_tower(qe, ke, xq, xk, 5, symmetric=True)
    assert rel(flat_grad(qe, ke), exact) > 1e-2


def test_naive_needs_positive_in_chunk():
    with pytest.raises(ValueError, match="outside their chunk"):
        naive_accumulated_backward(mlp(torch.float32), torch.randn(8, 6), torch.roll(torch.arange(8), 4), 4)


# ---- BatchNorm -------------------------------------------------------------------------------------------------


def test_batchnorm_refused_in_training_and_exact_in_eval():
    enc = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 4)).double()
    x = torch.randn(B, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="BatchNorm"):
        accumulated_backward(enc, x, PAIRS, 4)
    with pytest.raises(ValueError, match="BatchNorm"):
        accumulated_backward_two_tower(mlp(torch.float64), enc, x, x, 4)
    enc.eval()  # running statistics: no coupling between samples
    accumulated_backward(enc, x, PAIRS, 4)
    got = flat_grad(enc).clone()
    zero(enc)
    info_nce_loss(enc(x), PAIRS).backward()
    assert rel(got, flat_grad(enc)) <= 1e-10


# ---- the job ---------------------------------------------------------------------------------------------------


def test_example_job_end_to_end():
    ctx = LocalContext()
    params = KIND.params(**KIND.example)
    result = KIND.run(params, ctx)
    for key in (
        "loss_curve",
        "final_loss",
        "grad_check",
        "time_per_step_s",
        "time_ratio_chunked_over_full",
        "peak_memory_bytes",
        "peak_memory_method",
        "linear_probe_accuracy",
    ):
        assert key in result
    assert result["methods"] == ["chunked", "naive", "full"]
    assert len(result["loss_curve"]) == params.steps == len(ctx.series("loss")) == len(ctx.series("loss_full"))
    assert ctx.series("loss") == result["loss_curve"]
    assert result["grad_check"]["rel_diff_accumulated"] <= 1e-4
    assert result["grad_check"]["rel_diff_naive"] >= 1e-3
    # the untrained encoder's loss with all-equal reps would be ln(B-1); training must go below its start
    assert result["loss_curve"][-1] < result["loss_curve"][0] <= math.log(params.batch_size - 1) + 1.0
    peaks = result["peak_memory_bytes"]
    if peaks["chunked"] is not None:
        assert peaks["chunked"] < peaks["full"]
    for name in ("loss.png", "cost.png"):
        data, media = ctx.artifacts[name]
        assert media == "image/png" and data.startswith(b"\x89PNG")
    assert 0.0 <= result["linear_probe_accuracy"]["chunked"] <= 1.0


def test_two_tower_job_is_deterministic():
    spec = dict(
        dataset="clusters", towers="two_tower", widths=[16, 8], batch_size=48, chunk_size=10, steps=3, compare=True
    )
    a = KIND.run(KIND.params(**spec), LocalContext(seed=5))
    b = KIND.run(KIND.params(**spec), LocalContext(seed=5))
    assert a["loss_curve"] == b["loss_curve"] and a["final_loss"] == b["final_loss"]
    assert a["grad_check"]["rel_diff_accumulated"] <= 1e-4 < a["grad_check"]["rel_diff_naive"]


def test_uploaded_dataset_by_uuid():
    ref = "0b7a3f7e-5f0e-4c53-9d0a-8d1f1b2c3d4e"
    rng = np.random.default_rng(0)
    ctx = LocalContext(datasets={ref: {"x": rng.standard_normal((60, 5)).astype(np.float32)}})
    result = KIND.run(KIND.params(dataset=ref, widths=[8], batch_size=20, chunk_size=6, steps=2), ctx)
    assert result["linear_probe_accuracy"]["chunked"] is None  # no labels, no probe
    assert len(result["loss_curve"]) == 2


@pytest.mark.parametrize(
    "bad",
    [
        dict(chunk_size=600, batch_size=512),
        dict(batch_size=511),
        dict(chunk_size=63),
        dict(widths=[2048, 2048, 2048, 2048], batch_size=65536, chunk_size=65536),
        dict(batch_size=65536, chunk_size=256, steps=2000),
        dict(temperature=float("nan")),
        dict(widths=[]),
        dict(dataset="mnist"),
        dict(unknown=1),
    ],
)
def test_bad_params_rejected(bad):
    with pytest.raises(pydantic.ValidationError):
        KIND.params(**bad)


def test_large_batch_accepted_when_work_fits():
    assert KIND.params(batch_size=65536, chunk_size=1024, steps=2, compare=False).batch_size == 65536


def test_cpu_peak_meter_sees_a_known_allocation():
    meter = PeakMemory(torch.device("cpu"))
    if not meter.available:
        pytest.skip(meter.method)
    _, peak = meter.measure(lambda: float(torch.ones(10_000_000).sum()))  # 40 MB
    assert 38e6 <= peak <= 80e6
