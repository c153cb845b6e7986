"""Each kind's verdict rule at, just inside, just outside and between its thresholds, on results written by hand.

A summary's verdict is a comparison of one figure with a constant (EG's margin over SGD, two and three standard
errors, 1e-4 and 1e-3 relative, ‖∇D‖ ≤ 1 + 1e-3, ...). A threshold read with ``>=`` instead of ``>``, or the
wrong constant, changes the verdict only at or near the threshold, which a real run's figures never hit; so the
results here are made up, with values at the threshold exactly (chosen to be exact in binary floating point: powers
of two, or the threshold itself) and one float step (``math.nextafter``) either side. The headline's and table's
figures are checked on the same results against values worked out by hand. Pure Python, no training.
"""

from __future__ import annotations

import math

import pytest

from core.summary import Summary
from core.techniques.contrastive_accumulation import summary as contrastive
from core.techniques.eg_stepsize import summary as eg
from core.techniques.gradient_penalty_bound import summary as gpb
from core.techniques.gradnorm_gan import summary as gan
from core.techniques.momentum_accumulation import summary as momentum
from core.techniques.vae_density import summary as vae


def up(x: float) -> float:
    return math.nextafter(x, math.inf)


def down(x: float) -> float:
    return math.nextafter(x, -math.inf)


def checked(out: dict) -> dict:
    Summary.model_validate(out)
    assert out["verdict"]["value"] == out["figures"][out["verdict"]["statistic"]]
    return out


# --- contrastive_accumulation: supports when accumulated ≤ 1e-4 and naive ≥ 10× it; contradicts above 1e-3 ---------
def _contrastive(
    exact: float | None, naive: float | None, time: dict | None = None, memory: dict | None = None
) -> dict:
    result = {
        "grad_check": {
            "rel_diff_accumulated": exact,
            "rel_diff_naive": naive,
            "batch_size": 64,
            "chunk_size": 16,
        },
        "time_per_step_s": time if time is not None else {"full": 2.0, "chunked": 3.0, "naive": 2.5},
        "peak_memory_bytes": memory if memory is not None else {"full": 4000, "chunked": 1000, "naive": 1500},
        "linear_probe_accuracy": {"full": 0.75, "chunked": 0.5, "naive": 0.25},
        "final_loss": {"full": 1.5, "chunked": 1.25, "naive": 2.5},
        "methods": ["chunked", "naive", "full"],
        "time_ratio_chunked_over_full": 1.5,
    }
    return checked(contrastive.summarize(None, result))


@pytest.mark.parametrize(
    ("exact", "naive", "outcome"),
    [
        (contrastive.EXACT, 1.0, "supports"),  # at the exactness threshold: still exact
        (up(contrastive.EXACT), 1.0, "inconclusive"),  # just past it, not yet past 1e-3: between
        (5e-4, 1.0, "inconclusive"),  # between the two thresholds
        (contrastive.NOT_EXACT, 1.0, "inconclusive"),  # at 1e-3: not yet contradicting
        (up(contrastive.NOT_EXACT), 1.0, "contradicts"),
        (2.0**-14, 10 * 2.0**-14, "supports"),  # naive exactly 10× further off (both exact in binary)
        (2.0**-14, down(10 * 2.0**-14), "inconclusive"),  # naive a float step short of 10×
        (0.0, 1e-299, "supports"),  # an exact zero: naive must be 10 × 1e-300
        (0.0, 0.0, "inconclusive"),  # chunk = batch: no contrast
        (2.0**-14, None, "inconclusive"),
        (None, 1.0, "inconclusive"),
    ],
)
def test_contrastive_verdict_at_and_around_its_thresholds(exact, naive, outcome):
    out = _contrastive(exact, naive)
    assert out["verdict"]["outcome"] == outcome
    assert out["verdict"]["statistic"] == "rel_diff_accumulated" and out["verdict"]["value"] == exact


