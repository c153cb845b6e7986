"""Cost as the data grows: the hot paths measured on a database holding nothing, 10 % and 100 % of a million jobs,
ten million metric rows and a hundred thousand artifacts, then a prune of millions of rows under GET load.

One fresh PostgreSQL database (migrated), one API process (``gradlab api``, API keys required). The data is written
with COPY (psycopg) in three growing stages; before each stage's measurements the tables are vacuumed and analysed,
as autovacuum would have them on a long-running service. The *probe* job, a succeeded job of tenant ``bench`` with a
1,000,000-point ``loss`` series, is there from the empty stage on: it is what the metric reads measure, so "empty"
means "nothing but the probe".

Full size: 1,000,000 jobs over 100 tenants (``bench`` holds 1 % of them, 10,000 finished: the admission query runs
at a tenant with that history), 88 / 7 / 5 % succeeded / failed / cancelled, created over a year, params from each
kind's example, a summary in every succeeded result; plus a constant backlog of 200 queued and 100 running jobs;
10,000,000 metric rows: three 1,000,000-point series (the probe's among them) and 70,000 jobs with two 50-step
series; their rollup (``core.metrics.rollup``) as ingest would have written it; 100,000 artifacts' metadata (two per
job of 50,000 jobs; no bytes).

Measured at each stage (sequential requests over one keep-alive connection unless said otherwise):
GET /v1/jobs?status=&kind= first page and a page 90 % deep (cursor), as the tenant and as an admin (all tenants);
POST /v1/jobs from 4 closed-loop clients (admission at ``bench``); the probe's series paged whole (limit 10,000)
and read downsampled (``points=2000``); ``job_store.sweep`` (one sweeper tick's queries) called directly. At full size:
EXPLAIN (ANALYZE, BUFFERS) of every statement those paths run, and ``gradlab prune --older-than 30d`` (over 5
million rows) while GETs are timed against an idle window.

    python -m bench.scale [--fraction 1.0] [--requests 200]
    python -m bench.scale --waiting 1000000   # only a queued job's GET behind 10 and behind 1,000,000 jobs

``--fraction`` scales every size (0.01 for a quick check of the script). Results: bench/results/scale.json, the
plans in bench/results/scale_explain.txt, and the "Scale" section of bench/report.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import psycopg
from sqlalchemy import event, text

from bench.common import RESULTS, BenchStack, closed_loop, light_job, percentiles, run_async, write_results
from core.db import paging
from core.jobs import repository as job_store
from core.metrics import repository as metric_store
from core.metrics import rollup
from core.summary import summary
from tests.stack import BIN, ROOT

FULL = {"jobs": 1_000_000, "small_series_jobs": 70_000, "artifact_jobs": 50_000}
BIG_POINTS = 1_000_000
STAGES = (0.0, 0.1, 1.0)
TENANTS = 100
SMALL_STEPS = 50  # per series; two series ("loss", "acc") per small job
KIND_WEIGHTS = {
    "init_averaging": 0.25,
    "embedding_dim": 0.15,
    "momentum_accumulation": 0.15,
    "eg_stepsize": 0.1,
    "contrastive_accumulation": 0.1,
    "gradnorm_gan": 0.1,
    "vae_density": 0.1,
    "gradient_penalty_bound": 0.05,
}
LIST_KIND = "momentum_accumulation"
POINTS = 2000
JOB_COLUMNS = (
    "id tenant kind status params seed device_requested device queue timeout_s progress message attempt worker "
    "created_at published_at republish_at started_at heartbeat_at finished_at result error_type error_message"
).split()
REPORT = ROOT / "bench" / "report.md"
SECTION_TITLE = "### Scale: a million jobs, ten million metric rows (`python -m bench.scale`)"


def _copy_field(value) -> str:
    if value is None:
        return "\\N"
    text = json.dumps(value, separators=(",", ":")) if isinstance(value, dict | list) else str(value)
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


class Seeder:
    """Writes the data with COPY, stage by stage; remembers what it wrote (ids for the measurements)."""

    def __init__(self, dsn: str, now: datetime):
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.conn.execute("SET synchronous_commit = off")
        self.now = now
        self.rng = np.random.default_rng(20)
        self.jobs = 0
        self.small_jobs = 0
        self.artifact_jobs = 0
        self.big_series = 0
        self.succeeded_ids: list[uuid.UUID] = []  # candidates for metrics and artifacts
        from core.techniques import get_kind

        self.params = {k: json.dumps(get_kind(k).example.get("params", {})) for k in KIND_WEIGHTS}  # as stored
        self.probe = self._probe()

    def close(self) -> None:
        self.conn.close()

    def _copy(self, table: str, columns: list[str], lines: list[str]) -> None:
        with self.conn.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for i in range(0, len(lines), 50_000):
                copy.write("".join(lines[i : i + 50_000]))

    def _job_line(self, job: dict) -> str:
        return "\t".join(_copy_field(job.get(c)) for c in JOB_COLUMNS) + "\n"

    def _finished_job(self, tenant: str, kind: str, status: str, created: datetime, seed: int) -> dict:
        run_s = float(self.rng.gamma(2.0, 60.0))
        started = created + timedelta(seconds=float(self.rng.exponential(20.0)))
        finished = started + timedelta(seconds=run_s)
        job = {
            "id": uuid.uuid4(),
            "tenant": tenant,
            "kind": kind,
            "status": status,
            "params": self.params[kind],
            "seed": seed,
            "device_requested": "cpu",
            "device": "cpu",
            "queue": "cpu",
            "timeout_s": 600,
            "progress": 1.0 if status == "succeeded" else 0.4,
            "message": status,
            "attempt": 1,
            "worker": "host:1",
            "created_at": created.isoformat(),
            "published_at": created.isoformat(),
            "republish_at": (created + timedelta(seconds=60)).isoformat(),
            "started_at": started.isoformat(),
            "heartbeat_at": finished.isoformat(),
            "finished_at": finished.isoformat(),
        }
        if status == "succeeded":
            job["result"] = {
                "summary": summary(
                    question=f"does {kind} hold here?",
                    claim="the post's claim",
                    headline=f"{kind}: ratio 1.02 at seed {seed}",
                    outcome="supports",
                    statistic="ratio",
                    rule="within 5 % of 1",
                    columns=["arm", "ratio", "time_s"],
                    rows=[["baseline", 1.0, round(run_s, 2)], ["technique", 1.02, round(run_s, 2)]],
                    figures={"ratio": 1.02, "time_s": round(run_s, 2)},
                ),
                "values": [round(float(x), 4) for x in self.rng.normal(size=8)],
            }
        elif status == "failed":
            job.update(error_type="worker_lost", error_message="the worker stopped responding")
        return job

    def _probe(self) -> uuid.UUID:
        job = self._finished_job("bench", "init_averaging", "succeeded", self.now - timedelta(hours=1), 0)
        self._copy("jobs", JOB_COLUMNS, [self._job_line(job)])
        self._big_series(job["id"])
        return job["id"]

    def _big_series(self, job_id: uuid.UUID) -> None:
        steps = np.arange(BIG_POINTS, dtype=np.int64)
        values = np.cumsum(self.rng.normal(size=BIG_POINTS)) + 5 * self.rng.standard_cauchy(BIG_POINTS).clip(-50, 50)
        prefix = f"{job_id}\t"
        self._copy(
            "metrics",
            ["job_id", "step", "name", "value"],
            [f"{prefix}{s}\tloss\t{v!r}\n" for s, v in zip(steps.tolist(), values.tolist())],
        )
        lines = []
        for level, ex in rollup.levels_of(steps, values).items():
            lines += self._rollup_lines(job_id, "loss", level, ex, range(len(ex)))
        self._copy("metric_rollups", ROLLUP_COLUMNS, lines)
        self.big_series += 1

    @staticmethod
    def _rollup_lines(job_id, name: str, level: int, ex: rollup.Extremes, index, block=None) -> list[str]:
        return [
            f"{job_id}\t{name}\t{level}\t{ex.block[i] if block is None else block}\t{ex.n[i]}\t{ex.first_step[i]}\t"
            f"{ex.last_step[i]}\t{ex.min_step[i]}\t{float(ex.min_value[i])!r}\t{ex.max_step[i]}\t{float(ex.max_value[i])!r}\n"
            for i in index
        ]

    def grow_to(self, fraction: float, scale: float) -> dict:
        """Add jobs, metrics and artifacts up to ``fraction`` of full size (times ``scale``); seconds per table."""
        t: dict[str, float] = {}
        target_jobs = int(FULL["jobs"] * fraction * scale)
        t0 = time.perf_counter()
        if fraction > 0 and self.jobs == 0:
            self._backlog()
        self._add_jobs(target_jobs - self.jobs)
        t["jobs_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if fraction >= 1.0:
            while self.big_series < (3 if scale >= 1 else 1):
                self._big_series(self.succeeded_ids.pop())
        self._add_small_series(int(FULL["small_series_jobs"] * fraction * scale) - self.small_jobs)
        t["metrics_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self._add_artifacts(int(FULL["artifact_jobs"] * fraction * scale) - self.artifact_jobs)
        t["artifacts_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for table in ("jobs", "metrics", "metric_rollups", "artifacts"):
            self.conn.execute(f"VACUUM ANALYZE {table}")
        t["vacuum_analyze_s"] = time.perf_counter() - t0
        return t

    def _backlog(self) -> None:
        """The live part, the same at every size: 200 queued jobs (published, not yet due for re-publishing) and
        100 running ones with fresh heartbeats."""
        lines = []
        for i in range(300):
            tenant = f"tenant-{i % (TENANTS - 1) + 1:02d}"
            job = self._finished_job(tenant, "init_averaging", "succeeded", self.now - timedelta(minutes=5), i)
            job.update(result=None, finished_at=None, progress=0.0)
            if i < 200:
                job.update(status="queued", message="queued", attempt=0, worker=None, started_at=None)
                job.update(heartbeat_at=None, republish_at=(self.now + timedelta(days=30)).isoformat())
            else:
                job.update(
                    status="running", message="running", heartbeat_at=(self.now + timedelta(days=30)).isoformat()
                )
            lines.append(self._job_line(job))
        self._copy("jobs", JOB_COLUMNS, lines)

    def _add_jobs(self, n: int) -> None:
        kinds, weights = list(KIND_WEIGHTS), np.array(list(KIND_WEIGHTS.values()))
        year = timedelta(days=365).total_seconds()
        for start in range(0, n, 100_000):
            count = min(100_000, n - start)
            kind_ix = self.rng.choice(len(kinds), size=count, p=weights / weights.sum())
            status_draw = self.rng.random(count)
            ages = self.rng.uniform(2 * 3600, year, size=count)
            lines = []
            for i in range(count):
                number = self.jobs + i
                tenant = "bench" if number % TENANTS == 0 else f"tenant-{number % TENANTS:02d}"
                status = "succeeded" if status_draw[i] < 0.88 else "failed" if status_draw[i] < 0.95 else "cancelled"
                job = self._finished_job(
                    tenant, kinds[kind_ix[i]], status, self.now - timedelta(seconds=float(ages[i])), number
                )
                if status == "succeeded" and tenant != "bench":
                    self.succeeded_ids.append(job["id"])
                lines.append(self._job_line(job))
            self._copy("jobs", JOB_COLUMNS, lines)
            self.jobs += count
        random.Random(self.jobs).shuffle(self.succeeded_ids)

    def _add_small_series(self, n_jobs: int) -> None:
        """Two 50-step series per job; their rollup computed for many series at once by giving each series its own
        range of 2**20 steps (valid for the levels up to 2**20: above, each series is a single block 0)."""
        for start in range(0, n_jobs, 10_000):
            job_ids = [self.succeeded_ids.pop() for _ in range(min(10_000, n_jobs - start))]
            series = [(j, name) for j in job_ids for name in ("loss", "acc")]
            steps = np.tile(np.arange(SMALL_STEPS, dtype=np.int64), len(series))
            values = self.rng.normal(size=len(steps)).cumsum()
            values[self.rng.random(len(values)) < 0.01] = np.nan  # a few NaN, logged as null
            lines = []
            for i, (job_id, name) in enumerate(series):
                part = slice(i * SMALL_STEPS, (i + 1) * SMALL_STEPS)
                lines += [
                    f"{job_id}\t{s}\t{name}\t{NULL if np.isnan(v) else repr(v)}\n"
                    for s, v in zip(steps[part].tolist(), values[part].tolist())
                ]
            self._copy("metrics", ["job_id", "step", "name", "value"], lines)
            keep = ~np.isnan(values)
            owner = np.repeat(np.arange(len(series), dtype=np.int64), SMALL_STEPS)[keep]
            keyed = rollup.of_rows((owner << 20) | steps[keep], values[keep])
            lines, at = [], 0
            for level in rollup.LEVELS:
                if level <= 20:
                    keyed, at = rollup.merge(keyed, level - at), level
                    ex = _unkey(keyed, level)
                    owners = keyed.block >> (20 - level)
                for i in range(len(ex)):
                    job_id, name = series[owners[i]]
                    lines += self._rollup_lines(job_id, name, level, ex, [i], block=ex.block[i] if level <= 20 else 0)
            self._copy("metric_rollups", ROLLUP_COLUMNS, lines)
            self.small_jobs += len(job_ids)

    def _add_artifacts(self, n_jobs: int) -> None:
        lines = []
        for _ in range(n_jobs):
            job_id = self.succeeded_ids.pop()
            for name, media in (("plot.png", "image/png"), ("values.json", "application/json")):
                sha = uuid.uuid4().hex + uuid.uuid4().hex
                size = int(self.rng.integers(1_000, 200_000))
                lines.append(f"{job_id}\t{name}\t{media}\t{size}\t{sha}\tartifacts/{job_id}/1/{name}\t{self.now}\n")
        self._copy("artifacts", ["job_id", "name", "media_type", "size", "sha256", "location", "created_at"], lines)
        self.artifact_jobs += n_jobs

    def counts(self) -> dict:
        return {
            t: self.conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("jobs", "metrics", "metric_rollups", "artifacts")
        }


NULL = "\\N"
ROLLUP_COLUMNS = "job_id name level block n first_step last_step min_step min_value max_step max_value".split()


def _unkey(ex: rollup.Extremes, level: int) -> rollup.Extremes:
    """Blocks of series-keyed steps back to each series' own blocks and steps."""
    low = (1 << 20) - 1
    return rollup.Extremes(
        block=ex.block & (low >> level),
        n=ex.n,
        first_step=ex.first_step & low,
        last_step=ex.last_step & low,
        min_step=ex.min_step & low,
        min_value=ex.min_value,
        max_step=ex.max_step & low,
        max_value=ex.max_value,
    )


