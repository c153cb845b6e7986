"""Event-stream fan-out: GET /v1/jobs/{id} latency on one API process with 0 and with N held /events streams on a
running job, and the database work each watcher adds.

The job is running and writing: this script claims it and, as a worker's heartbeat would, writes ``--rows`` metric
rows every second through the store, so every held stream receives frames throughout. The streams are held by a
child process (``--hold``: asyncio, raw sockets) so that reading them does not take this process's CPU from the
GET client, which sends ``--gets`` sequential requests per phase over one keep-alive connection. Database work is
read from PostgreSQL's own statistics over a quiet window (no GETs) per phase: transactions (xact_commit +
xact_rollback of the database) and table reads (seq_scan + idx_scan of jobs and metrics); per watcher is the
difference between N streams and none (the mean of the phases before and after), divided by N. Phases: 0
streams, N streams, 0 again.

    python -m bench.events_fanout [--streams 1000] [--gets 400] [--window 20]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from urllib.parse import urlsplit

import httpx
import psycopg

from bench.common import BenchStack, CpuMeter, percentiles, print_table, write_results
from tests.stack import PG_ADMIN_URL

JOB = {"kind": "init_averaging", "params": {"widths": [8, 8]}}
# After opening or closing streams: PostgreSQL publishes an idle backend's statistics up to 10 s late, so the
# streams' one-off reads (authorisation, catching up) must land before a phase's window starts.
SETTLE_S = 11.0


# --- the stream holder (a child process) --------------------------------------------------------------------------
async def _hold(url: str, n: int) -> None:
    parts = urlsplit(url)
    host, port, path = parts.hostname, parts.port, parts.path
    frames = 0
    opened = 0
    gate = asyncio.Semaphore(64)

    async def one() -> None:
        nonlocal frames, opened
        async with gate:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
            status = await reader.readline()
            if b" 200 " not in status:
                raise RuntimeError(f"stream refused: {status!r}")
            opened += 1
            if opened == n:
                print("held", n, flush=True)
        while chunk := await reader.read(65536):
            frames += chunk.count(b"event: metric")

    tasks = [asyncio.create_task(one()) for _ in range(n)]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    started = time.monotonic()
    await stop.wait()
    print(f"frames {frames} in {time.monotonic() - started:.1f} s", flush=True)
    for t in tasks:
        t.cancel()


# --- measuring ----------------------------------------------------------------------------------------------------
def db_counters(database: str) -> tuple[float, int, int]:
    """(time, transactions, table reads of jobs and metrics) from PostgreSQL's statistics."""
    with psycopg.connect(PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{database}", autocommit=True) as conn:
        xacts = conn.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
                             (database,)).fetchone()[0]
        reads = conn.execute("SELECT sum(coalesce(seq_scan, 0) + coalesce(idx_scan, 0)) FROM pg_stat_user_tables "
                             "WHERE relname IN ('jobs', 'metrics')").fetchone()[0]
    return time.monotonic(), int(xacts), int(reads)


def db_rates(database: str, window_s: float) -> dict:
    t0, x0, r0 = db_counters(database)
    time.sleep(window_s)
    t1, x1, r1 = db_counters(database)
    return {"xacts_per_s": (x1 - x0 - 1) / (t1 - t0), "table_reads_per_s": (r1 - r0 - 2) / (t1 - t0)}


def get_latencies(url: str, job_id: str, n: int) -> dict:
    times = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(10):
            client.get(f"/v1/jobs/{job_id}").raise_for_status()
        for _ in range(n):
            t = time.perf_counter()
            client.get(f"/v1/jobs/{job_id}").raise_for_status()
            times.append(time.perf_counter() - t)
    return percentiles(times)


