"""Plumbing shared by the service benchmarks: throw-away PostgreSQL databases and a Redis key prefix, gradlab API
and worker processes on them, a closed-loop HTTP load generator, percentiles, tables, profiles and JSON results.

Everything a benchmark starts is stopped and removed by ``BenchStack.close`` (databases dropped, Redis keys deleted,
processes killed), so a run leaves nothing behind on the shared PostgreSQL and Redis servers.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

from tests.stack import (
    BIN,
    REDIS_URL,
    ROOT,
    Stack,
    create_database,
    delete_redis_prefix,
    drop_database,
    free_port,
    wait_http,
)

RESULTS = ROOT / "bench" / "results"
PROFILES = RESULTS / "profiles"

# The lightest job there is: one 2x2 layer, one draw of 16 samples, one mean (and one small PNG plot).
LIGHT_JOB = {
    "kind": "init_averaging",
    "params": {"widths": [2, 2], "trials": 1, "batch": 16, "means": ["arithmetic"]},
    "device": "cpu",
}


# --- machine and results -------------------------------------------------------------------------------------------
def machine() -> dict:
    """What the figures were measured on; the load average says how busy the shared box was."""
    import torch

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or platform.machine(),
    )
    mem_kib = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kib / 2**20, 1),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_1_5_15": list(os.getloadavg()),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_results(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2, default=str))
    return path


def percentiles(values: list[float]) -> dict:
    """p50/p90/p99/max/mean in milliseconds of a list of seconds (empty -> None everywhere)."""
    if not values:
        return {"n": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None, "mean_ms": None}
    arr = np.asarray(values) * 1e3
    return {
        "n": len(values),
        "p50_ms": float(np.percentile(arr, 50)),
        "p90_ms": float(np.percentile(arr, 90)),
        "p99_ms": float(np.percentile(arr, 99)),
        "max_ms": float(arr.max()),
        "mean_ms": float(arr.mean()),
    }


def print_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """``columns``: (key, header, format spec); None prints as '-'."""

    def cell(row, key, spec):
        value = row.get(key)
        return "-" if value is None else format(value, spec)

    cells = [[cell(r, k, s) for k, _, s in columns] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (_, h, _) in enumerate(columns)]
    print("  ".join(h.rjust(w) if i else h.ljust(w) for i, ((_, h, _), w) in enumerate(zip(columns, widths))))
    for c in cells:
        print("  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(c, widths))))


class CpuMeter:
    """Where the machine's CPU went over a phase, in cores, per group of processes read from /proc: named process
    trees (an API supervisor and its workers), postgres, redis, this script and its other children (the load
    generator) and everything else; plus the busy fraction of the whole machine. On a shared box this shows whether
    other work, or the load
    generator itself, competed with the service."""

    def __init__(self, roots: dict[str, int] | None = None):
        self.roots = roots or {}
        self.result: dict = {}

    def start(self) -> CpuMeter:
        self._t0, self._sys0, self._procs0 = time.monotonic(), self._sys(), self._procs()
        self._children0 = self._exited_children()
        return self

    @staticmethod
    def _exited_children() -> float:
        """CPU seconds of this script's children that exited and were waited for (a wrk run that has ended)."""
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    def stop(self) -> dict:
        wall = time.monotonic() - self._t0
        (busy1, total1), procs = self._sys(), self._procs()
        busy0, total0 = self._sys0
        parents = {pid: ppid for pid, (ppid, _, _) in procs.items()}
        cores: Counter = Counter()
        for pid, (_, comm, cpu) in procs.items():
            before = self._procs0.get(pid)
            cores[self._group(pid, comm, parents)] += (cpu - before[2] if before else cpu) / wall
        cores["this script (load generator)"] += (self._exited_children() - self._children0) / wall
        self.result = {
            "machine_busy": (busy1 - busy0) / max(total1 - total0, 1),
            "cpu_cores": {k: round(v, 3) for k, v in sorted(cores.items(), key=lambda kv: -kv[1])},
        }
        return self.result

    def __enter__(self) -> CpuMeter:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _group(self, pid: int, comm: str, parents: dict[int, int]) -> str:
        if pid == os.getpid():
            return "this script (load generator)"
        by_root = {root: name for name, root in self.roots.items()}
        node = pid
        while node in parents and node > 1:
            if node in by_root:
                return by_root[node]
            if node == os.getpid():  # a child of this script that is not a named root: wrk
                return "this script (load generator)"
            node = parents[node]
        if comm.startswith("postgres"):
            return "postgres"
        if comm.startswith("redis"):
            return "redis"
        return "other processes"

    @staticmethod
    def _sys() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields) - idle, sum(fields)

    @staticmethod
    def _procs() -> dict[int, tuple[int, str, float]]:
        """pid -> (parent pid, command name, CPU seconds so far) of every process."""
        tick = os.sysconf("SC_CLK_TCK")
        out = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                raw = (entry / "stat").read_text()
            except OSError:
                continue
            comm = raw[raw.index("(") + 1 : raw.rindex(")")]
            fields = raw[raw.rindex(")") + 2 :].split()
            out[int(entry.name)] = (int(fields[1]), comm, (int(fields[11]) + int(fields[12])) / tick)
        return out


