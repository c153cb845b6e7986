"""A study's curves as one band per setting, on both backends: ``metric_store.study_metric_span`` and
``metric_store.study_bands`` reduce every child's series to bucket means on a grid shared by all children and spread
each setting's seeds into mean, min, max and squared deviations, which ``studies.bands`` lays out with the sd; all
checked against the raw rows as logged, reduced here independently."""

from __future__ import annotations

import random
import statistics

import pytest

from core.jobs import repository as job_store
from core.jobs.states import JobStatus
from core.metrics import repository as metric_store
from core.studies import repository as study_store
from core.studies import service as study_service
from core.studies import stats as studies


def _study(s, rows_per_child: dict[tuple[int, int], list[tuple[int, float | None]]], settings: int, seeds: int):
    study, jobs, _ = study_store.create_study(
        s,
        tenant="t",
        kind="init_averaging",
        request={},
        settings=[{"label": f"s{i}", "params": {}} for i in range(settings)],
        seeds=list(range(seeds)),
        baseline=0,
        device="cpu",
        timeout_s=60,
        republish_after_s=60,
    )
    for (job_id, _), (setting, seed) in zip(jobs, [(i, k) for i in range(settings) for k in range(seeds)]):
        job = job_store.claim(s, job_id, "test")
        logged = [(step, "loss", v) for step, v in rows_per_child[(setting, seed)]]
        logged += [(step, "other", 1e6) for step, _ in rows_per_child[(setting, seed)]]  # another metric: ignored
        assert job_store.beat(s, job_id, job.attempt, None, None, logged)
        job_store.finish(s, job_id, job.attempt, JobStatus.succeeded, result={})
    return study


def _walk(rng: random.Random, start: int, n: int) -> list[tuple[int, float | None]]:
    """Irregular steps from ``start`` (gaps of 1 to 3), a random walk, and a few nulls (NaN as logged)."""
    step, value, out = start, rng.gauss(0, 1), []
    for _ in range(n):
        out.append((step, None if rng.random() < 0.02 else value))
        step += rng.randint(1, 3)
        value += rng.gauss(0, 1)
    return out


@pytest.mark.parametrize("points", [50, 10_000])
def test_bands_are_the_seeds_spread_of_bucket_means_of_the_rows_as_logged(sessions, points):
    rng = random.Random(3)
    settings, seeds = 3, 4
    logged = {(i, k): _walk(rng, rng.randint(0, 20), 300 + 40 * k) for i in range(settings) for k in range(seeds)}
    with sessions() as s:
        study = _study(s, logged, settings, seeds)
        span = metric_store.study_metric_span(s, study.id, name="loss")
        first, last = span
        width = studies.bucket_width(first, last, points)
        got = studies.bands(metric_store.study_bands(s, study.id, name="loss", first=first, width=width), settings)
        assert metric_store.study_metric_span(s, study.id, name="nothing") is None

    steps = [st for rows in logged.values() for st, _ in rows]  # nulls count for the span: they were logged
    assert (first, last) == (min(steps), max(steps))
    assert (last - first + 1) / width <= points and (width == 1) == (last - first + 1 <= points)
    for i, band in enumerate(got):
        per_child = []  # bucket start -> this child's mean over the bucket, from the raw rows
        for k in range(seeds):
            buckets: dict[int, list[float]] = {}
            for st, v in logged[(i, k)]:
                if v is not None:
                    buckets.setdefault(first + (st - first) // width * width, []).append(v)
            per_child.append({b: statistics.fmean(vs) for b, vs in buckets.items()})
        assert band["setting"] == i and band["steps"] == sorted(set().union(*per_child))
        for j, step in enumerate(band["steps"]):
            values = [c[step] for c in per_child if step in c]
            assert band["n"][j] == len(values)
            assert band["mean"][j] == pytest.approx(statistics.fmean(values), rel=1e-9, abs=1e-12)
            assert band["min"][j] == pytest.approx(min(values), rel=1e-9, abs=1e-12)
            assert band["max"][j] == pytest.approx(max(values), rel=1e-9, abs=1e-12)
            if len(values) > 1:
                assert band["sd"][j] == pytest.approx(statistics.stdev(values), rel=1e-7, abs=1e-12)
            else:
                assert band["sd"][j] is None


def test_bands_lay_out_each_settings_rows_by_step():
    # rows (setting, step, n, mean, lo, hi, squares) in any order: seeds 1 and 3 (squares 1 + 1: sd √2); 2, 4 and 6
    # (squares 4 + 0 + 4: sd √(8 / 2) = 2)
    rows = [(1, 20, 3, 4.0, 2.0, 6.0, 8.0), (0, 20, 1, 5.0, 5.0, 5.0, 0.0), (0, 10, 2, 2.0, 1.0, 3.0, 2.0)]
    zero, one, empty = studies.bands(rows, 3)
    assert zero == {"setting": 0, "steps": [10, 20], "mean": [2.0, 5.0], "sd": [2**0.5, None], "min": [1.0, 5.0],
                    "max": [3.0, 5.0], "n": [2, 1]}  # fmt: skip
    assert one == {"setting": 1, "steps": [20], "mean": [4.0], "sd": [2.0], "min": [2.0], "max": [6.0], "n": [3]}
    assert empty == {"setting": 2, "steps": [], "mean": [], "sd": [], "min": [], "max": [], "n": []}
    assert [studies.bucket_width(0, last, 100) for last in (0, 99, 100, 999, 1000)] == [1, 1, 2, 10, 11]


def test_a_study_is_finished_when_no_child_is_queued_or_running(sessions):
    with sessions() as s:
        study, jobs, _ = study_store.create_study(
            s,
            tenant="t",
            kind="init_averaging",
            request={},
            settings=[{"label": "base", "params": {}}],
            seeds=[0, 1],
            baseline=0,
            device="cpu",
            timeout_s=60,
            republish_after_s=60,
        )
        (a, _), (b, _) = jobs
        assert not study_store.study_is_finished(s, study.id)  # both queued
        job_store.finish(
            s, a, job_store.claim(s, a, "test").attempt, JobStatus.failed, error_type="x", error_message="y"
        )
        claimed = job_store.claim(s, b, "test")
        assert not study_store.study_is_finished(s, study.id)  # one running
        job_store.finish(s, b, claimed.attempt, JobStatus.succeeded, result={})
        assert study_store.study_is_finished(s, study.id)


def test_the_service_labels_each_settings_band_and_a_metric_never_logged_has_width_one_and_no_points(sessions):
    # two settings of two seeds, steps 0..3 (width 2 at 2 points); setting 1 is 1 higher at every step
    logged = {(i, k): [(step, float(step + i + 2 * k)) for step in range(4)] for i in range(2) for k in range(2)}
    with sessions() as s:
        study = _study(s, logged, 2, 2)
        got, finished = study_service.bands(s, study, "loss", 2)
        none, _ = study_service.bands(s, study, "nothing", 2)
    assert finished and got["name"] == "loss" and got["width"] == 2
    assert [b["label"] for b in got["settings"]] == ["s0", "s1"]
    # bucket means per child: steps 0-1 → 0.5 + i + 2k, steps 2-3 → 2.5 + i + 2k; over the seeds k = 0, 1: + 1
    assert [b["steps"] for b in got["settings"]] == [[0, 2], [0, 2]]
    assert [b["mean"] for b in got["settings"]] == [[1.5, 3.5], [2.5, 4.5]]
    assert none["width"] == 1 and [b["label"] for b in none["settings"]] == ["s0", "s1"]
    assert all(b["steps"] == [] for b in none["settings"])
