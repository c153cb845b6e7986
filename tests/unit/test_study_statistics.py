"""A study's statistics against closed forms and hand counts: Student t intervals (the 97.5 % quantile with one and two
degrees of freedom has a closed form), paired differences over only the seeds both settings ran, the verdicts'
tally, the state and progress of the children, the CSV, the bands' sd from squared deviations, the bucket width, and
the expansion of a grid or settings into labelled params (with the refusals of ``core.studies.service``). Pure
Python, no database."""

from __future__ import annotations

import csv
import io
import math

import pytest

from core.errors import Invalid
from core.studies import service, stats
from core.studies.schemas import MAX_STUDY_JOBS, StudyRequest

# t quantile at 0.975: with 1 degree of freedom tan(π (p − ½)); with 2, (2p − 1) / √(2 p (1 − p))
T1 = math.tan(math.pi * 0.475)
T2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)


def test_t_quantiles_are_the_closed_forms():
    assert T1 == pytest.approx(12.706204736, rel=1e-9) and T2 == pytest.approx(4.302652730, rel=1e-9)


@pytest.mark.parametrize(
    ("values", "mean", "ci95", "n"),
    [
        ([1.0, 3.0], 2.0, T1 * math.sqrt(2) / math.sqrt(2), 2),  # sd √2
        ([1.0, 2.0, 3.0], 2.0, T2 * 1.0 / math.sqrt(3), 3),  # sd 1
        ([4.0, 4.0, 4.0], 4.0, 0.0, 3),
        ([2.5], 2.5, None, 1),
        ([], None, None, 0),
        ([None, float("nan"), float("inf"), 1.0, 3.0], 2.0, T1, 2),  # non-finite and missing values are left out
    ],
)
def test_mean_ci_is_student_t_over_the_finite_values(values, mean, ci95, n):
    out = stats.mean_ci(values)
    assert out["n"] == n and out["mean"] == (None if mean is None else pytest.approx(mean, rel=1e-12))
    assert out["ci95"] == (None if ci95 is None else pytest.approx(ci95, rel=1e-9, abs=1e-15))


def test_mean_ci_with_many_seeds_uses_n_minus_one_degrees_of_freedom():
    values = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]  # mean 2.5, sample sd √3.5; t(0.975, 5) = 2.5705818366
    out = stats.mean_ci(values)
    assert out["ci95"] == pytest.approx(2.5705818366 * math.sqrt(3.5) / math.sqrt(6), rel=1e-9)


def _kid(setting, seed, figures=None, status="succeeded", outcome=None, progress=1.0):
    summary = None if figures is None else {"figures": figures, "verdict": {"outcome": outcome} if outcome else None}
    return stats.Child(setting, seed, status, progress, summary)