# --- processes and databases ---------------------------------------------------------------------------------------
@dataclass
class BenchStack:
    """A fresh gradlab database (migrated) and Redis prefix with production settings, and what runs on them.

    Production settings: PostgreSQL, Redis with a key prefix, API keys required (``auth="key"``; a key is created
    for each of ``tenants`` tenants, ``bench`` then ``bench-1``, ...) or ``auth="disabled"`` (loopback only, every
    caller is the local admin). Admission limits are raised so that a benchmark submitting hundreds of jobs from
    one tenant measures the service, not its 429s, unless ``production_limits`` (with keys only: spread the load
    over enough tenants).
    """

    name: str
    auth: str = "key"
    env_overrides: dict = field(default_factory=dict)
    headers: dict = field(default_factory=dict)  # the first tenant's
    tenants: int = 1
    production_limits: bool = False
    auth_values: list[str] = field(default_factory=list)  # one Authorization value per tenant

    def __post_init__(self):
        self.tmp = Path(tempfile.mkdtemp(prefix=f"gradlab-bench-{self.name}-"))
        self.databases: list[str] = []
        self.prefix = f"gradlab-bench-{uuid.uuid4().hex[:10]}:"
        self.extra_procs: list[subprocess.Popen] = []
        self.engines: list = []
        self.stack: Stack | None = None

    def __enter__(self) -> BenchStack:
        try:
            self.database_url = self.new_database()
            from core.db.migrate import upgrade

            upgrade(self.database_url)
            self.env = {
                "GRADLAB_DATABASE_URL": self.database_url,
                "GRADLAB_BROKER_URL": REDIS_URL,
                "GRADLAB_BROKER_KEY_PREFIX": self.prefix,
                "GRADLAB_DATA_DIR": str(self.tmp / "data"),
                "GRADLAB_AUTH": "disabled" if self.auth == "disabled" else "required",
                **(
                    {}
                    if self.production_limits and self.auth == "key"
                    else {
                        "GRADLAB_MAX_ACTIVE_JOBS_PER_TENANT": str(10**9),
                        "GRADLAB_SUBMISSIONS_PER_MINUTE_PER_TENANT": str(10**9),
                    }
                ),
                "GRADLAB_TORCH_THREADS": "1",
                **self.env_overrides,
            }
            (self.tmp / "logs").mkdir()
            self.stack = Stack(env=self.env, log_dir=self.tmp / "logs")
            if self.auth == "key":
                self.auth_values = [
                    f"Bearer {self._create_key('bench' if i == 0 else f'bench-{i}')}" for i in range(self.tenants)
                ]
                self.headers = {"Authorization": self.auth_values[0]}
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and exc_type is not KeyboardInterrupt:
            self.print_log_tails()
        self.close()

    def new_database(self) -> str:
        """An empty database dropped at close; returns its SQLAlchemy (psycopg) URL."""
        name, url = create_database()
        self.databases.append(name)
        return url

    def settings(self):
        """The settings the benchmark's own processes run with (its environment, as ``Settings``)."""
        from core.settings import Settings

        return Settings(**{k.removeprefix("GRADLAB_").lower(): v for k, v in self.env.items()})

    def sessions(self):
        """A session factory on the benchmark database, as the service makes it; its engine is disposed at close."""
        from core.db.engine import make_engine, make_sessionmaker

        engine = make_engine(self.database_url)
        self.engines.append(engine)
        return make_sessionmaker(engine)

    def _create_key(self, tenant: str) -> str:
        from core.db.engine import make_engine, make_sessionmaker
        from core.keys.repository import create_key

        engine = make_engine(self.database_url)
        try:
            with make_sessionmaker(engine)() as s:
                _, plain = create_key(s, tenant, "benchmark")
        finally:
            engine.dispose()
        return plain

    def start_api(self, workers: int = 1) -> tuple[str, subprocess.Popen]:
        """``gradlab api --workers N`` on a free port; (base URL, the uvicorn supervisor process)."""
        port = free_port()
        proc = self.spawn(
            [str(BIN / "gradlab"), "api", "--port", str(port), "--workers", str(workers)], f"api-{port}", env=self.env
        )
        url = f"http://127.0.0.1:{port}"
        wait_ready(proc, url + "/healthz", lambda: self.log_tail(f"api-{port}"))
        return url, proc

    def start_worker(self) -> subprocess.Popen:
        return self.stack.start_worker("cpu,gpu,auto")

    def spawn(
        self, args: list[str], name: str, env: dict | None = None, cwd: Path | None = None, bin_dir: Path = BIN
    ) -> subprocess.Popen:
        """A process outside the gradlab stack (MLflow, a bare Celery worker); killed with its group at close.
        ``bin_dir``, first on its PATH, is the virtual environment it comes from: the project's or MLflow's own."""
        full_env = {**os.environ, **(env or {})}
        full_env["PATH"] = f"{bin_dir}{os.pathsep}{full_env.get('PATH', '')}"
        with open(self.tmp / "logs" / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(
                args, env=full_env, stdout=log, stderr=subprocess.STDOUT, cwd=cwd or ROOT, start_new_session=True
            )
        self.extra_procs.append(proc)
        return proc

    def log_text(self, name: str) -> str:
        path = self.tmp / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def log_tail(self, name: str, chars: int = 3000) -> str:
        return self.log_text(name)[-chars:]

    def print_log_tails(self) -> None:
        for path in sorted((self.tmp / "logs").glob("*.log")):
            print(f"--- {path.name} (last lines)", file=sys.stderr)
            print(path.read_text(errors="replace")[-2000:], file=sys.stderr)

    def close(self) -> None:
        for engine in self.engines:
            engine.dispose()
        if self.stack is not None:
            self.stack.stop()
        for proc in self.extra_procs:
            stop_group(proc)
        for name in self.databases:
            drop_database(name)
        delete_redis_prefix(self.prefix)
        shutil.rmtree(self.tmp, ignore_errors=True)


def wait_ready(proc: subprocess.Popen, url: str, log_tail: Callable[[], str], timeout: float = 180) -> None:
    """Until ``url`` answers below 500; fails at once, with the log, if the process exits first."""
    wait_http(url, timeout, proc, log_tail)


def stop_group(proc: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM the process group a benchmark started, SIGKILL it if it lingers."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# --- profiling -----------------------------------------------------------------------------------------------------
class PySpy:
    """``py-spy record`` of a process (and its children) while the block runs; raw collapsed stacks to ``out``.

    mode "wall": every thread that is not idle, which includes threads blocked in a database call (where a
    request's time goes); mode "gil": only the thread holding the GIL (where the Python CPU goes). Absent py-spy
    (``pip install py-spy``), the block runs unprofiled and ``summary`` stays empty.
    """

    def __init__(self, pid: int, out: Path, subprocesses: bool = False, mode: str = "wall", rate: int = 250):
        self.pid, self.out, self.subprocesses, self.mode, self.rate = pid, out, subprocesses, mode, rate
        self.proc: subprocess.Popen | None = None
        self.summary: dict = {}

    def __enter__(self):
        exe = shutil.which("py-spy", path=str(BIN)) or shutil.which("py-spy")
        if exe is None:
            print("py-spy not installed: running without a profile", file=sys.stderr)
            return self
        self.out.parent.mkdir(parents=True, exist_ok=True)
        args = [
            exe,
            "record",
            "-p",
            str(self.pid),
            "-f",
            "raw",
            "-o",
            str(self.out),
            "-r",
            str(self.rate),
            "--nonblocking",
        ]
        if self.subprocesses:
            args.append("--subprocesses")
        if self.mode == "gil":
            args.append("--gil")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # attach before the measured work starts
        return self

    def __exit__(self, *exc):
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.out.exists():
            self.summary = {"mode": self.mode, "file": str(self.out.relative_to(ROOT)), **summarize_profile(self.out)}


def summarize_profile(path: Path, top: int = 30) -> dict:
    """Share of samples per function (file and name, all its lines together): the ``top`` by inclusive time (on
    the stack) and by self time (innermost frame)."""
    inclusive: Counter = Counter()
    own: Counter = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";") if not f.startswith("process ")]
        for frame in set(frames):
            inclusive[frame] += n
        if frames:
            own[frames[-1]] += n
    if not total:
        return {}

    def row(f):
        return {"function": f, "inclusive": inclusive[f] / total, "self": own[f] / total}

    return {
        "samples": total,
        "by_inclusive": [row(f) for f, _ in inclusive.most_common(top)],
        "by_self": [row(f) for f, _ in own.most_common(top)],
    }


