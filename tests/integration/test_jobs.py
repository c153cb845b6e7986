"""Jobs run by real Celery worker processes on PostgreSQL + Redis: results, metrics, artifacts, cancel, SIGKILL."""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime

import pytest
from sqlalchemy import create_engine, text

from core.techniques import specs
from tests.stack import wait_job

LONG_SWEEP = {
    "kind": "embedding_dim",
    "params": {
        "vocab_sizes": [100],
        "entropy_dims": [16],
        "sweep": {"vocab_size": 512, "target_rank": 8, "dims": [32, 48], "steps": 600},
    },
}


@pytest.fixture(scope="module")
def worker(stack, api):
    return stack.start_worker()


def wait_status(api, job_id, status, timeout=60):
    return wait_job(api, job_id, statuses=(status,), timeout=timeout)


@pytest.mark.parametrize("kind", ["embedding_dim", "init_averaging"])
def test_example_job_end_to_end(api, worker, kind):
    example = api.get(f"/v1/kinds/{kind}").json()["example"]
    job = api.post("/v1/jobs", json={**example, "device": "cpu"}).json()
    done = wait_job(api, job["id"], timeout=180)
    assert done["status"] == "succeeded", done
    assert done["attempt"] == 1 and done["device"] == "cpu" and done["progress"] == 1.0
    assert done["started_at"] <= done["finished_at"]
    assert done["result"]
    rows = api.get(f"/v1/jobs/{job['id']}/metrics", params={"limit": 10000}).json()
    assert rows["items"] and {"step", "name", "value"} <= set(rows["items"][0])
    arts = api.get(f"/v1/jobs/{job['id']}/artifacts").json()
    png = [a for a in arts if a["media_type"] == "image/png"]
    assert png, arts
    resp = api.get(png[0]["url"])
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/png"
    assert resp.content.startswith(b"\x89PNG") and len(resp.content) == png[0]["size"]


def test_results_match_the_technique(api, worker):
    job = api.post(
        "/v1/jobs", json={"kind": "embedding_dim", "params": {"vocab_sizes": [100000, 512], "entropy_dims": [64]}}
    ).json()
    result = wait_job(api, job["id"])["result"]
    assert [d["min_dimension"] for d in result["dimensions"]] == [96, 52]
    assert result["entropy_per_dim"][0]["h_n_over_n"] == pytest.approx(-0.2418, abs=1e-4)


def test_metrics_paging_and_filters(api, worker):
    job = api.post(
        "/v1/jobs",
        json=LONG_SWEEP
        | {
            "params": {
                **LONG_SWEEP["params"],
                "sweep": {**LONG_SWEEP["params"]["sweep"], "vocab_size": 64, "steps": 200},
            }
        },
    ).json()
    assert wait_job(api, job["id"], timeout=120)["status"] == "succeeded"
    everything = api.get(f"/v1/jobs/{job['id']}/metrics", params={"limit": 10000}).json()["items"]
    paged, cursor = [], None
    while True:
        page = api.get(f"/v1/jobs/{job['id']}/metrics", params={"limit": 7, **({"cursor": cursor} if cursor else {})})
        paged += page.json()["items"]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert paged == everything
    named = api.get(f"/v1/jobs/{job['id']}/metrics", params={"name": "fit_kl/n=32", "after_step": 100}).json()
    assert named["items"] and all(r["name"] == "fit_kl/n=32" and r["step"] > 100 for r in named["items"])


def test_cancel_running_job_within_5_seconds_and_worker_moves_on(api, worker):
    job = api.post("/v1/jobs", json=LONG_SWEEP).json()
    wait_status(api, job["id"], "running")
    cancelled = api.post(f"/v1/jobs/{job['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    nxt = api.post("/v1/jobs", json={"kind": "init_averaging", "params": {"widths": [8, 8]}}).json()
    # The worker runs one job at a time: the next job starts only once the cancelled one stopped computing.
    done = wait_job(api, nxt["id"], timeout=30)
    assert done["status"] == "succeeded"
    stopped_within = datetime.fromisoformat(done["started_at"]) - datetime.fromisoformat(cancelled["finished_at"])
    assert stopped_within.total_seconds() < 5
    assert api.get(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled"


def test_timeout_fails_the_job_and_the_worker_stays_usable(api, worker):
    job = api.post("/v1/jobs", json={**LONG_SWEEP, "timeout_s": 1}).json()
    done = wait_job(api, job["id"], timeout=60)
    assert done["status"] == "failed" and done["error"]["type"] == "timeout"
    nxt = api.post("/v1/jobs", json={"kind": "init_averaging", "params": {"widths": [8, 8]}}).json()
    assert wait_job(api, nxt["id"], timeout=60)["status"] == "succeeded"


def test_cuda_job_on_a_cpu_only_worker_fails_clearly(api, worker):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    job = api.post("/v1/jobs", json={"kind": "init_averaging", "params": {"widths": [8, 8]}, "device": "cuda"}).json()
    done = wait_job(api, job["id"], timeout=60)
    assert done["status"] == "failed" and done["error"]["type"] == "device_unavailable"
    assert "Traceback" not in done["error"]["message"]


def test_worker_sigkill_mid_job_is_recovered_without_running_twice(api, worker, stack, pg_database):
    job = api.post("/v1/jobs", json=LONG_SWEEP).json()
    wait_status(api, job["id"], "running")
    deadline = time.monotonic() + 60
    while not api.get(f"/v1/jobs/{job['id']}/metrics", params={"limit": 1}).json()["items"]:
        assert time.monotonic() < deadline, "attempt 1 logged no metrics"
        time.sleep(0.05)  # until attempt 1 has logged metrics, which the re-run must clear
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    replacement = stack.start_worker()
    done = wait_job(api, job["id"], timeout=240)
    assert done["status"] == "succeeded", done
    assert done["attempt"] == 2
    rows = api.get(f"/v1/jobs/{job['id']}/metrics", params={"name": "fit_kl_final", "limit": 100}).json()["items"]
    assert sorted(r["step"] for r in rows) == [32, 48]  # one row per fitted n: attempt 1's rows were cleared
    per_step = api.get(f"/v1/jobs/{job['id']}/metrics", params={"name": "fit_kl/n=32", "limit": 10000}).json()
    steps = [r["step"] for r in per_step["items"]]
    assert len(steps) == len(set(steps))
    engine = create_engine(pg_database[1])
    with engine.connect() as conn:
        succeeded = conn.execute(
            text("SELECT count(*) FROM jobs WHERE id = :i AND status = 'succeeded'"), {"i": job["id"]}
        ).scalar()
    engine.dispose()
    assert succeeded == 1
    assert replacement.poll() is None


def test_every_kind_is_registered_with_a_runnable_example(api, worker):
    # The examples are what README and `GET /v1/kinds` offer users: each must succeed on a real worker.
    ids = {
        name: api.post("/v1/jobs", json={"kind": name, "params": k.example, "device": "cpu"}).json()["id"]
        for name, k in specs().items()
    }
    for name, job_id in ids.items():
        done = wait_job(api, job_id, timeout=300)
        assert done["status"] == "succeeded", (name, done.get("error"))