# --- measurements --------------------------------------------------------------------------------------------------
def timed_gets(client: httpx.Client, url: str, n: int, params: dict | None = None) -> list[float]:
    for _ in range(5):
        client.get(url, params=params).raise_for_status()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        client.get(url, params=params).raise_for_status()
        out.append(time.perf_counter() - t0)
    return out


def deep_cursor(sessions, tenant: str | None, status: str, kind: str, depth: float) -> str | None:
    """The cursor of a page ``depth`` of the way down the filtered list (an OFFSET query, once, to find it)."""
    from sqlalchemy import func, select

    from core.db.tables import Job

    where = [Job.status == status, Job.kind == kind] + ([Job.tenant == tenant] if tenant else [])
    with sessions() as s:
        total = s.scalar(select(func.count()).select_from(Job).where(*where))
        row = s.execute(
            select(Job.created_at, Job.id)
            .where(*where)
            .order_by(Job.created_at.desc(), Job.id.desc())
            .offset(int(total * depth))
            .limit(1)
        ).first()
    return paging.encode_cursor(row.created_at, row.id) if row else None


def measure(url: str, keys: dict, sessions, probe: uuid.UUID, requests: int) -> dict:
    out: dict[str, dict] = {}
    with httpx.Client(base_url=url, timeout=60) as client:
        for who, tenant in (("tenant", "bench"), ("admin", None)):
            client.headers["Authorization"] = keys[who]
            for status in ("succeeded", "failed"):
                query = {"status": status, "kind": LIST_KIND, "limit": 50}
                out[f"GET /v1/jobs {who} {status} first page"] = percentiles(
                    timed_gets(client, "/v1/jobs", requests, query)
                )
                cursor = deep_cursor(sessions, tenant, status, LIST_KIND, 0.9)
                if cursor:
                    out[f"GET /v1/jobs {who} {status} page 90 % deep"] = percentiles(
                        timed_gets(client, "/v1/jobs", requests, {**query, "cursor": cursor})
                    )
        client.headers["Authorization"] = keys["tenant"]
        metrics_url = f"/v1/jobs/{probe}/metrics"
        out[f"GET metrics points={POINTS} (1M-point series)"] = percentiles(
            timed_gets(client, metrics_url, requests, {"name": "loss", "points": POINTS})
        )
        pages, rows, cursor, t_all = [], 0, None, time.perf_counter()
        while True:
            t0 = time.perf_counter()
            resp = client.get(metrics_url, params={"limit": 10_000, **({"cursor": cursor} if cursor else {})})
            resp.raise_for_status()
            pages.append(time.perf_counter() - t0)
            body = resp.json()
            rows += len(body["items"])
            cursor = body["next_cursor"]
            if cursor is None:
                break
        elapsed = time.perf_counter() - t_all
        out["GET metrics page of 10,000 (paging the 1M-point series)"] = {
            **percentiles(pages),
            "rows": rows,
            "rows_per_s": rows / elapsed,
        }
    load = run_async(
        closed_loop(
            url,
            lambda c, i: c.post("/v1/jobs", json=light_job(i)),
            name="POST /v1/jobs",
            clients=4,
            duration_s=10,
            warmup_s=2,
            headers={"Authorization": keys["tenant"]},
        )
    )
    summary = load.summary()
    # the submitted jobs stay queued (no worker runs here): cancel them, so that neither the next stage's admission
    # (which walks a tenant's active jobs) nor the sweeper (which re-publishes queued jobs when due) works on them
    with sessions() as s:
        s.execute(
            text(
                "UPDATE jobs SET status = 'cancelled', finished_at = now() WHERE tenant = 'bench' AND status = 'queued'"
            )
        )
        s.commit()
    out["POST /v1/jobs (4 clients, tenant with 1 % of the jobs)"] = {
        **{k: summary[k] for k in ("n", "p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms")},
        "throughput_rps": summary["throughput_rps"],
        "statuses": summary["statuses"],
    }
    ticks = []
    with sessions() as s:
        for _ in range(requests // 4):
            t0 = time.perf_counter()
            job_store.sweep(s, heartbeat_timeout_s=30, requeue_queued_after_s=60, max_attempts=3)
            ticks.append(time.perf_counter() - t0)
    out["sweeper tick (job_store.sweep)"] = percentiles(ticks)
    return out


# --- plans ---------------------------------------------------------------------------------------------------------
def captured(sessions, call) -> list[tuple[str, dict]]:
    """The statements ``call(session)`` sends, its commits turned off and its work rolled back."""
    statements: list[tuple[str, dict]] = []
    with sessions() as s:
        engine = s.get_bind()

        def grab(conn, cursor, statement, parameters, context, executemany):
            if not executemany and statement.lstrip().upper().startswith(("SELECT", "INSERT", "UPDATE", "DELETE")):
                statements.append((statement, dict(parameters or {})))

        event.listen(engine, "before_cursor_execute", grab)
        try:
            s.commit = lambda: None  # type: ignore[method-assign]
            call(s)
        finally:
            event.remove(engine, "before_cursor_execute", grab)
            s.rollback()
    return statements


def explain(sessions, statement: str, parameters: dict) -> str:
    with sessions() as s:
        cur = s.connection().connection.driver_connection.cursor()
        cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)
        plan = "\n".join(r[0] for r in cur.fetchall())
        s.rollback()
    return plan