def test_paired_differences_use_only_the_seeds_both_settings_ran():
    children = [
        _kid(0, 0, {"acc": 0.5, "loss": 1.0}, outcome="supports"),
        _kid(0, 1, {"acc": 0.25, "loss": 2.0}, outcome="supports"),
        _kid(0, 2, {"acc": 0.75, "loss": 3.0}, outcome="contradicts"),
        _kid(0, 5, status="failed"),
        _kid(1, 0, {"acc": 1.0, "loss": 0.5}, outcome="supports"),  # +0.5 over seed 0
        _kid(1, 1, {"acc": 0.5, "loss": None}, outcome="inconclusive"),  # +0.25 over seed 1; no loss
        _kid(1, 2, {"acc": 9.0}, status="failed"),  # failed: neither averaged nor paired
        _kid(1, 3, {"acc": 0.125, "loss": 4.0}),  # the baseline has no seed 3: averaged, not paired
        _kid(1, 4, status="running", progress=0.5),
    ]
    out = stats.compare(["base", "lr=2"], 0, children)
    assert out["baseline"] == 0 and out["figures"] == ["acc", "loss"]
    base, other = out["rows"]
    assert (base["jobs"], base["succeeded"], base["failed"], base["paired"]) == (4, 3, 1, None)
    assert base["verdicts"] == {"supports": 2, "contradicts": 1}
    assert base["figures"]["acc"]["mean"] == pytest.approx(0.5) and base["figures"]["acc"]["n"] == 3
    assert base["figures"]["loss"]["ci95"] == pytest.approx(T2 * 1.0 / math.sqrt(3))
    assert (other["jobs"], other["succeeded"], other["failed"], other["label"]) == (5, 3, 1, "lr=2")
    assert other["verdicts"] == {"supports": 1, "inconclusive": 1}
    assert other["figures"]["acc"]["mean"] == pytest.approx((1.0 + 0.5 + 0.125) / 3)
    assert other["figures"]["loss"]["n"] == 2 and other["figures"]["loss"]["mean"] == pytest.approx(2.25)
    acc = other["paired"]["acc"]  # differences +0.5 and +0.25: mean 0.375, sd 0.25/√2, ci t(1) · sd / √2
    assert acc["n"] == 2 and acc["mean"] == pytest.approx(0.375)
    assert acc["ci95"] == pytest.approx(T1 * (0.25 / math.sqrt(2)) / math.sqrt(2))
    loss = other["paired"]["loss"]  # only seed 0 has a loss on both sides: −0.5, no interval
    assert loss == {"mean": pytest.approx(-0.5), "ci95": None, "n": 1}


def test_compare_takes_numeric_figures_in_first_seen_order_and_a_later_baseline():
    children = [
        _kid(0, 0, {"b": 1, "flag": True, "name": "x", "a": 2.0}),
        _kid(1, 0, {"c": 3.0, "a": 1.0}),
        _kid(1, 1, None),  # succeeded without a summary
    ]
    out = stats.compare(["s0", "s1"], 1, children)
    assert out["figures"] == ["b", "a", "c"]
    first, second = out["rows"]
    assert second["paired"] is None and first["paired"]["a"] == {"mean": 1.0, "ci95": None, "n": 1}
    assert first["paired"]["b"] == {"mean": None, "ci95": None, "n": 0}  # the baseline has no b
    assert second["succeeded"] == 2 and second["figures"]["a"]["n"] == 1


def test_a_cancelled_child_is_counted_neither_succeeded_nor_failed():
    states = ["succeeded", "failed", "cancelled", "queued", "running"]
    children = [
        _kid(0, seed, {"a": 1.0} if state == "succeeded" else None, status=state) for seed, state in enumerate(states)
    ]
    (row,) = stats.compare(["base"], 0, children)["rows"]
    assert (row["jobs"], row["succeeded"], row["failed"]) == (5, 1, 1)


def test_csv_has_a_row_per_setting_and_five_columns_per_figure():
    children = [_kid(0, 0, {"acc": 0.5}, outcome="supports"), _kid(1, 0, {"acc": 0.75}, outcome="contradicts")]
    children.append(_kid(1, 1, status="failed"))
    rows = list(csv.reader(io.StringIO(stats.to_csv(stats.compare(["base", "x=1"], 0, children)))))
    assert rows[0] == [
        "setting", "label", "jobs", "succeeded", "failed", "supports", "contradicts", "inconclusive",
        "acc_mean", "acc_ci95", "acc_n", "acc_diff_vs_baseline", "acc_diff_ci95",
    ]  # fmt: skip
    assert rows[1] == ["0", "base", "1", "1", "0", "1", "0", "0", "0.5", "", "1", "", ""]
    assert rows[2] == ["1", "x=1", "2", "1", "1", "0", "1", "0", "0.75", "", "1", "0.25", ""]