def test_contrastive_headline_and_table_carry_the_ratios_and_each_methods_figures():
    out = _contrastive(2.0**-14, 0.5)
    # time 3.0 / 2.0 s per step, peak memory 1000 / 4000 bytes
    assert "costs 1.5× the time of a full batch with 0.25× its peak memory." in out["headline"]
    assert "(B = 64, chunks of 16)" in out["headline"]
    for memory in ({"full": None, "chunked": 1000, "naive": 1500}, {"full": 4000, "chunked": None, "naive": 1500}):
        # one peak missing: the time ratio alone, no memory ratio
        alone = _contrastive(2.0**-14, 0.5, memory=memory)["headline"]
        assert alone.endswith("costs 1.5× the time of a full batch.")
    assert out["table"]["rows"] == [
        ["chunked", 2.0**-14, 1.25, 3.0, 1000, 0.5],
        ["naive", 0.5, 2.5, 2.5, 1500, 0.25],
        ["full", 0.0, 1.5, 2.0, 4000, 0.75],
    ]
    f = out["figures"]
    assert (f["time_per_step_s/naive"], f["peak_memory_bytes/full"], f["final_loss/chunked"]) == (2.5, 4000, 1.25)
    assert (f["probe_accuracy/full"], f["time_ratio_chunked_over_full"], f["rel_diff_naive"]) == (0.75, 1.5, 0.5)
    no_full = _contrastive(2.0**-14, 0.5, {"chunked": 3.0, "naive": 2.5})
    assert no_full["headline"].endswith("off by 0.5.")
    zero_full = _contrastive(2.0**-14, 0.5, {"full": 0.0, "chunked": 3.0, "naive": 2.5})
    assert "costs" not in zero_full["headline"]


# --- momentum_accumulation: identity within tolerance, then accuracy gain against ±2 standard errors ------------------
# Four seeds at m − c, m − c, m − c, m + 3c have mean m and sample sd 2c exactly (squares 12c², over 3 = 4c²), so the
# standard error of the difference with a zero-spread arm of four seeds is 2c / √4 = c: with c = 1/16 and m = 1/2,
# everything below is exact in binary and the threshold 2 standard errors is 1/8.
C = 1 / 16
SPREAD_ARM = [0.5 - C, 0.5 - C, 0.5 - C, 0.5 + 3 * C]


def _arm(accuracies, identity=None) -> dict:
    return {
        "final_heldout_accuracies": accuracies,
        "identity_error_vs_explicit": identity,
        "final_heldout_loss_mean": 0.25,
        "final_heldout_loss_sd": 0.125,
        "updates": 30,
        "state_bytes": 4096,
    }


def _momentum(chi, per_micro, *, identity=0.0, optimizer="sgdm", dtype="float64") -> dict:
    arms = {"chi_exact": _arm(chi, identity), "per_micro_batch": _arm(per_micro)}
    result = {"arms": arms, "accum_steps": 4, "optimizer": optimizer, "dtype": dtype}
    return checked(momentum.summarize(None, result))


@pytest.mark.parametrize(
    ("chi", "per_micro", "outcome"),
    [
        (SPREAD_ARM, [0.375] * 4, "inconclusive"),  # gain 1/8 = 2 standard errors exactly
        (SPREAD_ARM, [down(0.375)] * 4, "supports"),  # a float step beyond
        (SPREAD_ARM, [0.4375] * 4, "inconclusive"),  # gain 1/16: between
        (SPREAD_ARM, [0.5] * 4, "inconclusive"),  # no gain
        (SPREAD_ARM, [0.625] * 4, "inconclusive"),  # −2 standard errors exactly
        (SPREAD_ARM, [up(0.625)] * 4, "contradicts"),
        ([0.625] * 4, SPREAD_ARM, "inconclusive"),  # the spread on the other arm: the same standard error
        ([up(0.625)] * 4, SPREAD_ARM, "supports"),
        ([0.375] * 4, SPREAD_ARM, "inconclusive"),
        ([down(0.375)] * 4, SPREAD_ARM, "contradicts"),
        ([0.9], [0.1], "inconclusive"),  # one seed: no noise estimate, whatever the gain
    ],
)
def test_momentum_accuracy_verdict_at_two_standard_errors(chi, per_micro, outcome):
    out = _momentum(chi, per_micro)
    assert out["verdict"]["outcome"] == outcome
    assert out["verdict"]["statistic"] == "accuracy_gain_vs_per_micro_batch"


