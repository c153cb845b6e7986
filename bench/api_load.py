"""API load: gradlab's POST /v1/jobs and GET /v1/jobs/{id} against MLflow's runs/create and runs/get.

Both services run on the same local PostgreSQL server (each on a fresh database made here) with 2 server worker
processes. gradlab runs with production settings: Redis broker with a key prefix, API keys required (``--auth key``,
the default) and the default admission limits, its POSTs spread over 32 tenants' keys so none is refused; no job
worker is started, so submitted jobs stay queued, behind ``--queued`` (10,000) jobs of other tenants seeded first:
a GET computes its job's place in that queue. MLflow runs from its own virtual environment (``bench.mlflow_env``:
bench/.mlflow-venv, built on first use from bench/mlflow-requirements.txt) as ``mlflow server --backend-store-uri
postgresql+psycopg://... --workers 2``; it has no authentication. Load is closed-loop: N clients, each sending its
next request when the previous answer arrived, for a fixed time after a warm-up. The phases alternate between the
two services (gradlab POST, MLflow POST, gradlab GET, MLflow GET, per round) so drifting load from other processes
on a shared machine hits both alike. The load comes from wrk (``apt-get install wrk``; ``bench/wrk_load.py``) where
it is on PATH, else from the Python generator in ``bench/common.py``, which costs a 2-core box most of a core
(``--loadgen`` picks; the output names the one that ran, with a note when it falls back). The GET phases read random
ids among the seeded jobs/runs.

Run from the repository root: ``python -m bench.api_load [--clients 32] [--duration 8] [--rounds 2]``;
``--profile wall|gil`` also records py-spy stacks of gradlab's API processes during its phases
(bench/results/profiles/). Each phase reports where the machine's CPU went (API, postgres, load generator, others)
and an in-process pass counts, per gradlab request, the SQL statements, commits, broker publishes and the time
spent in each (``request_anatomy``).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import subprocess
import time
from collections import Counter

import httpx

from bench import mlflow_env, wrk_load
from bench.common import (
    LIGHT_JOB,
    PROFILES,
    BenchStack,
    CpuMeter,
    PySpy,
    closed_loop,
    light_job,
    print_table,
    run_async,
    wait_ready,
    write_results,
)
from tests.stack import free_port

FLOOR_THROUGHPUT_RATIO = 3.0


def _gradlab_requests(job_ids: list[str], auth: list[str]):
    """POSTs from a random tenant's key each, GETs of the seeded jobs (the first tenant's: the client's own key)."""

    async def post(client: httpx.AsyncClient, i: int) -> httpx.Response:
        headers = {"Authorization": random.choice(auth)} if auth else None
        return await client.post("/v1/jobs", json=light_job(i), headers=headers)

    async def get(client: httpx.AsyncClient, i: int) -> httpx.Response:
        return await client.get(f"/v1/jobs/{random.choice(job_ids)}")

    def collect(resp: httpx.Response) -> None:
        if resp.status_code == 201:
            job_ids.append(resp.json()["id"])

    return post, get, collect


def _mlflow_requests(run_ids: list[str]):
    async def post(client: httpx.AsyncClient, i: int) -> httpx.Response:
        return await client.post(
            "/api/2.0/mlflow/runs/create",
            json={"experiment_id": "0", "start_time": int(time.time() * 1000), "run_name": f"bench-{i}"},
        )

    async def get(client: httpx.AsyncClient, i: int) -> httpx.Response:
        return await client.get("/api/2.0/mlflow/runs/get", params={"run_id": random.choice(run_ids)})

    def collect(resp: httpx.Response) -> None:
        if resp.status_code == 200 and resp.request.method == "POST":
            run_ids.append(resp.json()["run"]["info"]["run_id"])

    return post, get, collect


