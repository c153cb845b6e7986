"""Dispatch latency: from POST /v1/jobs to the job's ``started_at`` and to ``succeeded``, for the lightest job, beside
a bare Celery no-op round trip on the same Redis server.

One gradlab API process and one gradlab worker (production settings: PostgreSQL, Redis with a key prefix), and one
bare Celery worker (solo pool, the same broker options as gradlab's, a Redis result backend under the same prefix)
running a no-op task that returns the time it started. Jobs are sequential: submit, wait until finished, next; each
gradlab job is followed by one bare round trip, so load drift on a shared machine hits both alike. gradlab's times
come from the job row (``created_at``, ``published_at``, ``started_at``, ``finished_at``, written by the API and the
worker on this machine's clock), the bare task's from the timestamp it returns.

Run from the repository root: ``python -m bench.dispatch [--jobs 500]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
import uuid

import httpx
from celery import Celery

from bench.common import PROFILES, BenchStack, PySpy, light_job, percentiles, print_table, write_results
from tests.stack import BIN, REDIS_URL

BARE_QUEUE = "bare"
FLOOR_OVERHEAD_MS = 10.0


def make_bare_app(broker_url: str, prefix: str) -> Celery:
    """The smallest Celery app comparable to gradlab's: JSON, late acks, prefetch 1, keys under ``prefix``."""
    app = Celery("bare", broker=broker_url, backend=broker_url)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        task_default_queue=BARE_QUEUE,
        broker_transport_options={"global_keyprefix": prefix},
        result_backend_transport_options={"global_keyprefix": prefix},
    )

    @app.task(name="bare.noop")
    def noop() -> float:
        return time.time()

    return app


# The worker started by this benchmark imports this module (``celery -A bench.dispatch:bare``); the environment
# tells it which broker and prefix to use.
bare = make_bare_app(os.environ.get("BENCH_BARE_BROKER", REDIS_URL), os.environ.get("BENCH_BARE_PREFIX", ""))


def start_bare_worker(bs: BenchStack) -> None:
    proc = bs.spawn(
        [
            str(BIN / "celery"),
            "-A",
            "bench.dispatch:bare",
            "worker",
            "-Q",
            BARE_QUEUE,
            "--pool=solo",
            "--concurrency=1",
            "--without-mingle",
            "--without-gossip",
            "--loglevel=INFO",
            "-n",
            f"bare-{uuid.uuid4().hex[:6]}@%h",
        ],
        "bare-worker",
        env={"BENCH_BARE_BROKER": REDIS_URL, "BENCH_BARE_PREFIX": bs.prefix},
    )
    deadline = time.monotonic() + 60
    while " ready." not in bs.log_tail("bare-worker", 100_000):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"bare Celery worker did not start:\n{bs.log_tail('bare-worker')}")
        time.sleep(0.1)


def gradlab_once(client: httpx.Client, db, seed: int, poll_s: float, timeout_s: float = 120) -> dict:
    """POST one light job and wait for it to finish; times in seconds from just before the POST."""
    t_send = time.time()
    resp = client.post("/v1/jobs", json=light_job(seed))
    t_answer = time.time()
    resp.raise_for_status()
    job_id = resp.json()["id"]
    deadline = time.monotonic() + timeout_s
    while True:
        row = db.execute(
            "SELECT status, created_at, published_at, started_at, finished_at FROM jobs WHERE id = %s", (job_id,)
        ).fetchone()
        if row[0] in ("succeeded", "failed", "cancelled"):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {row[0]} after {timeout_s} s")
        time.sleep(poll_s)
    if row[0] != "succeeded":
        raise RuntimeError(f"job {job_id} {row[0]}")
    _, created, published, started, finished = row
    return {
        "post_answered": t_answer - t_send,
        "created": created.timestamp() - t_send,
        "published": published.timestamp() - t_send if published else None,
        "started": started.timestamp() - t_send,
        "succeeded": finished.timestamp() - t_send,
    }