SEQ_SCAN = re.compile(r"Seq Scan on (jobs|metrics|metric_rollups|artifacts)\b")


def plans(sessions, probe: uuid.UUID) -> list[dict]:
    """EXPLAIN (ANALYZE, BUFFERS) of every statement each hot path sends, with the indexes it uses."""
    from core.db.tables import utcnow

    deep = deep_cursor(sessions, "bench", "succeeded", LIST_KIND, 0.9)
    deep_admin = deep_cursor(sessions, None, "failed", LIST_KIND, 0.9)
    with sessions() as s:
        first_id = metric_store.read_metrics(s, probe, name=None, after_step=None, cursor=None, limit=1)[0][0].id
    paths = {
        "job list, tenant, first page": lambda s: job_store.list_jobs(
            s, tenant="bench", status="succeeded", kind=LIST_KIND, limit=50, cursor=None
        ),
        "job list, tenant, deep page": lambda s: job_store.list_jobs(
            s, tenant="bench", status="succeeded", kind=LIST_KIND, limit=50, cursor=deep
        ),
        "job list, admin, deep page": lambda s: job_store.list_jobs(
            s, tenant=None, status="failed", kind=LIST_KIND, limit=50, cursor=deep_admin
        ),
        "admission + insert (POST /v1/jobs)": lambda s: job_store.create_job(
            s,
            tenant="bench",
            kind="init_averaging",
            params={},
            seed=0,
            device="cpu",
            timeout_s=60,
            republish_after_s=60,
            # the default caps; the window from now on: this run's own POST bursts are no tenant's history
            admission=job_store.Admission(1000, 6000, utcnow()),
        ),
        "metrics page (cursor)": lambda s: metric_store.read_metrics(
            s, probe, name=None, after_step=None, cursor=first_id + BIG_POINTS // 2, limit=10_000
        ),
        "downsampled read": lambda s: metric_store.downsampled_metrics(s, probe, name="loss", points=POINTS),
        "sweeper tick": lambda s: job_store.sweep(s, heartbeat_timeout_s=30, requeue_queued_after_s=60, max_attempts=3),
        "retention: prunable jobs": lambda s: job_store.prunable_jobs(s, utcnow() - timedelta(days=30), 100),
        "retention: metric batch delete": lambda s: metric_store.delete_metric_batch(s, [probe], 5000),
    }
    out = []
    for path, call in paths.items():
        for statement, parameters in captured(sessions, call):
            if "pg_advisory_xact_lock" in statement:
                continue
            plan = explain(sessions, statement, parameters)
            took = re.search(r"Execution Time: ([\d.]+) ms", plan)
            out.append(
                {
                    "path": path,
                    "statement": " ".join(statement.split())[:300],
                    "indexes": sorted(
                        set(re.findall(r"(?:Scan(?: Backward)? using|Bitmap Index Scan on) (\w+)", plan))
                    ),
                    "seq_scan_on_big_table": bool(SEQ_SCAN.search(plan)),
                    "execution_ms": float(took.group(1)) if took else None,
                    "plan": plan,
                }
            )
    return out


