"""Re-publishing is bounded: a job waiting for a worker keeps a handful of messages in the broker however long it
waits, and a broker that restarts empty gets every queued job's message back within a sweep. Against a private
Redis (restarted by the test) with the re-publish schedule compressed: base 1 s instead of 60 s."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import httpx
import pytest
import redis as redis_client
from sqlalchemy import create_engine, text

from tests.servers import PrivateRedis
from tests.stack import Stack

JOBS = 10
BASE_S = 1.0  # GRADLAB_REQUEUE_QUEUED_AFTER_S: first blind re-publish, then doubling intervals
CUDA_JOB = {"kind": "init_averaging", "params": {"widths": [8, 8]}, "device": "cuda"}


@pytest.fixture
def broker():
    server = PrivateRedis()
    server.start()
    yield server
    server.stop()


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(what)


def test_waiting_jobs_keep_a_handful_of_messages_and_an_empty_broker_restart_is_repaired(service_env, broker, tmp_path):
    env = {
        **service_env,
        "GRADLAB_BROKER_URL": broker.url,
        "GRADLAB_REQUEUE_QUEUED_AFTER_S": str(BASE_S),
        "GRADLAB_SWEEP_INTERVAL_S": "0.1",
    }
    stack = Stack(env=env, log_dir=tmp_path)
    engine = create_engine(env["GRADLAB_DATABASE_URL"])
    gpu_queue = env["GRADLAB_BROKER_KEY_PREFIX"] + "gpu"

    def messages() -> int:
        return redis_client.Redis.from_url(broker.url).llen(gpu_queue)

    def published(ids) -> list[tuple[datetime, datetime]]:
        with engine.connect() as conn:
            return conn.execute(
                text("SELECT created_at, published_at FROM jobs WHERE id = ANY(:ids)"), {"ids": ids}
            ).all()

    try:
        url = stack.start_api()
        stack.start_worker(queues="cpu")  # its sweeper runs; nothing consumes the gpu queue
        with httpx.Client(base_url=url, timeout=30) as api:
            ids = [api.post("/v1/jobs", json=CUDA_JOB).json()["id"] for _ in range(JOBS)]
        # Blind re-publishes at 1, 3 and 7 s of waiting (then 15): wait for the third one of every job.
        third, fourth = BASE_S * (1 + 2 + 4), BASE_S * (1 + 2 + 4 + 8)
        wait_until(
            lambda: all((p - c).total_seconds() >= third for c, p in published(ids)),
            60,
            "three re-publishes of every job",
        )
        wait_until(lambda: messages() >= 4 * JOBS, 10, "the third re-publishes to reach the broker")
        # Re-publishing at every sweep past BASE_S (the old rule) would have left about 7 per job by now.
        assert messages() <= 5 * JOBS

        broker.stop()
        broker.start()  # empty: no persistence
        restarted_at = datetime.now(UTC)
        wait_until(
            lambda: all(p > restarted_at for _, p in published(ids)) and messages() >= JOBS,
            30,
            "every queued job to be published again after the restart",
        )
        # by the restart detector, not by the blind schedule, whose next re-publish comes later
        assert all((p - c).total_seconds() < fourth for c, p in published(ids))
        with httpx.Client(base_url=url, timeout=30) as api:
            assert {api.get(f"/v1/jobs/{jid}").json()["status"] for jid in ids} == {"queued"}
    finally:
        engine.dispose()
        stack.stop()
