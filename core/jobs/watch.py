"""Live feeds of jobs for event streams: one poller per process for every watched job, shared by all watchers.

A watcher costs no database query of its own once it is caught up: every ``poll_s`` the process reads, in one short
session, the status of every watched job and the new metric rows of all of them (one query each, however many jobs
and watchers), and wakes the watchers of the jobs with news. So the database's work grows with neither watchers nor
watched jobs, only with the rows there are to send. A feed keeps its job's newest rows (at most ``buffer_rows``),
each already encoded by ``encode`` (a row is encoded once, not once per watcher); a watcher that starts further back,
or falls behind, reads the rows before the feed's window from the database itself, then joins it.

A feed publishes a status only once it has read every row up to it (the statuses are read before the rows, and a
worker writes its rows before it finishes), so a watcher that sees a terminal status has been given every row.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import uuid
from collections.abc import Callable

from anyio import to_thread

from core.jobs import repository as jobs
from core.jobs.states import TERMINAL
from core.metrics import repository as metrics

log = logging.getLogger(__name__)

BATCH = 1000


class JobFeed:
    """What the process knows of one watched job. ``floor``: every row with a larger id is in ``rows``."""

    def __init__(self, job_id: uuid.UUID):
        self.job_id = job_id
        self.status: dict | None = None
        self.gone = False
        self.floor: int | None = None  # None until the first tick
        self.ids: list[int] = []
        self.encoded: list[str] = []
        self.watchers = 0
        self.done = False  # read to its job's end (or the job vanished): the poller leaves it
        self.changed = asyncio.Event()  # replaced by a fresh one each time it is set

    def encoded_after(self, after: int) -> tuple[int, str]:
        """(id of the newest row, the encoded rows after ``after`` as one string); (after, "") when none."""
        start = bisect.bisect_right(self.ids, after)
        if start == len(self.ids):
            return after, ""
        return self.ids[-1], "".join(self.encoded[start:])

    def _publish(self) -> None:
        fired, self.changed = self.changed, asyncio.Event()
        fired.set()


class JobFeeds:
    """The process's feeds, made on a job's first watcher and dropped after its last, and the one task polling them."""

    def __init__(
        self, sessions: Callable, poll_s: float, encode: Callable[[tuple], str], buffer_rows: int = 10 * BATCH
    ):
        self.sessions, self.poll_s, self.encode, self.buffer_rows = sessions, poll_s, encode, buffer_rows
        self.feeds: dict[uuid.UUID, JobFeed] = {}
        self._poller: asyncio.Task | None = None
        self._wake = asyncio.Event()

    def subscribe(self, job_id: uuid.UUID) -> JobFeed:
        feed = self.feeds.get(job_id)
        if feed is None:
            feed = self.feeds[job_id] = JobFeed(job_id)
            self._wake.set()  # a new feed is read at once, not at the next tick
            if self._poller is None or self._poller.done():
                self._poller = asyncio.get_running_loop().create_task(self._poll())
        feed.watchers += 1
        return feed

    def unsubscribe(self, feed: JobFeed) -> None:
        feed.watchers -= 1
        if feed.watchers == 0 and self.feeds.get(feed.job_id) is feed:
            del self.feeds[feed.job_id]

    async def read_encoded(self, job_id: uuid.UUID, after: int) -> tuple[int, str, int]:
        """A watcher's own read of rows before a feed's window: (id of the last row read, the rows encoded, how
        many rows)."""
        return await to_thread.run_sync(self._read_encoded, job_id, after)

    def _read_encoded(self, job_id: uuid.UUID, after: int) -> tuple[int, str, int]:
        with self.sessions() as session:
            rows, _ = metrics.read_metrics(session, job_id, name=None, after_step=None, cursor=after, limit=BATCH)
        return (rows[-1].id if rows else after), "".join(self.encode(tuple(r)) for r in rows), len(rows)

    def _tick(self, floors: dict[uuid.UUID, int | None]) -> tuple[dict, dict[uuid.UUID, int], list, int]:
        """(statuses, the floors of new feeds, rows after the others' floors, the row limit) in one session: a new
        feed's floor is its job's newest row id; the rows are (job_id, id, step, name, value) in id order."""
        limit = BATCH * len(floors)
        with self.sessions() as session:
            statuses = jobs.jobs_progress(session, list(floors))
            fresh = metrics.last_metric_ids(session, [j for j, f in floors.items() if f is None and j in statuses])
            known = {j: f for j, f in floors.items() if f is not None and j in statuses}
            rows = metrics.metrics_after(session, known, limit) if known else []
        return statuses, fresh, [tuple(r) for r in rows], limit

    async def _poll(self) -> None:
        """Tick while any feed is live; a feed whose job ended (and was read to its end) or vanished leaves the
        tick."""
        while True:
            live = {j: f for j, f in self.feeds.items() if not f.done}
            if not live:
                return
            self._wake.clear()
            floors = {j: (f.ids[-1] if f.ids else f.floor) for j, f in live.items()}
            try:
                statuses, fresh, rows, limit = await to_thread.run_sync(self._tick, floors)
            except Exception:  # the database is away: watchers keep waiting (with keep-alives) while it is
                log.warning(
                    "reading %d watched jobs for their event streams failed; retrying", len(live), exc_info=True
                )
                await asyncio.sleep(self.poll_s)
                continue
            caught_up = len(rows) < limit  # else some feeds have more rows: read on before publishing statuses
            by_job: dict[uuid.UUID, list] = {}
            for job_id, *row in rows:
                by_job.setdefault(job_id, []).append(tuple(row))
            for job_id, feed in live.items():
                self._advance(feed, statuses.get(job_id), fresh.get(job_id), by_job.get(job_id, []), caught_up)
            if caught_up:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_s)

    def _advance(self, feed: JobFeed, status: dict | None, floor: int | None, rows: list, caught_up: bool) -> None:
        """One tick's news for one feed; its watchers are woken only if there is some."""
        if status is None:
            feed.gone = feed.done = True
            feed._publish()
            return
        started = feed.floor is None
        if started:
            feed.floor = floor if floor is not None else 0
        self._append(feed, rows)
        moved = caught_up and status != feed.status
        if moved:
            feed.status = status
        if started or rows or moved:
            feed._publish()
        if caught_up and status["status"] in TERMINAL:
            feed.done = True

    def _append(self, feed: JobFeed, rows: list) -> None:
        feed.ids.extend(r[0] for r in rows)
        feed.encoded.extend(self.encode(r) for r in rows)
        excess = len(feed.ids) - self.buffer_rows
        if excess > 0:
            drop = max(excess, self.buffer_rows // 2)  # trim in halves, not row by row
            feed.floor = feed.ids[drop - 1]
            del feed.ids[:drop], feed.encoded[:drop]
