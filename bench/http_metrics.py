"""Prometheus metrics' cost on the API: POST /v1/jobs throughput with metrics on vs off (floor: <= 5 % lower).

Two gradlab APIs (``gradlab api --workers 2``) run side by side with production settings (PostgreSQL, Redis with a
key prefix, API keys, the default admission limits with the POSTs spread over 32 tenants), each on a database and
Redis prefix of its own, so that both arms see the same table sizes: one with ``GRADLAB_METRICS=false``, one with
metrics on (multiprocess prometheus-client, the request histogram, ``/metrics`` scraped every 15 s of its
phases, as a Prometheus server would). No job worker runs: submitted jobs stay queued. Closed-loop clients
(``bench.common.closed_loop``) load one API at a time, in paired blocks whose order alternates (off, on; on, off;
...) so that drifting load from other processes on a shared machine hits both arms alike; the figure is the
median of the per-pair ratios on/off. Each phase also reports the API's CPU time per POST (its processes' CPU over
the requests answered), the cost that sets the throughput when the API has the cores to itself; on a machine shared
with other work, throughput also follows how much CPU the scheduler gives the API in each phase. Before the load,
the middleware is also timed alone, in-process (``middleware_cost``), with metrics off and on: what metrics add to
each request's CPU, free of that noise.

Run from the repository root: ``python -m bench.http_metrics [--clients 32] [--duration 8] [--pairs 4]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import httpx

from bench.common import (
    BenchStack,
    CpuMeter,
    closed_loop,
    light_job,
    print_table,
    run_async,
    wait_ready,
    write_results,
)
from tests.stack import BIN, free_port

FLOOR_SLOWDOWN = 0.05
SCRAPE_INTERVAL_S = 15.0


def start_api(bs: BenchStack, metrics: bool, workers: int) -> tuple[str, int]:
    port = free_port()
    env = {**bs.env, "GRADLAB_METRICS": "true" if metrics else "false"}
    if metrics:
        env["GRADLAB_METRICS_TOKEN"] = "bench-scrape-token"
    proc = bs.spawn(
        [str(BIN / "gradlab"), "api", "--port", str(port), "--workers", str(workers)], f"api-{port}", env=env
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url + "/healthz", lambda: bs.log_tail(f"api-{port}"))
    return url, proc.pid


async def _answer_201(scope, receive, send) -> None:
    """A route that does nothing: what is left to time is the middleware."""
    scope["route"] = _ROUTE
    await send({"type": "http.response.start", "status": 201, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b"{}"})


class _Route:
    path = "/v1/jobs"


_ROUTE = _Route()


def middleware_cost(requests: int = 20000, repeats: int = 5) -> dict:
    """Microseconds per request of ``api.observability.RequestContext`` with metrics off and on, called directly
    (no server, no network): the part of a request's CPU that metrics add, free of a shared machine's noise.
    Run in a process with PROMETHEUS_MULTIPROC_DIR set, as ``gradlab api`` runs, so the histogram writes files."""
    from api.observability import RequestContext

    async def send(message) -> None:
        return None

    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    async def per_request(mw) -> float:
        scope = {"type": "http", "method": "POST", "path": "/v1/jobs", "headers": [(b"host", b"bench")]}
        t0 = time.perf_counter()
        for _ in range(requests):
            await mw(dict(scope), receive, send)
        return (time.perf_counter() - t0) / requests * 1e6

    arms = {False: RequestContext(_answer_201, metrics=False), True: RequestContext(_answer_201, metrics=True)}
    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(repeats):
        for metrics in (False, True) if i % 2 == 0 else (True, False):
            times[metrics].append(asyncio.run(per_request(arms[metrics])))
    return {"off_us": statistics.median(times[False]), "on_us": statistics.median(times[True])}


def measure_middleware_cost() -> dict:
    with tempfile.TemporaryDirectory(prefix="gradlab-bench-prom-") as folder:
        out = subprocess.run(
            [sys.executable, "-m", "bench.http_metrics", "--middleware-cost"],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": folder},
        )
    return json.loads(out.stdout.strip().splitlines()[-1])


class Scraper:
    """Scrapes ``/metrics`` every ``interval`` seconds of the on-arm's load, as Prometheus would: the clock runs only
    during that arm's phases and carries over from one to the next (a scrape per phase would scrape a short phase
    more often than Prometheus does)."""

    def __init__(self, url: str, interval: float):
        self.url, self.interval = url, interval
        self.due_in = 0.0  # the first phase starts with a scrape
        self.scrapes: list[float] = []
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30, headers={"Authorization": "Bearer bench-scrape-token"}) as c:
            while True:
                waited_from = time.monotonic()
                if self.stopping.wait(self.due_in):
                    self.due_in = max(self.due_in - (time.monotonic() - waited_from), 0.0)
                    return
                resp = c.get("/metrics")
                resp.raise_for_status()
                self.scrapes.append(resp.elapsed.total_seconds())
                self.due_in = self.interval

    def __enter__(self):
        self.stopping.clear()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.thread.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--duration", type=float, default=6.0, help="measured seconds per phase")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--pairs", type=int, default=6, help="paired blocks (off+on)")
    ap.add_argument("--workers", type=int, default=2, help="uvicorn worker processes per API")
    ap.add_argument("--tenants", type=int, default=32)
    ap.add_argument("--middleware-cost", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.middleware_cost:
        print(json.dumps(middleware_cost()))
        return
    cost = measure_middleware_cost()
    print(
        f"middleware alone: {cost['off_us']:.1f} us/request with metrics off, {cost['on_us']:.1f} us on "
        f"(+{cost['on_us'] - cost['off_us']:.1f} us)",
        flush=True,
    )

    with (
        BenchStack("http-metrics-off", tenants=args.tenants, production_limits=True) as off,
        BenchStack("http-metrics-on", tenants=args.tenants, production_limits=True) as on,
    ):
        arms = {}
        for name, bs, metrics in (("off", off, False), ("on", on, True)):
            url, pid = start_api(bs, metrics, args.workers)
            auth = bs.auth_values

            async def post(client: httpx.AsyncClient, i: int, auth=auth) -> httpx.Response:
                return await client.post("/v1/jobs", json=light_job(i), headers={"Authorization": random.choice(auth)})

            arms[name] = (url, pid, post)
        results: dict[str, list[dict]] = {"off": [], "on": []}
        scraper = Scraper(arms["on"][0], SCRAPE_INTERVAL_S)
        for pair in range(args.pairs):
            for name in ("off", "on") if pair % 2 == 0 else ("on", "off"):
                url, pid, post = arms[name]

                def phase(url=url, post=post, name=name, pid=pid):
                    return run_async(
                        closed_loop(
                            url,
                            post,
                            name=f"POST metrics {name}",
                            clients=args.clients,
                            duration_s=args.duration,
                            warmup_s=args.warmup,
                            meters=(CpuMeter({"gradlab api": pid}),),
                        )
                    ).summary()

                if name == "on":
                    with scraper:
                        summary = phase()
                else:
                    summary = phase()
                api_cores = summary["cpu_cores"].get("gradlab api", 0.0)
                summary["api_cpu_ms_per_post"] = api_cores * summary["duration_s"] / max(summary["ok"], 1) * 1e3
                results[name].append(summary)
                print(
                    f"pair {pair + 1} {name}: {summary['throughput_rps']:.1f} req/s "
                    f"(p50 {summary['p50_ms']:.1f} ms, p99 {summary['p99_ms']:.1f} ms, "
                    f"API {summary['api_cpu_ms_per_post']:.2f} CPU-ms/POST, busy {summary['machine_busy']:.0%}, "
                    f"non-2xx {summary['requests'] - summary['ok']})",
                    flush=True,
                )
        scrape_s = scraper.scrapes
        with httpx.Client(
            base_url=arms["on"][0], timeout=30, headers={"Authorization": "Bearer bench-scrape-token"}
        ) as c:
            exposition = c.get("/metrics").text
    ratios = [a["throughput_rps"] / b["throughput_rps"] for a, b in zip(results["on"], results["off"])]
    slowdown = 1.0 - statistics.median(ratios)
    cpu_ratios = [a["api_cpu_ms_per_post"] / b["api_cpu_ms_per_post"] for a, b in zip(results["on"], results["off"])]
    rows = [
        {
            "arm": name,
            "median_rps": statistics.median(r["throughput_rps"] for r in results[name]),
            "p50_ms": statistics.median(r["p50_ms"] for r in results[name]),
            "p99_ms": statistics.median(r["p99_ms"] for r in results[name]),
            "api_cores": statistics.median(r["cpu_cores"].get("gradlab api", 0.0) for r in results[name]),
            "cpu_ms": statistics.median(r["api_cpu_ms_per_post"] for r in results[name]),
        }
        for name in ("off", "on")
    ]
    print_table(
        rows,
        [
            ("arm", "arm", "s"),
            ("median_rps", "POST req/s (median)", ".1f"),
            ("p50_ms", "p50 ms", ".1f"),
            ("p99_ms", "p99 ms", ".1f"),
            ("api_cores", "API cores", ".2f"),
            ("cpu_ms", "API CPU-ms/POST", ".2f"),
        ],
    )
    observed = sum(
        float(line.rsplit(" ", 1)[1])
        for line in exposition.splitlines()
        if line.startswith('gradlab_http_request_duration_seconds_count{method="POST",route="/v1/jobs"')
    )
    print(
        f"throughput on/off per pair: {', '.join(f'{r:.3f}' for r in ratios)}; median slowdown "
        f"{slowdown:+.1%} (floor {FLOOR_SLOWDOWN:.0%}: {'met' if slowdown <= FLOOR_SLOWDOWN else 'MISSED'}); "
        f"API CPU per POST on/off per pair: {', '.join(f'{r:.3f}' for r in cpu_ratios)} (median "
        f"{statistics.median(cpu_ratios) - 1:+.1%}); {len(scrape_s)} scrapes, "
        f"median {statistics.median(scrape_s) * 1e3:.0f} ms; "
        f"{observed:.0f} POSTs counted by the on-API's histogram"
    )
    added_cpu = (
        (cost["on_us"] - cost["off_us"]) / 1e3 / statistics.median(r["api_cpu_ms_per_post"] for r in results["off"])
    )
    print(
        f"metrics' own CPU per POST: +{cost['on_us'] - cost['off_us']:.1f} us, {added_cpu:.2%} of the API's CPU "
        f"per POST here (the throughput cost where the API has the cores to itself)"
    )
    write_results(
        "http_metrics",
        {
            "args": vars(args),
            "pairs": results,
            "ratios_on_over_off": ratios,
            "median_slowdown": slowdown,
            "api_cpu_per_post_ratios_on_over_off": cpu_ratios,
            "floor_slowdown": FLOOR_SLOWDOWN,
            "met": slowdown <= FLOOR_SLOWDOWN,
            "scrape_s": scrape_s,
            "posts_counted_by_histogram": observed,
            "summary": rows,
            "middleware_us": cost,
            "middleware_share_of_post_cpu": added_cpu,
        },
    )


if __name__ == "__main__":
    main()
