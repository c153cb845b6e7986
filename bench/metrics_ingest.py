"""Metrics ingestion: a training loop logging 100,000 metric rows through the worker's real run context, its
slowdown against the same loop logging nothing, and reading all the rows back through the HTTP API.

No job kind logs that many rows, so the loop runs in this process on the worker's own code path: a job row made with
``core.jobs.store.create_job`` and claimed with ``store.claim`` on a fresh PostgreSQL database, a
``workers.context.DbRunContext`` with the service's settings (rows buffered, flushed by its heartbeat thread about
once a second, back-pressure at 20 x GRADLAB_METRIC_FLUSH_ROWS), ``ctx.metric(step, "loss", y[0, 0])`` per step and
``ctx.close()`` at the end. Each step does a small torch computation (a 64x64 matmul by default, one thread) so the
slowdown is relative to real work; the no-logging loop runs before and after the logging one and the slower of the
two is not used (so drift cannot flatter the figure). Then a real API process pages through
GET /v1/jobs/{id}/metrics with the largest and the default page size.

Run from the repository root: ``python -m bench.metrics_ingest [--rows 100000] [--size 64]``. It also times
candidate fixes on the throw-away database (COPY for the flush, an index for paging; ``--no-what-if`` skips
them); ``--profile wall|gil`` records py-spy stacks of the logging loop and of the API while paging.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import time

import httpx
import torch
from sqlalchemy import text

from bench.common import PROFILES, BenchStack, PySpy, print_table, write_results

FLOOR_SLOWDOWN = 0.05


def loop(n: int, a: torch.Tensor, b: torch.Tensor, ctx=None) -> float:
    """Seconds for ``n`` steps of ``y = a @ b`` (and, with a context, logging ``y[0, 0]`` each step, then close)."""
    t0 = time.perf_counter()
    if ctx is None:
        for _ in range(n):
            torch.mm(a, b)
    else:
        for step in range(n):
            y = torch.mm(a, b)
            ctx.metric(step, "loss", y[0, 0])
        ctx.close()
    return time.perf_counter() - t0


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
    return {"schema": schema, "page_size": limit, "rows": rows, "pages": pages, "seconds": secs,
            "rows_per_s": rows / secs, "ms_per_page": 1e3 * secs / pages}


def explain_page(database_url: str, job_id, cursor: int, limit: int) -> list[str]:
    """The plan of one metrics page, as ``store.read_metrics`` queries it, from the middle of the job's rows."""
    from sqlalchemy import event

    from core.jobs import store
    from core.jobs.db import make_engine, make_sessionmaker

    engine = make_engine(database_url)
    seen = []
    event.listen(engine, "before_cursor_execute", lambda c, cur, st, params, ctx, many: seen.append((st, params)))
    try:
        with make_sessionmaker(engine)() as s:
            store.read_metrics(s, job_id, name=None, after_step=None, cursor=cursor, limit=limit)
        statement, params = seen[-1]
        with engine.connect() as conn:
            return conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, params).scalars().all()
    finally:
        engine.dispose()


