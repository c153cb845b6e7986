"""Metrics ingestion: jobs logging 100,000 metric rows through the worker's real run context, their slowdown
against the same loop logging nothing, and reading all the rows back through the HTTP API.

No job kind logs that many rows, so the loops run in this process on the worker's own code path: a job row made with
``job_store.create_job`` and claimed with ``job_store.claim`` on a fresh PostgreSQL database, a
``workers.context.DbRunContext`` with the service's settings (rows buffered and written by its heartbeat thread as
soon as a batch of GRADLAB_METRIC_FLUSH_ROWS is full, or about once a second; back-pressure at 20 batches),
``ctx.metric(step, name, value)`` per row and ``ctx.close()`` at the end. Two workloads, 100,000 rows each:

- ``training`` (the figure the floor is about): a training step of an MLP (256 wide, two hidden layers, batch 64,
  SGD; ~0.6 ms on one CPU thread) logging four metrics of its loss each step, for 25,000 steps;
- ``stress``: a 64x64 matmul (~6 us) logging one element of its result each step, for 100,000 steps: almost nothing
  but logging, so its slowdown is large and its ``us per row`` is the per-row cost of logging itself.

The steps run in 10 blocks with logging and 10 without, taking turns (which goes first alternates), so drift on a
shared machine hits both alike; each logging block ends by writing what is still buffered (``ctx.flush()``, timed),
so no logging work spills into the next bare block. The slowdown is the median over the 10 pairs of blocks of
logging / bare time (robust to a block that other work on the machine hit); the ratio of the sums is reported too.
Then a real API process pages through GET /v1/jobs/{id}/metrics with the largest and the
default page size.

Run from the repository root: ``python -m bench.metrics_ingest [--rows 100000]``; ``--profile wall|gil`` records
py-spy stacks of the logging loops and of the API while paging.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Callable

import httpx
import torch
from sqlalchemy import text

from bench.common import PROFILES, BenchStack, PySpy, print_table, write_results

FLOOR_SLOWDOWN = 0.05
NAMES = ("train/loss", "train/loss_ema", "train/loss_min", "train/loss_max")


def training_step() -> Callable[[], torch.Tensor]:
    """One SGD step of a 256-wide MLP on a fixed batch; returns the loss (a 0-dim tensor)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)
    )
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    x, y = torch.randn(64, 256), torch.randint(0, 10, (64,))

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def stress_step() -> Callable[[], torch.Tensor]:
    """A 64x64 matmul; returns one element of the product (a 0-dim tensor view)."""
    a, b = torch.randn(64, 64), torch.randn(64, 64)
    return lambda: torch.mm(a, b)[0, 0]


WORKLOADS = {"training": (training_step, 4), "stress": (stress_step, 1)}  # (step factory, metrics per step)
BLOCKS = 10


def loop(steps: int, step: Callable[[], torch.Tensor], names: tuple[str, ...] = (), ctx=None, first: int = 0) -> float:
    """Seconds for ``steps`` calls of ``step``; with a context, each step's value logged under ``names`` (step
    numbers from ``first``) and then everything still buffered written (``ctx.flush()``, counted)."""
    t0 = time.perf_counter()
    if ctx is None:
        for _ in range(steps):
            step()
    else:
        for i in range(first, first + steps):
            value = step()
            for name in names:
                ctx.metric(i, name, value)
        ctx.flush()
    return time.perf_counter() - t0