def test_momentum_standard_error_adds_both_arms_variances():
    # both arms spread: se = √(c² + c²) = c√2; the gain 1/4 − ... computed by hand from the seeds' means
    out = _momentum(SPREAD_ARM, [a - 0.25 for a in SPREAD_ARM])
    assert out["figures"]["accuracy_gain_standard_error"] == pytest.approx(C * math.sqrt(2), rel=1e-12)
    assert out["figures"]["accuracy_gain_vs_per_micro_batch"] == pytest.approx(0.25, rel=1e-12)
    assert out["verdict"]["outcome"] == "supports"  # 0.25 > 2 × 0.0884
    three = _momentum([0.5, 0.5, 0.5], [0.25, 0.375, 0.5])  # sd 1/8 over 3 seeds: se = 1/(8√3)
    assert three["figures"]["accuracy_gain_standard_error"] == pytest.approx(0.125 / math.sqrt(3), rel=1e-12)
    assert three["figures"]["final_heldout_accuracy/per_micro_batch"] == pytest.approx(0.375, rel=1e-12)


@pytest.mark.parametrize(
    ("identity", "optimizer", "dtype", "outcome"),
    [
        (1e-10, "sgdm", "float64", "supports"),  # at the float64 tolerance
        (up(1e-10), "sgdm", "float64", "contradicts"),
        (1e-4, "sgdm", "float32", "supports"),  # at the float32 tolerance
        (up(1e-4), "sgdm", "float32", "contradicts"),
        (0.5, "adam", "float64", "inconclusive"),  # Adam's χ form is approximate: never checked
        (None, "sgdm", "float64", "inconclusive"),  # no χ-exact arm measured
    ],
)
def test_momentum_identity_verdict_at_each_dtypes_tolerance(identity, optimizer, dtype, outcome):
    # no per_micro_batch arm: the verdict rests on the identity alone
    result = {"arms": {"chi_exact": _arm([0.5, 0.75], identity)}, "accum_steps": 4, "optimizer": optimizer}
    out = checked(momentum.summarize(None, {**result, "dtype": dtype}))
    assert out["verdict"]["outcome"] == outcome and out["verdict"]["statistic"] == "identity_error_chi_exact"


def test_momentum_identity_beats_the_accuracy_rule_and_arms_without_per_micro_batch_rest_on_it():
    beaten = _momentum(SPREAD_ARM, [0.0] * 4, identity=up(1e-10))
    assert beaten["verdict"]["outcome"] == "contradicts" and beaten["verdict"]["value"] == up(1e-10)
    alone = checked(
        momentum.summarize(
            None,
            {"arms": {"chi_exact": _arm([0.5, 0.75], 0.0)}, "accum_steps": 4, "optimizer": "sgdm", "dtype": "float64"},
        )
    )
    assert alone["verdict"]["outcome"] == "supports" and alone["verdict"]["statistic"] == "identity_error_chi_exact"
    assert alone["figures"]["accuracy_gain_vs_per_micro_batch"] is None


def test_momentum_headline_and_table():
    out = _momentum(SPREAD_ARM, [0.25] * 4)
    assert "updating every 4 micro-batches (chi_exact) beat per-micro-batch updates" in out["headline"]
    assert "0.5 ± 0.12 vs 0.25 ± 0 held-out accuracy over 4 seeds" in out["headline"]
    assert "χ-exact matches the explicit buffer (max weight difference 0)" in out["headline"]
    worse = _momentum([0.25], [0.5], identity=2e-10)
    assert "did not beat" in worse["headline"] and "over 1 seed." in worse["headline"]
    assert "departs from" in worse["headline"]
    assert "did not beat" in _momentum([0.5], [0.5])["headline"]  # no gain is not a win
    row = out["table"]["rows"][0]
    assert row[0] == "chi_exact" and row[1] == {"mean": 0.5, "sd": 0.125, "n": 4}
    assert row[2] == {"mean": 0.25, "sd": 0.125, "n": 4} and row[3:] == [30, 4096, 0.0]