# --- retention under load --------------------------------------------------------------------------------------------
def prune_under_load(bench: BenchStack, url: str, keys: dict, probe: uuid.UUID, requests: int) -> dict:
    """GET p50/p99 idle, then while ``gradlab prune --older-than 30d`` runs (as an operator would run it)."""
    cases = {
        "GET /v1/jobs tenant first page": ("/v1/jobs", {"status": "succeeded", "kind": LIST_KIND, "limit": 50}),
        "GET /v1/jobs/{id}": (f"/v1/jobs/{probe}", None),
        f"GET metrics points={POINTS}": (f"/v1/jobs/{probe}/metrics", {"name": "loss", "points": POINTS}),
    }
    out: dict = {}
    with httpx.Client(base_url=url, timeout=60, headers={"Authorization": keys["tenant"]}) as client:
        idle = {name: [] for name in cases}
        for _ in range(requests):
            for name, (path, params) in cases.items():
                idle[name].extend(timed_gets(client, path, 1, params)[-1:])
        during = {name: [] for name in cases}
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [str(BIN / "gradlab"), "prune", "--older-than", "30d", "--batch-rows", "5000"],
            env={**os.environ, **bench.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
        )
        while proc.poll() is None:
            for name, (path, params) in cases.items():
                t1 = time.perf_counter()
                client.get(path, params=params).raise_for_status()
                during[name].append(time.perf_counter() - t1)
        output = proc.stdout.read()
        out["prune_s"] = time.perf_counter() - t0
        out["prune_rc"] = proc.returncode
        out["prune_output"] = output.strip()[-500:]
        found = re.search(r"pruned (\d+) jobs.*?: (\d+) metric rows, (\d+) rollup rows, (\d+) artifacts", output)
        if found:
            out.update(
                pruned_jobs=int(found.group(1)),
                pruned_metric_rows=int(found.group(2)),
                pruned_rollup_rows=int(found.group(3)),
                pruned_artifacts=int(found.group(4)),
            )
    out["cases"] = {name: {"idle": percentiles(idle[name]), "during": percentiles(during[name])} for name in cases}
    return out


