"""Faults injected for real: workers SIGKILLed, Redis and PostgreSQL stopped and restarted, messages duplicated,
processes restarted with jobs in every state. Every submitted job is accounted for: none lost, none run twice."""

from __future__ import annotations

import os
import signal
import time
import uuid
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import create_engine, text

from core.db import engine as jobs_db
from core.db.engine import make_engine
from tests.servers import PG_BIN, PrivatePostgres, PrivateRedis
from tests.stack import Stack, wait_job

MEDIUM = {
    "kind": "embedding_dim",
    "params": {
        "vocab_sizes": [100],
        "entropy_dims": [16],
        "sweep": {"vocab_size": 384, "target_rank": 8, "dims": [24, 32], "steps": 500},
    },
}
QUICK = {"kind": "init_averaging", "params": {"widths": [16, 16]}}


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(what)


def running_job(api, ids, attempt=None, started_after: datetime | None = None):
    for jid in ids:
        job = api.get(f"/v1/jobs/{jid}").json()
        if (
            job["status"] == "running"
            and (attempt is None or job["attempt"] == attempt)
            and (started_after is None or datetime.fromisoformat(job["started_at"]) > started_after)
        ):
            return job
    return None


def succeeded_rows(db_url: str, ids: list[str]) -> int:
    engine = create_engine(db_url)
    with engine.connect() as conn:
        n = conn.execute(
            text("SELECT count(*) FROM jobs WHERE status = 'succeeded' AND id = ANY(:ids)"), {"ids": ids}
        ).scalar()
    engine.dispose()
    return n


def has_metrics(api, job_id: str) -> bool:
    return bool(api.get(f"/v1/jobs/{job_id}/metrics", params={"limit": 1}).json()["items"])


def worker_log_has(log_dir, text_: str) -> bool:
    return any(text_ in p.read_text(errors="replace") for p in log_dir.glob("worker-*.log"))


def sweep_witness(db_url: str) -> None:
    """Wait until a sweeper has run a full sweep that began after this call.

    A canary row is made to look like a job whose worker died an hour ago; the sweep that re-queues it saw every
    other row as it is now, so a negative ("the sweeper leaves job X alone") is proven by this positive event
    instead of by sleeping."""
    engine = create_engine(db_url)
    canary = str(uuid.uuid4())
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO jobs (id, tenant, kind, status, params, seed, device_requested, queue, timeout_s, "
                    "progress, message, attempt, created_at, heartbeat_at) VALUES (:id, 'canary', 'init_averaging', "
                    "'running', '{\"widths\": [8, 8]}', 0, 'cpu', 'cpu', 60, 0, 'running', 1, now(), "
                    "now() - interval '1 hour')"
                ),
                {"id": canary},
            )

        def swept():
            with engine.connect() as conn:
                status, attempt = conn.execute(
                    text("SELECT status, attempt FROM jobs WHERE id = :id"), {"id": canary}
                ).one()
            return not (status == "running" and attempt == 1)

        wait_until(swept, 60, "a sweep after the canary was planted")
    finally:
        engine.dispose()


def kill_worker(proc) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_worker_sigkill_repeated_loses_nothing(stack, api, pg_database):
    born = datetime.now(UTC)  # a job the worker started next claims starts after this
    worker = stack.start_worker()
    ids = [api.post("/v1/jobs", json=MEDIUM).json()["id"] for _ in range(4)]
    kills = 0
    for _ in range(3):
        job = wait_until(lambda: running_job(api, ids, started_after=born), 120, "this worker to run a job")
        wait_until(lambda: has_metrics(api, job["id"]), 60, "the running job to log metrics")
        kill_worker(worker)
        kills += 1
        born = datetime.now(UTC)
        worker = stack.start_worker()
    done = [wait_job(api, jid, timeout=300) for jid in ids]
    assert [d["status"] for d in done] == ["succeeded"] * 4, done
    assert sum(d["attempt"] for d in done) == 4 + kills
    assert succeeded_rows(pg_database[1], ids) == 4
    for d in done:
        finals = api.get(f"/v1/jobs/{d['id']}/metrics", params={"name": "fit_kl_final"}).json()["items"]
        assert sorted(r["step"] for r in finals) == [24, 32]  # re-runs cleared the dead attempt's rows
    kill_worker(worker)