# --- gradient_penalty_bound: any violation contradicts; no finite ratio is inconclusive ------------------------------
def _gpb(violations: int, maxima: list, steps: int = 3) -> dict:
    n = len(maxima)
    result = {
        "ratio": {
            "max": maxima,
            "median": [0.5 - i / 64 for i in range(n)],
            "q10": [0.25] * n,
            "q90": [0.75] * n,
        },
        "measured_steps": [10 * i for i in range(n)],
        "violations": violations,
        "violations_frobenius": 0,
        "max_identity_residual": 1e-15,
        "final_accuracy": 0.875,
        "final_loss": 0.375,
        "layers": [{"w_norm": [1.0, 1.5, 2.0]}, {"w_norm": [3.0, 2.5]}],
        "samples": 7,
        "f": "logit",
    }
    return checked(gpb.summarize(None, result))


@pytest.mark.parametrize(
    ("violations", "maxima", "outcome"),
    [
        (0, [0.5, 1.0, 0.75], "supports"),  # a ratio of exactly 1 is within the bound
        (1, [0.5, 1.0, 0.75], "contradicts"),  # one violation is enough
        (0, [None, None, None], "inconclusive"),  # nothing measured
        (2, [None, None, None], "contradicts"),
    ],
)
def test_gradient_penalty_verdict(violations, maxima, outcome):
    assert _gpb(violations, maxima)["verdict"]["outcome"] == outcome


def test_gradient_penalty_figures_and_the_tables_rows():
    out = _gpb(0, [0.5, None, 0.75])
    f = out["figures"]
    assert f["max_ratio"] == 0.75 and f["final_median_ratio"] == 0.5 - 2 / 64
    assert (f["w_norm/layer1/first"], f["w_norm/layer1/last"], f["w_norm/layer2/first"], f["w_norm/layer2/last"]) == (
        1.0,
        2.0,
        3.0,
        2.5,
    )
    assert "lhs/rhs stayed ≤ 1 at all 21 sample-steps" in out["headline"]  # 7 samples × 3 steps
    assert "median 0.5 at step 0 → 0.469 at step 20" in out["headline"]
    assert "lhs exceeded rhs at 4 of 21 sample-steps" in _gpb(4, [0.5, 2.0, 0.75])["headline"]
    # up to 8 steps every one is a row; 9 steps are thinned to 8 evenly spaced: round(i · 8/7) for i = 0..7
    assert [r[0] for r in _gpb(0, [0.5] * 8)["table"]["rows"]] == [10 * i for i in range(8)]
    nine = _gpb(0, [0.5] * 9)["table"]["rows"]
    assert [r[0] for r in nine] == [0, 10, 20, 30, 50, 60, 70, 80]
    assert nine[4] == [50, 0.25, 0.5 - 5 / 64, 0.75, 0.5]


# --- gradnorm_gan: a normalized critic supports while max ‖∇D̂‖ ≤ 1 + 1e-3 --------------------------------------------
def _gan(constraint: str, real, fake, interp, quality=None, diverged_at_step=None) -> dict:
    result = {
        "lipschitz": {
            "grad_max_real": real,
            "grad_max_fake": fake,
            "grad_max_interp": interp,
            "grad_mean_real": 0.5,
            "grad_mean_fake": 0.25,
            "grad_mean_interp": 0.375,
            "max_pair_slope": 1.75,
            "share_pairs_over_1": 0.125,
        },
        "quality": quality or {"modes_covered": 7, "n_modes": 8, "high_quality_share": 0.625, "converged": True},
        "cost": {"time_per_step_ms_median": 12.5, "saved_bytes_critic_update": 2048},
        "final_loss_d": -0.5,
        "steps_run": 40,
        "constraint": constraint,
        "loss": "hinge",
    }
    if diverged_at_step is not None:
        result["diverged_at_step"] = diverged_at_step
    return checked(gan.summarize(None, result))


