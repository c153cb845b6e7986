"""Unreachable broker or database: the API answers problem+json 503 where it must, and no job is lost."""

from __future__ import annotations

import httpx

from tests.stack import Stack, free_port, wait_job


def test_broker_down_at_submit_time_loses_no_job(service_env, tmp_path):
    # An API whose broker is unreachable still accepts the job (it is committed first); readiness says why.
    dead_broker = Stack(
        env={**service_env, "GRADLAB_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}, log_dir=tmp_path
    )
    healthy = Stack(env=service_env, log_dir=tmp_path)
    try:
        url = dead_broker.start_api()
        with httpx.Client(base_url=url, timeout=30) as client:
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["broker"].startswith("unreachable")
            resp = client.post("/v1/jobs", json={"kind": "init_averaging", "params": {"widths": [8, 8]}})
            assert resp.status_code == 201
            job_id = resp.json()["id"]
            # A worker on the real broker finds it through the sweeper and runs it.
            healthy.start_worker()
            done = wait_job(client, job_id, timeout=90)
        assert done["status"] == "succeeded" and done["attempt"] == 1
    finally:
        dead_broker.stop()
        healthy.stop()


def test_database_down_is_503_problem_json(service_env, tmp_path):
    stack = Stack(
        env={**service_env, "GRADLAB_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing"},
        log_dir=tmp_path,
    )
    try:
        url = stack.start_api()
        with httpx.Client(base_url=url, timeout=30) as client:
            for method, path, body in [
                ("GET", "/v1/jobs", None),
                ("GET", "/v1/jobs/6f1c1f4e-0000-4000-8000-000000000000", None),
                ("POST", "/v1/jobs", {"kind": "init_averaging", "params": {"widths": [8, 8]}}),
                ("GET", "/readyz", None),
            ]:
                resp = client.request(method, path, json=body)
                assert resp.status_code == 503, (path, resp.text)
                assert resp.headers["content-type"].startswith("application/problem+json")
                assert "Traceback" not in resp.text
            assert client.get("/healthz").status_code == 200
    finally:
        stack.stop()