def test_job_that_kills_its_worker_every_time_fails_after_bounded_attempts(stack, api, pg_database):
    worker = stack.start_worker()
    job_id = api.post("/v1/jobs", json=MEDIUM).json()["id"]
    for attempt in (1, 2, 3):  # GRADLAB_MAX_ATTEMPTS defaults to 3; an OOM kill looks exactly like this
        wait_until(lambda a=attempt: running_job(api, [job_id], a), 120, f"attempt {attempt} to run")
        kill_worker(worker)
        worker = stack.start_worker()
    done = wait_job(api, job_id, timeout=120)
    assert done["status"] == "failed" and done["attempt"] == 3
    assert done["error"]["type"] == "worker_lost" and "3 attempts" in done["error"]["message"]
    sweep_witness(pg_database[1])  # its heartbeat is stale, yet the sweeper must not pick it up again
    again = api.get(f"/v1/jobs/{job_id}").json()
    assert again["status"] == "failed" and again["attempt"] == 3
    assert api.post("/v1/jobs", json=QUICK).status_code == 201  # and the service carries on
    kill_worker(worker)


def test_message_published_twice_runs_once(stack, api, pg_database):
    from core.settings import Settings
    from workers.app import make_celery
    from workers.publish import publish

    workers = [stack.start_worker(), stack.start_worker()]
    app = make_celery(
        Settings(broker_url=stack.env["GRADLAB_BROKER_URL"], broker_key_prefix=stack.env["GRADLAB_BROKER_KEY_PREFIX"])
    )
    ids = []
    for _ in range(3):
        job = api.post("/v1/jobs", json=MEDIUM).json()
        assert publish(app, job["id"], "auto") and publish(app, job["id"], "auto")
        ids.append(job["id"])
    done = [wait_job(api, jid, timeout=300) for jid in ids]
    assert all(d["status"] == "succeeded" and d["attempt"] == 1 for d in done), done
    assert succeeded_rows(pg_database[1], ids) == 3
    logs = "".join(p.read_text() for p in stack.log_dir.glob("worker-*.log"))
    assert sum(logs.count(f"job {jid}: not-claimed") for jid in ids) >= 3  # the duplicates were no-ops
    for w in workers:
        kill_worker(w)


def test_restart_with_jobs_in_every_state_changes_nothing_wrongly(stack, api, pg_database):
    worker = stack.start_worker(queues="cpu,auto,quick")
    ok = api.post("/v1/jobs", json=QUICK).json()["id"]
    wait_job(api, ok)
    failed = api.post("/v1/jobs", json={**MEDIUM, "timeout_s": 1}).json()["id"]
    wait_job(api, failed)
    cancelled = api.post("/v1/jobs", json=QUICK | {"device": "cuda"}).json()["id"]
    api.post(f"/v1/jobs/{cancelled}/cancel")
    queued = api.post("/v1/jobs", json=QUICK | {"device": "cuda"}).json()["id"]  # no gpu worker: stays queued
    running = api.post("/v1/jobs", json=MEDIUM).json()["id"]
    wait_until(lambda: running_job(api, [running]), 60, "the job to run")
    before = {jid: api.get(f"/v1/jobs/{jid}").json() for jid in (ok, failed, cancelled, queued)}
    assert [before[j]["status"] for j in (ok, failed, cancelled, queued)] == [
        "succeeded",
        "failed",
        "cancelled",
        "queued",
    ]

    api_proc = next(p for p in stack.procs if p.args[1] == "api" and p.poll() is None)
    for proc in (api_proc, worker):
        os.killpg(proc.pid, signal.SIGTERM)  # the worker's warm shutdown lets the running job finish
    for proc in (api_proc, worker):
        proc.wait(timeout=120)
    stack.start_api()
    worker = stack.start_worker(queues="cpu,auto,quick")
    with httpx.Client(base_url=stack.api_url, timeout=30) as client:
        assert wait_job(client, running, timeout=300)["status"] == "succeeded"
        sweep_witness(pg_database[1])  # the restarted worker's sweeper has looked at every job
        for jid, old in before.items():
            now = client.get(f"/v1/jobs/{jid}").json()
            assert {k: now[k] for k in ("status", "finished_at", "result", "error", "attempt")} == {
                k: old[k] for k in ("status", "finished_at", "result", "error", "attempt")
            }
    kill_worker(worker)