@pytest.mark.parametrize(
    ("real", "fake", "interp", "outcome"),
    [
        (0.5, 1 + gan.BOUND_TOLERANCE, 0.75, "supports"),  # at 1.001 exactly
        (0.5, up(1 + gan.BOUND_TOLERANCE), 0.75, "contradicts"),
        (0.5, 0.75, up(1 + gan.BOUND_TOLERANCE), "contradicts"),  # on any probe set
        (up(1 + gan.BOUND_TOLERANCE), None, None, "contradicts"),
        (1.0, 1.0, 1.0, "supports"),
        (None, None, None, "inconclusive"),
    ],
)
@pytest.mark.parametrize("constraint", gan.NORMALIZED)
def test_gradnorm_verdict_at_the_bound(constraint, real, fake, interp, outcome):
    out = _gan(constraint, real, fake, interp)
    assert out["verdict"]["outcome"] == outcome
    finite = [v for v in (real, fake, interp) if v is not None]
    assert out["figures"]["max_input_grad_norm"] == (max(finite) if finite else None)


@pytest.mark.parametrize("constraint", ["gp", "none", "spectral"])
def test_gradnorm_unnormalized_critic_is_inconclusive_however_steep(constraint):
    assert _gan(constraint, 0.5, 9.0, 0.5)["verdict"]["outcome"] == "inconclusive"
    assert _gan(constraint, 0.5, 0.5, 0.5)["verdict"]["outcome"] == "inconclusive"


def test_gradnorm_figures_headline_and_table():
    out = _gan("gn", 0.5, 0.875, 0.75)
    f = out["figures"]
    assert (f["max_pair_slope"], f["share_pairs_over_1"], f["time_per_step_ms"]) == (1.75, 0.125, 12.5)
    assert (f["saved_bytes_critic_update"], f["final_loss_d"], f["steps_run"]) == (2048, -0.5, 40)
    assert (f["modes_covered"], f["n_modes"], f["high_quality_share"]) == (7, 8, 0.625)
    assert "converged" not in f  # a flag is not a figure
    assert "7/8 modes covered, 0.625 of samples high quality" in out["headline"]
    assert "max ‖∇D̂‖ 0.875 on real" in out["headline"] and "12.5 ms per step." in out["headline"]
    assert out["table"]["rows"] == [["real", 0.5, 0.5], ["fake", 0.875, 0.25], ["interp", 0.75, 0.375]]
    assert "max ‖∇D̂‖ 0.98765 on real" in _gan("gn", 0.987654321, 0.5, 0.5)["headline"]  # five significant digits
    mnist = _gan(
        "gn",
        0.5,
        0.5,
        0.5,
        {"classifier_test_accuracy": 0.9375, "classes_covered": 9, "frechet_classifier_features": 2.5},
    )
    assert "9 digit classes covered, classifier Fréchet distance 2.5" in mnist["headline"]
    raw = _gan("gn", 0.5, 0.5, 0.5, {"frechet_raw": 0.125})
    assert "Fréchet distance 0.125" in raw["headline"]


def test_gradnorm_headline_names_the_step_it_diverged_at_only_when_it_did():
    assert _gan("gn", 0.5, 0.5, 0.5)["headline"].startswith("gn critic (hinge loss, 40 steps): max")
    diverged = _gan("gn", 0.5, 0.5, 0.5, diverged_at_step=17)["headline"]
    assert diverged.startswith("gn critic (hinge loss, 40 steps, diverged at step 17): max")


# --- vae_density: the largest drop of L_K (and excess over exact) in standard errors: ≤ 2 supports, > 3 contradicts --
# Standard errors 3/8 and 1/2 add in quadrature to 5/8 exactly, so a drop of 1.25 nats is 2 standard errors.
def _vae(nats: list, stderr: list, exact=None, k=None) -> dict:
    ks = k or [1, 10, 100][: len(nats)]
    bounds = [
        {"k": kk, "nats": n, "stderr_nats": s, "bits_per_dim": 1.5, "gap_to_exact_nats": None}
        for kk, n, s in zip(ks, nats, stderr, strict=True)
    ]
    result = {
        "heldout": {"bounds": bounds, "elbo_nats": nats[0], "exact_nats": exact, "ess_fraction_at_max_k": 0.5},
        "train": {"bounds": [{"k": ks[0], "nats": -9.5}]},
        "dataset": "linear_gaussian",
    }
    return checked(vae.summarize(None, result))


