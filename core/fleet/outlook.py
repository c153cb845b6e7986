"""A queued job's place and wait at a cost that does not grow with the queue: one snapshot per queue, shared by
every request of the process and taken again at most once per ``max_age_s``.

A snapshot holds the first ``cap`` queued jobs of its queue in starting order (publishing time, then id: a LIMITed
read of the queued-jobs index), the jobs its live workers are running, how many workers consume it, and the typical
run time of every kind in it. A GET finds its job's place by bisection in the snapshot and issues no query of its
own; a job beyond the first ``cap`` is "more than ``cap`` ahead" with no estimate. A job published after the
snapshot was taken is behind all of it: if the snapshot is full, that is already "more than ``cap``"; if not, the
queue is short, and the snapshot is taken again (at most ``cap`` rows). So a GET reads at most ``cap`` queued rows
and a fixed number of statements, whether 10 or 1,000,000 jobs wait.
"""

from __future__ import annotations

import bisect
import threading
import uuid
import weakref
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from core.db.tables import Job, utcnow
from core.fleet import repository as fleet
from core.fleet.queueing import estimate_wait_s

LAST = datetime.max.replace(tzinfo=None)  # an unpublished job waits behind every published one


def start_key(published_at: datetime | None, job_id: uuid.UUID) -> tuple[datetime, str]:
    """Where a queued job stands in its queue's starting order (naive UTC, so both backends compare alike)."""
    at = LAST if published_at is None else published_at.replace(tzinfo=None)
    return at, str(job_id)


@dataclass(frozen=True)
class Place:
    """A queued job's place: ``position`` (1: next) and ``eta_s``, or ``ahead_over`` when more than that many jobs
    are ahead of it (position and estimate then unknown)."""

    position: int | None
    eta_s: float | None
    ahead_over: int | None = None


@dataclass(frozen=True)
class Snapshot:
    taken_at: datetime
    keys: list[tuple[datetime, str]]  # the first ``cap`` queued jobs, in starting order
    kinds: list[str]  # their kinds, aligned with ``keys``
    full: bool  # the queue held at least ``cap`` jobs
    running: list[tuple[str, datetime]]  # (kind, started_at) of the jobs its live workers run
    workers: int
    run_s: dict[str, list[float]]

    def covers(self, key: tuple[datetime, str]) -> bool:
        """The job was published before the snapshot was taken (or lies among its jobs)."""
        return key[0] <= self.taken_at.replace(tzinfo=None) or bool(self.keys and key <= self.keys[-1])

    def place(self, key: tuple[datetime, str], now: datetime) -> Place:
        i = bisect.bisect_left(self.keys, key)
        if i == len(self.keys) and self.full:
            return Place(None, None, ahead_over=len(self.keys))
        running = [(kind, (now - started).total_seconds()) for kind, started in self.running]
        eta = estimate_wait_s(dict(Counter(self.kinds[:i])), running, self.workers, self.run_s)
        return Place(i + 1, None if eta is None else round(eta, 1))


def take(session: Session, queue: str, cap: int, alive_since: datetime) -> Snapshot:
    """A fresh snapshot of ``queue``: one LIMITed read of its queued jobs, one of its workers, and a bounded read
    of recent run times per kind present."""
    taken_at = utcnow()
    head = fleet.queue_head(session, queue, cap)
    consumers = [s for s in fleet.workers(session, alive_since) if queue in s.worker.queues]
    running = [(s.job_kind, s.job_started_at) for s in consumers if s.job_kind and s.job_started_at]
    kinds = {kind for _, _, kind in head} | {kind for kind, _ in running}
    return Snapshot(
        taken_at=taken_at,
        keys=[start_key(published_at, job_id) for published_at, job_id, _ in head],
        kinds=[kind for _, _, kind in head],
        full=len(head) >= cap,
        running=running,
        workers=len({s.worker.name for s in consumers}),
        run_s={kind: fleet.recent_run_seconds(session, kind, queue) for kind in kinds},
    )


class Outlooks:
    """The snapshots of one database's queues in this process; requests racing on a stale one take it once."""

    def __init__(self, cap: int, max_age_s: float):
        self.cap, self.max_age = cap, timedelta(seconds=max_age_s)
        self._snapshots: dict[str, Snapshot] = {}
        self._lock = threading.Lock()

    def place(self, session: Session, job: Job, alive_since: datetime) -> Place:
        key = start_key(job.published_at, job.id)
        now = utcnow()
        snap = self._snapshots.get(job.queue)
        if snap is None or now - snap.taken_at > self.max_age or not (snap.covers(key) or snap.full):
            with self._lock:
                snap = self._snapshots.get(job.queue)
                if snap is None or now - snap.taken_at > self.max_age or not (snap.covers(key) or snap.full):
                    snap = self._snapshots[job.queue] = take(session, job.queue, self.cap, alive_since)
        return snap.place(key, now)


_by_engine: weakref.WeakKeyDictionary[Engine, Outlooks] = weakref.WeakKeyDictionary()
_made = threading.Lock()


def outlooks(session: Session, cap: int, max_age_s: float) -> Outlooks:
    """The process's snapshots of the database ``session`` is bound to (one set per engine)."""
    engine = session.get_bind()
    assert isinstance(engine, Engine)
    with _made:
        found = _by_engine.get(engine)
        if found is None or (found.cap, found.max_age.total_seconds()) != (cap, max_age_s):
            found = _by_engine[engine] = Outlooks(cap, max_age_s)
        return found