@pytest.mark.parametrize(
    ("counts", "cancelled", "expected"),
    [
        ({"queued": 3}, False, "queued"),
        ({"queued": 3}, True, "running"),  # cancelling, children not yet stopped
        ({"queued": 2, "running": 1}, False, "running"),
        ({"queued": 1, "succeeded": 1}, False, "running"),
        ({"succeeded": 4}, False, "succeeded"),
        ({"succeeded": 4, "failed": 1}, False, "failed"),
        ({"succeeded": 4, "cancelled": 1}, False, "failed"),
        ({"succeeded": 4, "failed": 1}, True, "cancelled"),
        ({"running": 0, "succeeded": 2}, False, "succeeded"),  # a state counted zero is no state
        ({}, False, "succeeded"),
    ],
)
def test_status_of_counts(counts, cancelled, expected):
    assert stats.status_of_counts(counts, cancelled) == expected
    children = [stats.Child(0, i, s, 0.0, None) for s, n in counts.items() for i in range(n)]
    assert stats.status(children, cancelled) == expected


def test_progress_counts_a_finished_child_as_done_whatever_its_outcome():
    kids = [
        stats.Child(0, 0, "running", 0.5, None),
        stats.Child(0, 1, "queued", 0.0, None),
        stats.Child(0, 2, "failed", 0.25, None),
        stats.Child(0, 3, "succeeded", 0.75, None),
    ]
    assert stats.progress(kids) == pytest.approx((0.5 + 0.0 + 1.0 + 1.0) / 4)
    assert stats.progress([]) == 1.0
    by_status = {"running": (1, 0.5), "queued": (1, 0.0), "failed": (1, 0.25), "succeeded": (1, 0.75)}
    assert stats.progress_of_counts(by_status) == pytest.approx(2.5 / 4)
    assert stats.progress_of_counts({}) == 1.0 and stats.progress_of_counts({"queued": (0, 0.0)}) == 1.0


@pytest.mark.parametrize(
    ("first", "last", "points", "width"),
    [(0, 99, 100, 1), (0, 99, 50, 2), (0, 100, 50, 3), (0, 99, 33, 4), (10, 10, 5, 1), (5, 14, 1, 10), (0, 9, 3, 4)],
)
def test_bucket_width_is_the_ceiling_of_the_span_over_the_points(first, last, points, width):
    assert stats.bucket_width(first, last, points) == width
    assert math.ceil((last - first + 1) / width) <= points  # that many buckets fit
    assert width == 1 or math.ceil((last - first + 1) / (width - 1)) > points  # and one step narrower does not


def test_bands_give_sd_from_squared_deviations_and_none_for_one_seed():
    rows = [  # (setting, step, n, mean, lo, hi, squares), out of order
        (1, 20, 3, 2.0, 1.0, 3.0, 2.0),  # squares 2 over 2 degrees of freedom: sd 1
        (0, 10, 1, 5.0, 5.0, 5.0, 0.0),
        (0, 0, 2, 1.5, 1.0, 2.0, 0.5),  # sd √0.5
        (1, 10, 4, 0.25, -1.0, 1.0, -1e-18),  # rounding below zero is read as zero
    ]
    out = stats.bands(rows, 3)
    assert [b["setting"] for b in out] == [0, 1, 2]
    assert out[0] == {
        "setting": 0,
        "steps": [0, 10],
        "mean": [1.5, 5.0],
        "sd": [pytest.approx(math.sqrt(0.5)), None],
        "min": [1.0, 5.0],
        "max": [2.0, 5.0],
        "n": [2, 1],
    }
    assert out[1]["steps"] == [10, 20] and out[1]["sd"] == [0.0, pytest.approx(1.0)] and out[1]["n"] == [4, 3]
    assert out[1]["min"] == [-1.0, 1.0] and out[1]["max"] == [1.0, 3.0] and out[1]["mean"] == [0.25, 2.0]
    assert out[2]["steps"] == []


