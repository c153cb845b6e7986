"""The worker's engine: the heartbeat runs from the claim on, and a job that never checks in is still stopped at
its deadline (timeout or cancel, plus a grace period) by restarting its worker process.

The test-only kind ``hang`` (tests/kinds/hang, registered through GRADLAB_EXTRA_KINDS, so no test code sits on a
production path) has a step that blocks without ever calling check_cancelled, and a run module that can be made
slow to import."""

from __future__ import annotations

import os
import time
from datetime import datetime

import pytest

from tests.stack import ROOT, wait_job

HANG = {"kind": "hang", "params": {"block": True}}
QUICK_HANG = {"kind": "hang", "params": {"block": False}}
GRACE_S = 1.0


@pytest.fixture(scope="module")
def service_env(service_env):
    return {
        **service_env,
        "GRADLAB_EXTRA_KINDS": "tests.kinds.hang",
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        "GRADLAB_HEARTBEAT_INTERVAL_S": "0.2",
        "GRADLAB_HEARTBEAT_TIMEOUT_S": "2",
        "GRADLAB_SWEEP_INTERVAL_S": "0.2",
        "GRADLAB_STOP_GRACE_S": str(GRACE_S),
    }


def worker_log(stack, proc) -> str:
    return (stack.log_dir / f"worker-{stack.procs.index(proc)}.log").read_text(errors="replace")


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(what)


def seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def test_a_slow_import_before_the_first_job_does_not_get_it_requeued(stack, api):
    # The kinds load when the worker starts, before it takes a message; the heartbeat starts at the claim. Were the
    # kinds imported after the claim, 4 s of import against a 2 s heartbeat timeout would re-queue the job.
    job = api.post("/v1/jobs", json=QUICK_HANG).json()
    worker = stack.start_worker(extra_env={"HANG_KIND_IMPORT_DELAY_S": "4"})
    done = wait_job(api, job["id"], timeout=60)
    assert done["status"] == "succeeded" and done["attempt"] == 1, done
    log = worker_log(stack, worker)
    assert "loaded 9 kinds" in log and log.index("loaded 9 kinds") < log.index(" ready.")
    worker.kill()
    worker.wait()


@pytest.fixture(scope="module")
def worker(stack, api):
    return stack.start_worker()


def _restarted(stack, worker, restarts: int) -> bool:
    log = worker_log(stack, worker)
    return log.count("restarting this worker process") == restarts and log.count(" ready.") == restarts + 1


def test_a_job_that_never_checks_in_fails_at_its_timeout_and_its_worker_restarts(stack, api, worker):
    job = api.post("/v1/jobs", json={**HANG, "timeout_s": 1}).json()
    done = wait_job(api, job["id"], timeout=60)
    assert done["status"] == "failed" and done["error"]["type"] == "timeout", done
    assert "restarted" in done["error"]["message"]
    assert seconds_between(done["started_at"], done["finished_at"]) >= 1 + GRACE_S
    wait_until(lambda: _restarted(stack, worker, 1), 120, "the worker process to restart and be ready")
    assert worker.poll() is None  # the same process (exec), so a supervisor sees one worker carrying on
    nxt = api.post("/v1/jobs", json=QUICK_HANG).json()
    assert wait_job(api, nxt["id"], timeout=60)["status"] == "succeeded"
    assert api.get(f"/v1/jobs/{job['id']}").json()["status"] == "failed"


def test_a_cancel_the_job_never_notices_restarts_its_worker(stack, api, worker):
    restarts = worker_log(stack, worker).count("restarting this worker process")
    job = api.post("/v1/jobs", json=HANG).json()
    wait_job(api, job["id"], statuses=("running",), timeout=60)
    assert api.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    wait_until(lambda: _restarted(stack, worker, restarts + 1), 120, "the worker process to restart and be ready")
    assert f"job {job['id']} was cancelled and did not stop within {GRACE_S:g}s" in worker_log(stack, worker)
    nxt = api.post("/v1/jobs", json=QUICK_HANG).json()
    assert wait_job(api, nxt["id"], timeout=60)["status"] == "succeeded"
    assert api.get(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled"
