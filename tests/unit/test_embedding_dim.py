"""docs/techniques.md#embedding_dim: the worked values, h_n/n by integration, and the empirical elbow on a known-rank
target."""

import math

import pytest
import torch
from pydantic import ValidationError

from core import dimension
from core.techniques import get_kind
from core.techniques.embedding_dim.spec import EmbeddingDimParams
from core.techniques.local import LocalContext

KIND = get_kind("embedding_dim")


@pytest.mark.parametrize("n_items,expected", [(100_000, 95.9), (5_000_000, 128.5), (512, 52.0)])
def test_worked_values(n_items, expected):
    assert dimension.dimension_bound(n_items) == pytest.approx(expected, abs=0.05)


def test_min_dimension_is_smallest_integer_above_the_bound():
    for n_items in (2, 10, 512, 100_000, 10**9):
        bound = 8.33 * math.log(n_items)
        d = dimension.min_dimension(n_items)
        assert d > bound and d - 1 <= bound


def test_exact_coefficient_is_from_the_golden_ratio():
    assert dimension.EXACT_COEFFICIENT == pytest.approx(8.3123, abs=1e-4)
    assert dimension.ENTROPY_PER_DIM_LIMIT == pytest.approx(-0.240606, abs=1e-6)


@pytest.mark.parametrize("n,expected", [(64, -0.2418), (128, -0.2412), (512, -0.2408)])
def test_entropy_per_dim_matches_the_quoted_values(n, expected):
    assert dimension.entropy_per_dim(n) == pytest.approx(expected, abs=1e-4)


def test_entropy_per_dim_converges_to_minus_half_log_phi_without_overflow():
    values = [dimension.entropy_per_dim(n) for n in (256, 2048, 16384)]
    gaps = [abs(v - dimension.ENTROPY_PER_DIM_LIMIT) for v in values]
    assert all(math.isfinite(v) for v in values)
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 2e-5


def test_entropy_per_dim_low_n_against_direct_quadrature():
    # For small n the naive formula does not overflow: compare with a plain Riemann sum.
    n = 5
    theta = torch.linspace(0, math.pi, 200_001, dtype=torch.float64)[1:-1]
    w = torch.sin(theta) ** (n - 2)
    e = torch.exp(n * torch.cos(theta))
    mean_e = (w * e).sum() / w.sum()
    mean_ce = (w * torch.cos(theta) * e).sum() / w.sum()
    h = math.log(mean_e) - n * float(mean_ce / mean_e)
    assert dimension.entropy_per_dim(n) == pytest.approx(h / n, rel=1e-6)


@pytest.mark.parametrize("rank", [3, 9])
def test_sweep_elbow_moves_with_the_known_rank(rank):
    """A target of logit rank r is fitted exactly from n = r + 1 on (r, or r + 1 for the softmax's free constant) and
    measurably worse below: the elbow lands at r or r + 1, on the log scale at any tolerance up to a few tenths, and
    a threshold on the linear scale (or one too loose, 0.5) would put it below r."""
    target = dimension.low_rank_target(32, rank, torch.Generator().manual_seed(1))
    dims = [1, 2, 3, 4, 6, 8, 9, 10, 12, 16]
    losses = [dimension.fit_pair_distribution(target, d, 60, 0.05) for d in dims]
    assert dimension.elbow(dims, losses) in (rank, rank + 1)
    below = losses[dims.index(rank - 1) if rank - 1 in dims else dims.index(rank) - 1]
    assert below > 100 * dimension.EXACT_FIT_KL  # short of the rank the fit is far from exact
    assert all(loss < dimension.EXACT_FIT_KL for d, loss in zip(dims, losses) if d > rank)


def test_elbow_is_on_the_log_scale_and_floors_exact_fits():
    dims = [1, 2, 3, 4]
    assert dimension.elbow(dims, [1.0, 1e-2, 1e-9, 1e-15]) == 3  # 1e-9 and 1e-15 are both exact fits
    assert dimension.elbow(dims, [1.0, 1e-2, 1.1e-5, 1e-5]) == 3  # within 5 % of the log drop
    assert dimension.elbow(dims, [1.0, 1e-2, 1.1e-5, 1e-5], tolerance=0.001) == 4
    assert dimension.elbow(dims, [1.0, 0.1, 0.05, 0.04], exact=0.06) == 3


def test_job_runs_and_reports_dimensions_entropy_and_plot():
    ctx = LocalContext()
    result = KIND.run(KIND.params(**KIND.example), ctx)
    by_n = {d["vocab_size"]: d for d in result["dimensions"]}
    assert by_n[100000]["min_dimension"] == 96 and by_n[512]["min_dimension"] == 52
    assert {e["n"] for e in result["entropy_per_dim"]} == set(KIND.example["entropy_dims"])
    assert result["sweep"]["elbow"] in (8, 9)  # the example's target has rank 8
    assert ctx.series("entropy_per_dim") and ctx.series("fit_kl_final")
    assert ctx.artifacts["entropy_per_dim.png"][0].startswith(b"\x89PNG")


def test_exact_coefficient_option():
    result = KIND.run(EmbeddingDimParams(vocab_sizes=[100000], coefficient="exact", entropy_dims=[16]), LocalContext())
    assert result["dimensions"][0]["bound"] == pytest.approx(8.3123 * math.log(100000), rel=1e-4)


@pytest.mark.parametrize(
    "bad",
    [
        {"vocab_sizes": [1]},
        {"vocab_sizes": []},
        {"vocab_sizes": [10], "coefficient": -1},
        {"vocab_sizes": [10], "coefficient": float("nan")},
        {"vocab_sizes": [10], "entropy_dims": [10**7]},
        {"vocab_sizes": [10], "sweep": {"vocab_size": 1024, "dims": [512] * 32, "steps": 5000}},
    ],
)
def test_bad_params_are_refused(bad):
    with pytest.raises(ValidationError):
        EmbeddingDimParams(**bad)


def test_low_rank_target_is_the_softmax_of_scaled_rank_r_logits():
    """p_ij = exp(3·s·<u_i, v_j>/√r) / Z with u, v the generator's first draws: rank r logits, normalized."""
    target = dimension.low_rank_target(6, 2, torch.Generator().manual_seed(4), scale=0.5)
    gen = torch.Generator().manual_seed(4)
    u = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    v = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    logits = 3.0 * 0.5 * (u @ v.T) / math.sqrt(2)
    torch.testing.assert_close(target, torch.softmax(logits.flatten(), 0).reshape(6, 6), rtol=1e-12, atol=0)
    log_t = torch.log(target)
    assert int(torch.linalg.matrix_rank(log_t - log_t[0, 0])) <= 3  # rank 2, plus the normalizing constant
