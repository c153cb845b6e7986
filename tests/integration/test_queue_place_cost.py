"""A queued job's place costs the same whatever the queue's length (``core.fleet.outlook``), on both backends: the
statements a GET issues and the queued rows they read are counted, not timed, with 20 and with 600 jobs waiting
behind an exactness cap of 50."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import event

from core.db.tables import utcnow
from core.fleet import outlook
from core.fleet.service import place_in_queue
from core.jobs import repository as job_store
from core.settings import Settings

CAP = 50


def _fill(sessions, n: int, queue_tag: str) -> list:
    """``n`` queued jobs on a queue of their own, published one millisecond apart; their rows in starting order."""
    start = utcnow() - timedelta(hours=1)
    rows = []
    for i in range(n):
        row = job_store.queued_job_row("t", "init_averaging", {}, i, "cpu", 60, 60.0, start)
        row.update(queue=queue_tag, published_at=start + timedelta(milliseconds=i))
        rows.append(row)
    with sessions() as s:
        job_store.insert_queued(s, rows)
        s.commit()
    return rows


class Counted:
    """Statements issued on an engine and, on PostgreSQL, the rows they returned."""

    def __init__(self, engine):
        self.engine, self.statements, self.rows = engine, 0, 0

    def _seen(self, conn, cursor, statement, parameters, context, executemany):
        self.statements += 1
        self.rows += max(cursor.rowcount, 0)

    def __enter__(self):
        event.listen(self.engine, "after_cursor_execute", self._seen)
        return self

    def __exit__(self, *exc):
        event.remove(self.engine, "after_cursor_execute", self._seen)


def _place(sessions, settings, job_id):
    """(the place, statements, rows) of one GET's placing of a job (the job row itself read beforehand)."""
    with sessions() as s:
        job = job_store.get_job(s, job_id)
        with Counted(s.get_bind()) as seen:
            place = place_in_queue(s, settings, job)
    return place, seen.statements, seen.rows


@pytest.mark.parametrize("waiting", [20, 600])
def test_positions_are_exact_up_to_the_cap_then_more_than_it(sessions, waiting):
    settings = Settings(queue_position_exact_up_to=CAP, queue_snapshot_max_age_s=60)
    rows = _fill(sessions, waiting, f"q-{uuid.uuid4().hex[:8]}")
    for i in (0, 7, min(waiting, CAP) - 1):
        assert _place(sessions, settings, rows[i]["id"])[0].position == i + 1
    last = _place(sessions, settings, rows[-1]["id"])[0]
    if waiting > CAP:
        assert (last.position, last.eta_s, last.ahead_over) == (None, None, CAP)
    else:
        assert (last.position, last.ahead_over) == (waiting, None)


def test_a_get_reads_the_same_whether_20_or_600_wait(sessions):
    settings = Settings(queue_position_exact_up_to=CAP, queue_snapshot_max_age_s=60)
    cold, warm = {}, {}
    for waiting in (20, 600):
        rows = _fill(sessions, waiting, f"q-{uuid.uuid4().hex[:8]}")
        _, *cold[waiting] = _place(sessions, settings, rows[5]["id"])  # takes the queue's snapshot
        _, *warm[waiting] = _place(sessions, settings, rows[-1]["id"])  # shares it
    # the snapshot: one read of the queue's head, one of its workers, one or two of the kind's run times
    assert cold[20][0] == cold[600][0] <= 4
    assert warm[20] == warm[600] == [0, 0]  # later GETs issue no statement of their own
    if sessions.kw["bind"].dialect.name == "postgresql":
        assert cold[20][1] == 20 and cold[600][1] == CAP  # rows read: the whole short queue, the cap of a long one


def test_a_job_published_after_the_snapshot_of_a_short_queue_is_placed_exactly(sessions):
    settings = Settings(queue_position_exact_up_to=CAP, queue_snapshot_max_age_s=60)
    queue = f"q-{uuid.uuid4().hex[:8]}"
    first = _fill(sessions, 3, queue)
    assert _place(sessions, settings, first[2]["id"])[0].position == 3
    later = job_store.queued_job_row("t", "init_averaging", {}, 9, "cpu", 60, 60.0, utcnow())
    later["queue"] = queue
    with sessions() as s:
        job_store.insert_queued(s, [later])
        s.commit()
    assert _place(sessions, settings, later["id"])[0].position == 4
    assert outlook.start_key(None, later["id"]) > outlook.start_key(later["published_at"], later["id"])
