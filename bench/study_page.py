"""Study page load: a study of 200 finished jobs (20 settings × 10 seeds) with 1,000 points per curve, read the way
its web page reads it: GET /v1/studies/{id} (state and the comparison: mean ± 95 % CI and paired differences of every
summary figure) and then one curve of every child, downsampled by the server, in one request
(GET /v1/studies/{id}/metrics?name=…&points=100: the page asks for about 20,000 points in all); for comparison, the
same curves as one request per child
(GET /v1/jobs/{id}/metrics?name=…&points=500), six at a time like a browser's connections to one host.

The jobs are made on the service's own code path without running the technique: ``store.create_study`` (one
transaction: the study, 200 queued jobs, their links), then per job ``store.claim``, ``store.beat`` with its metric
rows (three curves of 1,000 points: 600,000 rows in all) and ``store.finish`` with a result whose ``summary`` is the
``init_averaging`` summary of a result with seed-dependent noise (so every figure has a spread). A real API process
(one uvicorn worker, PostgreSQL) answers.

Run from the repository root: ``python -m bench.study_page [--settings 20 --seeds 10 --points 1000 --rounds 5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time

import httpx

from bench.common import BenchStack, percentiles, print_table, write_results
from core.jobs import store
from core.jobs.states import JobStatus
from core.techniques import get_kind

CURVES = ("forward_moment/arithmetic", "forward_moment/geometric", "train_loss")
BROWSER_CONNECTIONS = 6


def _result(rng: random.Random) -> dict:
    """An init_averaging-shaped result with Monte Carlo-like noise, and its summary, as the worker stores them."""
    kind = get_kind("init_averaging")
    params = kind.params(widths=[768, 3072, 768], means=["arithmetic", "geometric", "quadratic", "harmonic"])
    means = {}
    for mean, ratio in (("arithmetic", 0.64), ("geometric", 1.0), ("quadratic", 0.346), ("harmonic", 1.5625)):
        f, b = ratio * (1 + rng.gauss(0, 0.01)), ratio * (1 + rng.gauss(0, 0.01))
        means[mean] = {
            "layer_variances": [1e-3, 1e-3],
            "layer_forward_moments": [ratio / 2, f],
            "forward_ratio": f,
            "predicted_forward_ratio": ratio,
            "backward_ratio": b,
            "predicted_backward_ratio": ratio,
        }
    result = {
        "widths": [768, 3072, 768],
        "activation": "linear",
        "distribution": "normal",
        "means": means,
        "predicted_is_linear_case": True,
    }
    result["summary"] = kind.summarize(params, result)
    return result


def build(bench: BenchStack, settings: int, seeds: int, points: int) -> tuple[str, list[str]]:
    sessions = bench.sessions()
    rng = random.Random(0)
    with sessions() as s:
        study, jobs, _ = store.create_study(
            s,
            tenant="local",
            kind="init_averaging",
            request={"bench": True},
            settings=[
                {"label": f"batch={64 * (i + 1)}", "params": {"widths": [768, 3072, 768], "batch": 64 * (i + 1)}}
                for i in range(settings)
            ],
            seeds=list(range(seeds)),
            baseline=0,
            device="cpu",
            timeout_s=3600,
            republish_after_s=60,
        )
        for job_id, _ in jobs:
            job = store.claim(s, job_id, "bench")
            rows = [(step, name, 1.0 / (1 + step) + rng.random() * 1e-3) for name in CURVES for step in range(points)]
            store.beat(s, job_id, job.attempt, 1.0, "done", rows)
            store.finish(s, job_id, job.attempt, JobStatus.succeeded, result=_result(rng))
    return str(study.id), [str(j) for j, _ in jobs]


async def load_page(url: str, study_id: str, per_job: bool) -> dict:
    """One page load; seconds for the study document, for the curves, and in all. ``per_job``: the curves as one
    request per child (how the page first drew them) instead of the study's metrics endpoint (how it draws them)."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        t0 = time.perf_counter()
        resp = await http.get(f"/v1/studies/{study_id}")
        resp.raise_for_status()
        study = resp.json()
        t1 = time.perf_counter()
        if per_job:
            gate = asyncio.Semaphore(BROWSER_CONNECTIONS)

            async def curve(job_id: str) -> int:
                async with gate:
                    r = await http.get(f"/v1/jobs/{job_id}/metrics", params={"name": CURVES[0], "points": 500})
                    r.raise_for_status()
                    return len(r.json()["items"])

            drawn = sum(await asyncio.gather(*(curve(j["id"]) for j in study["jobs"] if j["status"] == "succeeded")))
        else:
            points = max(20, min(500, 20000 // len(study["jobs"])))  # as the page asks: ~20,000 points in all
            r = await http.get(f"/v1/studies/{study_id}/metrics", params={"name": CURVES[0], "points": points})
            r.raise_for_status()
            drawn = len(r.json()["items"])
        t2 = time.perf_counter()
    return {
        "study_s": t1 - t0,
        "curves_s": t2 - t1,
        "total_s": t2 - t0,
        "points_drawn": drawn,
        "study_bytes": len(resp.content),
        "figures": len(study["comparison"]["figures"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--settings", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--points", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with BenchStack("study-page", auth="disabled") as bench:
        t = time.perf_counter()
        study_id, _ = build(bench, args.settings, args.seeds, args.points)
        built_s = time.perf_counter() - t
        url, _ = bench.start_api(workers=1)
        asyncio.run(load_page(url, study_id, False))  # warm-up: connections, the API's first imports
        by_way = {
            way: [asyncio.run(load_page(url, study_id, way == "per job")) for _ in range(args.rounds)]
            for way in ("study endpoint", "per job")
        }
    loads = by_way["study endpoint"]
    rows = [
        {"part": f"{part} ({way})", **percentiles([x[f"{part}_s"] for x in got])}
        for way, got in by_way.items()
        for part in ("study", "curves", "total")
    ]
    print(
        f"study of {args.settings * args.seeds} jobs, {len(CURVES)} curves × {args.points} points each "
        f"(built in {built_s:.1f} s); {args.rounds} page loads; the study document is "
        f"{loads[0]['study_bytes']:,} bytes with {loads[0]['figures']} figures per setting; "
        f"{loads[0]['points_drawn']:,} points drawn"
    )
    print_table(
        rows,
        [("part", "part", ""), ("p50_ms", "p50 ms", ".1f"), ("p90_ms", "p90 ms", ".1f"), ("max_ms", "max ms", ".1f")],
    )
    path = write_results(
        "study_page",
        {
            "settings": args.settings,
            "seeds": args.seeds,
            "points": args.points,
            "loads": by_way,
            "parts": rows,
            "median_total_s": statistics.median(x["total_s"] for x in loads),
        },
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