@pytest.mark.parametrize(
    ("second", "outcome"),
    [
        (-10.0, "supports"),  # no drop
        (-11.25, "supports"),  # a drop of 2 standard errors exactly
        (down(-11.25), "inconclusive"),  # just past 2
        (-11.5, "inconclusive"),  # between (2.4)
        (-11.875, "inconclusive"),  # 3 exactly
        (down(-11.875), "contradicts"),
    ],
)
def test_vae_verdict_at_two_and_three_standard_errors(second, outcome):
    out = _vae([-10.0, second], [0.375, 0.5])
    assert out["verdict"]["outcome"] == outcome
    assert out["figures"]["max_violation_in_standard_errors"] == pytest.approx((-10.0 - second) / 0.625, rel=1e-12)


@pytest.mark.parametrize(
    ("last", "outcome"), [(-4.5, "supports"), (-4.0, "supports"), (-3.5, "inconclusive"), (-3.25, "contradicts")]
)
def test_vae_estimate_above_the_exact_value_counts_in_the_last_bounds_standard_error(last, outcome):
    # exact −5 nats with no spread; the last bound's standard error 1/2: above the truth by 1, 2, 3 and 3.5 of them
    out = _vae([-6.0, last], [0.5, 0.5], exact=-5.0)
    assert out["verdict"]["outcome"] == outcome
    assert out["figures"]["max_violation_in_standard_errors"] == pytest.approx((last + 5.0) / 0.5, rel=1e-12)


def test_vae_with_no_spread_counts_in_units_of_rounding_and_one_bound_is_inconclusive():
    # no standard errors (an exact proposal): the unit is 1e-9 × |upper| (at least 1e-9)
    out = _vae([-100.0, -100.0 - 2.5e-7], [0.0, None])
    assert out["figures"]["max_violation_in_standard_errors"] == pytest.approx(2.5e-7 / (1e-9 * 100.0), rel=1e-6)
    small = _vae([0.25, 0.25 - 2.5e-9], [0.0, 0.0])
    assert small["figures"]["max_violation_in_standard_errors"] == pytest.approx(2.5, rel=1e-6)
    one = _vae([-10.0], [0.5])
    assert one["verdict"]["outcome"] == "inconclusive" and one["figures"]["max_violation_in_standard_errors"] is None
    unknown = _vae([-10.0, None], [0.5, 0.5])
    assert unknown["verdict"]["outcome"] == "inconclusive"


def test_vae_figures_and_headline():
    out = _vae([-12.0, -10.5, -10.0], [0.5, 0.375, 0.25], exact=-9.75)
    f = out["figures"]
    assert f["gain_over_elbo_nats"] == 2.0 and (f["L_1_nats"], f["L_10_nats"], f["L_100_nats"]) == (-12.0, -10.5, -10.0)
    assert f["max_violation_in_standard_errors"] == pytest.approx(-0.25 / 0.25)  # below exact by one standard error
    assert out["verdict"]["outcome"] == "supports"
    assert "L_K rises from K = 1 to K = 100 by 2 nats." in out["headline"]
    assert "falls" in _vae([-10.0, -10.5], [0.5, 0.5])["headline"]
    assert "L_K rises from K = 1 to K = 10 by 0 nats" in _vae([-10.0, -10.0], [0.5, 0.5])["headline"]  # level
    at_zero = _vae([-0.5, 0.0], [0.5, 0.5])["headline"]  # a bound of exactly 0 nats is a value, not a missing one
    assert "L_K rises from K = 1 to K = 10 by 0.5 nats" in at_zero
    assert [r[0] for r in out["table"]["rows"]] == [1, 10, 100] and out["table"]["rows"][0][-1] == -9.5


# --- eg_stepsize: worst-scale accuracy of EG minus SGD's, against ±0.02 ---------------------------------------------
def _eg(eg_acc: dict, sgd_acc: dict, optimizers=("sgd", "eg_stepsize"), seeds=1) -> dict:
    scales = sorted(sgd_acc)
    runs, settings = [], []
    for o in optimizers:
        by_scale = sgd_acc if o == "sgd" else eg_acc
        for s in scales:
            for acc in by_scale[s]:
                runs.append({"optimizer": o, "lr_scale": s, "final_test_acc": acc, "final_test_loss": 2 * s})
            settings.append(
                {"optimizer": o, "lr_scale": s, "diverged_runs": 0, "rate_factor": 1.0, "mean_recovery_steps": None}
            )
    result = {"runs": runs, "optimizers": list(optimizers), "lr_scales": scales, "seeds": seeds, "settings": settings}
    return checked(eg.summarize(None, result))