# --- closed-loop HTTP load -----------------------------------------------------------------------------------------
@dataclass
class LoadResult:
    name: str
    clients: int
    duration_s: float
    latencies: list[float]
    statuses: Counter
    errors: Counter
    measured: dict = field(default_factory=dict)  # what the meters saw (CPU split)

    def summary(self) -> dict:
        ok = sum(n for s, n in self.statuses.items() if 200 <= s < 300)
        return {
            "case": self.name,
            "clients": self.clients,
            "duration_s": self.duration_s,
            "requests": len(self.latencies),
            "ok": ok,
            "throughput_rps": ok / self.duration_s,
            **percentiles(self.latencies),
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "errors": dict(self.errors),
            **self.measured,
        }


Request = Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]]


async def closed_loop(
    base_url: str,
    request: Request,
    *,
    name: str,
    clients: int,
    duration_s: float,
    warmup_s: float,
    headers: dict | None = None,
    on_response: Callable[[httpx.Response], None] | None = None,
    meters: tuple = (),
) -> LoadResult:
    """``clients`` coroutines each send a request, wait for its answer, and send the next, for warmup + duration.

    Only requests that start after the warm-up and finish before the end count; throughput is what completed in
    the measured window over its length. Each client has its own keep-alive connection. ``meters`` (objects with
    ``start()`` and ``stop() -> dict``, e.g. CpuMeter) run over the measured window.
    """
    latencies: list[float] = []
    statuses: Counter = Counter()
    errors: Counter = Counter()
    measured: dict = {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, headers=headers or {}, limits=limits, timeout=30) as client:
        start = time.perf_counter()
        window_start, window_end = start + warmup_s, start + warmup_s + duration_s

        async def one_client(c: int) -> None:
            i = c
            while True:
                t0 = time.perf_counter()
                if t0 >= window_end:
                    return
                try:
                    resp = await request(client, i)
                except httpx.HTTPError as exc:
                    if t0 >= window_start and time.perf_counter() <= window_end:
                        errors[type(exc).__name__] += 1
                    i += clients
                    continue
                t1 = time.perf_counter()
                if on_response is not None:
                    on_response(resp)
                if t0 >= window_start and t1 <= window_end:
                    latencies.append(t1 - t0)
                    statuses[resp.status_code] += 1
                i += clients

        async def measure() -> None:
            await asyncio.sleep(max(window_start - time.perf_counter(), 0))
            for m in meters:
                m.start()
            await asyncio.sleep(max(window_end - time.perf_counter(), 0))
            for m in meters:
                measured.update(m.stop())

        await asyncio.gather(measure(), *(one_client(c) for c in range(clients)))
    return LoadResult(name, clients, duration_s, latencies, statuses, errors, measured)


def run_async(coro):
    """Run with uvloop when it is installed (a cheaper load generator), else asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def light_job(seed: int) -> dict:
    return {**LIGHT_JOB, "seed": seed}


def job_times(sessions, job_ids: list) -> dict:
    """status, created_at, started_at, finished_at of jobs, read straight from the database."""
    from sqlalchemy import select

    from core.db.tables import Job

    with sessions() as s:
        rows = s.execute(
            select(Job.id, Job.status, Job.created_at, Job.started_at, Job.finished_at).where(Job.id.in_(job_ids))
        ).all()
    return {r.id: r for r in rows}