class Writer(threading.Thread):
    """The job's heartbeat: ``rows`` metric rows and a new progress every second."""

    def __init__(self, sessions, job_id: uuid.UUID, rows: int):
        super().__init__(daemon=True)
        self.sessions, self.job_id, self.rows = sessions, job_id, rows
        self.stop = threading.Event()
        self.written = 0

    def run(self) -> None:
        from core.jobs import store

        step = 0
        while not self.stop.wait(1.0):
            batch = [(step + k, "loss", 1.0 / (1 + step + k)) for k in range(self.rows)]
            step += self.rows
            with self.sessions() as session:
                store.beat(session, self.job_id, 1, progress=min(0.99, step / 1e6), message=None,
                           metric_rows=batch)
            self.written += self.rows


def phase(label: str, streams: int, url: str, job_id: str, database: str, args, roots: dict) -> dict:
    cpu = CpuMeter(roots).start()
    rates = db_rates(database, args.window)
    lat = get_latencies(url, job_id, args.gets)
    return {"phase": label, "streams": streams, **rates, **{f"get_{k}": v for k, v in lat.items()},
            "cpu": cpu.stop()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--gets", type=int, default=400, help="sequential GETs per phase")
    ap.add_argument("--window", type=float, default=20.0, help="seconds of each phase's database-rate window")
    ap.add_argument("--rows", type=int, default=10, help="metric rows the job writes per second")
    ap.add_argument("--hold", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.hold:
        asyncio.run(_hold(args.hold, args.streams))
        return
    env = {"GRADLAB_MAX_STREAMS_PER_KEY": str(args.streams + 10)}
    with BenchStack("events_fanout", auth="disabled", env_overrides=env) as bs:
        from core.jobs import store

        url, api = bs.start_api(workers=1)
        database = bs.database_url.rsplit("/", 1)[1]
        sessions = bs.sessions()
        job_id = httpx.post(f"{url}/v1/jobs", json=JOB).json()["id"]
        with sessions() as session:
            store.claim(session, uuid.UUID(job_id), "bench-writer")
        writer = Writer(sessions, uuid.UUID(job_id), args.rows)
        writer.start()
        roots = {"api": api.pid}
        rows = [phase("no streams", 0, url, job_id, database, args, roots)]
        holder = subprocess.Popen([sys.executable, "-m", "bench.events_fanout", "--streams", str(args.streams),
                                   "--hold", f"{url}/v1/jobs/{job_id}/events"], stdout=subprocess.PIPE, text=True,
                                  env={**os.environ}, start_new_session=True)
        try:
            line = holder.stdout.readline()
            if not line.startswith("held"):
                raise RuntimeError(f"the stream holder stopped: {line!r}")
            roots["stream holder"] = holder.pid
            time.sleep(SETTLE_S)
            rows.append(phase(f"{args.streams} streams", args.streams, url, job_id, database, args, roots))
        finally:
            holder.send_signal(signal.SIGTERM)
            delivered = holder.communicate(timeout=60)[0].strip()
        time.sleep(SETTLE_S)
        rows.append(phase("no streams again", 0, url, job_id, database, args, roots))
        writer.stop.set()
        writer.join()
    held = rows[1]
    base = {k: (rows[0][k] + rows[2][k]) / 2 for k in ("get_p50_ms", "get_p99_ms", "xacts_per_s",
                                                        "table_reads_per_s")}  # before and after the streams
    summary = {
        "p50_ratio": held["get_p50_ms"] / base["get_p50_ms"],
        "p99_ratio": held["get_p99_ms"] / base["get_p99_ms"],
        "xacts_per_s_per_watcher": (held["xacts_per_s"] - base["xacts_per_s"]) / args.streams,
        "table_reads_per_s_per_watcher": (held["table_reads_per_s"] - base["table_reads_per_s"]) / args.streams,
        "frames_delivered": delivered,
        "metric_rows_written": writer.written,
    }
    print_table(rows, [("phase", "phase", "s"), ("get_p50_ms", "GET p50 ms", ".2f"),
                       ("get_p99_ms", "GET p99 ms", ".2f"), ("xacts_per_s", "DB xacts/s", ".2f"),
                       ("table_reads_per_s", "DB table reads/s", ".2f")])
    print({k: (round(v, 5) if isinstance(v, float) else v) for k, v in summary.items()})
    path = write_results("events_fanout", {"config": vars(args), "rows": rows, "summary": summary})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