def test_redis_stopped_and_restarted_loses_no_job(service_env, tmp_path):
    redis = PrivateRedis()
    redis.start()
    stack = Stack(env={**service_env, "GRADLAB_BROKER_URL": redis.url}, log_dir=tmp_path)
    try:
        url = stack.start_api()
        stack.start_worker()
        with httpx.Client(base_url=url, timeout=30) as api:
            ids = [api.post("/v1/jobs", json=MEDIUM).json()["id"] for _ in range(3)]
            wait_until(lambda: running_job(api, ids), 120, "a job to run")
            redis.stop()  # queued messages and the running job's unacked message are gone
            during = [api.post("/v1/jobs", json=QUICK) for _ in range(2)]
            assert [r.status_code for r in during] == [201, 201]
            assert api.get("/readyz").status_code == 503
            assert api.get(f"/v1/jobs/{ids[0]}").status_code == 200  # only readiness reports the outage
            redis.start()
            ids += [r.json()["id"] for r in during]
            done = [wait_job(api, jid, timeout=300) for jid in ids]
            assert api.get("/readyz").status_code == 200
        assert [d["status"] for d in done] == ["succeeded"] * 5, done
    finally:
        stack.stop()
        redis.stop()


@pytest.mark.skipif(PG_BIN is None, reason="PostgreSQL server binaries are not installed")
def test_postgres_restarted_api_503_then_recovers_and_workers_lose_no_result(service_env, tmp_path):
    pg = PrivatePostgres()
    pg.init()
    pg.start()
    env = {**service_env, "GRADLAB_DATABASE_URL": pg.url, "GRADLAB_HEARTBEAT_TIMEOUT_S": "20"}
    stack = Stack(env=env, log_dir=tmp_path)
    try:
        stack.migrate()
        url = stack.start_api()
        stack.start_worker()
        with httpx.Client(base_url=url, timeout=30) as api:
            ids = [api.post("/v1/jobs", json=MEDIUM).json()["id"] for _ in range(3)]
            wait_until(lambda: running_job(api, ids), 120, "a job to run")
            pg.stop()
            for method, path, body in (
                ("GET", f"/v1/jobs/{ids[0]}", None),
                ("GET", "/v1/jobs", None),
                ("POST", "/v1/jobs", QUICK),
            ):
                resp = api.request(method, path, json=body)
                assert resp.status_code == 503, resp.text
                assert resp.headers["content-type"].startswith("application/problem+json")
            wait_until(
                lambda: any(
                    worker_log_has(tmp_path, t) for t in ("database unavailable", "heartbeat for job", "sweep failed")
                ),
                60,
                "the worker to see the outage",
            )
            pg.start()
            wait_until(lambda: api.get("/v1/jobs").status_code == 200, 60, "the API to recover")
            done = [wait_job(api, jid, timeout=300) for jid in ids]
        assert [d["status"] for d in done] == ["succeeded"] * 3, done
        assert all(d["result"]["sweep"]["fit_kl"] for d in done)
    finally:
        stack.stop()
        pg.remove()


@pytest.mark.skipif(PG_BIN is None, reason="PostgreSQL server binaries are not installed")
def test_idle_pooled_connection_is_replaced_after_a_database_restart(monkeypatch):
    # The engine pings a connection only after it sat idle (core/db/engine.py); a restart leaves every pooled
    # connection dead, so the first use after it must still succeed on a fresh one.
    monkeypatch.setattr(jobs_db, "IDLE_PING_S", 0.05)  # the idle time after which a pooled connection is pinged
    pg = PrivatePostgres()
    pg.init()
    pg.start()
    engine = make_engine(pg.url)
    try:
        with engine.connect() as conn:
            backend = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        pg.stop()
        pg.start()
        time.sleep(jobs_db.IDLE_PING_S + 0.1)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar() != backend
    finally:
        engine.dispose()
        pg.remove()
