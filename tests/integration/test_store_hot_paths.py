"""Store queries on the hot paths, on both backends: admission (``job_store.usage``) is exact at the caps and blind
to finished and old jobs; metric rows written in bulk (COPY text on PostgreSQL) read back exactly."""

from __future__ import annotations

import uuid
from datetime import timedelta

from core.db.tables import Job, utcnow
from core.jobs import repository as job_store
from core.jobs.states import JobStatus
from core.metrics import repository as metric_store


def _add(session, tenant: str, status: str, created_at) -> None:
    session.add(
        Job(
            id=uuid.uuid4(),
            tenant=tenant,
            kind="init_averaging",
            status=status,
            params={},
            seed=0,
            device_requested="cpu",
            queue="cpu",
            timeout_s=60,
            progress=0.0,
            message="",
            attempt=0,
            created_at=created_at,
        )
    )
    session.commit()


def test_usage_is_exact_at_the_caps_and_ignores_finished_old_and_other_tenants(sessions):
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    now = utcnow()
    since = now - timedelta(seconds=60)
    with sessions() as s:
        _add(s, "someone-else", JobStatus.queued, now)
        for status in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled):
            _add(s, tenant, status, now - timedelta(seconds=30))  # in the window, but not active
        _add(s, tenant, JobStatus.running, now - timedelta(hours=2))  # active, but outside the window
        _add(s, tenant, JobStatus.queued, now - timedelta(seconds=20))
        # active: 2 (running + queued); in the window: 4, created at now-30 (x3) and now-20
        assert job_store.usage(s, tenant, since, active_cap=3, window_cap=5) == job_store.Usage(False, None)
        use = job_store.usage(s, tenant, since, active_cap=2, window_cap=5)
        assert use.at_active_cap and use.window_filled_at is None
        # the 4th newest submission in the window filled a window of 4: a slot frees 60 s after it
        filled = job_store.usage(s, tenant, since, active_cap=3, window_cap=4).window_filled_at
        assert filled is not None and abs((filled - (now - timedelta(seconds=30))).total_seconds()) < 1e-3
        # with a window of 1, the newest one filled it
        newest = job_store.usage(s, tenant, since, active_cap=3, window_cap=1).window_filled_at
        assert abs((newest - (now - timedelta(seconds=20))).total_seconds()) < 1e-3


def test_metric_rows_round_trip_exactly_through_the_bulk_write(sessions):
    with sessions() as s:
        job, _ = job_store.create_job(
            s, tenant="t", kind="init_averaging", params={}, seed=0, device="cpu", timeout_s=60, republish_after_s=60
        )
        job = job_store.claim(s, job.id, "test")
        rows = [
            (0, "loss", 0.1),
            (1, "tab\tnew\nline\rback\\slash", -0.0),
            (2, "µ/ν ratio", 1e-300),
            (3, "loss", 1.7976931348623157e308),
            (4, "loss", None),
            (5, "loss", 1 / 3),
            (2**40, "loss", -2.5e-8),
        ]
        assert job_store.beat(s, job.id, job.attempt, None, None, rows)
        back, _ = metric_store.read_metrics(s, job.id, name=None, after_step=None, cursor=None, limit=100)
    assert [(r.step, r.name, r.value) for r in back] == rows
