"""Server-Sent Events of one job: status changes and new metric rows, so clients need not poll.

Each metric event carries its row id as the SSE ``id``; a client that reconnects with ``Last-Event-ID`` gets exactly
the rows after the last one it saw. A stream reads nothing from the database once it has caught up: the process's
feed of the job (``core.jobs.watch``) polls once for all its watchers. Each API key may hold
``GRADLAB_MAX_STREAMS_PER_KEY`` streams open on an API process (429 beyond); a stream ends after the terminal
status event.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from api.auth import principal
from api.deps import parse_id
from api.problems import Problem
from core.jobs import service
from core.jobs.states import TERMINAL
from core.jobs.watch import BATCH, JobFeeds
from core.keys.repository import Principal

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

KEEPALIVE_S = 10.0
RETRY_MS = 2000


class StreamSlots:
    """Open streams per API key in this process, against a cap."""

    def __init__(self, cap: int):
        self.cap = cap
        self.open: dict[str, int] = {}

    def take(self, key: str) -> Callable[[], None]:
        """A slot for ``key`` and the function that frees it; Problem 429 when the key holds ``cap`` already."""
        if self.open.get(key, 0) >= self.cap:
            raise Problem(
                429,
                f"this API key holds {self.cap} open event streams on this server (the limit); close one first",
                headers={"Retry-After": "5"},
            )
        self.open[key] = self.open.get(key, 0) + 1

        def free() -> None:
            self.open[key] -= 1
            if not self.open[key]:
                del self.open[key]

        return free


class HeldStream(StreamingResponse):
    """Frees its slot and leaves its job's feed when the response ends, however it ends (finished, client gone,
    server stopping): a stream cut while it waited to write is closed here, not whenever it is collected."""

    def __init__(self, content: AsyncGenerator[str, None], free: Callable[[], None], **kwargs):
        super().__init__(content, **kwargs)
        self.stream, self.free = content, free

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self.stream.aclose()
            finally:
                self.free()


def _last_id(raw: str | None) -> int:
    """Last-Event-ID as a metric row id; anything else means "from the beginning" (row ids start at 1)."""
    if raw is None or not raw.strip().isdigit():
        return 0
    return min(int(raw.strip()), 2**62)


def _frame(event: str, data: dict, event_id: int | None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def encode_metric(row: tuple) -> str:
    row_id, step, name, value = row
    return _frame("metric", {"step": step, "name": name, "value": value}, row_id)


async def _stream(feeds: JobFeeds, job_id: uuid.UUID, after: int) -> AsyncGenerator[str, None]:
    """Everything new since the last write goes out as one chunk: a wake-up of a thousand watchers is a thousand
    writes, not one per row each."""
    yield f"retry: {RETRY_MS}\n\n"
    feed = feeds.subscribe(job_id)
    try:
        sent_status = None
        last_write = time.monotonic()
        while True:
            changed = feed.changed  # taken before reading the feed: a change after this point wakes us
            caught_up = False
            floor = feed.floor
            if floor is None:  # the feed has not read the job yet
                chunk = ""
            elif after < floor:  # rows from before the feed's window: read them ourselves
                last, chunk, n = await feeds.read_encoded(job_id, after)
                # fewer than a batch: every row up to the floor is in them (the floor was read earlier)
                after = last if n == BATCH else max(last, floor)
            else:
                after, chunk = feed.encoded_after(after)
                caught_up = True
            if caught_up and feed.status is not None and feed.status != sent_status:
                sent_status = feed.status  # published by the feed only once its rows up to it were read
                chunk += _frame("status", sent_status, after or None)
            if chunk:
                yield chunk
                last_write = time.monotonic()
            if feed.gone or (sent_status is not None and sent_status["status"] in TERMINAL):
                return  # the job ended, or was removed while being watched
            if (floor is not None and not caught_up) or changed is not feed.changed:
                continue  # the feed's rows come next, or news arrived while we were writing
            wait = KEEPALIVE_S - (time.monotonic() - last_write)
            try:
                await asyncio.wait_for(changed.wait(), max(0.0, wait))
            except TimeoutError:
                yield ": keep-alive\n\n"
                last_write = time.monotonic()
    finally:
        feeds.unsubscribe(feed)


def _check_visible(sessions, who: Principal, job_id: uuid.UUID) -> None:
    with sessions() as session:
        service.check_visible(session, who, job_id)


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "`status` events {status, progress, message, attempt} on each change and "
            "`metric` events {step, name, value} with the metric row id as SSE id; "
            "send Last-Event-ID to resume; the stream ends after a terminal status",
        },
        429: {"description": "this API key holds the most open event streams allowed"},
    },
)
async def job_events(
    job_id: str,
    request: Request,
    who: Principal = Depends(principal),
    last_event_id: Annotated[str | None, Header(max_length=32)] = None,
):
    jid = parse_id(job_id)
    state = request.app.state
    await run_in_threadpool(_check_visible, state.sessions, who, jid)
    free = state.stream_slots.take(request.state.key_hash)
    return HeldStream(
        _stream(state.job_feeds, jid, _last_id(last_event_id)),
        free,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
