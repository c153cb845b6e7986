"""Server-side downsampling of metric series (``metric_store.downsampled_metrics``, ``GET …/metrics?points=``), on both
backends: every bucket's least and greatest value come back exactly, as rows that were logged, and short series come
back whole. The expected rows are computed here by brute force with numpy over the logged rows, independently of the
stored rollup the store reads them from."""

from __future__ import annotations

import random

import numpy as np
import pytest
from sqlalchemy import update

from core.db.tables import Job
from core.jobs import repository as job_store
from core.metrics import repository as metric_store
from core.studies import repository as study_store
from core.studies import service as study_service


def _series(rng: random.Random, n: int, *, start: int = 0, ties: bool = False) -> list[tuple[int, float | None]]:
    """Irregular steps (gaps of 1 to 5, and now and then a jump of thousands), a random walk with spikes (or values
    from a handful of levels, so that extremes tie), and a few nulls (NaN as logged)."""
    step, value, out = start, 0.0, []
    for _ in range(n):
        step += rng.randint(1, 5) + (rng.randint(1000, 5000) if rng.random() < 0.001 else 0)
        if ties:
            value = float(rng.randint(-3, 3))
        else:
            value += rng.gauss(0, 1) + (50 * rng.choice((-1, 1)) if rng.random() < 0.002 else 0)
        out.append((step, None if rng.random() < 0.01 else value))
    return out


def _expected(logged: list[tuple[int, float | None]], points: int) -> list[tuple[int, float]]:
    """Brute force: the non-null rows whole if they fit, else for the least k that puts the series' steps in at most
    points // 2 aligned blocks of 2**k steps, each block's first row of least value and first row of greatest."""
    rows = [(s, v) for s, v in logged if v is not None]
    if len(rows) <= points:
        return sorted(rows)
    steps = np.array([s for s, _ in rows], dtype=np.int64)
    values = np.array([v for _, v in rows])
    k, lo, hi = 0, int(steps.min()), int(steps.max())
    while k < 64 and (hi >> k) - (lo >> k) + 1 > points // 2:
        k += 1
    blocks = steps >> k if k < 64 else np.zeros_like(steps)  # 64: one bucket (steps of both signs, one bucket)
    out = set()
    for block in np.unique(blocks):
        inside = np.flatnonzero(blocks == block)
        lo = inside[values[inside] == values[inside].min()]
        hi = inside[values[inside] == values[inside].max()]
        out.add((int(steps[lo].min()), float(values[inside].min())))
        out.add((int(steps[hi].min()), float(values[inside].max())))
    return sorted(out)


def _job(s):
    job, _ = job_store.create_job(
        s, tenant="t", kind="init_averaging", params={}, seed=0, device="cpu", timeout_s=60, republish_after_s=60
    )
    return job_store.claim(s, job.id, "test")


def _log(s, job, series: dict[str, list[tuple[int, float | None]]], beats: int) -> None:
    """Log the series as a worker would, interleaved, over ``beats`` heartbeats (the rollup is folded per batch)."""
    rows = [(st, name, v) for name, values in series.items() for st, v in values]
    random.Random(1).shuffle(rows)
    size = -(-len(rows) // beats)
    for i in range(0, len(rows), size):
        assert job_store.beat(s, job.id, job.attempt, None, None, rows[i : i + size])


def _by_name(rows) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        out.setdefault(r.name, []).append((r.step, r.value))
    return out


@pytest.mark.parametrize("points", [2, 7, 400, 2000])
def test_every_bucket_keeps_its_exact_min_and_max(sessions, points):
    rng = random.Random(points)
    series = {
        "loss": _series(rng, 30_000),
        "acc": _series(rng, 150),  # shorter than most budgets: whole
        "ties": _series(rng, 5_000, ties=True),
        "negative": _series(rng, 3_000, start=-20_000),
        "both_signs": _series(rng, 3_000, start=-4_000),
        "dense": [(i, float(rng.randint(0, 9))) for i in range(3_000)],  # every step: raw rows when 2**k < 16
        "sparse": [(i * i * 37, float(rng.random())) for i in range(2_500)],
        "nulls": [(i, None) for i in range(50)] + [(60, 1.5)],
    }
    with sessions() as s:
        job = _job(s)
        _log(s, job, series, beats=7)
        got = _by_name(metric_store.downsampled_metrics(s, job.id, name=None, points=points))
        only_loss = metric_store.downsampled_metrics(s, job.id, name="loss", points=points)

    assert [(r.step, r.value) for r in only_loss] == got["loss"]
    assert set(got) == set(series)
    for name, logged in series.items():
        assert got[name] == _expected(logged, points), name
        assert len(got[name]) <= max(points, 1)


def test_a_new_attempt_starts_a_new_rollup(sessions):
    """A retried job's metrics are removed at its claim: the rollup of the dead attempt must go with them."""
    with sessions() as s:
        job = _job(s)
        assert job_store.beat(s, job.id, job.attempt, None, None, [(i, "loss", 100.0 + i) for i in range(5000)])
        s.execute(update(Job).where(Job.id == job.id).values(status="queued"))
        s.commit()
        job = job_store.claim(s, job.id, "test")
        again = [(i, "loss", float(-i)) for i in range(3000)]
        assert job_store.beat(s, job.id, job.attempt, None, None, again)
        got = _by_name(metric_store.downsampled_metrics(s, job.id, name=None, points=100))
    assert got["loss"] == _expected([(st, v) for st, _, v in again], 100)


def test_a_study_reads_each_child_as_the_child_reads_itself(sessions):
    rng = random.Random(11)
    with sessions() as s:
        study, jobs, _ = study_store.create_study(
            s,
            tenant="t",
            kind="init_averaging",
            request={},
            settings=[{"params": {}}, {"params": {}}],
            seeds=[0],
            baseline=0,
            device="cpu",
            timeout_s=60,
            republish_after_s=60,
        )
        logged = {}
        for job_id, _ in jobs:
            job = job_store.claim(s, job_id, "test")
            logged[job_id] = _series(rng, 4_000)
            _log(s, job, {"loss": logged[job_id], "other": _series(rng, 10)}, beats=3)
        got: dict = {}
        for r in study_service.child_metrics(s, study, "loss", 300):
            assert r.name == "loss"
            got.setdefault(r.job_id, []).append((r.step, r.value))
    assert got == {job_id: _expected(rows, 300) for job_id, rows in logged.items()}
