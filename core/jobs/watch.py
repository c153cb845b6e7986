"""Live feeds of jobs for event streams: one poller per watched job in a process, shared by all its watchers.

A watcher costs no database query of its own once it is caught up: the job's feed reads the job's status and its new
metric rows every ``poll_s`` (one short session per tick, so no pooled connection is pinned) and wakes every watcher
of that job. The feed keeps the newest rows (at most ``buffer_rows``), each already encoded by ``encode`` (a row is
encoded once, not once per watcher); a watcher that starts further back, or falls behind, reads the rows before the
feed's window from the database itself, then joins it.

A feed publishes a status only once it has read every row up to it (the status is read before the rows, and a worker
writes its rows before it finishes), so a watcher that sees a terminal status has been given every row.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import uuid
from collections.abc import Callable

from anyio import to_thread

from core.jobs import store
from core.jobs.states import TERMINAL

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
        self.changed = asyncio.Event()  # replaced by a fresh one each time it is set
        self.task: asyncio.Task | None = None

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
    """The process's feeds, made on a job's first watcher and dropped after its last."""

    def __init__(
        self, sessions: Callable, poll_s: float, encode: Callable[[tuple], str], buffer_rows: int = 10 * BATCH
    ):
        self.sessions, self.poll_s, self.encode, self.buffer_rows = sessions, poll_s, encode, buffer_rows
        self.feeds: dict[uuid.UUID, JobFeed] = {}

    def subscribe(self, job_id: uuid.UUID) -> JobFeed:
        feed = self.feeds.get(job_id)
        if feed is None:
            feed = self.feeds[job_id] = JobFeed(job_id)
            feed.task = asyncio.get_running_loop().create_task(self._poll(feed))
        feed.watchers += 1
        return feed

    def unsubscribe(self, feed: JobFeed) -> None:
        feed.watchers -= 1
        if feed.watchers == 0:
            if feed.task is not None:
                feed.task.cancel()
            if self.feeds.get(feed.job_id) is feed:
                del self.feeds[feed.job_id]

    async def read_encoded(self, job_id: uuid.UUID, after: int) -> tuple[int, str, int]:
        """A watcher's own read of rows before a feed's window: (id of the last row read, the rows encoded, how
        many rows)."""
        return await to_thread.run_sync(self._read_encoded, job_id, after)

    def _read_encoded(self, job_id: uuid.UUID, after: int) -> tuple[int, str, int]:
        with self.sessions() as session:
            rows, _ = store.read_metrics(session, job_id, name=None, after_step=None, cursor=after, limit=BATCH)
        return (rows[-1].id if rows else after), "".join(self.encode(tuple(r)) for r in rows), len(rows)

    def _tick(self, job_id: uuid.UUID, floor: int | None) -> tuple[dict | None, int | None, list]:
        """(status, floor, rows): on the first tick the newest row id becomes the floor, later the rows after it."""
        with self.sessions() as session:
            status = store.job_progress(session, job_id)
            if status is None:
                return None, floor, []
            if floor is None:
                return status, store.last_metric_id(session, job_id), []
            rows, _ = store.read_metrics(session, job_id, name=None, after_step=None, cursor=floor, limit=BATCH)
            return status, floor, [tuple(r) for r in rows]

    async def _poll(self, feed: JobFeed) -> None:
        while True:
            last = feed.ids[-1] if feed.ids else feed.floor
            try:
                status, floor, rows = await to_thread.run_sync(self._tick, feed.job_id, last)
            except Exception:  # the database is away: watchers keep waiting (with keep-alives) while it is
                log.warning("reading job %s for its event streams failed; retrying", feed.job_id, exc_info=True)
                await asyncio.sleep(self.poll_s)
                continue
            if status is None:
                feed.gone = True
                feed._publish()
                return
            started = feed.floor is None
            if started:
                feed.floor = floor
            self._append(feed, rows)
            caught_up = len(rows) < BATCH
            moved = caught_up and status != feed.status
            if moved:
                feed.status = status
            if started or rows or moved:  # wake the watchers only for news
                feed._publish()
            if caught_up and status["status"] in TERMINAL:
                return
            if caught_up:
                await asyncio.sleep(self.poll_s)

    def _append(self, feed: JobFeed, rows: list) -> None:
        feed.ids.extend(r[0] for r in rows)
        feed.encoded.extend(self.encode(r) for r in rows)
        excess = len(feed.ids) - self.buffer_rows
        if excess > 0:
            drop = max(excess, self.buffer_rows // 2)  # trim in halves, not row by row
            feed.floor = feed.ids[drop - 1]
            del feed.ids[:drop], feed.encoded[:drop]
