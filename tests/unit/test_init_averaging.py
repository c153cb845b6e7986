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
    assert averaged_variance(m, n, "quadratic") == pytest.approx(1 / math.sqrt((m * m + n * n) / 2))
    assert averaged_variance(m, n, "least_squares") == pytest.approx((m + n) / (m * m + n * n))
    assert averaged_variance(m, n, "harmonic") == pytest.approx((1 / m + 1 / n) / 2)


def test_means_of_2_and_8_by_hand():
    """m = 2, n = 8: harmonic 2·16/10 = 3.2, geometric √16 = 4, arithmetic 5, RMS √((4+64)/2) = √34, contraharmonic
    68/10 = 6.8; σ² is one over each."""
    by_hand = {"harmonic": 1 / 3.2, "geometric": 1 / 4, "arithmetic": 1 / 5, "quadratic": 1 / math.sqrt(34)}
    by_hand["least_squares"] = 10 / 68
    for mean, variance in by_hand.items():
        assert averaged_variance(2, 8, mean) == pytest.approx(variance, rel=1e-12)
        assert averaged_variance(8, 2, mean) == pytest.approx(variance, rel=1e-12)  # symmetric in the fans
    assert averaged_variance(2, 8, "quadratic") == pytest.approx(0.171498585, rel=1e-8)


def test_ordering_of_means_and_equality_when_square():
    names = ("least_squares", "quadratic", "arithmetic", "geometric", "harmonic")
    for m, n in [(3, 7), (768, 3072), (100, 10), (2, 8)]:
        averages = [1 / averaged_variance(m, n, k) for k in names]
        assert all(a > b for a, b in zip(averages, averages[1:]))  # contraharmonic > RMS > AM > GM > HM, m ≠ n
    for mean in names:
        assert averaged_variance(64, 64, mean) == pytest.approx(1 / 64)


def test_least_squares_mean_minimises_the_squared_misfit():
    m, n = 100, 10
    best = averaged_variance(m, n, "least_squares")
    misfit = lambda v: (m * v - 1) ** 2 + (n * v - 1) ** 2  # noqa: E731
    for v in (best * 0.99, best * 1.01, averaged_variance(m, n, "arithmetic"), averaged_variance(m, n, "quadratic")):
        assert misfit(best) < misfit(v)


@pytest.mark.parametrize(
    "m,n,arith,rms,least",
    [(768, 3072, 0.64, 0.471, 0.346), (100, 10, 0.331, 0.198, 0.119), (2, 8, 0.64, 32 / 68, 0.346)],
)
def test_composed_pair_ratios(m, n, arith, rms, least):
    """docs/techniques.md's table: a pair m → n → m composes to mnσ⁴; RMS 2mn/(m²+n²), least squares
    mn(m+n)²/(m²+n²)²."""
    assert predicted_ratios([m, n, m], "geometric")[0] == pytest.approx(1.0)
    assert predicted_ratios([m, n, m], "arithmetic")[0] == pytest.approx(arith, abs=1e-3)
    assert predicted_ratios([m, n, m], "quadratic")[0] == pytest.approx(rms, abs=1e-3)
    assert predicted_ratios([m, n, m], "least_squares")[0] == pytest.approx(least, abs=1e-3)
    assert predicted_ratios([m, n, m], "arithmetic")[0] == pytest.approx(4 * m * n / (m + n) ** 2)
    assert predicted_ratios([m, n, m], "quadratic")[0] == pytest.approx(2 * m * n / (m * m + n * n))
    assert predicted_ratios([m, n, m], "least_squares")[0] == pytest.approx(m * n * (m + n) ** 2 / (m * m + n * n) ** 2)


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
    expected = {"geometric": 1.0, "arithmetic": 0.64, "quadratic": 0.471, "least_squares": 0.346}
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
        {"widths": [10, 10], "means": ["contraharmonic"]},
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


# --- a model: its non-square layers, each mean through the whole network, a recommendation (issue 29) ----------------
TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 96,
    "vocab_size": 128,
    "max_position_embeddings": 32,
}


