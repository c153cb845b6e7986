"""Per-tenant fairness of a queue (``job_store.fair_pick``), on both backends: the tenant with the fewest jobs waiting
at the head of the queue goes first, a queue of one tenant runs in publishing order, and a pick never leaves the
message's queue."""

from __future__ import annotations

import uuid
from datetime import timedelta

from core.db.tables import utcnow
from core.jobs import repository as job_store


def _queue(sessions, tenants: list[str], queue: str) -> list:
    """One queued job per entry of ``tenants``, published a millisecond apart in that order; their ids."""
    start = utcnow() - timedelta(minutes=5)
    rows = []
    for i, tenant in enumerate(tenants):
        row = job_store.queued_job_row(tenant, "init_averaging", {}, i, "cpu", 60, 60.0, start)
        row.update(queue=queue, published_at=start + timedelta(milliseconds=i))
        rows.append(row)
    with sessions() as s:
        job_store.insert_queued(s, rows)
        s.commit()
    return [r["id"] for r in rows]


def _run_in_turn(sessions, message: uuid.UUID, n: int) -> list:
    """The jobs ``n`` wake-ups claim one after another (each claimed before the next pick)."""
    ran = []
    with sessions() as s:
        for _ in range(n):
            pick = job_store.fair_pick(s, message)
            assert job_store.claim(s, pick, "w") is not None
            ran.append(pick)
    return ran


def test_the_tenant_with_fewest_waiting_goes_first(sessions):
    queue = f"q-{uuid.uuid4().hex[:8]}"
    ids = _queue(sessions, ["a"] * 5 + ["b"] + ["c"] * 2, queue)
    # waiting a 5, b 1, c 2: b; then a 5, c 2: c; then a 5, c 1: c; then a's five in order
    assert _run_in_turn(sessions, ids[0], 8) == [ids[5], ids[6], ids[7], *ids[:5]]
    with sessions() as s:
        assert job_store.fair_pick(s, ids[0]) is None  # nothing left in the queue


def test_one_tenant_runs_in_publishing_order_and_never_across_queues(sessions):
    mine, other = f"q-{uuid.uuid4().hex[:8]}", f"q-{uuid.uuid4().hex[:8]}"
    ids = _queue(sessions, ["a"] * 4, mine)
    elsewhere = _queue(sessions, ["z"], other)
    assert _run_in_turn(sessions, ids[2], 4) == ids  # a message runs its queue's next job, not necessarily its own
    with sessions() as s:
        assert job_store.fair_pick(s, ids[0]) is None
        assert job_store.fair_pick(s, elsewhere[0]) == elsewhere[0]
        assert job_store.fair_pick(s, uuid.uuid4()) is None  # an unknown job: nothing to wake for