def start_mlflow(bs: BenchStack, url: str, workers: int) -> tuple[str | None, str | None, str | None]:
    """(base URL, version, None) of an MLflow server, from its own venv (``bench.mlflow_env``, built here when
    missing), started on database ``url``; or (None, version, why not)."""
    version = mlflow_env.version()
    try:
        exe = mlflow_env.ensure()
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        return None, version, f"the MLflow venv could not be built ({exc}); `python -m bench.mlflow_env` retries"
    port = free_port()
    art = bs.tmp / "mlflow-artifacts"
    art.mkdir()
    proc = bs.spawn(
        [
            str(exe),
            "server",
            "--backend-store-uri",
            url,
            "--default-artifact-root",
            art.as_uri(),
            "--no-serve-artifacts",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
        ],
        "mlflow",
        cwd=bs.tmp,
        bin_dir=exe.parent,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, base + "/health", lambda: bs.log_tail("mlflow"))
    except (RuntimeError, TimeoutError) as exc:
        return None, version, f"mlflow server did not start: {exc}"
    return base, version, None


def _post_retrying(client: httpx.Client, path: str, body: dict, tries: int = 5) -> httpx.Response:
    """A seeding POST, sent again when the connection drops: on an overloaded machine uvicorn restarts a server
    process that missed its health check (5 s), cutting its open connections (a retry may seed one more)."""
    for _ in range(tries - 1):
        try:
            return client.post(path, json=body)
        except httpx.TransportError:
            time.sleep(1)
    return client.post(path, json=body)


def worker_restarts(log: str) -> int:
    """Server processes uvicorn's supervisor replaced (one that missed its health check), read from its log."""
    return log.count("Waiting for child process")


def _wrk_requests(job_ids: list[str], run_ids: list[str], auth: list[str]) -> dict:
    """The four cases as wrk request templates (``bench/closed_loop.lua``): gradlab's POSTs from every tenant's
    key, its GETs from the first tenant's (the owner of the seeded jobs)."""
    job_body = json.dumps(LIGHT_JOB)[:-1] + ', "seed": {n}}'
    run_body = '{"experiment_id": "0", "start_time": {now_ms}, "run_name": "bench-{n}"}'
    return {
        "gradlab POST": dict(method="POST", path="/v1/jobs", body=job_body, auth=auth),
        "gradlab GET": dict(method="GET", path="/v1/jobs/{id}", ids=job_ids, auth=auth[:1]),
        "mlflow POST": dict(method="POST", path="/api/2.0/mlflow/runs/create", body=run_body),
        "mlflow GET": dict(method="GET", path="/api/2.0/mlflow/runs/get?run_id={id}", ids=run_ids),
    }


def _phase(url, request, name, args, headers=None, on_response=None, meters=(), template=None) -> dict:
    """One measured phase: wrk with ``template`` when ``--loadgen wrk``, else the Python generator."""
    if args.loadgen == "wrk":
        return wrk_load.wrk_closed_loop(
            url,
            name=name,
            clients=args.clients,
            duration_s=args.duration,
            warmup_s=args.warmup,
            meters=meters,
            **template,
        )
    return run_async(
        closed_loop(
            url,
            request,
            name=name,
            clients=args.clients,
            duration_s=args.duration,
            warmup_s=args.warmup,
            headers=headers,
            on_response=on_response,
            meters=meters,
        )
    ).summary()


def _pooled(case: str, results: list[dict]) -> dict:
    """One summary for all rounds of a case: throughput over the summed windows, latency percentiles as the
    request-weighted mean of the rounds' (wrk reports percentiles, not samples), CPU split averaged."""
    n = sum(r["requests"] for r in results) or 1
    out = {
        "case": case,
        "clients": results[0]["clients"],
        "rounds": len(results),
        "duration_s": sum(r["duration_s"] for r in results),
        "requests": n,
        "ok": sum(r["ok"] for r in results),
        "load_generator": results[0].get("load_generator", "python"),
    }
    out["throughput_rps"] = out["ok"] / out["duration_s"]
    for key in ("p50_ms", "p90_ms", "p99_ms", "mean_ms"):
        out[key] = sum(r[key] * r["requests"] for r in results if r[key] is not None) / n
    out["max_ms"] = max(r["max_ms"] or 0.0 for r in results)
    out["statuses"], out["errors"] = Counter(), Counter()
    for r in results:
        out["statuses"].update(r["statuses"])
        out["errors"].update(r["errors"])
    out["machine_busy"] = statistics.mean(r["machine_busy"] for r in results)
    groups = {g for r in results for g in r["cpu_cores"]}
    out["cpu_cores"] = {g: statistics.mean(r["cpu_cores"].get(g, 0.0) for r in results) for g in groups}
    return out


