"""Lanes: with a long training job running, a quick job (its timeout_s within the quick budget) and a dataset
validation start within 2 s, on the production stack (docker-compose.yml's worker commands, run natively) and on the
embedded default (``gradlab up``); a second long job meanwhile keeps waiting, so the lane worker was kept for them.
Per tenant, a queue serves the tenant with the fewest jobs waiting first."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from datetime import datetime

import httpx
import pytest
import yaml

from tests.stack import BIN, ROOT, start_embedded, wait_job

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
LONG = {
    "kind": "embedding_dim",
    "device": "cpu",
    "params": {
        "vocab_sizes": [100],
        "entropy_dims": [16],
        "sweep": {"vocab_size": 512, "target_rank": 8, "dims": [32, 48, 64], "steps": 3000},
    },
}
QUICK = {"kind": "init_averaging", "params": {"widths": [16, 16]}, "timeout_s": 20}
START_WITHIN_S = 2.0


def _validation(client: httpx.Client) -> tuple[str, float]:
    """Upload a small CSV; (dataset id, monotonic time its upload completed)."""
    rows = b"a,b,label\n" + b"".join(b"%d,%d,%d\n" % (i, i * i, i % 2) for i in range(50))
    up = client.post("/v1/datasets/uploads", json={"filename": "t.csv", "size": len(rows), "label_column": "label"})
    assert up.status_code == 201, up.text
    client.patch(f"/v1/datasets/uploads/{up.json()['id']}", content=rows, headers={"Upload-Offset": "0"})
    assert client.post(f"/v1/datasets/uploads/{up.json()['id']}/complete").status_code == 202
    return up.json()["dataset_id"], time.monotonic()


def _started_within(client: httpx.Client, path: str, started, since: float, what: str) -> float:
    """Seconds until ``started(body)`` holds for GET ``path``; fails past ``START_WITHIN_S`` (plus polling slack)."""
    while True:
        body = client.get(path).json()
        if started(body):
            return time.monotonic() - since
        assert time.monotonic() - since < START_WITHIN_S + 1, f"{what} did not start: {body}"
        time.sleep(0.05)


def quick_work_starts_behind_training(client: httpx.Client) -> None:
    long_job = client.post("/v1/jobs", json=LONG).json()
    assert long_job["queue"] == "cpu"
    wait_job(client, long_job["id"], statuses=("running",), timeout=60)
    second_long = client.post("/v1/jobs", json=LONG).json()["id"]

    quick = client.post("/v1/jobs", json=QUICK).json()
    assert quick["queue"] == "quick"
    done = wait_job(client, quick["id"], timeout=60)
    waited = (datetime.fromisoformat(done["started_at"]) - datetime.fromisoformat(done["created_at"])).total_seconds()
    assert done["status"] == "succeeded" and waited < START_WITHIN_S, done

    dataset_id, since = _validation(client)
    waited = _started_within(
        client,
        f"/v1/datasets/{dataset_id}",
        lambda ds: ds["status"] != "validating" or ds.get("queue_position") is None,
        since,
        "the validation",
    )
    assert waited < START_WITHIN_S + 1
    assert wait_until_ready(client, dataset_id)["status"] == "ready"

    # the lane worker took none of the long jobs: the second waits for the first
    assert client.get(f"/v1/jobs/{long_job['id']}").json()["status"] == "running"
    assert client.get(f"/v1/jobs/{second_long}").json()["status"] == "queued"
    for job_id in (second_long, long_job["id"]):
        client.post(f"/v1/jobs/{job_id}/cancel")


def wait_until_ready(client: httpx.Client, dataset_id: str) -> dict:
    deadline = time.monotonic() + 60
    while (ds := client.get(f"/v1/datasets/{dataset_id}").json())["status"] == "validating":
        assert time.monotonic() < deadline, ds
        time.sleep(0.1)
    return ds


def _native(command: list[str]) -> list[str]:
    return [str(BIN / command[0]), *command[1:]]


@pytest.fixture(scope="module")
def compose_workers(stack, api):
    """The compose stack's general and lanes workers, run natively with their compose commands."""
    for service in ("worker-cpu", "worker-lanes"):
        stack.start_worker(args=_native(COMPOSE["services"][service]["command"]))


def test_compose_workers_keep_a_lane_for_quick_jobs_and_validations(compose_workers, api):
    quick_work_starts_behind_training(api)


def test_one_tenants_many_jobs_do_not_hold_back_anothers_one(compose_workers, stack, api, pg_database):
    """Tenant A fills the quick queue with 30 jobs, then B submits one: B's is among the first to start, not the
    31st (both compose workers consume the quick queue)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.orm import Session

    from core.jobs import repository as job_store

    engine = create_engine(pg_database[1])
    try:
        tenants = [f"fair-a-{uuid.uuid4().hex[:6]}", f"fair-b-{uuid.uuid4().hex[:6]}"]
        rows = []
        for i, tenant in enumerate([tenants[0]] * 30 + [tenants[1]]):
            row = job_store.queued_job_row(tenant, "init_averaging", {"widths": [16, 16]}, i, "cpu", 20, 60.0, _now())
            rows.append(row)
        with Session(engine) as session:
            job_store.insert_queued(session, rows)
            session.commit()
        publisher_app = _celery(stack)
        for row in rows:
            publisher_app.send_task("gradlab.run_job", args=[str(row["id"])], queue=row["queue"])
        b_job = str(rows[-1]["id"])
        wait_job(api, b_job, timeout=120)
        with engine.connect() as conn:
            order = [
                r[0]
                for r in conn.execute(
                    text("SELECT tenant FROM jobs WHERE tenant IN (:a, :b) ORDER BY started_at"),
                    {"a": tenants[0], "b": tenants[1]},
                )
            ]
        # FIFO would start B's job 31st; fair, it goes first once its message or any later one is taken
        assert order.index(tenants[1]) <= 2, order
    finally:
        engine.dispose()


def _quick_workers(client: httpx.Client) -> int:
    return next(q["workers"] for q in client.get("/v1/queues").json() if q["name"] == "quick")


def _now():
    from core.db.tables import utcnow

    return utcnow()


def _celery(stack):
    from core.settings import Settings
    from workers.app import make_celery

    env = stack.env
    return make_celery(
        Settings(
            database_url=env["GRADLAB_DATABASE_URL"],
            broker_url=env["GRADLAB_BROKER_URL"],
            broker_key_prefix=env["GRADLAB_BROKER_KEY_PREFIX"],
        )
    )


def test_gradlab_up_keeps_a_lane_for_quick_jobs_and_validations(tmp_path):
    proc, url = start_embedded(tmp_path)
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            deadline = time.monotonic() + 90
            while _quick_workers(client) < 2:  # both workers have announced themselves
                assert time.monotonic() < deadline, (tmp_path / "up.log").read_text()[-3000:]
                time.sleep(0.2)
            quick_work_starts_behind_training(client)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
