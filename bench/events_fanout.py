"""Event-stream fan-out: GET /v1/jobs/{id} latency on one API process with 0 and with N held /events streams spread
over ``--jobs`` running jobs, and the database work and memory each watcher adds.

The jobs are running and writing: this script claims them and, as a worker's heartbeat would, writes ``--rows``
metric rows to each every second through the store, so every held stream receives frames throughout. The streams
are held by a child process (``--hold``: asyncio, raw sockets) so that reading them does not take this process's CPU
from the GET client, which sends sequential requests over one keep-alive connection, in rounds that alternate between no
streams and N streams (the shared machine's drifting load then falls on both alike). Database work is read from
PostgreSQL's own statistics over a quiet window (no GETs) with and without the streams: transactions
(xact_commit + xact_rollback) and table reads (seq_scan + idx_scan of jobs and metrics); per watcher is the
difference divided by N. The API process's CPU over the same windows is reported too.

    python -m bench.events_fanout [--streams 1000] [--jobs 100] [--gets 200] [--rounds 3] [--window 20]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Self
from urllib.parse import urlsplit

import httpx
import psycopg

from bench.common import BenchStack, CpuMeter, percentiles, print_table, write_results
from tests.stack import PG_ADMIN_URL

JOB = {"kind": "init_averaging", "params": {"widths": [8, 8]}}
# After opening or closing streams: PostgreSQL publishes an idle backend's statistics up to 10 s late, so the
# streams' one-off reads (authorisation, catching up) must land before a phase's window starts.
SETTLE_S = 11.0
HELD_S = 3.0  # streams opened at once catch up on the job's rows first: measure them held, not opening


# --- the stream holder (a child process) --------------------------------------------------------------------------
async def _hold(urls: list[str], n: int) -> None:
    """``n`` streams, the i-th on ``urls[i % len(urls)]``."""
    frames = 0
    opened = 0
    gate = asyncio.Semaphore(64)

    async def one(i: int) -> None:
        nonlocal frames, opened
        parts = urlsplit(urls[i % len(urls)])
        host, port, path = parts.hostname, parts.port, parts.path
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

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
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
        xacts = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s", (database,)
        ).fetchone()[0]
        reads = conn.execute(
            "SELECT sum(coalesce(seq_scan, 0) + coalesce(idx_scan, 0)) FROM pg_stat_user_tables "
            "WHERE relname IN ('jobs', 'metrics')"
        ).fetchone()[0]
    return time.monotonic(), int(xacts), int(reads)


def db_rates(database: str, window_s: float) -> dict:
    t0, x0, r0 = db_counters(database)
    time.sleep(window_s)
    t1, x1, r1 = db_counters(database)
    return {"xacts_per_s": (x1 - x0 - 1) / (t1 - t0), "table_reads_per_s": (r1 - r0 - 2) / (t1 - t0)}


def get_times(url: str, job_id: str, n: int) -> list[float]:
    times = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(10):
            client.get(f"/v1/jobs/{job_id}").raise_for_status()
        for _ in range(n):
            t = time.perf_counter()
            client.get(f"/v1/jobs/{job_id}").raise_for_status()
            times.append(time.perf_counter() - t)
    return times


class Holder:
    """The child process holding ``n`` streams over ``urls``, open while in the ``with``; ``delivered`` its frame
    count."""

    def __init__(self, urls: list[str], n: int):
        self.urls, self.n, self.delivered = urls, n, ""

    def __enter__(self) -> Self:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.events_fanout", "--streams", str(self.n), "--hold", ",".join(self.urls)],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        line = self.proc.stdout.readline()
        if not line.startswith("held"):
            self.proc.kill()
            raise RuntimeError(f"the stream holder stopped: {line!r}")
        return self

    def __exit__(self, *exc) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.delivered = self.proc.communicate(timeout=60)[0].strip()


class Writer(threading.Thread):
    """The jobs' heartbeats: each job gets ``rows`` metric rows and a new progress every second."""

    def __init__(self, sessions, job_ids: list[uuid.UUID], rows: int):
        super().__init__(daemon=True)
        self.sessions, self.job_ids, self.rows = sessions, job_ids, rows
        self.stop = threading.Event()
        self.written = 0

    def run(self) -> None:
        from core.jobs import repository as job_store

        step = 0
        while not self.stop.wait(1.0):
            batch = [(step + k, "loss", 1.0 / (1 + step + k)) for k in range(self.rows)]
            step += self.rows
            with self.sessions() as session:
                for job_id in self.job_ids:
                    job_store.beat(session, job_id, 1, progress=min(0.99, step / 1e6), message=None, metric_rows=batch)
            self.written += self.rows * len(self.job_ids)