def test_model_job_has_a_summary_and_charts_that_draw():
    """A tiny Llama: per layer q/o are 64×64 (square), k/v 64→32, gate/up 64→96, down 96→64, so 5 non-square weights
    per layer, plus the 128×64 embedding and lm_head: 12. The summary names them, gives each init's ratios and a
    recommendation; the chart metrics are a curve per initialisation over those layers."""
    params = InitAveragingParams(
        model={"source": "hf_config", "config": TINY_LLAMA},
        means=["arithmetic", "geometric", "quadratic", "least_squares"],
        batch=4,
        seq_len=16,
        trials=1,
    )
    ctx = LocalContext()
    result = KIND.run(params, ctx)
    assert result["model"]["nonsquare_weights"] == 12
    s = KIND.summarize(params, result)
    assert s["headline"].startswith("12 of the model's weights are non-square (")
    assert "4 × 64→96" in s["headline"] and "2 × 96→64" in s["headline"]
    inits = {"own init": result["own_init"], **result["means"]}
    assert [row[0] for row in s["table"]["rows"]] == list(inits)
    for row in s["table"]["rows"]:
        r = inits[row[0]]
        assert row[1:3] == [r["forward_ratio"], r["backward_ratio"]]
        worst = max(abs(math.log(r["forward_ratio"])), abs(math.log(r["backward_ratio"])))
        assert row[3] == pytest.approx(math.exp(worst))
    best = min(s["table"]["rows"], key=lambda row: row[3])[0]
    assert f"{best} stays closest to 1" in s["headline"] and "recommendation:" in s["headline"]
    for init in ("own_init", *params.means):
        series = ctx.series(f"layer_moment/{init}")
        assert len(series) == len(result["layer_moments"][init]) >= 12  # ≥ one point per non-square layer's call
    assert ctx.artifacts["layer_moments.png"][0].startswith(b"\x89PNG")


def _model_result(ratios: dict[str, tuple[float, float]]) -> dict:
    own = ratios.pop("own", (10.0, 10.0))
    return {
        "model": {"task": "causal_lm", "n_params": 1000, "nonsquare_weights": 1},
        "distribution": "normal",
        "own_init": {"forward_ratio": own[0], "backward_ratio": own[1]},
        "means": {k: {"forward_ratio": f, "backward_ratio": b} for k, (f, b) in ratios.items()},
        "layers": [{"name": "w", "shape": [8, 2], "fan_in": 2, "fan_out": 8, "current_variance": 0.1, "variance": {}}],
    }


def test_model_verdict_at_its_thresholds():
    """log_miss = max |ln ratio|; geometric within ln 1.05 of the best other mean supports, beyond ln 1.2
    contradicts, between is inconclusive."""
    summarize = KIND.summarize
    best_other = 1.5  # arithmetic's forward ratio: log_miss ln 1.5
    cases = [(1.5 * 1.049, "supports"), (1.5 * 1.051, "inconclusive"), (1.5 * 1.199, "inconclusive")]
    cases += [(1.5 * 1.201, "contradicts"), (1.1, "supports")]
    for geometric, outcome in cases:
        s = summarize(None, _model_result({"arithmetic": (best_other, 1.0), "geometric": (geometric, 1 / geometric)}))
        assert s["verdict"]["outcome"] == outcome, geometric
        assert s["verdict"]["value"] == pytest.approx(math.log(geometric) - math.log(best_other))
    alone = summarize(None, _model_result({"arithmetic": (1.0, 1.0)}))
    assert alone["verdict"]["outcome"] == "inconclusive" and alone["verdict"]["value"] is None


def test_model_recommendation_keeps_its_own_init_when_no_mean_does_better():
    s = KIND.summarize(None, _model_result({"own": (1.01, 0.99), "geometric": (2.0, 0.5)}))
    assert "own init stays closest to 1" in s["headline"]
    assert "recommendation: keep its own initialisation" in s["headline"]
    broken = KIND.summarize(None, _model_result({"own": (0.0, 1.0), "geometric": (float("inf"), 1.0)}))
    assert "no recommendation" in broken["headline"] and broken["verdict"]["outcome"] == "inconclusive"