def measure(workload: str, rows: int, sessions, settings, profile: str | None) -> dict:
    """Slowdown of one workload logging ``rows`` rows into a fresh claimed job; also the job id and flush stats."""
    from core.jobs import repository as job_store
    from core.jobs.states import JobStatus
    from workers.context import DbRunContext
    from workers.restart import restart_worker_process

    factory, per_step = WORKLOADS[workload]
    step, names, steps = factory(), NAMES[:per_step], rows // per_step
    with sessions() as s:
        job, _ = job_store.create_job(
            s,
            tenant="bench",
            kind="init_averaging",
            params={"widths": [2, 2]},
            seed=0,
            device="cpu",
            timeout_s=24 * 3600,
            republish_after_s=60,
        )
        job = job_store.claim(s, job.id, "bench-metrics")
    ctx = DbRunContext(
        sessions, settings, job.id, job.attempt, job.tenant, 0, 24 * 3600, on_hung=restart_worker_process
    )
    flushes = {"calls": 0, "seconds": 0.0}
    flush = ctx.flush

    def timed_flush():
        """This context's flush, counted and timed (it runs in the heartbeat thread and under back-pressure)."""
        t0 = time.perf_counter()
        flush()
        flushes["calls"] += 1
        flushes["seconds"] += time.perf_counter() - t0

    ctx.flush = timed_flush
    loop(min(steps, 2000), step)  # warm-up
    ctx.start()
    spy = PySpy(os.getpid(), PROFILES / f"metrics_ingest_{workload}_{profile}.txt", mode=profile or "wall")
    pairs = []  # (bare, logging) seconds per block
    per_block = steps // BLOCKS
    with spy if profile else contextlib.nullcontext():
        for block in range(BLOCKS):  # bare and logging blocks take turns going first, so drift hits both alike
            timed = {}
            for logged in (False, True) if block % 2 == 0 else (True, False):
                timed[logged] = (
                    loop(per_block, step, names, ctx, first=block * per_block) if logged else loop(per_block, step)
                )
            pairs.append((timed[False], timed[True]))
    ctx.close()
    bare, logging_s = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
    ratios = sorted(p[1] / p[0] for p in pairs)
    steps = per_block * BLOCKS
    with sessions() as s:
        job_store.finish(s, job.id, job.attempt, JobStatus.succeeded, result={})
        stored = s.scalar(text("SELECT count(*) FROM metrics WHERE job_id = :j"), {"j": job.id})
    out = {
        "workload": workload,
        "job_id": str(job.id),
        "steps": steps,
        "metrics_per_step": per_step,
        "rows": steps * per_step,
        "rows_stored": stored,
        "no_logging_s": bare,
        "blocks": BLOCKS,
        "logging_s": logging_s,
        "slowdown": statistics.median(ratios) - 1,
        "slowdown_of_sums": logging_s / bare - 1,
        "slowdown_per_block": [r - 1 for r in ratios],
        "step_us_no_logging": 1e6 * bare / steps,
        "overhead_us_per_row": 1e6 * (logging_s - bare) / stored,
        "rows_per_s_logged": stored / logging_s,
        "flushes": flushes["calls"],
        "flush_seconds": flushes["seconds"],
        "db_rows_per_s_in_flush": stored / flushes["seconds"] if flushes["seconds"] else None,
        "profile": spy.summary if profile else None,
    }
    out["meets_floor"] = out["slowdown"] <= FLOOR_SLOWDOWN
    return out


def page_all(client: httpx.Client, job_id: str, limit: int) -> tuple[int, float, int]:
    """(rows, seconds, pages) to read every metric row of a job, ``limit`` rows per page."""
    rows = pages = 0
    cursor = None
    t0 = time.perf_counter()
    while True:
        params = {"limit": limit, **({"cursor": cursor} if cursor is not None else {})}
        resp = client.get(f"/v1/jobs/{job_id}/metrics", params=params)
        resp.raise_for_status()
        body = resp.json()
        rows += len(body["items"])
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            return rows, time.perf_counter() - t0, pages


def read_all(client: httpx.Client, job_id: str, limit: int, schema: str) -> dict:
    rows, secs, pages = page_all(client, job_id, limit)
    return {
        "schema": schema,
        "page_size": limit,
        "rows": rows,
        "pages": pages,
        "seconds": secs,
        "rows_per_s": rows / secs,
        "ms_per_page": 1e3 * secs / pages,
    }