def add_history(database_url: str, tenant: str, n: int) -> None:
    """``n`` finished jobs of ``tenant``, created over the past days, as a service that has run a while has;
    then ANALYZE so the planner knows them."""
    import psycopg

    with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO jobs (id, tenant, kind, status, params, seed, device_requested, device, queue, timeout_s, "
            "progress, message, attempt, created_at, started_at, finished_at, result) "
            "SELECT gen_random_uuid(), %s, 'init_averaging', 'succeeded', '{\"widths\": [2, 2]}', g, 'cpu', "
            "'cpu', 'cpu', 3600, 1.0, 'succeeded', 1, now() - make_interval(secs => 120 + g * 10), "
            "now() - make_interval(secs => 119 + g * 10), now() - make_interval(secs => 118 + g * 10), '{}' "
            "FROM generate_series(1, %s) AS g",
            (tenant, n),
        )
        conn.execute("ANALYZE jobs")


def add_queue(database_url: str, n: int) -> None:
    """``n`` queued jobs of 100 tenants the load does not use, in the light job's queue, published a minute ago:
    ahead of every job the benchmark submits, so a GET of one of those computes its place behind all ``n``. Kinds
    take turns over every technique (its example params); no worker runs and ``republish_at`` is a day away, so
    they stay queued and unpublished again. One INSERT ... SELECT, then ANALYZE."""
    import psycopg

    from core.jobs.states import QUEUE_FOR_DEVICE
    from core.techniques import specs

    names = sorted(specs())
    params = [json.dumps(specs()[k].example.get("params", {})) for k in names]
    device = LIGHT_JOB["device"]
    with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO jobs (id, tenant, kind, status, params, seed, device_requested, queue, timeout_s, progress, "
            "message, attempt, created_at, published_at, republish_at) "
            "SELECT gen_random_uuid(), 'queued-' || (g %% 100), (%(kinds)s::text[])[1 + g %% %(k)s], 'queued', "
            "((%(params)s::text[])[1 + g %% %(k)s])::json, g, %(device)s, %(queue)s, 3600, 0.0, 'queued', 0, t, t, "
            "now() + interval '1 day' "
            "FROM generate_series(1, %(n)s) AS g, "
            "LATERAL (SELECT now() - make_interval(secs => 60 + (%(n)s - g) * 0.001) AS t) AS published",
            {
                "kinds": names,
                "params": params,
                "k": len(names),
                "device": device,
                "queue": QUEUE_FOR_DEVICE[device],
                "n": n,
            },
        )
        conn.execute("ANALYZE jobs")


def queue_length(database_url: str) -> int:
    """Queued jobs in the light job's queue, read straight from the database."""
    import psycopg

    from core.jobs.states import QUEUE_FOR_DEVICE

    with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        row = conn.execute(
            "SELECT count(*) FROM jobs WHERE status = 'queued' AND queue = %s",
            (QUEUE_FOR_DEVICE[LIGHT_JOB["device"]],),
        ).fetchone()
    return int(row[0]) if row else 0