def rss_mib(pid: int) -> float:
    """A process's resident memory (VmRSS), MiB."""
    with open(f"/proc/{pid}/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kib / 1024


def db_phase(label: str, streams: int, database: str, window_s: float, roots: dict) -> dict:
    cpu = CpuMeter(roots).start()
    rates = db_rates(database, window_s)
    used = cpu.stop()
    return {
        "phase": label,
        "streams": streams,
        **rates,
        "api_cores": used["cpu_cores"].get("api", 0.0),
        "api_rss_mib": rss_mib(roots["api"]),
        "cpu": used,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--gets", type=int, default=200, help="sequential GETs per round and condition")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of GETs without and with streams")
    ap.add_argument("--window", type=float, default=20.0, help="seconds of each phase's database-rate window")
    ap.add_argument("--jobs", type=int, default=100, help="running jobs the streams spread over")
    ap.add_argument("--rows", type=int, default=10, help="metric rows each job writes per second")
    ap.add_argument("--hold", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.hold:
        asyncio.run(_hold(args.hold.split(","), args.streams))
        return
    from core.jobs import repository as job_store

    env = {"GRADLAB_MAX_STREAMS_PER_KEY": str(args.streams + 10)}
    with BenchStack("events_fanout", auth="disabled", env_overrides=env) as bs:
        url, api = bs.start_api(workers=1)
        database = bs.database_url.rsplit("/", 1)[1]
        sessions = bs.sessions()
        job_ids = [httpx.post(f"{url}/v1/jobs", json={**JOB, "seed": i}).json()["id"] for i in range(args.jobs)]
        with sessions() as session:
            for job_id in job_ids:
                job_store.claim(session, uuid.UUID(job_id), "bench-writer")
        writer = Writer(sessions, [uuid.UUID(j) for j in job_ids], args.rows)
        writer.start()
        roots = {"api": api.pid}
        events = [f"{url}/v1/jobs/{job_id}/events" for job_id in job_ids]
        job_id = job_ids[0]
        # database work and API CPU over quiet windows (no GETs)
        rows = [db_phase("no streams", 0, database, args.window, roots)]
        with Holder(events, args.streams) as holder:
            time.sleep(SETTLE_S)
            rows.append(db_phase(f"{args.streams} streams", args.streams, database, args.window, roots))
        # GET latency in alternating rounds, so that the shared machine's drifting load falls on both alike
        times: dict[int, list[float]] = {0: [], args.streams: []}
        round_p50: dict[int, list[float]] = {0: [], args.streams: []}
        for _ in range(args.rounds):
            for streams in (0, args.streams):
                if streams:
                    with Holder(events, streams):
                        time.sleep(HELD_S)
                        got = get_times(url, job_id, args.gets)
                else:
                    got = get_times(url, job_id, args.gets)
                times[streams] += got
                round_p50[streams].append(percentiles(got)["p50_ms"])
        writer.stop.set()
        writer.join()
    for row in rows:
        lat = percentiles(times[row["streams"]])
        row.update({f"get_{k}": v for k, v in lat.items()}, get_round_p50_ms=round_p50[row["streams"]])
    base, held = rows
    summary = {
        "p50_ratio": held["get_p50_ms"] / base["get_p50_ms"],
        "p99_ratio": held["get_p99_ms"] / base["get_p99_ms"],
        "xacts_per_s_per_watcher": (held["xacts_per_s"] - base["xacts_per_s"]) / args.streams,
        "table_reads_per_s_per_watcher": (held["table_reads_per_s"] - base["table_reads_per_s"]) / args.streams,
        "api_cores_per_1000_watchers": (held["api_cores"] - base["api_cores"]) * 1000 / args.streams,
        "api_rss_mib_per_1000_watchers": (held["api_rss_mib"] - base["api_rss_mib"]) * 1000 / args.streams,
        "frames_delivered_in_db_window_phase": holder.delivered,
        "metric_rows_written": writer.written,
    }
    print_table(
        rows,
        [
            ("phase", "phase", "s"),
            ("get_p50_ms", "GET p50 ms", ".2f"),
            ("get_p99_ms", "GET p99 ms", ".2f"),
            ("xacts_per_s", "DB xacts/s", ".2f"),
            ("table_reads_per_s", "DB table reads/s", ".2f"),
            ("api_cores", "API cores", ".3f"),
            ("api_rss_mib", "API RSS MiB", ".1f"),
        ],
    )
    print({k: (round(v, 5) if isinstance(v, float) else v) for k, v in summary.items()})
    path = write_results("events_fanout", {"config": vars(args), "rows": rows, "summary": summary})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