def explain_page(database_url: str, job_id, cursor: int, limit: int) -> list[str]:
    """The plan of one metrics page, as ``metric_store.read_metrics`` queries it, from the middle of the job's rows."""
    from sqlalchemy import event

    from core.db.engine import make_engine, make_sessionmaker
    from core.metrics import repository as metric_store

    engine = make_engine(database_url)
    seen = []
    event.listen(engine, "before_cursor_execute", lambda c, cur, st, params, ctx, many: seen.append((st, params)))
    try:
        with make_sessionmaker(engine)() as s:
            metric_store.read_metrics(s, job_id, name=None, after_step=None, cursor=cursor, limit=limit)
        statement, params = seen[-1]
        with engine.connect() as conn:
            return conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, params).scalars().all()
    finally:
        engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000, help="metric rows each workload logs")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="which of training,stress to run")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--page-sizes", default="10000,1000", help="GET .../metrics limits to page with")
    ap.add_argument(
        "--profile",
        choices=["wall", "gil"],
        help="py-spy this process during the logging loops, and the API process while paging",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    with BenchStack("metrics", auth="key") as bs:
        settings = bs.settings()
        sessions = bs.sessions()
        writes = [measure(w, args.rows, sessions, settings, args.profile) for w in args.workloads.split(",")]
        read_job = writes[-1]["job_id"]
        api_url, api_proc = bs.start_api(workers=1)
        limits = [int(x) for x in args.page_sizes.split(",")]
        api_spy = PySpy(api_proc.pid, PROFILES / f"metrics_read_api_{args.profile}.txt", mode=args.profile or "wall")
        with (
            httpx.Client(base_url=api_url, headers=bs.headers, timeout=120) as client,
            api_spy if args.profile else contextlib.nullcontext(),
        ):
            reads = [read_all(client, read_job, limit, "as migrated") for limit in limits]
        with sessions() as s:
            mid = s.scalar(
                text("SELECT id FROM metrics WHERE job_id = :j ORDER BY id OFFSET :o LIMIT 1"),
                {"j": read_job, "o": writes[-1]["rows_stored"] // 2},
            )
        plan = explain_page(bs.database_url, read_job, mid, 1000)

    print(f"\nlogging {args.rows} metric rows per workload ({args.threads} torch thread)")
    print_table(
        writes,
        [
            ("workload", "workload", "s"),
            ("steps", "steps", "d"),
            ("metrics_per_step", "rows/step", "d"),
            ("step_us_no_logging", "us/step bare", ".1f"),
            ("no_logging_s", "s bare", ".2f"),
            ("logging_s", "s logging", ".2f"),
            ("slowdown", "slowdown", ".1%"),
            ("slowdown_of_sums", "of sums", ".1%"),
            ("overhead_us_per_row", "us/row", ".2f"),
            ("rows_per_s_logged", "rows/s", ".0f"),
            ("flushes", "flushes", "d"),
            ("db_rows_per_s_in_flush", "rows/s in flush", ".0f"),
        ],
    )
    training = writes[0]  # the floor's workload when it ran
    print(
        f"floor: slowdown of the {training['workload']} job <= {FLOOR_SLOWDOWN:.0%}: "
        f"{'met' if training['meets_floor'] else 'NOT met'} ({training['slowdown']:.1%}); logging costs about "
        f"{writes[-1]['overhead_us_per_row']:.1f} us per row (stress), so it stays within {FLOOR_SLOWDOWN:.0%} for "
        f"steps of {writes[-1]['overhead_us_per_row'] / FLOOR_SLOWDOWN:.0f} us or more per row logged"
    )
    print("\nreading the stress job's rows back: GET /v1/jobs/{id}/metrics, one API process")
    print_table(
        reads,
        [
            ("schema", "schema", "s"),
            ("page_size", "limit", "d"),
            ("pages", "pages", "d"),
            ("seconds", "seconds", ".2f"),
            ("rows_per_s", "rows/s", ".0f"),
            ("ms_per_page", "ms/page", ".1f"),
        ],
    )
    print("\nplan of one page (1000 rows) from the middle:\n  " + "\n  ".join(plan))
    summaries = [(f"the {w['workload']} logging loop (this process)", w["profile"]) for w in writes]
    for label, summary in summaries + [("the API while paging", api_spy.summary)]:
        if summary:
            print(f"\nprofile of {label} ({summary['samples']} samples), top self time:")
            for r in summary["by_self"][:12]:
                print(f"  {r['self']:6.1%}  {r['function']}")
    path = write_results(
        "metrics_ingest",
        {
            "config": vars(args),
            "settings": {
                "metric_flush_rows": settings.metric_flush_rows,
                "metric_flush_interval_s": settings.metric_flush_interval_s,
                "heartbeat_interval_s": settings.heartbeat_interval_s,
            },
            "write": writes,
            "read": reads,
            "page_plan": plan,
            "floor_slowdown": FLOOR_SLOWDOWN,
            "api_profile": api_spy.summary,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