def explain_admission(database_url: str, tenant: str, settings) -> list[dict]:
    """EXPLAIN ANALYZE of the query POST /v1/jobs runs before admitting a job, as the store issues it, on the
    database the benchmark filled, with the limits the API ran with (its cost is bounded by them)."""
    from datetime import timedelta

    from sqlalchemy import event

    from core.db.engine import make_engine, make_sessionmaker
    from core.db.tables import utcnow
    from core.jobs import repository as job_store

    engine = make_engine(database_url)
    seen: list[tuple[str, object]] = []
    event.listen(
        engine,
        "before_cursor_execute",
        lambda conn, cur, statement, params, ctx, many: seen.append((statement, params)),
    )
    out = []
    try:
        with make_sessionmaker(engine)() as s:
            use = job_store.usage(
                s,
                tenant,
                utcnow() - timedelta(seconds=60),
                settings.max_active_jobs_per_tenant,
                settings.submissions_per_minute_per_tenant,
            )
        for statement, params in [q for q in seen if q[0].lstrip().upper().startswith("SELECT")]:
            with engine.connect() as conn:
                plan = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, params).scalars().all()
            ms = next(
                (float(line.split(":")[1].split()[0]) for line in plan if line.startswith("Execution Time")), None
            )
            out.append({"sql": " ".join(statement.split()), "execution_ms": ms, "plan": plan})
    finally:
        engine.dispose()
    return [{"at_active_cap": use.at_active_cap, "window_filled_at": use.window_filled_at}] + out


def request_anatomy(bs: BenchStack, n: int) -> list[dict]:
    """What one gradlab request does, counted in-process: the app from ``create_app`` with the benchmark's settings,
    called through httpx's ASGI transport (no network, no load), with SQLAlchemy events and wrappers on this
    instance's dialect and Celery app counting and timing SQL statements, commits, rollbacks and broker publishes.
    """
    from sqlalchemy import event

    from api.app import create_app

    settings = bs.settings()
    app = create_app(settings)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the app logs at info; a line per request buries the table
    engine, celery = app.state.engine, app.state.publisher.app
    tally: Counter = Counter()
    sql_ms: Counter = Counter()
    started: dict = {}

    def before(conn, cursor, statement, params, context, executemany):
        started[id(cursor)] = time.perf_counter()

    def after(conn, cursor, statement, params, context, executemany):
        key = " ".join(statement.split())[:90]
        tally["sql: " + key] += 1
        sql_ms["sql: " + key] += 1e3 * (time.perf_counter() - started.pop(id(cursor)))

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)

    def timed(owner, attr: str, label: str) -> None:
        """Count and time calls of ``owner.attr`` on this in-process instance only."""
        inner = getattr(owner, attr)

        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return inner(*a, **kw)
            finally:
                tally[label] += 1
                sql_ms[label] += 1e3 * (time.perf_counter() - t0)

        setattr(owner, attr, wrapper)

    timed(engine.dialect, "do_commit", "COMMIT")
    timed(engine.dialect, "do_rollback", "ROLLBACK (connection returned to the pool)")
    timed(celery, "send_task", "broker publish (Redis)")
    job_ids: list[str] = []

    async def drive() -> list[dict]:
        transport = httpx.ASGITransport(app=app)
        out = []
        async with httpx.AsyncClient(transport=transport, base_url="http://anatomy", headers=bs.headers) as client:
            cases = (
                ("POST /v1/jobs", lambda i: client.post("/v1/jobs", json=light_job(2 * 10**9 + i))),
                ("GET /v1/jobs/{id}", lambda i: client.get(f"/v1/jobs/{job_ids[i % len(job_ids)]}")),
            )
            for case, call in cases:
                for i in range(5):  # warm caches (statement compilation, pool) before counting
                    resp = await call(i)
                    if resp.status_code == 201:
                        job_ids.append(resp.json()["id"])
                tally.clear()
                sql_ms.clear()
                t0 = time.perf_counter()
                for i in range(n):
                    (await call(i)).raise_for_status()
                total_ms = 1e3 * (time.perf_counter() - t0) / n
                parts = [
                    {"what": k, "per_request": c / n, "ms_per_request": sql_ms[k] / n if k in sql_ms else None}
                    for k, c in sorted(tally.items())
                ]
                waits = sum(sql_ms.values()) / n
                out.append(
                    {
                        "case": case,
                        "requests": n,
                        "ms_per_request": total_ms,
                        "sql_and_broker_ms_per_request": waits,
                        "python_ms_per_request": total_ms - waits,
                        "parts": parts,
                    }
                )
        return out

    try:
        return run_async(drive())
    finally:
        engine.dispose()


