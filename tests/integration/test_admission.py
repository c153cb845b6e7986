"""Admission is atomic: concurrent submissions never take a tenant past its caps, on either backend, through the
store and through a real API process."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import pytest

from core.db.tables import utcnow
from core.jobs import repository as job_store

SUBMITS, CAP = 50, 10


@pytest.fixture(scope="module")
def service_env(service_env):
    return {**service_env, "GRADLAB_MAX_ACTIVE_JOBS_PER_TENANT": str(CAP)}


def _submit_all_at_once(sessions, tenant: str, admission: job_store.Admission) -> list:
    """SUBMITS threads, each with its own session, released together; each returns the job or the refusal."""
    gate = threading.Barrier(SUBMITS)

    def submit(_):
        with sessions() as s:
            gate.wait()
            try:
                return job_store.create_job(
                    s,
                    tenant=tenant,
                    kind="init_averaging",
                    params={},
                    seed=0,
                    device="cpu",
                    timeout_s=60,
                    republish_after_s=60,
                    admission=admission,
                )[0]
            except job_store.AdmissionRefused as exc:
                return exc

    with ThreadPoolExecutor(SUBMITS) as pool:
        return list(pool.map(submit, range(SUBMITS)))


@pytest.mark.parametrize("cap", ["active", "window"])
def test_concurrent_submissions_stop_exactly_at_the_cap(sessions, cap):
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    active, window = (CAP, 1000) if cap == "active" else (1000, CAP)
    outcomes = _submit_all_at_once(
        sessions, tenant, job_store.Admission(active, window, utcnow() - timedelta(minutes=1))
    )
    refused = [o for o in outcomes if isinstance(o, job_store.AdmissionRefused)]
    assert len(outcomes) - len(refused) == CAP
    assert len(refused) == SUBMITS - CAP
    if cap == "active":
        assert all(r.usage.at_active_cap for r in refused)
    else:
        assert all(r.usage.window_filled_at is not None and not r.usage.at_active_cap for r in refused)
    with sessions() as s:
        use = job_store.usage(s, tenant, utcnow() - timedelta(minutes=1), CAP, CAP + 1)
        assert use.at_active_cap and use.window_filled_at is None  # exactly CAP rows: at the cap, not past it


def test_fifty_concurrent_http_submits_at_a_cap_of_ten(api):
    # this module's database is fresh: the local tenant (auth disabled) has no jobs, and no worker takes any
    gate = threading.Barrier(SUBMITS)

    def submit(_):
        with httpx.Client(base_url=str(api.base_url), timeout=60) as client:
            gate.wait()
            return client.post("/v1/jobs", json={"kind": "init_averaging", "params": {"widths": [8, 8]}})

    with ThreadPoolExecutor(SUBMITS) as pool:
        answers = list(pool.map(submit, range(SUBMITS)))
    codes = sorted(a.status_code for a in answers)
    assert codes == [201] * CAP + [429] * (SUBMITS - CAP), codes
    refusal = next(a for a in answers if a.status_code == 429)
    assert refusal.headers["retry-after"] == "5" and "queued or running jobs" in refusal.json()["detail"]
    admitted = {a.json()["id"] for a in answers if a.status_code == 201}
    assert all(api.get(f"/v1/jobs/{jid}").json()["status"] == "queued" for jid in admitted)
    assert api.post("/v1/jobs", json={"kind": "init_averaging", "params": {"widths": [8, 8]}}).status_code == 429
