"""The figures each kind's run reports, computed from what happened: every kind's ``run`` module builds its result
from small functions of the runs' raw outcomes (per-seed curves, Monte Carlo draws, per-sample bound terms, step
timings, shifts and when the loss came back), and each is checked here on made-up outcomes against values worked out
by hand or recomputed independently, so that a count or ratio breaks its test when the thing it counts changes. Fast
(no training): these are the tests ``make mutants`` runs against the run modules' figure functions."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import torch

from core.techniques import get_kind
from core.techniques.contrastive_accumulation import run as contrastive
from core.techniques.eg_stepsize import run as eg
from core.techniques.embedding_dim import run as embedding
from core.techniques.gradient_penalty_bound import run as gpb
from core.techniques.gradnorm_gan import run as gan
from core.techniques.init_averaging import run as init_averaging
from core.techniques.momentum_accumulation import run as momentum
from core.techniques.vae_density import run as vae

LN2 = math.log(2.0)


# --- momentum_accumulation --------------------------------------------------------------------------------------
def _momentum_params(**kw):
    return get_kind("momentum_accumulation").params(**kw)


def _seed_run(train, loss, acc, updates, state_bytes, weights):
    return {
        "train_loss": train,
        "heldout_loss": loss,
        "heldout_accuracy": acc,
        "updates": updates,
        "state_bytes": state_bytes,
        "weights": torch.tensor(weights, dtype=torch.float64),
    }


RUNS = [  # three seeds, three evaluations each
    _seed_run([2.0, 1.0, 0.5], [2.5, 1.5, 0.75], [0.1, 0.5, 0.75], 60, 640, [1.0, 2.0]),
    _seed_run([2.0, 1.2, 0.7], [2.5, 1.9, 1.25], [0.1, 0.4, 0.5], 61, 641, [1.0, 2.5]),
    _seed_run([2.0, 0.8, 0.3], [2.5, 1.1, 1.0], [0.1, 0.6, 1.0], 62, 642, [0.5, 2.0]),
]
EXPLICIT = [torch.tensor([1.0, 2.0], dtype=torch.float64), torch.tensor([1.0, 2.25], dtype=torch.float64),
            torch.tensor([1.0, 2.0], dtype=torch.float64)]  # fmt: skip


def test_momentum_arm_reports_seed_means_sds_and_the_identity_error():
    params = _momentum_params(optimizer="adam", betas=[0.9, 0.99], accum_steps=4)
    arm = momentum._arm_result("chi_exact", params, RUNS, EXPLICIT)
    assert arm["train_loss"] == pytest.approx([2.0, 1.0, 0.5])
    assert arm["heldout_loss"] == pytest.approx([2.5, 1.5, 1.0])
    assert arm["heldout_accuracy"] == pytest.approx([0.1, 0.5, 0.75])
    assert arm["heldout_loss_sd"] == pytest.approx([0.0, 0.4, 0.25])  # stdev of (1.5, 1.9, 1.1), (0.75, 1.25, 1)
    assert arm["final_heldout_accuracies"] == [0.75, 0.5, 1.0]
    assert arm["final_heldout_accuracy_mean"] == pytest.approx(0.75)
    assert arm["final_heldout_accuracy_sd"] == pytest.approx(0.25)
    assert arm["final_heldout_loss_mean"] == pytest.approx(1.0)
    assert arm["final_heldout_loss_sd"] == pytest.approx(0.25)
    # the first seed's counts, not a sum or the last seed's
    assert (arm["updates"], arm["state_bytes"]) == (60, 640)
    # largest |θ − θ_explicit| over seeds and weights: seed 2 is 0.25 off, seed 3 0.5 off
    assert arm["identity_error_vs_explicit"] == 0.5
    assert arm["betas"] == [0.9, 0.99]
    assert arm["_curves"]["heldout_loss"] == [r["heldout_loss"] for r in RUNS]


def test_momentum_arm_betas_and_what_the_explicit_arm_does_not_report():
    sgdm = _momentum_params(optimizer="sgdm", betas=[0.9, 0.99], accum_steps=4)
    assert momentum._arm_result("chi_exact", sgdm, RUNS, EXPLICIT)["betas"] == [0.9]
    adam = _momentum_params(optimizer="adam", betas=[0.9, 0.99], accum_steps=4)
    tilde = momentum._arm_result("beta_tilde_lr_chi", adam, RUNS, EXPLICIT)["betas"]
    assert tilde == pytest.approx([1 - 0.1 / 4, 1 - 0.01 / 4])  # β̃ = 1 − (1 − β)/k
    assert momentum._arm_result("explicit_buffer", adam, RUNS, EXPLICIT)["identity_error_vs_explicit"] is None
    assert momentum._arm_result("chi_exact", adam, RUNS, [])["identity_error_vs_explicit"] is None


def test_momentum_arm_with_one_seed_or_a_diverged_seed():
    params = _momentum_params()
    two = momentum._arm_result("chi_exact", params, RUNS[:2], [])
    assert two["heldout_loss_sd"] == pytest.approx([0.0, 0.4 / math.sqrt(2), 0.5 / math.sqrt(2)])  # |a − b|/√2
    one = momentum._arm_result("chi_exact", params, RUNS[:1], [])
    assert one["final_heldout_accuracy_sd"] is None and one["heldout_loss_sd"] is None
    assert one["final_heldout_accuracy_mean"] == 0.75 and one["final_heldout_loss_sd"] is None
    diverged = [RUNS[0], {**RUNS[1], "heldout_loss": [2.5, float("nan"), float("nan")]}]
    arm = momentum._arm_result("chi_exact", params, diverged, [])
    assert arm["final_heldout_loss_mean"] is None and arm["final_heldout_loss_sd"] is None
    assert arm["heldout_loss"][0] == 2.5 and arm["heldout_loss"][1:] == [None, None]  # NaN is reported as None
    assert arm["final_heldout_accuracy_mean"] == pytest.approx(0.625)  # accuracy did not diverge


def test_momentum_saving_is_explicit_minus_exact_and_checked_against_one_parameter_tensor():
    arms = {"explicit_buffer": {"state_bytes": 1000}, "chi_exact": {"state_bytes": 600}}
    assert momentum._accumulation_saving(arms, 400) == {
        "explicit_buffer_bytes": 1000,
        "chi_exact_bytes": 600,
        "saving_bytes": 400,
        "param_bytes": 400,
        "saving_is_one_parameter_sized_tensor": True,
    }
    assert momentum._accumulation_saving(arms, 399)["saving_is_one_parameter_sized_tensor"] is False
    assert momentum._accumulation_saving({"chi_exact": {"state_bytes": 1}}, 1) is None
    assert momentum._accumulation_saving({"explicit_buffer": {"state_bytes": 1}}, 1) is None


def test_momentum_best_arm_is_the_highest_mean_accuracy():
    acc = lambda v: {"final_heldout_accuracy_mean": v}  # noqa: E731
    assert momentum._best_arm({"a": acc(0.5), "b": acc(0.9), "c": acc(None), "d": acc(0.7)}) == "b"
    assert momentum._best_arm({"a": acc(0.5), "b": acc(0.5)}) == "a"
    assert momentum._best_arm({"a": acc(None)}) is None


def test_momentum_stats_mean_and_sample_sd():
    assert momentum._stats([1.0, 2.0, 6.0]) == (pytest.approx(3.0), pytest.approx(statistics.stdev([1, 2, 6])))
    assert momentum._stats([4.0]) == (4.0, None)
    assert momentum._stats([1.0, float("inf")]) == (None, None)


# --- init_averaging ---------------------------------------------------------------------------------------------
def test_init_averaging_reports_the_draws_averages_beside_the_linear_prediction():
    widths = [4, 12, 2]
    draws = [([1.0, 2.0], 3.0), ([3.0, 6.0], 5.0), ([2.0, 1.0], 1.0), ([2.0, 3.0], 7.0)]
    got = init_averaging._mean_result(widths, "arithmetic", draws)
    assert got["layer_forward_moments"] == pytest.approx([2.0, 3.0])
    assert got["forward_ratio"] == pytest.approx(3.0)  # the last layer's
    assert got["backward_ratio"] == pytest.approx(4.0)
    var = [2 / (4 + 12), 2 / (12 + 2)]  # Glorot: 2/(m + n)
    assert got["layer_variances"] == pytest.approx(var)
    assert got["predicted_forward_ratio"] == pytest.approx(4 * var[0] * 12 * var[1])  # Π m σ²
    assert got["predicted_backward_ratio"] == pytest.approx(12 * var[0] * 2 * var[1])  # Π n σ²
    geometric = init_averaging._mean_result(widths, "geometric", draws[:1])
    assert geometric["layer_variances"] == pytest.approx([1 / math.sqrt(48), 1 / math.sqrt(24)])
    assert geometric["backward_ratio"] == 3.0 and geometric["layer_forward_moments"] == [1.0, 2.0]


# --- embedding_dim ----------------------------------------------------------------------------------------------
def test_embedding_dim_reports_bound_and_least_dimension_per_vocabulary():
    got = embedding._dimensions([512, 100_000], 8.33)
    assert [d["vocab_size"] for d in got] == [512, 100_000]
    assert got[0]["bound"] == pytest.approx(8.33 * 9 * LN2)  # 512 = 2⁹: 51.97
    assert [d["min_dimension"] for d in got] == [52, 96]  # 8.33 ln 1e5 = 95.90
    assert embedding._dimensions([], 8.33) == []


# --- eg_stepsize ------------------------------------------------------------------------------------------------
def _shift(step, pre):
    return {"step": step, "pre_shift_loss": pre, "post_shift_loss": 9.0, "recovery_steps": None}


def test_eg_shift_counts_as_recovered_at_the_first_loss_back_within_tolerance():
    shifts = [_shift(100, 1.0)]
    eg._note_recovery(shifts, 110, 1.2, 0.1)  # 1.2 > 1.1: not yet
    assert shifts[0]["recovery_steps"] is None
    eg._note_recovery(shifts, 120, 1.1, 0.1)  # exactly at the tolerance: recovered
    assert shifts[0]["recovery_steps"] == 20
    eg._note_recovery(shifts, 130, 0.5, 0.1)  # the first time counts
    assert shifts[0]["recovery_steps"] == 20
    earlier = [_shift(100, 1.0), _shift(200, 2.0)]
    eg._note_recovery(earlier, 210, 1.5, 0.0)  # only the last shift is followed
    assert [s["recovery_steps"] for s in earlier] == [None, 10]
    unknown = [_shift(100, None)]  # no loss before the shift: never recovered
    eg._note_recovery(unknown, 110, 0.0, 0.1)
    assert unknown[0]["recovery_steps"] is None
    eg._note_recovery([], 10, 0.0, 0.1)  # no shift yet: nothing to do


def _run(opt, scale, seed, loss, acc, diverged=None, factor=None, recoveries=()):
    return {
        "optimizer": opt,
        "lr_scale": scale,
        "seed": seed,
        "final_test_loss": loss,
        "final_test_acc": acc,
        "diverged_at": diverged,
        "rate_factor": factor,
        "shifts": [{"recovery_steps": r} for r in recoveries],
    }


def test_eg_settings_average_seeds_and_count_diverged_runs_and_recovered_shifts():
    runs = [
        _run("sgd", 1.0, 0, 0.5, 0.8, recoveries=(10, None)),
        _run("sgd", 1.0, 1, 0.7, 0.6, recoveries=(30, 50)),
        _run("sgd", 10.0, 0, None, None, diverged=3, recoveries=(None,)),
        _run("sgd", 10.0, 1, 0.9, 0.5),
        _run("eg", 1.0, 0, 0.4, 0.9, factor=2.0),
        _run("eg", 1.0, 1, 0.2, 0.7, factor=8.0),
        _run("eg", 10.0, 0, 0.3, 0.8, factor=0.0),
        _run("eg", 10.0, 1, 0.3, 0.8, factor=None),
    ]
    sgd1, sgd10, eg1, eg10 = eg._settings(runs, ["sgd", "eg"], [1.0, 10.0])
    assert (sgd1["optimizer"], sgd1["lr_scale"], eg10["optimizer"], eg10["lr_scale"]) == ("sgd", 1.0, "eg", 10.0)
    assert sgd1["final_test_loss"] == pytest.approx(0.6) and sgd1["final_test_acc"] == pytest.approx(0.7)
    assert (sgd1["shifts"], sgd1["recovered_shifts"], sgd1["mean_recovery_steps"]) == (4, 3, pytest.approx(30.0))
    assert sgd1["diverged_runs"] == 0 and sgd1["rate_factor"] is None
    assert sgd10["diverged_runs"] == 1 and sgd10["final_test_loss"] is None  # a diverged seed has no final loss
    assert (sgd10["shifts"], sgd10["recovered_shifts"], sgd10["mean_recovery_steps"]) == (1, 0, None)
    assert eg1["rate_factor"] == pytest.approx(4.0)  # geometric mean of 2 and 8
    assert eg1["final_test_loss"] == pytest.approx(0.3) and eg1["shifts"] == 0
    assert eg10["rate_factor"] is None  # a factor of 0 has no geometric mean; None is left out
    negative = [_run("hyper", 1.0, 0, 0.5, 0.5, factor=2.0), _run("hyper", 1.0, 1, 0.5, 0.5, factor=-0.5)]
    assert eg._settings(negative, ["hyper"], [1.0])[0]["rate_factor"] is None  # α driven below 0: no geometric mean


def test_eg_mean_or_none():
    assert eg._mean_or_none([1.0, 2.0, 6.0]) == pytest.approx(3.0)
    assert eg._mean_or_none([1.0, None]) is None and eg._mean_or_none([]) is None


# --- gradient_penalty_bound ---------------------------------------------------------------------------------------
def _terms(lhs, rhs, ratio_fro, lhs_fro, residuals=(1e-12, 3e-12), power_iters=7):
    lhs, rhs = torch.tensor(lhs, dtype=torch.float64), torch.tensor(rhs, dtype=torch.float64)
    n = len(lhs)
    layer = lambda i: {  # noqa: E731
        "w_norm": torch.tensor(2.0 + i),
        "w_fro": torch.tensor(3.0 + i),
        "h_norm": torch.arange(n, dtype=torch.float64) + i,
        "jac_norm": torch.full((n,), 5.0 + i),
        "share": torch.tensor([0.5] * (n - 1) + [float("nan")]),
        "residual": torch.tensor([residuals[i], 0.0], dtype=torch.float64),
    }
    return {
        "lhs": lhs,
        "rhs": rhs,
        "ratio": lhs / rhs,
        "lhs_frobenius": torch.tensor(lhs_fro, dtype=torch.float64),
        "ratio_frobenius": torch.tensor(ratio_fro, dtype=torch.float64),
        "layers": [layer(0), layer(1)],
        "power_iters": power_iters,
        "method": "jacrev",
    }


def test_bound_violations_count_the_samples_over_the_bound_beyond_rounding():
    rhs = [1.0, 1.0, 1.0, 1.0, 0.0]
    lhs = [0.5, 1.0 + 1e-12, 1.0 + 1e-6, 2.0, 0.0]  # at the bound within 1e-9: not a violation; 0/0: not finite
    got = gpb.summarize_terms(_terms(lhs, rhs, [0.1, 0.2, 0.3, 0.4, 0.5], [2.0, 0.5, 0.5, 0.5, 1.0]))
    assert got["violations"] == 2 and got["violations_fro"] == 2  # lhs_fro 2 > 1, and 1 > 0
    finite = np.array([0.5, 1.0 + 1e-12, 1.0 + 1e-6, 2.0])
    assert got["ratios"].shape == (5,) and math.isnan(got["ratios"][-1])
    assert [got["q10"], got["median"], got["q90"]] == pytest.approx(list(np.quantile(finite, [0.1, 0.5, 0.9])))
    assert (got["min"], got["max"]) == (0.5, 2.0)
    assert got["fro_median"] == pytest.approx(0.3) and got["fro_max"] == pytest.approx(0.5)
    assert got["residual"] == 3e-12 and got["power_iters"] == 7 and got["method"] == "jacrev"
    first, second = got["layers"]
    assert (first["w_norm"], first["w_fro"], second["w_norm"]) == (2.0, 3.0, 3.0)
    assert (first["h_norm"], second["h_norm"], second["jac_norm"]) == (2.0, 3.0, 6.0)  # medians over samples
    assert first["share"] == 0.5  # the non-finite share is left out of the median


def test_bound_summary_of_no_finite_ratio_is_none():
    got = gpb.summarize_terms(_terms([0.0, 0.0], [0.0, 0.0], [float("nan")] * 2, [0.0, 0.0]))
    assert [got[k] for k in ("q10", "median", "q90", "min", "max", "fro_median", "fro_max")] == [None] * 7
    assert got["violations"] == 0 and got["violations_fro"] == 0


def test_bound_over_training_sums_violations_and_keeps_the_worst_residual():
    rhs = [1.0, 1.0, 1.0]
    history = [
        gpb.summarize_terms(_terms([2.0, 0.5, 0.5], rhs, [0.1, 0.2, 0.3], [0.5] * 3, residuals=(1e-9, 0.0))),
        gpb.summarize_terms(_terms([2.0, 3.0, 0.5], rhs, [0.4, 0.5, 0.6], [2.0] * 3, power_iters=9)),
    ]
    got = gpb._over_training([0, 25], history, 2)
    assert got["measured_steps"] == [0, 25]
    assert got["violations"] == 3 and got["violations_frobenius"] == 3  # 1 + 2, and 0 + 3
    assert got["max_identity_residual"] == 1e-9 and got["max_power_iters"] == 9
    assert got["ratio"]["max"] == [2.0, 3.0] and got["ratio"]["min"] == [0.5, 0.5]
    assert got["ratio"]["median"] == pytest.approx([0.5, 2.0])
    assert got["ratio_frobenius"] == {"median": pytest.approx([0.2, 0.5]), "max": pytest.approx([0.3, 0.6])}
    assert [layer["w_norm"] for layer in got["layers"]] == [[2.0, 2.0], [3.0, 3.0]]
    assert got["layers"][1]["jac_norm"] == [6.0, 6.0] and len(got["layers"]) == 2


# --- vae_density ------------------------------------------------------------------------------------------------
def test_vae_summary_reports_means_standard_errors_bits_and_the_gap_to_exact():
    elbo = torch.tensor([-10.0, -12.0, -14.0, -16.0], dtype=torch.float64)
    lk = torch.tensor([-9.0, -11.0, -12.0, -16.0], dtype=torch.float64)
    exact = torch.tensor([-8.0, -10.0, -12.0, -14.0], dtype=torch.float64)
    ev = {"elbo": elbo, "per_k": {1: elbo, 100: lk}, "ess_last": torch.tensor([20.0, 30.0, 40.0, 50.0])}
    got = vae._summary(ev, 4, exact, 100)
    assert got["n_rows"] == 4
    assert got["elbo_nats"] == -13.0 and got["elbo_bits_per_dim"] == pytest.approx(13.0 / (4 * LN2))
    assert got["exact_nats"] == -11.0 and got["exact_bits_per_dim"] == pytest.approx(11.0 / (4 * LN2))
    assert got["ess_fraction_at_max_k"] == pytest.approx(0.35)  # mean ESS 35 of K = 100
    one, hundred = got["bounds"]
    assert (one["k"], hundred["k"]) == (1, 100)
    assert hundred["nats"] == -12.0 and hundred["bits_per_dim"] == pytest.approx(12.0 / (4 * LN2))
    assert hundred["stderr_nats"] == pytest.approx(statistics.stdev([-9, -11, -12, -16]) / 2)  # sd/√n
    assert one["gap_to_exact_nats"] == pytest.approx(2.0) and hundred["gap_to_exact_nats"] == pytest.approx(1.0)
    without = vae._summary(ev, 4, None, 100)
    assert without["exact_nats"] is None and without["exact_bits_per_dim"] is None
    assert without["bounds"][0]["gap_to_exact_nats"] is None
    pair = {"elbo": elbo[:2], "per_k": {1: elbo[:2]}, "ess_last": torch.tensor([1.0, 1.0])}
    assert vae._summary(pair, 4, None, 1)["bounds"][0]["stderr_nats"] == pytest.approx(1.0)  # sd √2 over √2 rows
    single = {"elbo": elbo[:1], "per_k": {1: elbo[:1]}, "ess_last": torch.tensor([1.0])}
    assert vae._summary(single, 4, None, 1)["bounds"][0]["stderr_nats"] is None  # no sd from one row


# --- contrastive_accumulation -----------------------------------------------------------------------------------
def test_contrastive_step_costs_are_medians_and_the_time_ratio():
    times = {"chunked": [3.0, 1.0, 2.0, 100.0], "full": [1.0, 1.0, 0.5], "naive": [4.0]}
    peaks = {"chunked": [10, 30, 20], "full": [], "naive": [7, 8]}
    per_step, memory, ratio = contrastive._step_costs(times, peaks, ["chunked", "full", "naive"])
    assert per_step == {"chunked": 2.5, "full": 1.0, "naive": 4.0}
    assert memory == {"chunked": 20, "full": None, "naive": 7}  # the median, as a whole number of bytes
    assert ratio == 2.5
    assert contrastive._step_costs(times, peaks, ["chunked"])[2] is None  # no full batch to compare with
    slower = {"chunked": [3.0], "full": [2.0, 2.0, 1.0]}
    assert contrastive._step_costs(slower, {"chunked": [], "full": []}, ["chunked", "full"])[2] == 1.5


def test_contrastive_relative_gradient_difference():
    ref = torch.tensor([1.0, -4.0, 2.0])
    assert contrastive._rel_diff(torch.tensor([1.5, -4.0, 1.0]), ref) == pytest.approx(0.25)  # max |Δ| 1 / max |ref| 4
    assert contrastive._rel_diff(torch.zeros(2), torch.zeros(2)) == 0.0


# --- gradnorm_gan -----------------------------------------------------------------------------------------------
def test_gan_step_times_and_thinned_curves():
    got = gan._step_times([0.001, 0.003, 0.011])
    assert got["time_per_step_ms"] == pytest.approx(5.0) and got["time_per_step_ms_median"] == pytest.approx(3.0)
    assert gan._step_times([]) == {"time_per_step_ms": None, "time_per_step_ms_median": None}
    n = 2 * gan.CURVE_POINTS + 1
    curves = {"step": list(range(n)), "loss_d": [float(i) for i in range(n)]}
    thinned = gan._thinned(curves)
    assert thinned["step"] == list(range(0, n, 2)) and thinned["loss_d"] == [float(i) for i in range(0, n, 2)]
    short = {"step": [0, 1, 2], "loss_d": [1.0, 2.0, 3.0]}
    assert gan._thinned(short) == short


def test_gan_clean_makes_results_json_safe():
    got = gan._clean({"a": [np.float32(0.5), float("nan")], "b": (np.int64(3), float("inf")), "c": "x", "d": None})
    assert got == {"a": [0.5, None], "b": [3, None], "c": "x", "d": None}
    assert type(got["b"][0]) is int and type(got["a"][0]) is float