@pytest.mark.parametrize(
    ("eg_worst", "sgd_worst", "outcome"),
    [
        (eg.MARGIN, 0.0, "inconclusive"),  # a gain of 0.02 exactly
        (up(eg.MARGIN), 0.0, "supports"),
        (0.01, 0.0, "inconclusive"),  # between
        (0.0, eg.MARGIN, "inconclusive"),  # −0.02 exactly
        (0.0, up(eg.MARGIN), "contradicts"),
        (0.5, 0.5, "inconclusive"),
    ],
)
def test_eg_verdict_at_the_margin(eg_worst, sgd_worst, outcome):
    out = _eg({0.1: [eg_worst], 1.0: [0.875]}, {0.1: [0.875], 1.0: [sgd_worst]})
    assert out["verdict"]["outcome"] == outcome
    assert out["figures"]["worst_scale_accuracy_gain_vs_sgd"] == eg_worst - sgd_worst


def test_eg_worst_scale_is_the_lowest_mean_over_seeds_and_a_diverged_setting_counts_as_zero():
    out = _eg({0.1: [0.5, 0.75], 1.0: [0.875, 0.875]}, {0.1: [0.25, 0.5], 1.0: [0.75, 1.0]}, seeds=2)
    f = out["figures"]
    assert (f["worst_scale_accuracy/eg_stepsize"], f["worst_scale_accuracy/sgd"]) == (0.625, 0.375)
    assert f["worst_scale_accuracy_gain_vs_sgd"] == 0.25 and out["verdict"]["outcome"] == "supports"
    assert (
        "over lr × 0.1…1 (2 seeds)" in out["headline"] and "eg_stepsize beats fixed-rate SGD by 0.25" in out["headline"]
    )
    assert "best setting sgd at lr × 1 (0.875 ± 0.18)" in out["headline"]
    diverged = _eg({0.1: [None], 1.0: [0.875]}, {0.1: [0.5], 1.0: [0.75]})
    assert diverged["figures"]["worst_scale_accuracy/eg_stepsize"] == 0.0
    assert diverged["verdict"]["outcome"] == "contradicts" and "trails fixed-rate SGD by 0.5" in diverged["headline"]
    tie = _eg({0.1: [0.5], 1.0: [0.75]}, {0.1: [0.5], 1.0: [0.75]})
    assert "eg_stepsize ties with fixed-rate SGD at its worst scale" in tie["headline"]
    assert "(1 seed)" in tie["headline"]
    assert len(out["table"]["rows"]) == 4 and out["table"]["rows"][1][:2] == ["sgd", 1.0]
    assert [row[3]["mean"] for row in out["table"]["rows"]] == [0.2, 2.0, 0.2, 2.0]  # each setting's own loss


def test_eg_picks_eg_stepsize_before_the_funnel_and_needs_sgd():
    funnel = _eg({0.1: [0.75], 1.0: [0.75]}, {0.1: [0.5], 1.0: [0.5]}, optimizers=("sgd", "eg_funnel"))
    assert funnel["figures"]["worst_scale_accuracy_gain_vs_sgd"] == 0.25
    both = _eg({0.1: [0.75], 1.0: [0.75]}, {0.1: [0.5], 1.0: [0.5]}, optimizers=("eg_funnel", "sgd", "eg_stepsize"))
    assert "; eg_stepsize beats" in both["headline"]
    no_sgd = _eg({0.1: [0.75], 1.0: [0.75]}, {0.1: [0.5], 1.0: [0.5]}, optimizers=("eg_stepsize", "eg_funnel"))
    assert no_sgd["verdict"]["outcome"] == "inconclusive"
    assert no_sgd["figures"]["worst_scale_accuracy_gain_vs_sgd"] is None
