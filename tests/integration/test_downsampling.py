"""Server-side downsampling of metric series (``store.downsampled_metrics``, ``GET …/metrics?points=``), on both
backends: every bucket's least and greatest value come back exactly, as rows that were logged, and short series come
back whole."""

from __future__ import annotations

import random

from core.jobs import store


def _series(rng: random.Random, n: int) -> list[tuple[int, float | None]]:
    """Irregular steps (gaps of 1 to 5), a random walk with spikes, and a few nulls (NaN as logged)."""
    step, value, out = 0, 0.0, []
    for _ in range(n):
        step += rng.randint(1, 5)
        value += rng.gauss(0, 1) + (50 * rng.choice((-1, 1)) if rng.random() < 0.002 else 0)
        out.append((step, None if rng.random() < 0.01 else value))
    return out


def test_every_bucket_keeps_its_exact_min_and_max(sessions):
    rng = random.Random(7)
    long, short = _series(rng, 30_000), _series(rng, 150)
    points = 400
    with sessions() as s:
        job, _ = store.create_job(
            s, tenant="t", kind="init_averaging", params={}, seed=0, device="cpu", timeout_s=60, republish_after_s=60
        )
        job = store.claim(s, job.id, "test")
        rows = [(st, "loss", v) for st, v in long] + [(st, "acc", v) for st, v in short]
        assert store.beat(s, job.id, job.attempt, None, None, rows)
        got = store.downsampled_metrics(s, job.id, name=None, points=points)
        only_loss = store.downsampled_metrics(s, job.id, name="loss", points=points)

    by_name: dict[str, list[tuple[int, float]]] = {}
    for r in got:
        by_name.setdefault(r.name, []).append((r.step, r.value))
    assert [(st, v) for st, v in short if v is not None] == by_name["acc"]  # shorter than points: whole
    assert [(r.step, r.value) for r in only_loss] == by_name["loss"]

    kept = by_name["loss"]
    assert len(kept) <= points and kept == sorted(kept)
    logged = [(st, v) for st, v in long if v is not None]
    assert set(kept) <= set(logged)  # rows as they were logged, nothing interpolated
    lo, hi, buckets = logged[0][0], logged[-1][0], points // 2
    truth: dict[int, list[float]] = {}
    for st, v in logged:
        truth.setdefault((st - lo) * buckets // (hi - lo + 1), []).append(v)
    seen: dict[int, list[float]] = {}
    for st, v in kept:
        seen.setdefault((st - lo) * buckets // (hi - lo + 1), []).append(v)
    assert set(seen) == set(truth)
    for b, values in truth.items():
        assert min(seen[b]) == min(values) and max(seen[b]) == max(values), b
        assert len(seen[b]) <= 2