def bare_once(app: Celery) -> dict:
    t_send = time.time()
    started = app.send_task("bare.noop", queue=BARE_QUEUE).get(timeout=30)
    return {"started": started - t_send, "round_trip": time.time() - t_send}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=500, help="measured jobs (and as many bare round trips)")
    ap.add_argument("--warmup", type=int, default=10, help="unmeasured jobs first (imports, caches, plot fonts)")
    ap.add_argument("--poll-ms", type=float, default=2.0, help="how often the job row is read while waiting")
    ap.add_argument("--auth", choices=["key", "disabled"], default="key")
    ap.add_argument("--profile", choices=["wall", "gil"], help="py-spy the gradlab worker during the measured jobs")
    args = ap.parse_args()

    gl: list[dict] = []
    br: list[dict] = []
    with BenchStack("dispatch", auth=args.auth) as bs:
        import psycopg

        sender = make_bare_app(REDIS_URL, bs.prefix)
        api_url, _ = bs.start_api(workers=1)
        worker = bs.start_worker()
        start_bare_worker(bs)
        dsn = bs.database_url.replace("postgresql+psycopg://", "postgresql://")
        with (
            psycopg.connect(dsn, autocommit=True) as db,
            httpx.Client(base_url=api_url, headers=bs.headers, timeout=30) as client,
        ):
            for i in range(args.warmup):
                gradlab_once(client, db, i, args.poll_ms / 1e3)
                bare_once(sender)
            spy = PySpy(worker.pid, PROFILES / f"dispatch_worker_{args.profile}.txt", mode=args.profile or "wall")
            with spy if args.profile else contextlib.nullcontext():
                t0 = time.monotonic()
                for i in range(args.jobs):
                    gl.append(gradlab_once(client, db, args.warmup + i, args.poll_ms / 1e3))
                    br.append(bare_once(sender))
                    if (i + 1) % 100 == 0:
                        print(f"  {i + 1}/{args.jobs} jobs, {time.monotonic() - t0:.0f} s", flush=True)
        sender.close()

    def stats(rows: list[dict], key: str, base: str | None = None) -> dict:
        values = [r[key] - (r[base] if base else 0.0) for r in rows if r[key] is not None]
        return percentiles(values)

    table = [
        {"what": "gradlab: POST answered (201)", **stats(gl, "post_answered")},
        {"what": "gradlab: POST -> row created (API, after auth + admission)", **stats(gl, "created")},
        {
            "what": "gradlab: row created -> claimed by the worker (started_at; includes the publish)",
            **stats(gl, "started", "created"),
        },
        {"what": "gradlab: POST -> started_at", **stats(gl, "started")},
        {"what": "gradlab: started_at -> succeeded (running the job)", **stats(gl, "succeeded", "started")},
        {"what": "gradlab: POST -> succeeded", **stats(gl, "succeeded")},
        {"what": "bare Celery: send -> task started", **stats(br, "started")},
        {"what": "bare Celery: send -> result back (round trip)", **stats(br, "round_trip")},
    ]
    by = {r["what"]: r for r in table}
    gl_start, gl_done = by["gradlab: POST -> started_at"], by["gradlab: POST -> succeeded"]
    bare_start, bare_rtt = by["bare Celery: send -> task started"], by["bare Celery: send -> result back (round trip)"]
    overhead = {
        "start_p50_ms": gl_start["p50_ms"] - bare_start["p50_ms"],
        "start_p99_ms": gl_start["p99_ms"] - bare_start["p99_ms"],
        "succeeded_vs_round_trip_p50_ms": gl_done["p50_ms"] - bare_rtt["p50_ms"],
        "job_run_p50_ms": by["gradlab: started_at -> succeeded (running the job)"]["p50_ms"],
    }
    overhead["meets_floor"] = overhead["start_p50_ms"] <= FLOOR_OVERHEAD_MS

    print(
        f"\n{args.jobs} sequential jobs ({light_job(0)['kind']} {light_job(0)['params']}), one worker; "
        f"{args.jobs} bare Celery no-op round trips interleaved"
    )
    print_table(
        table,
        [
            ("what", "interval", "s"),
            ("p50_ms", "p50 ms", ".2f"),
            ("p90_ms", "p90 ms", ".2f"),
            ("p99_ms", "p99 ms", ".2f"),
            ("max_ms", "max ms", ".1f"),
        ],
    )
    print(
        f"\noverhead over bare Celery, p50: POST -> started {overhead['start_p50_ms']:.2f} ms "
        f"(floor {FLOOR_OVERHEAD_MS:g} ms: {'met' if overhead['meets_floor'] else 'NOT met'}); "
        f"POST -> succeeded vs round trip {overhead['succeeded_vs_round_trip_p50_ms']:.2f} ms, of which running "
        f"the job {overhead['job_run_p50_ms']:.2f} ms"
    )
    if spy.summary:
        print(f"\nprofile of the gradlab worker ({spy.summary['samples']} samples), top inclusive:")
        for r in spy.summary["by_inclusive"][:25]:
            print(f"  {r['inclusive']:6.1%}  {r['function']}")
    path = write_results(
        "dispatch",
        {
            "config": vars(args),
            "job": light_job(0),
            "rows": table,
            "overhead": overhead,
            "floor_ms": FLOOR_OVERHEAD_MS,
            "profile": spy.summary,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