# --- report --------------------------------------------------------------------------------------------------------
def floors(stages: list[dict]) -> list[dict]:
    """Per measurement: p50/p99 at each stage, the full/empty p99 ratio and whether its floor is met."""
    rows = []
    for name, first in stages[0]["results"].items():
        row = {"measure": name}
        for stage in stages:
            got = stage["results"].get(name, {})
            row[f"{stage['fraction']:g}"] = (got.get("p50_ms"), got.get("p99_ms"))
        empty, full = first.get("p99_ms"), stages[-1]["results"].get(name, {}).get("p99_ms")
        row["ratio"] = full / empty if empty and full else None
        row["floor_met"] = row["ratio"] is not None and row["ratio"] <= 2.0
        if name.startswith("GET metrics points"):
            row["absolute_met"] = full is not None and full <= 100.0
        rows.append(row)
    return rows


def render(data: dict) -> list[str]:
    """The report section's body (bench.report renders the same from results/scale.json)."""
    stages = data["stages"]
    out = [
        "Sizes: "
        + "; ".join(
            f"{s['fraction']:g} = {s['counts']['jobs']:,} jobs, {s['counts']['metrics']:,} metric rows, "
            f"{s['counts']['metric_rollups']:,} rollup rows, {s['counts']['artifacts']:,} artifacts"
            for s in stages
        )
        + f". Total runtime {data['total_s'] / 60:.1f} min (seeding {data['seed_s'] / 60:.1f} min), "
        f"load average before/after {data['load_before'][0]:.1f}/{data['load_after'][0]:.1f} on "
        f"{data['machine']['cores']} cores; {data['command']}.",
        "",
        "| measure | " + " | ".join(f"{s['fraction']:g} p50 / p99 ms" for s in stages) + " | p99 full/empty | floor |",
        "|---|" + "---|" * len(stages) + "---|---|",
    ]
    for row in data["floors"]:
        cells = []
        for s in stages:
            p50, p99 = row[f"{s['fraction']:g}"]
            cells.append("-" if p99 is None else f"{p50:.1f} / {p99:.1f}")
        floor = "met" if row["floor_met"] else "**not met**"
        if "absolute_met" in row:
            floor += ", ≤ 100 ms: " + ("met" if row["absolute_met"] else "**not met**")
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}x"
        out.append(f"| {row['measure']} | " + " | ".join(cells) + f" | {ratio} | {floor} |")
    extra = []
    for s in stages:
        post = s["results"]["POST /v1/jobs (4 clients, tenant with 1 % of the jobs)"]
        paging = s["results"]["GET metrics page of 10,000 (paging the 1M-point series)"]
        extra.append(
            f"{s['fraction']:g}: POST {post['throughput_rps']:.0f}/s, paging {paging['rows_per_s']:,.0f} rows/s"
        )
    out += ["", "Throughput: " + "; ".join(extra) + ".", ""]
    out += [
        "Plans at full size (EXPLAIN ANALYZE of every statement each path sends; full text in "
        "`bench/results/scale_explain.txt`):",
        "",
        "| path | index used | seq scan of a big table | execution ms |",
        "|---|---|---|---|",
    ]
    for p in data["plans"]:
        out.append(
            f"| {p['path']} | {', '.join(p['indexes']) or '-'} | {'**yes**' if p['seq_scan_on_big_table'] else 'no'} "
            f"| {p['execution_ms'] if p['execution_ms'] is not None else '-'} |"
        )
    prune = data.get("prune")
    if prune:
        out += [
            "",
            f"Retention: `gradlab prune --older-than 30d` removed {prune.get('pruned_metric_rows', 0):,} metric rows, "
            f"{prune.get('pruned_rollup_rows', 0):,} rollup rows and {prune.get('pruned_artifacts', 0):,} artifacts "
            f"of {prune.get('pruned_jobs', 0):,} jobs in {prune['prune_s']:.0f} s (5,000-row transactions), while:",
            "",
            "| request | idle p50 / p99 ms | during prune p50 / p99 ms | p99 ratio |",
            "|---|---|---|---|",
        ]
        for name, c in prune["cases"].items():
            i, d = c["idle"], c["during"]
            out.append(
                f"| {name} | {i['p50_ms']:.1f} / {i['p99_ms']:.1f} | {d['p50_ms']:.1f} / {d['p99_ms']:.1f} "
                f"| {d['p99_ms'] / i['p99_ms']:.2f}x |"
            )
    return out + [""]


