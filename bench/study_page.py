"""Study page load: a study of 200 finished jobs (20 settings × 10 seeds) with 1,000 points per curve, read the way
its web page reads it: GET /v1/studies/{id} (state and the comparison: mean ± 95 % CI and paired differences of every
summary figure) and then one metric per setting as the mean over its seeds with their min–max band, in one request
(GET /v1/studies/{id}/bands?name=…&points=200: 20 lines of 200 bucket means of 5 steps, each child’s series averaged per
bucket in one GROUP BY), measured on first loads and on loads of the answer the API process kept (the study is
finished). For comparison, the two ways the page drew the curves before, as one raw line per child:
every child's curve downsampled by the server in one request (GET /v1/studies/{id}/metrics?name=…&points=100: about
20,000 points in all), and one request per child (GET /v1/jobs/{id}/metrics?name=…&points=500), six at a time like a
browser's connections to one host.

The jobs are made on the service's own code path without running the technique: ``study_store.create_study`` (one
transaction: the study, 200 queued jobs, their links), then per job ``job_store.claim``, ``job_store.beat`` with its
metric rows (three curves of 1,000 points: 600,000 rows in all) and ``job_store.finish`` with a result whose
``summary`` is the ``init_averaging`` summary of a result with seed-dependent noise (so every figure has a spread).
A real API process (one uvicorn worker, PostgreSQL) answers.

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
from core.jobs import repository as job_store
from core.jobs.states import JobStatus
from core.studies import repository as study_store
from core.techniques import get_kind

CURVES = ("forward_moment/arithmetic", "forward_moment/geometric", "train_loss")
BROWSER_CONNECTIONS = 6


def _result(rng: random.Random) -> dict:
    """An init_averaging-shaped result with Monte Carlo-like noise, and its summary, as the worker stores them."""
    kind = get_kind("init_averaging")
    params = kind.params(widths=[768, 3072, 768], means=["arithmetic", "geometric", "least_squares", "harmonic"])
    means = {}
    for mean, ratio in (("arithmetic", 0.64), ("geometric", 1.0), ("least_squares", 0.346), ("harmonic", 1.5625)):
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
        study, jobs, _ = study_store.create_study(
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
            job = job_store.claim(s, job_id, "bench")
            rows = [(step, name, 1.0 / (1 + step) + rng.random() * 1e-3) for name in CURVES for step in range(points)]
            job_store.beat(s, job_id, job.attempt, 1.0, "done", rows)
            job_store.finish(s, job_id, job.attempt, JobStatus.succeeded, result=_result(rng))
    return str(study.id), [str(j) for j, _ in jobs]


# the page's way, first load and again (a finished study's bands are kept), then the two ways it replaced
WAYS = ("bands", "bands kept", "study metrics", "per job")


async def load_page(url: str, study_id: str, way: str, round_: int) -> dict:
    """One page load drawing the curves one of the ``WAYS``; seconds for the study document, for the curves, and in
    all, and how many points the charts get. "bands" asks for 201, 202, … points (the same 200 buckets of 5 steps)
    so that each load is a first load, never one the API process kept."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        t0 = time.perf_counter()
        resp = await http.get(f"/v1/studies/{study_id}")
        resp.raise_for_status()
        study = resp.json()
        t1 = time.perf_counter()
        if way.startswith("bands"):
            points = 200 if way == "bands kept" else 201 + round_
            r = await http.get(f"/v1/studies/{study_id}/bands", params={"name": CURVES[0], "points": points})
            r.raise_for_status()
            drawn = sum(len(b["steps"]) for b in r.json()["settings"])
            curve_bytes = len(r.content)
        elif way == "study metrics":
            points = max(20, min(500, 20000 // len(study["jobs"])))  # as the page asked: ~20,000 points in all
            r = await http.get(f"/v1/studies/{study_id}/metrics", params={"name": CURVES[0], "points": points})
            r.raise_for_status()
            drawn, curve_bytes = len(r.json()["items"]), len(r.content)
        else:
            gate = asyncio.Semaphore(BROWSER_CONNECTIONS)

            async def curve(job_id: str) -> tuple[int, int]:
                async with gate:
                    r = await http.get(f"/v1/jobs/{job_id}/metrics", params={"name": CURVES[0], "points": 500})
                    r.raise_for_status()
                    return len(r.json()["items"]), len(r.content)

            got = await asyncio.gather(*(curve(j["id"]) for j in study["jobs"] if j["status"] == "succeeded"))
            drawn, curve_bytes = sum(n for n, _ in got), sum(b for _, b in got)
        t2 = time.perf_counter()
    return {
        "study_s": t1 - t0,
        "curves_s": t2 - t1,
        "total_s": t2 - t0,
        "points_drawn": drawn,
        "study_bytes": len(resp.content),
        "curve_bytes": curve_bytes,
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
        asyncio.run(load_page(url, study_id, "bands kept", 0))  # warm-up: connections, imports; bands kept
        by_way: dict[str, list[dict]] = {way: [] for way in WAYS}
        for i in range(args.rounds):  # the ways take turns, so a busy spell on the shared machine hits them alike
            for way in WAYS:
                by_way[way].append(asyncio.run(load_page(url, study_id, way, i)))
    rows = [
        {"part": f"{part} ({way})", **percentiles([x[f"{part}_s"] for x in got])}
        for way, got in by_way.items()
        for part in ("study", "curves", "total")
    ]
    first = by_way["bands"][0]
    print(
        f"study of {args.settings * args.seeds} jobs, {len(CURVES)} curves × {args.points} points each "
        f"(built in {built_s:.1f} s); {args.rounds} page loads per way; the study document is "
        f"{first['study_bytes']:,} bytes with {first['figures']} figures per setting; points drawn (bytes): "
        + ", ".join(f"{way} {got[0]['points_drawn']:,} ({got[0]['curve_bytes']:,})" for way, got in by_way.items())
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
            "median_total_s": {way: statistics.median(x["total_s"] for x in got) for way, got in by_way.items()},
        },
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
