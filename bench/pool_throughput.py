"""Worker pool throughput: jobs/s of the lightest job with 1 and 2 gradlab worker processes.

One API process and production settings (PostgreSQL, Redis with a key prefix). For each pool size, M jobs are
submitted at once (concurrent POSTs) and the clock runs from the first POST until every job has succeeded (read from
the job rows). Workers are started or stopped between batches, and the pool sizes take turns (1, 2, 1, 2 with
``--rounds 2``) so drifting load from other processes hits every size alike; each worker is one process with the
solo pool (one job at a time), as ``gradlab worker`` runs it.

Run from the repository root: ``python -m bench.pool_throughput [--jobs 60] [--workers 1,2] [--rounds 2]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import httpx

from bench.common import (
    BenchStack,
    CpuMeter,
    job_times,
    light_job,
    percentiles,
    print_table,
    run_async,
    stop_group,
    write_results,
)


async def submit_all(url: str, headers: dict, first_seed: int, n: int, concurrency: int) -> list[str]:
    """POST ``n`` light jobs with ``concurrency`` requests in flight; their ids."""
    ids: list[str] = []
    seeds = iter(range(first_seed, first_seed + n))
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:

        async def submitter():
            for seed in seeds:
                resp = await client.post("/v1/jobs", json=light_job(seed))
                resp.raise_for_status()
                ids.append(resp.json()["id"])

        await asyncio.gather(*(submitter() for _ in range(concurrency)))
    return ids


def wait_all(sessions, ids: list[str], timeout_s: float) -> dict:
    """Poll the job rows until every job is finished; the rows then."""
    import uuid

    keys = [uuid.UUID(i) for i in ids]
    deadline = time.monotonic() + timeout_s
    while True:
        rows = job_times(sessions, keys)
        if all(r.status in ("succeeded", "failed", "cancelled") for r in rows.values()):
            return rows
        if time.monotonic() > deadline:
            left = sum(r.status not in ("succeeded", "failed", "cancelled") for r in rows.values())
            raise TimeoutError(f"{left} of {len(ids)} jobs unfinished after {timeout_s} s")
        time.sleep(0.05)


def run_batch(
    bs: BenchStack, api_url: str, api_pid: int, sessions, workers: list, size: int, n: int, concurrency: int, seed: int
) -> dict:
    """Bring the pool to ``size`` workers (start or stop some), then time ``n`` jobs submitted at once."""
    started_new = False
    while len(workers) < size:
        workers.append(bs.start_worker())
        started_new = True
    while len(workers) > size:
        stop_group(workers.pop())
    if started_new:  # unmeasured jobs first, so every new worker has done its imports and loaded its plot fonts
        wait_all(sessions, run_async(submit_all(api_url, bs.headers, seed + n, 3 * size, size)), 120)
    roots = {f"worker {i + 1}": w.pid for i, w in enumerate(workers)} | {"gradlab api": api_pid}
    with CpuMeter(roots) as meter:
        t0 = time.time()
        ids = run_async(submit_all(api_url, bs.headers, seed, n, concurrency))
        t_submitted = time.time()
        done = wait_all(sessions, ids, 600)
    finished = [r.finished_at.timestamp() for r in done.values()]
    started = [r.started_at.timestamp() for r in done.values() if r.started_at]
    ok = sum(r.status == "succeeded" for r in done.values())
    runs = [(r.finished_at - r.started_at).total_seconds() for r in done.values() if r.started_at]
    return {
        "workers": size,
        "jobs": n,
        "succeeded": ok,
        "seconds": max(finished) - t0,
        "jobs_per_s": ok / (max(finished) - t0),
        "submit_seconds": t_submitted - t0,
        "first_start_to_last_finish_s": max(finished) - min(started),
        "job_run": percentiles(runs),
        **meter.result,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=60, help="jobs per batch")
    ap.add_argument("--workers", default="1,2", help="pool sizes")
    ap.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="the sizes are run in turn this many times (1,2,1,2,...) so load drift hits all alike",
    )
    ap.add_argument("--concurrency", type=int, default=8, help="POSTs in flight while submitting")
    ap.add_argument("--auth", choices=["key", "disabled"], default="key")
    args = ap.parse_args()
    sizes = [int(x) for x in args.workers.split(",")]

    batches = []
    with BenchStack("pool", auth=args.auth) as bs:
        api_url, api_proc = bs.start_api(workers=1)
        sessions = bs.sessions()
        workers: list = []
        for rnd in range(args.rounds):
            for size in sizes:
                print(f"round {rnd + 1}/{args.rounds}: {size} worker(s), {args.jobs} jobs ...", flush=True)
                batches.append(
                    run_batch(
                        bs,
                        api_url,
                        api_proc.pid,
                        sessions,
                        workers,
                        size,
                        args.jobs,
                        args.concurrency,
                        10**7 * (len(batches) + 1),
                    )
                )
    rows = []
    for size in sizes:
        mine = [b for b in batches if b["workers"] == size]
        cores = {}
        for b in mine:
            for k, v in b["cpu_cores"].items():
                cores[k] = cores.get(k, 0.0) + v / len(mine)
        seconds = sum(b["seconds"] for b in mine)
        ok = sum(b["succeeded"] for b in mine)
        rows.append(
            {
                "workers": size,
                "jobs": sum(b["jobs"] for b in mine),
                "succeeded": ok,
                "seconds": seconds,
                "jobs_per_s": ok / seconds,
                "run_p50_ms": statistics.median(b["job_run"]["p50_ms"] for b in mine),
                "machine_busy": statistics.mean(b["machine_busy"] for b in mine),
                "worker_cores": sum(v for k, v in cores.items() if k.startswith("worker")),
                "api_cores": cores.get("gradlab api", 0.0),
                "pg_cores": cores.get("postgres", 0.0),
                "other_cores": cores.get("other processes", 0.0),
            }
        )
    for r in rows:
        r["speedup"] = r["jobs_per_s"] / rows[0]["jobs_per_s"]
    print(
        f"\n{args.jobs} jobs ({light_job(0)['kind']} {light_job(0)['params']}) submitted at once per batch, "
        f"{args.rounds} batch(es) per pool size"
    )
    print_table(
        rows,
        [
            ("workers", "workers", "d"),
            ("succeeded", "ok", "d"),
            ("seconds", "seconds", ".2f"),
            ("jobs_per_s", "jobs/s", ".2f"),
            ("speedup", "speedup", ".2f"),
            ("run_p50_ms", "run p50 ms", ".1f"),
            ("worker_cores", "worker cores", ".2f"),
            ("api_cores", "api cores", ".2f"),
            ("pg_cores", "pg cores", ".2f"),
            ("other_cores", "other cores", ".2f"),
            ("machine_busy", "box busy", ".0%"),
        ],
    )
    path = write_results(
        "pool_throughput", {"config": vars(args), "job": light_job(0), "rows": rows, "batches": batches}
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