def update_report(lines: list[str]) -> None:
    """Replace (or add, at the end of the Service part) this benchmark's section of bench/report.md."""
    text = REPORT.read_text() if REPORT.exists() else "# gradlab benchmark report\n\n## Service\n"
    section = "\n".join([SECTION_TITLE, "", *lines]).rstrip() + "\n\n"
    if SECTION_TITLE in text:
        start = text.index(SECTION_TITLE)
        rest = text[start + len(SECTION_TITLE) :]
        found = re.search(r"^#{2,3} ", rest, flags=re.M)
        end = start + len(SECTION_TITLE) + (found.start() if found else len(rest))
        text = text[:start] + section + text[end:]
    elif "\n## Techniques" in text:
        at = text.index("\n## Techniques") + 1
        text = text[:at] + section + text[at:]
    else:
        text = text.rstrip() + "\n\n" + section
    REPORT.write_text(text)


def queue_place(requests: int, waiting: int) -> dict:
    """GET /v1/jobs/{id} of a job queued behind 10, then behind ``waiting`` jobs (``bench.api_load.add_queue``):
    latency over HTTP (the API's snapshot of the queue shared by the requests), and in-process the statements and
    rows of one placing that takes a fresh snapshot, and of one that shares it."""
    from bench.api_load import add_queue
    from core.fleet import outlook
    from core.fleet.service import alive_since
    from core.settings import Settings

    settings, out, have = Settings(), {}, 0
    with BenchStack("scale-queue", auth="key") as bench:
        sessions = bench.sessions()
        url, _ = bench.start_api()
        with httpx.Client(base_url=url, headers=bench.headers, timeout=60) as client:
            for n in (10, waiting):
                t0 = time.perf_counter()
                add_queue(bench.database_url, n - have)
                seeded_s, have = time.perf_counter() - t0, n
                job = client.post("/v1/jobs", json=light_job(n)).json()  # behind every seeded job
                times = timed_gets(client, f"/v1/jobs/{job['id']}", requests)
                body = client.get(f"/v1/jobs/{job['id']}").json()
                shared = outlook.Outlooks(settings.queue_position_exact_up_to, 60.0)
                seen = {"statements": 0, "rows": 0}

                def count(conn, cursor, statement, parameters, context, executemany, seen=seen):
                    seen["statements"] += 1
                    seen["rows"] += max(cursor.rowcount, 0)

                cost = []
                with sessions() as s:
                    row = job_store.get_job(s, uuid.UUID(job["id"]))
                    event.listen(s.get_bind(), "after_cursor_execute", count)
                    for _ in range(2):  # the first takes the snapshot, the second shares it
                        shared.place(s, row, alive_since(settings))
                        cost.append(dict(seen))
                        seen.update(statements=0, rows=0)
                    event.remove(s.get_bind(), "after_cursor_execute", count)
                pct = percentiles(times)
                out[str(n)] = {
                    "seeded_s": seeded_s,
                    "p50_ms": pct["p50_ms"],
                    "p99_ms": pct["p99_ms"],
                    "queue_position": body.get("queue_position"),
                    "queue_ahead_over": body.get("queue_ahead_over"),
                    "fresh_snapshot": cost[0],
                    "shared_snapshot": cost[1],
                }
                print(f"{n:>9,} waiting: {json.dumps(out[str(n)])}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fraction", type=float, default=1.0, help="scale every size (0.01: a quick check)")
    ap.add_argument("--requests", type=int, default=200, help="timed requests per GET case")
    ap.add_argument("--skip-prune", action="store_true")
    ap.add_argument("--waiting", type=int, help="only a queued job's GET behind 10 and behind this many jobs")
    args = ap.parse_args()
    if args.waiting:
        load_before = os.getloadavg()
        data = {"command": f"python -m bench.scale --waiting {args.waiting} --requests {args.requests}"}
        data.update(load_before=list(load_before), cases=queue_place(args.requests, args.waiting))
        write_results("scale_queue", {**data, "load_after": list(os.getloadavg())})
        return
    started, load_before = time.perf_counter(), os.getloadavg()
    now = datetime.now(UTC)
    seed_s = 0.0
    with BenchStack("scale", auth="key") as bench:
        from core.keys.repository import create_key

        sessions = bench.sessions()
        with sessions() as s:
            _, admin_key = create_key(s, "ops", "benchmark admin", admin=True)
        keys = {"tenant": bench.headers["Authorization"], "admin": f"Bearer {admin_key}"}
        t0 = time.perf_counter()
        seeder = Seeder(bench.database_url.replace("postgresql+psycopg://", "postgresql://"), now)
        seed_s += time.perf_counter() - t0
        url, _ = bench.start_api()
        stages = []
        try:
            for fraction in STAGES:
                t0 = time.perf_counter()
                seeding = seeder.grow_to(fraction, args.fraction)
                seed_s += time.perf_counter() - t0
                counts = seeder.counts()
                print(f"stage {fraction:g}: {counts} seeded in {seeding}", flush=True)
                results = measure(url, keys, sessions, seeder.probe, args.requests)
                for name, r in results.items():
                    print(f"  {name}: p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms", flush=True)
                stages.append({"fraction": fraction, "counts": counts, "seeding_s": seeding, "results": results})
            plan_rows = plans(sessions, seeder.probe)
            explained = "\n\n".join(f"-- {p['path']}\n-- {p['statement']}\n{p['plan']}" for p in plan_rows)
            RESULTS.mkdir(parents=True, exist_ok=True)
            (RESULTS / "scale_explain.txt").write_text(explained + "\n")
            print("\nEXPLAIN (ANALYZE, BUFFERS) at full size:\n" + explained, flush=True)
            prune = None if args.skip_prune else prune_under_load(bench, url, keys, seeder.probe, args.requests)
            if prune:
                print(f"prune: {json.dumps({k: v for k, v in prune.items() if k != 'cases'})}", flush=True)
        finally:
            seeder.close()
    data = {
        "command": f"python -m bench.scale --fraction {args.fraction:g} --requests {args.requests}"
        + (" --skip-prune" if args.skip_prune else ""),
        "total_s": time.perf_counter() - started,
        "seed_s": seed_s,
        "load_before": list(load_before),
        "load_after": list(os.getloadavg()),
        "stages": stages,
        "floors": floors(stages),
        "plans": [{k: v for k, v in p.items() if k != "plan"} for p in plan_rows],
        "prune": prune,
    }
    path = write_results("scale", data)
    data = json.loads(path.read_text())
    lines = render(data)
    print("\n".join(lines))
    update_report(lines)
    print(f"wrote {path} and the scale section of {REPORT}")


if __name__ == "__main__":
    main()
