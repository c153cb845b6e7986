"""The fault soak: a few hundred jobs through the production stack while its parts are killed, then a count of what
was lost, run twice or duplicated.

Two API processes and two workers on a fresh PostgreSQL database and a private Redis (no persistence, so a restart
loses every queued message, as a crash would). The jobs are submitted in two halves, each with an Idempotency-Key
that a retry repeats, so a submission that meets a restarting API is retried without making a second job. While the
queue drains, faults are spread evenly over the jobs' completions: workers SIGKILLed (a replacement started each
time), Redis killed and started empty, the API processes stopped and started again (the second half is submitted
after that restart).

What a sound service shows at the end, and what the report counts:
- every job succeeded: none lost, none failed;
- exactly one job row per submission (no duplicate from a retried POST);
- no metric row stored twice for a (job, name, step), even for a job whose attempt was killed and re-run;
- the attempts a killed worker forced (``attempt > 1``): a re-run of an attempt that died, never a second result;
- no 5xx from the API outside the moments it was down.

    python -m bench.soak                         # 300 jobs, 10 worker kills, 2 Redis restarts, 1 API restart
    python -m bench.soak --jobs 60 --kills 3     # a short one
"""

from __future__ import annotations

import argparse
import os
import signal
import time
import uuid

import httpx
from sqlalchemy import create_engine, text

from bench.common import BenchStack, machine, print_table, write_results
from tests.servers import PrivateRedis

# a second or so on one core: long enough for a kill to catch a job running, short enough for hundreds of them
JOB = {
    "kind": "embedding_dim",
    "params": {
        "vocab_sizes": [100],
        "entropy_dims": [16],
        "sweep": {"vocab_size": 128, "target_rank": 4, "dims": [8, 16], "steps": 150},
    },
}
QUICK = {"kind": "init_averaging", "params": {"widths": [16, 16]}}

FAST_RECOVERY = {
    "GRADLAB_HEARTBEAT_INTERVAL_S": "0.5",
    "GRADLAB_HEARTBEAT_TIMEOUT_S": "4",
    "GRADLAB_SWEEP_INTERVAL_S": "1",
    "GRADLAB_REQUEUE_QUEUED_AFTER_S": "10",
}


class Soak:
    """The stack, its replaceable parts and the client's view of them."""

    def __init__(self, bench: BenchStack, redis: PrivateRedis, api_processes: int):
        self.bench, self.redis, self.api_processes = bench, redis, api_processes
        self.url, self.api = bench.start_api(api_processes)
        self.workers = [bench.start_worker() for _ in range(2)]
        self.engine = create_engine(bench.database_url)
        self.server_errors = 0
        self.down = False

    def submit(self, client: httpx.Client, n: int, seed0: int) -> list[str]:
        ids = []
        for i in range(n):
            spec = {**(QUICK if i % 4 == 3 else JOB), "seed": seed0 + i}
            key = uuid.uuid4().hex
            while True:
                try:
                    r = client.post(f"{self.url}/v1/jobs", json=spec, headers={"Idempotency-Key": key})
                except httpx.TransportError:
                    time.sleep(0.2)
                    continue
                if r.status_code >= 500:
                    self.server_errors += 0 if self.down else 1
                    time.sleep(0.2)
                    continue
                r.raise_for_status()
                ids.append(r.json()["id"])
                break
        return ids

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as c:
            return dict(c.execute(text("SELECT status, count(*) FROM jobs GROUP BY status")).all())

    def kill_worker(self) -> None:
        """SIGKILL the older worker (both are busy while the queue drains) and start its replacement."""
        victim = self.workers.pop(0)
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        self.workers.append(self.bench.start_worker())

    def restart_redis(self) -> None:
        self.redis.stop()
        time.sleep(1)
        self.redis.start()

    def restart_api(self) -> None:
        self.down = True
        os.killpg(self.api.pid, signal.SIGTERM)
        self.api.wait(timeout=30)
        self.url, self.api = self.bench.start_api(self.api_processes)
        self.down = False

    def facts(self, ids: list[str]) -> dict:
        with self.engine.connect() as c:
            rows = c.execute(text("SELECT id, status, attempt FROM jobs")).all()
            duplicates = c.execute(
                text(
                    "SELECT count(*) FROM (SELECT job_id, name, step FROM metrics GROUP BY job_id, name, step "
                    "HAVING count(*) > 1) d"
                )
            ).scalar()
        by_id = {str(r.id): r for r in rows}
        return {
            "submitted": len(ids),
            "job_rows": len(rows),
            "succeeded": sum(1 for i in ids if by_id.get(i) and by_id[i].status == "succeeded"),
            "lost_or_failed": sum(1 for i in ids if not by_id.get(i) or by_id[i].status != "succeeded"),
            "rerun_after_a_kill": sum(1 for r in rows if r.attempt > 1),
            "duplicate_metric_rows": duplicates,
            "unexpected_5xx": self.server_errors,
        }