def test_expand_a_grid_first_key_slowest_with_dotted_paths():
    base = {"lr": 0.1, "sweep": {"steps": 10, "dims": [1]}, "other": 5}
    out = stats.expand(base, {"lr": [0.1, 0.2], "sweep.steps": [5, 6, 7]}, None)
    assert [label for label, _ in out] == [
        "lr=0.1, sweep.steps=5",
        "lr=0.1, sweep.steps=6",
        "lr=0.1, sweep.steps=7",
        "lr=0.2, sweep.steps=5",
        "lr=0.2, sweep.steps=6",
        "lr=0.2, sweep.steps=7",
    ]
    assert out[4][1] == {"lr": 0.2, "sweep": {"steps": 6, "dims": [1]}, "other": 5}
    out[0][1]["sweep"]["dims"].append(2)  # each setting is its own copy of base
    assert base["sweep"]["dims"] == [1] and out[1][1]["sweep"]["dims"] == [1]


def test_expand_settings_base_alone_and_a_path_through_a_non_dict():
    out = stats.expand({"a": 1, "b": 3}, None, [{"a": 2}, {"b": {"c": 4}}, {}])
    assert out == [("a=2", {"a": 2, "b": 3}), ("b={'c': 4}", {"a": 1, "b": {"c": 4}}), ("base", {"a": 1, "b": 3})]
    assert stats.expand({"a": 1}, None, None) == [("base", {"a": 1})]
    assert stats.expand({"a": 1}, {}, None) == [("base", {"a": 1})]
    assert stats.expand({"x": 3}, None, [{"x.y.z": 1}]) == [("x.y.z=1", {"x": {"y": {"z": 1}}})]


# --- core.studies.service: the size checks and the per-setting validation, before anything is stored ---------------
def _request(**kw) -> StudyRequest:
    return StudyRequest(kind="init_averaging", base={"widths": [8, 8], "batch": 16, "trials": 1}, **kw)


def _refusal(**kw) -> dict:
    with pytest.raises(Invalid) as caught:
        service.expand(_request(**kw))
    return caught.value.errors[0]


def test_study_size_is_capped_at_the_product_of_settings_and_seeds():
    seeds = list(range(50))
    assert len(service.expand(_request(grid={"trials": list(range(1, 11))}, seeds=seeds))) == 10  # 500 exactly
    over = _refusal(grid={"trials": list(range(1, 11)), "batch": [16]}, seeds=[*seeds, 50])
    assert over["field"] == "grid" and f"10 settings × 51 seeds exceeds {MAX_STUDY_JOBS}" in over["message"]
    explicit = [{"trials": 1}] * 10
    assert len(service.expand(_request(settings=explicit, seeds=seeds))) == 10
    over = _refusal(settings=explicit, seeds=[*seeds, 50])
    assert over["field"] == "settings" and "10 settings × 51 seeds" in over["message"]


def test_study_refusals_name_the_field():
    assert _refusal(grid={"trials": [1]}, settings=[{}])["field"] == "grid"
    assert _refusal(grid={"trials": []})["field"] == "grid.trials"
    assert _refusal(seeds=[1, 2, 1])["field"] == "seeds"
    assert _refusal(grid={"trials": [1, 2]}, baseline=2)["field"] == "baseline"
    assert _refusal(grid={"trials": [1, 2]}, baseline=3)["field"] == "baseline"  # past the end by more than one
    assert len(service.expand(_request(grid={"trials": [1, 2]}, baseline=1))) == 2
    with pytest.raises(Invalid) as caught:
        service.expand(StudyRequest(kind="no_such_kind"))
    assert caught.value.errors[0]["field"] == "kind"


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"grid": {"trials": [1, 0]}}, "grid.trials"),
        ({"settings": [{"trials": 2}, {"trials": 0}]}, "settings[1].trials"),
        ({}, "base.trials"),
    ],
)
def test_a_setting_that_fails_validation_is_named_with_its_label(kw, field):
    body = StudyRequest(kind="init_averaging", base={"widths": [8, 8], "batch": 16, "trials": 0 if not kw else 1}, **kw)
    with pytest.raises(Invalid) as caught:
        service.expand(body)
    error = caught.value.errors[0]
    assert error["field"] == field and "(setting " in error["message"]