def pick_load_generator(ap: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """Sets ``args.loadgen`` (wrk where it is on PATH, unless asked otherwise) and names the generator that runs;
    a note says what falling back to the Python generator costs."""
    if args.loadgen is None:
        args.loadgen = "wrk" if wrk_load.available() else "python"
        if args.loadgen == "python":
            print(
                "note: wrk is not on PATH (Debian/Ubuntu: apt-get install wrk), so the load comes from the Python "
                "generator, which takes most of a core from the servers on a small machine: the ratios read lower "
                "than with wrk"
            )
    elif args.loadgen == "wrk" and not wrk_load.available():
        ap.error("--loadgen wrk: wrk is not on PATH (Debian/Ubuntu: apt-get install wrk)")
    return wrk_load.version() if args.loadgen == "wrk" else "Python (bench.common.closed_loop)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=32, help="concurrent closed-loop clients")
    ap.add_argument("--duration", type=float, default=8.0, help="measured seconds per phase")
    ap.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each phase")
    ap.add_argument("--rounds", type=int, default=2, help="alternations of the four phases")
    ap.add_argument("--workers", type=int, default=2, help="server worker processes of each service")
    ap.add_argument(
        "--auth",
        choices=["key", "disabled"],
        default="key",
        help="gradlab: Bearer API keys with the default admission limits (production), or "
        "GRADLAB_AUTH=disabled on loopback (limits raised: one tenant)",
    )
    ap.add_argument(
        "--tenants",
        type=int,
        default=32,
        help="with keys: tenants the POSTs are spread over, each within the default limits",
    )
    ap.add_argument("--seed-jobs", type=int, default=200, help="jobs/runs created before the GET phases")
    ap.add_argument(
        "--history",
        type=int,
        default=0,
        help="finished jobs of the benchmark tenant in the database before the load starts",
    )
    ap.add_argument(
        "--queued",
        type=int,
        default=10_000,
        help="queued jobs of other tenants seeded ahead of the benchmark's own (a GET computes its place behind "
        "them); 0 for an empty queue",
    )
    ap.add_argument("--no-mlflow", action="store_true", help="gradlab only")
    ap.add_argument(
        "--loadgen",
        choices=["wrk", "python"],
        help="wrk (the default where it is on PATH) or the Python closed-loop generator (the fallback)",
    )
    ap.add_argument(
        "--anatomy-requests",
        type=int,
        default=200,
        help="requests per endpoint of the in-process statement count (0: skip)",
    )
    ap.add_argument(
        "--profile",
        choices=["wall", "gil"],
        help="py-spy the gradlab API processes during its phases (wall: where requests wait; "
        "gil: where Python CPU goes)",
    )
    args = ap.parse_args()
    loadgen = pick_load_generator(ap, args)
    print(f"load generator: {loadgen}", flush=True)

    job_ids: list[str] = []
    run_ids: list[str] = []
    ml_post, ml_get, ml_collect = _mlflow_requests(run_ids)
    per_case: dict[str, list] = {}
    profiles: dict = {}
    mlflow_info: dict = {"compared": False}

    with BenchStack("api-load", auth=args.auth, tenants=args.tenants, production_limits=True) as bs:
        gl_post, gl_get, gl_collect = _gradlab_requests(job_ids, bs.auth_values)
        tenant = "bench" if args.auth == "key" else "local"
        if args.history:
            add_history(bs.database_url, tenant, args.history)
        if args.queued:
            t0 = time.perf_counter()
            add_queue(bs.database_url, args.queued)
            print(f"seeded {args.queued:,} queued jobs in {time.perf_counter() - t0:.1f} s", flush=True)
        api_url, api_proc = bs.start_api(workers=args.workers)
        ml_url = None
        if args.no_mlflow:
            mlflow_info["why_not"] = "--no-mlflow"
        else:
            ml_db = bs.new_database()
            ml_url, version, why_not = start_mlflow(bs, ml_db, args.workers)
            mlflow_info.update(version=version, compared=ml_url is not None, why_not=why_not)
            if why_not:
                print(f"MLflow NOT compared: {why_not}")
        with httpx.Client(base_url=api_url, headers=bs.headers, timeout=30) as c:
            for i in range(args.seed_jobs):
                gl_collect(_post_retrying(c, "/v1/jobs", light_job(10**9 + i)))
            first = c.get(f"/v1/jobs/{job_ids[0]}").json()
            first_position = first.get("queue_position") or f"more than {first.get('queue_ahead_over')}"
        queue_at_start = queue_length(bs.database_url)
        print(f"queue: {queue_at_start:,} jobs waiting; the first GET target is at position {first_position}")
        if ml_url:
            with httpx.Client(base_url=ml_url, timeout=30) as c:
                for i in range(args.seed_jobs):
                    resp = _post_retrying(
                        c,
                        "/api/2.0/mlflow/runs/create",
                        {"experiment_id": "0", "start_time": int(time.time() * 1000), "run_name": f"seed-{i}"},
                    )
                    resp.raise_for_status()
                    run_ids.append(resp.json()["run"]["info"]["run_id"])

        roots = {"gradlab api": api_proc.pid}
        if ml_url:
            roots["mlflow"] = bs.extra_procs[-1].pid

        templates = _wrk_requests(job_ids, run_ids, bs.auth_values)

        def gradlab_phase(case, request):
            def run():
                return _phase(
                    api_url,
                    request,
                    case,
                    args,
                    bs.headers,
                    None,  # noqa: E731
                    (CpuMeter(roots),),
                    templates[case],
                )

            if not args.profile:
                return run()
            out = PROFILES / f"api_load_{case.split()[-1].lower()}_{args.profile}_r{rnd}.txt"
            with PySpy(api_proc.pid, out, subprocesses=True, mode=args.profile) as spy:
                res = run()
            profiles[out.name] = spy.summary
            return res

        def mlflow_phase(case, request):
            return _phase(ml_url, request, case, args, None, ml_collect, (CpuMeter(roots),), templates[case])

        for rnd in range(args.rounds):
            phases = [("gradlab POST /v1/jobs", lambda: gradlab_phase("gradlab POST", gl_post))]
            if ml_url:
                phases.append(("mlflow POST runs/create", lambda: mlflow_phase("mlflow POST", ml_post)))
            phases.append(("gradlab GET /v1/jobs/{id}", lambda: gradlab_phase("gradlab GET", gl_get)))
            if ml_url:
                phases.append(("mlflow GET runs/get", lambda: mlflow_phase("mlflow GET", ml_get)))
            for case, fn in phases:
                print(f"round {rnd + 1}/{args.rounds}: {case} ...", flush=True)
                per_case.setdefault(case, []).append(fn())
        queue_at_end = queue_length(bs.database_url)
        restarts = {"gradlab api": worker_restarts(bs.log_text(f"api-{api_url.rsplit(':', 1)[1]}"))}
        if ml_url:
            restarts["mlflow"] = worker_restarts(bs.log_text("mlflow"))
        admission = explain_admission(bs.database_url, tenant, bs.settings())
        anatomy = request_anatomy(bs, args.anatomy_requests) if args.anatomy_requests else []

    rows = [_pooled(case, results) for case, results in per_case.items()]
    by_case = {r["case"]: r for r in rows}
    ratios = {}
    if mlflow_info["compared"]:
        for op, gl, ml in (
            ("create", "gradlab POST /v1/jobs", "mlflow POST runs/create"),
            ("get", "gradlab GET /v1/jobs/{id}", "mlflow GET runs/get"),
        ):
            g, m = by_case[gl], by_case[ml]
            tp = g["throughput_rps"] / m["throughput_rps"] if m["throughput_rps"] else None
            p99 = g["p99_ms"] / m["p99_ms"] if m["p99_ms"] else None
            ratios[op] = {
                "throughput_gradlab_over_mlflow": tp,
                "p99_gradlab_over_mlflow": p99,
                "p50_gradlab_over_mlflow": g["p50_ms"] / m["p50_ms"] if m["p50_ms"] else None,
                "meets_floor": bool(tp is not None and tp >= FLOOR_THROUGHPUT_RATIO and p99 is not None and p99 <= 1.0),
            }

    display = []
    for row in rows:
        cores = row["cpu_cores"]
        display.append(
            {
                **row,
                "srv": cores.get("gradlab api" if row["case"].startswith("gradlab") else "mlflow", 0.0),
                "pg": cores.get("postgres", 0.0),
                "gen": cores.get("this script (load generator)", 0.0),
                "oth": cores.get("other processes", 0.0),
            }
        )
    print(
        f"\n{args.clients} closed-loop clients, {args.duration:g} s x {args.rounds} round(s) per case, "
        f"{args.workers} server processes each; gradlab auth={args.auth}; load generator: {loadgen}; "
        f"queue {queue_at_start:,} waiting jobs at the start, {queue_at_end:,} at the end"
    )
    print_table(
        display,
        [
            ("case", "case", "s"),
            ("throughput_rps", "req/s", ".0f"),
            ("p50_ms", "p50 ms", ".1f"),
            ("p90_ms", "p90 ms", ".1f"),
            ("p99_ms", "p99 ms", ".1f"),
            ("max_ms", "max ms", ".1f"),
            ("ok", "ok", "d"),
            ("machine_busy", "box busy", ".0%"),
            ("srv", "server cores", ".2f"),
            ("pg", "pg cores", ".2f"),
            ("gen", "loadgen cores", ".2f"),
            ("oth", "other cores", ".2f"),
        ],
    )
    if any(restarts.values()):
        print(f"  server processes restarted by uvicorn (missed health checks: an overloaded machine): {restarts}")
    for row in rows:
        bad = {k: v for k, v in row["statuses"].items() if v and not k.startswith("2")}
        if bad or row["errors"]:
            print(f"  {row['case']}: non-2xx {bad} errors {row['errors']}")
    if ratios:
        print(f"\nratios (floor: throughput >= {FLOOR_THROUGHPUT_RATIO:g}x MLflow, p99 <= MLflow's)")
        print_table(
            [{"op": k, **v} for k, v in ratios.items()],
            [
                ("op", "operation", "s"),
                ("throughput_gradlab_over_mlflow", "throughput x", ".2f"),
                ("p50_gradlab_over_mlflow", "p50 ratio", ".2f"),
                ("p99_gradlab_over_mlflow", "p99 ratio", ".2f"),
                ("meets_floor", "floor met", ""),
            ],
        )
    else:
        print(f"\nno MLflow comparison: {mlflow_info.get('why_not')}")
    for a in anatomy:
        print(
            f"\nanatomy of {a['case']} (in-process, no load): {a['ms_per_request']:.2f} ms/request, of which "
            f"{a['sql_and_broker_ms_per_request']:.2f} ms waiting on SQL/broker"
        )
        for part in a["parts"]:
            ms = "" if part["ms_per_request"] is None else f"{part['ms_per_request']:7.3f} ms"
            print(f"  {part['per_request']:5.2f} x  {ms:>10}  {part['what']}")
    print(f"\nadmission queries of POST /v1/jobs at the end ({admission[0]}):")
    for q in admission[1:]:
        print(f"  {q['execution_ms']} ms  {q['sql'][:110]}")
    for name, summary in profiles.items():
        if summary:
            print(f"\nprofile {name}: top self time ({summary['samples']} samples)")
            for r in summary["by_self"][:10]:
                print(f"  {r['self']:6.1%}  {r['function']}")
    path = write_results(
        "api_load",
        {
            "config": {
                **vars(args),
                "gradlab_server": f"gradlab api --workers {args.workers}",
                "mlflow_server": f"mlflow server --backend-store-uri postgresql+psycopg://... --workers {args.workers}",
                "load_generator": loadgen,
                "queue_at_start": queue_at_start,
                "queue_at_end": queue_at_end,
                "first_get_target_position": first_position,
                "server_process_restarts": restarts,
            },
            "mlflow": mlflow_info,
            "rows": rows,
            "ratios": ratios,
            "request_anatomy": anatomy,
            "admission_queries": admission,
            "profiles": profiles,
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