def what_if_inserts(sessions, n: int, batch: int) -> list[dict]:
    """Rows/s of inserting ``n`` metric rows in batches as ``store.beat`` does today (ORM bulk insert), as a Core
    executemany, and with PostgreSQL COPY: the candidates for the flush path, each into a fresh claimed job."""
    from sqlalchemy import insert

    from core.jobs import store
    from core.jobs.models import Metric

    rows = [(i, "loss", float(i)) for i in range(n)]

    def fresh_job():
        with sessions() as s:
            job, _ = store.create_job(s, tenant="bench", kind="init_averaging", params={}, seed=0, device="cpu",
                                      timeout_s=3600)
            return store.claim(s, job.id, "bench-what-if")

    def beat(job, chunk):
        with sessions() as s:
            store.beat(s, job.id, job.attempt, None, None, chunk)

    def core(job, chunk):
        with sessions() as s:
            s.execute(insert(Metric.__table__), [{"job_id": job.id, "step": st, "name": nm, "value": v}
                                                 for st, nm, v in chunk])
            s.commit()

    def copy(job, chunk):
        with sessions() as s:
            with s.connection().connection.driver_connection.cursor() as cur, \
                    cur.copy("COPY metrics (job_id, step, name, value) FROM STDIN") as out:
                for st, nm, v in chunk:
                    out.write_row((job.id, st, nm, v))
            s.commit()

    out = []
    for label, fn in (("store.beat today (ORM bulk insert)", beat), ("Core insert executemany", core),
                      ("COPY FROM STDIN (psycopg)", copy)):
        job = fresh_job()
        t0 = time.perf_counter()
        for k in range(0, n, batch):
            fn(job, rows[k:k + batch])
        secs = time.perf_counter() - t0
        out.append({"path": label, "rows": n, "batch": batch, "rows_per_s": n / secs, "us_per_row": 1e6 * secs / n})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000, help="metric rows logged (one per step)")
    ap.add_argument("--size", type=int, default=64, help="the per-step matmul is size x size")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--page-sizes", default="10000,1000", help="GET .../metrics limits to page with")
    ap.add_argument("--profile", choices=["wall", "gil"],
                    help="py-spy this process during the logging loop, and the API process while paging")
    ap.add_argument("--no-what-if", dest="what_if", action="store_false",
                    help="skip timing the candidate fixes on the throw-away database (COPY / Core inserts for the "
                         "flush; paging again after adding an index on metrics (job_id, id))")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    a, b = torch.randn(args.size, args.size), torch.randn(args.size, args.size)

    from core.jobs import store
    from core.jobs.states import JobStatus
    from core.settings import Settings
    from workers.context import DbRunContext

    with BenchStack("metrics", auth="key") as bs:
        settings = Settings(**{k.removeprefix("GRADLAB_").lower(): v for k, v in bs.env.items()})
        sessions = bs.sessions()
        with sessions() as s:
            job, _ = store.create_job(s, tenant="bench", kind="init_averaging", params={"widths": [2, 2]}, seed=0,
                                      device="cpu", timeout_s=24 * 3600)
            job = store.claim(s, job.id, "bench-metrics")
        ctx = DbRunContext(sessions, settings, job.id, job.attempt, 0, torch.device("cpu"), 24 * 3600)
        flushes = {"calls": 0, "seconds": 0.0}
        flush = ctx.flush

        def timed_flush():
            """This context's flush, counted and timed (it runs in the heartbeat thread and under back-pressure)."""
            t0 = time.perf_counter()
            flush()
            flushes["calls"] += 1
            flushes["seconds"] += time.perf_counter() - t0

        ctx.flush = timed_flush
        loop(min(args.rows, 5000), a, b)  # warm-up
        base_before = loop(args.rows, a, b)
        ctx.start()
        spy = PySpy(os.getpid(), PROFILES / f"metrics_ingest_{args.profile}.txt", mode=args.profile or "wall")
        with spy if args.profile else contextlib.nullcontext():
            logging_s = loop(args.rows, a, b, ctx)
        base_after = loop(args.rows, a, b)
        with sessions() as s:
            store.finish(s, job.id, job.attempt, JobStatus.succeeded, result={})
            stored = s.scalar(text("SELECT count(*) FROM metrics WHERE job_id = :j"), {"j": job.id})
        base = min(base_before, base_after)

        api_url, api_proc = bs.start_api(workers=1)
        limits = [int(x) for x in args.page_sizes.split(",")]
        api_spy = PySpy(api_proc.pid, PROFILES / f"metrics_read_api_{args.profile}.txt", mode=args.profile or "wall")
        with httpx.Client(base_url=api_url, headers=bs.headers, timeout=120) as client, \
                (api_spy if args.profile else contextlib.nullcontext()):
            reads = [read_all(client, str(job.id), limit, "as migrated") for limit in limits]
        with sessions() as s:
            mid = s.scalar(text("SELECT id FROM metrics WHERE job_id = :j ORDER BY id OFFSET :o LIMIT 1"),
                           {"j": job.id, "o": args.rows // 2})
        plan = explain_page(bs.database_url, job.id, mid, 1000)
        what_if: dict = {}
        if args.what_if:
            with sessions() as s:
                s.execute(text("CREATE INDEX bench_what_if_metrics_job_id_id ON metrics (job_id, id)"))
                s.execute(text("ANALYZE metrics"))
                s.commit()
            with httpx.Client(base_url=api_url, headers=bs.headers, timeout=120) as client:
                reads += [read_all(client, str(job.id), limit, "+ index (job_id, id)") for limit in limits]
            what_if["page_plan_with_index"] = explain_page(bs.database_url, job.id, mid, 1000)
            what_if["inserts"] = what_if_inserts(sessions, min(args.rows, 40_000), 4000)

    write = {"rows": args.rows, "rows_stored": stored, "size": args.size, "threads": args.threads,
             "no_logging_s": base, "no_logging_s_before": base_before, "no_logging_s_after": base_after,
             "logging_s": logging_s, "slowdown": logging_s / base - 1,
             "overhead_us_per_row": 1e6 * (logging_s - base) / args.rows,
             "step_us_no_logging": 1e6 * base / args.rows,
             "rows_per_s_logged": args.rows / logging_s,
             "flushes": flushes["calls"], "flush_seconds": flushes["seconds"],
             "db_rows_per_s_in_flush": stored / flushes["seconds"] if flushes["seconds"] else None}
    write["meets_floor"] = write["slowdown"] <= FLOOR_SLOWDOWN
    print(f"\n{args.rows} steps of a {args.size}x{args.size} matmul ({args.threads} thread), one metric row each; "
          f"{stored} rows stored")
    print_table([
        {"what": "loop without logging", "s": base, "us": write["step_us_no_logging"]},
        {"what": "loop logging every step + close()", "s": logging_s, "us": 1e6 * logging_s / args.rows},
    ], [("what", "case", "s"), ("s", "seconds", ".3f"), ("us", "us/step", ".2f")])
    print(f"slowdown {write['slowdown']:.1%} (floor {FLOOR_SLOWDOWN:.0%}: "
          f"{'met' if write['meets_floor'] else 'NOT met'}), {write['overhead_us_per_row']:.2f} us per logged row; "
          f"{write['rows_per_s_logged']:.0f} rows/s logged; {flushes['calls']} flushes (heartbeat thread, "
          f"back-pressure and close) inserted at {write['db_rows_per_s_in_flush'] or 0:.0f} rows/s while flushing")
    print("\nreading them back: GET /v1/jobs/{id}/metrics, one API process")
    print_table(reads, [("schema", "schema", "s"), ("page_size", "limit", "d"), ("pages", "pages", "d"),
                        ("seconds", "seconds", ".2f"), ("rows_per_s", "rows/s", ".0f"),
                        ("ms_per_page", "ms/page", ".1f")])
    print("\nplan of one page (1000 rows) from the middle:\n  " + "\n  ".join(plan))
    if what_if:
        print("\nwith an index on metrics (job_id, id):\n  " + "\n  ".join(what_if["page_plan_with_index"]))
        print("\ninserting metric rows (what the heartbeat flush does), by path:")
        print_table(what_if["inserts"], [("path", "path", "s"), ("batch", "batch", "d"),
                                         ("rows_per_s", "rows/s", ".0f"), ("us_per_row", "us/row", ".2f")])
    for label, summary in (("the logging loop (this process)", spy.summary), ("the API while paging", api_spy.summary)):
        if summary:
            print(f"\nprofile of {label} ({summary['samples']} samples), top self time:")
            for r in summary["by_self"][:12]:
                print(f"  {r['self']:6.1%}  {r['function']}")
    path = write_results("metrics_ingest", {"config": vars(args), "settings": {
        "metric_flush_rows": settings.metric_flush_rows, "metric_flush_interval_s": settings.metric_flush_interval_s,
        "heartbeat_interval_s": settings.heartbeat_interval_s}, "write": write, "read": reads,
        "page_plan": plan, "what_if": what_if, "floor_slowdown": FLOOR_SLOWDOWN,
        "profiles": {"logging_loop": spy.summary, "api_paging": api_spy.summary}})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
