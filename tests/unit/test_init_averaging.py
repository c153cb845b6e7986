"""docs/techniques.md#init_averaging: averaged variances, fans read as torch does, composed ratios and their Monte
Carlo."""

import math

import pytest
import torch
from pydantic import ValidationError

from core.averaged_init import averaged_normal_, averaged_uniform_, averaged_variance, fans
from core.techniques import get_kind
from core.techniques.init_averaging.run import predicted_ratios
from core.techniques.init_averaging.spec import InitAveragingParams
from core.techniques.local import LocalContext

KIND = get_kind("init_averaging")


def test_variances_are_one_over_the_means():
    m, n = 768, 3072
    assert averaged_variance(m, n, "arithmetic") == pytest.approx(2 / (m + n))
    assert averaged_variance(m, n, "geometric") == pytest.approx(1 / math.sqrt(m * n))
    assert averaged_variance(m, n, "quadratic") == pytest.approx((m + n) / (m * m + n * n))
    assert averaged_variance(m, n, "harmonic") == pytest.approx((1 / m + 1 / n) / 2)


def test_ordering_of_means_and_equality_when_square():
    for m, n in [(3, 7), (768, 3072), (100, 10)]:
        quad, arith, geo = (1 / averaged_variance(m, n, k) for k in ("quadratic", "arithmetic", "geometric"))
        assert quad >= arith >= geo
    for mean in ("arithmetic", "geometric", "quadratic", "harmonic"):
        assert averaged_variance(64, 64, mean) == pytest.approx(1 / 64)


def test_quadratic_mean_minimises_the_squared_misfit():
    m, n = 100, 10
    best = averaged_variance(m, n, "quadratic")
    misfit = lambda v: (m * v - 1) ** 2 + (n * v - 1) ** 2  # noqa: E731
    for v in (best * 0.99, best * 1.01, averaged_variance(m, n, "arithmetic")):
        assert misfit(best) < misfit(v)


@pytest.mark.parametrize("m,n,arith,quad", [(768, 3072, 0.64, 0.346), (100, 10, 0.331, 0.119)])
def test_composed_pair_ratios(m, n, arith, quad):
    assert predicted_ratios([m, n, m], "geometric")[0] == pytest.approx(1.0)
    assert predicted_ratios([m, n, m], "arithmetic")[0] == pytest.approx(arith, abs=1e-3)
    assert predicted_ratios([m, n, m], "quadratic")[0] == pytest.approx(quad, abs=1e-3)
    assert predicted_ratios([m, n, m], "arithmetic")[0] == pytest.approx(4 * m * n / (m + n) ** 2)


def test_fans_follow_torch_conventions():
    assert fans(torch.empty(30, 20)) == (20, 30)  # Linear weight is (out, in)
    assert fans(torch.empty(16, 3, 5, 5)) == (75, 400)  # conv: receptive field multiplies both


def test_normal_and_uniform_fill_with_the_requested_variance():
    gen = torch.Generator().manual_seed(0)
    w = torch.empty(400, 1600)
    target = averaged_variance(1600, 400, "quadratic") * 4.0
    assert averaged_normal_(w, "quadratic", gain=2.0, generator=gen).var().item() == pytest.approx(target, rel=0.02)
    averaged_uniform_(w, "quadratic", gain=2.0, generator=gen)
    assert w.var().item() == pytest.approx(target, rel=0.02)
    assert w.abs().max().item() <= math.sqrt(3 * target) + 1e-6


def test_single_layer_forward_and_backward_ratios_by_monte_carlo():
    params = InitAveragingParams(widths=[300, 60], means=["arithmetic", "geometric", "quadratic"], batch=4096, trials=8)
    result = KIND.run(params, LocalContext())
    for mean, r in result["means"].items():
        var = averaged_variance(300, 60, mean)
        assert r["predicted_forward_ratio"] == pytest.approx(300 * var)
        assert r["predicted_backward_ratio"] == pytest.approx(60 * var)
        assert r["forward_ratio"] == pytest.approx(300 * var, rel=0.05)
        assert r["backward_ratio"] == pytest.approx(60 * var, rel=0.05)


def test_job_reproduces_the_768_3072_ratios_and_stores_a_plot():
    ctx = LocalContext()
    result = KIND.run(KIND.params(**KIND.example), ctx)
    expected = {"geometric": 1.0, "arithmetic": 0.64, "quadratic": 0.346}
    for mean, ratio in expected.items():
        assert result["means"][mean]["forward_ratio"] == pytest.approx(ratio, rel=0.03)
        assert result["means"][mean]["backward_ratio"] == pytest.approx(ratio, rel=0.03)
    assert ctx.series("forward_moment/geometric")
    assert ctx.artifacts["forward_moments.png"][0].startswith(b"\x89PNG")


@pytest.mark.parametrize(
    "bad",
    [
        {"widths": [10]},
        {"widths": [10, 0]},
        {"widths": [10, 10], "means": ["median"]},
        {"widths": [16384, 16384, 16384], "batch": 65536},
    ],
)
def test_bad_params_are_refused(bad):
    with pytest.raises(ValidationError):
        InitAveragingParams(**bad)


def test_the_plot_recipe_keeps_no_nan_and_still_draws():
    """A diverging stack's moments (NaN, infinity) are stored as None, which JSON can hold; the plot still draws."""
    from core.renders import Recipe, render

    recipe = Recipe(
        "init_averaging.forward_moments",
        {"curves": {"arithmetic": [float("nan"), float("inf"), 0.5]}, "widths": [2, 2, 2, 2]}
        | {"activation": "relu", "distribution": "normal"},
    ).as_json()
    assert recipe["args"]["curves"] == {"arithmetic": [None, None, 0.5]}
    assert render(recipe).startswith(b"\x89PNG")
    with pytest.raises(LookupError):
        render({"renderer": "os.system", "args": {}})
