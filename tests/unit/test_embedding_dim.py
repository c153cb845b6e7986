"""docs/techniques.md#embedding_dim: the worked values, h_n/n by integration, and the empirical elbow on a known-rank
target."""

import math
import sys

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


# --- the model's own sizes (issue 29) --------------------------------------------------------------------------------
QWEN25_05B = {  # Qwen2.5-0.5B's public config.json, the fields that size it
    "model_type": "qwen2",
    "architectures": ["Qwen2ForCausalLM"],
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": True,
}


def test_supported_limit_is_exact_at_any_size():
    """N_max = e^(n/c): 896 dimensions support 10^46.7 = 5.2e46 tokens (not the 2^62 an integer saturated at); past
    n/c ≈ 709.78 the float overflows and only the logarithms are reported."""
    qwen = dimension.supported_limit(896)
    assert qwen["ln_N_max"] == pytest.approx(896 / 8.33, rel=1e-15)
    assert qwen["log10_N_max"] == pytest.approx(896 / 8.33 / math.log(10), rel=1e-15)
    assert qwen["log10_N_max"] == pytest.approx(46.714, abs=1e-3) and qwen["N_max"] == pytest.approx(5.2e46, rel=0.01)
    huge = dimension.supported_limit(12288)  # a 70B-class width: e^1475 is not a float
    assert huge["N_max"] is None and huge["log10_N_max"] == pytest.approx(12288 / 8.33 / math.log(10))
    edge = math.log(sys.float_info.max)
    assert dimension.supported_limit(7097, 10.0)["N_max"] is not None and 709.7 < edge
    assert dimension.supported_limit(7098, 10.0)["N_max"] is None  # 709.8 > 709.78…
    with pytest.raises(ValueError):
        dimension.supported_limit(0)


@pytest.mark.parametrize("n", [8, 32, 64, 100])
def test_supported_limit_is_where_the_rule_flips(n):
    """N just below N_max keeps n > c·ln N; just above breaks it."""
    n_max = dimension.supported_limit(n)["N_max"]
    assert n > 8.33 * math.log(n_max * (1 - 1e-9))
    assert not n > 8.33 * math.log(n_max * (1 + 1e-9))


def test_model_alone_leads_the_answer_with_its_failing_attention_head():
    """Qwen2.5-0.5B: the token embedding passes (896 > 8.33·ln 151,936 = 99.39) and the head fails (64 ≤ 8.33·ln 32,768
    = 86.61); the headline says so first and the verdict is not a green 'supports'."""
    params = EmbeddingDimParams(model={"source": "hf_config", "config": QWEN25_05B}, entropy_dims=[512])
    result = KIND.run(params, LocalContext())
    assert result["dimensions"] == []
    token, head = result["model_checks"]
    assert "largest_N_supported" not in token
    assert (token["n"], token["N"], token["ok"]) == (896, 151936, True)
    assert token["bound"] == pytest.approx(99.39, abs=0.01)
    assert (head["n"], head["N"], head["ok"]) == (64, 32768, False)
    assert head["bound"] == pytest.approx(86.61, abs=0.01)
    assert head["N_max"] == pytest.approx(math.exp(64 / 8.33)) and head["N_max"] == pytest.approx(2171.3, abs=0.1)
    s = KIND.summarize(params, result)
    assert s["headline"].startswith(
        "Token embedding n = 896 for its vocabulary N = 151,936: n > 8.33·ln N = 99.4, holds"
    )
    assert "attention head n = 64 for its context N = 32,768: n ≤ 8.33·ln N = 86.6, FAILS" in s["headline"]
    assert "10^46.7" in s["headline"] and "2,171" in s["headline"]
    assert s["verdict"]["outcome"] == "contradicts"
    assert s["verdict"]["statistic"] == "model_worst_n_over_bound"
    assert s["verdict"]["value"] == pytest.approx(64 / (8.33 * math.log(32768)))
    assert s["figures"]["model_checks_failing"] == 1
    assert [row[0] for row in s["table"]["rows"]] == ["token embedding", "attention head"]
    assert s["question"].startswith("Are this model's token embedding")


def test_model_with_wide_enough_heads_supports_and_keeps_the_vocab_rows():
    config = {**QWEN25_05B, "num_attention_heads": 7, "num_key_value_heads": 1}  # head_dim 128 > 86.61
    params = EmbeddingDimParams(vocab_sizes=[512], model={"source": "hf_config", "config": config}, entropy_dims=[16])
    result = KIND.run(params, LocalContext())
    s = KIND.summarize(params, result)
    assert s["verdict"]["outcome"] == "supports"
    assert s["verdict"]["value"] == pytest.approx(128 / (8.33 * math.log(32768)))
    assert [row[0] for row in s["table"]["rows"]] == ["token embedding", "attention head", "vocabulary"]
    assert s["headline"].index("attention head") < s["headline"].index("52 dimensions for N = 512")


def _model_result(n_head: int, bound: float, ok: bool) -> dict:
    return {
        "coefficient": 8.33,
        "dimensions": [],
        "entropy_per_dim": [{"n": 16, "h_n_over_n": -0.25}],
        "entropy_per_dim_limit": dimension.ENTROPY_PER_DIM_LIMIT,
        "model_checks": [
            {"what": "token_embedding", "n": 64, "N": 512, "N_is": "vocab_size", "bound": 51.97, "ok": True},
            {"what": "attention_head", "n": n_head, "N": 64, "N_is": "context", "bound": bound, "ok": ok},
        ],
    }


def test_verdict_flips_at_the_bound():
    """n = c·ln N is not n > c·ln N: at the bound the head fails; a hair above, it passes."""
    at = KIND.summarize(None, _model_result(32, 32.0, False))
    assert at["verdict"]["outcome"] == "contradicts" and at["verdict"]["value"] == 1.0
    above = KIND.summarize(None, _model_result(32, 31.999, True))
    assert above["verdict"]["outcome"] == "supports" and above["verdict"]["value"] == pytest.approx(32 / 31.999)


def test_a_record_stored_before_the_logarithms_still_reads():
    """Old results carry ``largest_N_supported`` (2^62 for any large n) and ``model_max_context_for_head_dim``: the
    summary recomputes ln N_max = n/c from the row's n instead of trusting the saturated integer."""
    old = _model_result(896, 86.61, True)
    for row in old["model_checks"]:
        row["largest_N_supported"] = 2**62
    old["model_max_context_for_head_dim"] = 2**62
    s = KIND.summarize(None, old)
    assert "10^46.7" in s["headline"]  # e^(896/8.33), not 4.6e18
    assert s["figures"]["model/attention_head/log10_N_max"] == pytest.approx(896 / 8.33 / math.log(10))


def test_neither_vocab_sizes_nor_model_is_refused_naming_the_field():
    with pytest.raises(ValidationError, match="vocab_sizes: give vocabulary sizes, a model, or both"):
        EmbeddingDimParams()


def test_without_a_model_the_headline_keeps_the_rule_first():
    params = EmbeddingDimParams(vocab_sizes=[512], entropy_dims=[16])
    s = KIND.summarize(params, KIND.run(params, LocalContext()))
    assert s["headline"].startswith("n > 8.33·ln N asks for 52 dimensions for N = 512; h_n/n = ")
    assert s["table"]["columns"] == ["N", "8.33·ln N", "min dimension"] and s["question"].startswith("How many")