def schedule(kills: int, redis_restarts: int) -> list[str]:
    """The faults in order, the API restart in the middle and Redis restarts spread among the kills."""
    faults = ["kill"] * kills
    for j in range(redis_restarts):
        faults.insert((j + 1) * len(faults) // (redis_restarts + 1), "redis")
    faults.insert(len(faults) // 2, "api")
    return faults


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--redis-restarts", type=int, default=2)
    parser.add_argument("--api-processes", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()

    redis = PrivateRedis()
    redis.start()
    env = {**FAST_RECOVERY, "GRADLAB_BROKER_URL": redis.url}
    started = time.monotonic()
    try:
        with BenchStack("soak", auth="disabled", env_overrides=env) as bench, httpx.Client(timeout=30) as client:
            soak = Soak(bench, redis, args.api_processes)
            first = args.jobs // 2
            ids = soak.submit(client, first, 0)
            faults = schedule(args.kills, args.redis_restarts)
            # fault k when k+1 (n+1)-ths of the jobs have finished: the API restart, in the middle, at the first half
            thresholds = [(k + 1) * args.jobs // (len(faults) + 1) for k in range(len(faults))]
            done_log: list[tuple[str, int]] = []
            deadline = time.monotonic() + args.timeout
            while time.monotonic() < deadline:
                counts = soak.counts()
                finished = counts.get("succeeded", 0) + counts.get("failed", 0)
                if faults and finished >= thresholds[len(done_log)]:
                    fault = faults.pop(0)
                    {"kill": soak.kill_worker, "redis": soak.restart_redis, "api": soak.restart_api}[fault]()
                    done_log.append((fault, finished))
                    print(f"{time.monotonic() - started:7.1f}s  {fault:5s} after {finished} jobs finished", flush=True)
                    if fault == "api":
                        ids += soak.submit(client, args.jobs - first, first)
                if len(ids) == args.jobs and finished >= args.jobs:
                    break
                time.sleep(0.5)
            if len(ids) < args.jobs:
                ids += soak.submit(client, args.jobs - len(ids), len(ids))
            while time.monotonic() < deadline and sum(soak.counts().get(s, 0) for s in ("succeeded", "failed")) < len(
                ids
            ):
                time.sleep(0.5)
            facts = soak.facts(ids)
            facts["faults"] = [f for f, _ in done_log]
            facts["wall_s"] = round(time.monotonic() - started, 1)
            soak.engine.dispose()
    finally:
        redis.stop()
    print_table(
        [facts],
        [
            (k, k, "")
            for k in (
                "submitted",
                "job_rows",
                "succeeded",
                "lost_or_failed",
                "rerun_after_a_kill",
                "duplicate_metric_rows",
                "unexpected_5xx",
                "wall_s",
            )
        ],
    )
    write_results("soak", {"machine": machine(), "args": vars(args), "facts": facts})


if __name__ == "__main__":
    main()
