"""Server-Sent Events of one job: status changes and new metric rows, so clients need not poll.

Each metric event carries its row id as the SSE ``id``; a client that reconnects with ``Last-Event-ID`` gets exactly
the rows after the last one it saw. The stream polls the database with a short session per tick (never one session
for the whole stream, which would pin a pooled connection per watcher) and ends after the terminal status event.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from api.auth import owns, principal
from api.deps import parse_id
from api.problems import Problem
from core.jobs import store
from core.jobs.keys import Principal
from core.jobs.models import Job
from core.jobs.states import TERMINAL

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

POLL_S = 0.3
KEEPALIVE_S = 10.0
BATCH = 1000
RETRY_MS = 2000


def _last_id(raw: str | None) -> int | None:
    """Last-Event-ID as a metric row id; anything else means "from the beginning"."""
    if raw is None or not raw.strip().isdigit():
        return None
    return min(int(raw.strip()), 2**62)


def _frame(event: str, data: dict, event_id: int | None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _tick(sessions, job_id: uuid.UUID, after: int | None) -> tuple[dict | None, list]:
    """The job's status, then the metric rows after ``after`` (status first: rows read after a terminal status
    include every row the worker wrote, since it writes them before finishing)."""
    with sessions() as session:
        row = session.execute(select(Job.status, Job.progress, Job.message, Job.attempt)
                              .where(Job.id == job_id)).first()
        if row is None:
            return None, []
        status = {"status": row.status, "progress": row.progress, "message": row.message, "attempt": row.attempt}
        rows, _ = store.read_metrics(session, job_id, name=None, after_step=None, cursor=after, limit=BATCH)
        return status, [(r.id, r.step, r.name, r.value) for r in rows]


async def _stream(sessions, job_id: uuid.UUID, after: int | None) -> AsyncIterator[str]:
    yield f"retry: {RETRY_MS}\n\n"
    sent_status = None
    last_write = time.monotonic()
    while True:
        status, rows = await run_in_threadpool(_tick, sessions, job_id, after)
        if status is None:  # the job was removed while being watched
            return
        for row_id, step, name, value in rows:
            after = row_id
            yield _frame("metric", {"step": step, "name": name, "value": value}, row_id)
            last_write = time.monotonic()
        if len(rows) == BATCH:  # more rows are waiting: read them before sleeping or ending
            continue
        if status != sent_status:
            sent_status = status
            yield _frame("status", status, after)
            last_write = time.monotonic()
            if status["status"] in TERMINAL:
                return
        if time.monotonic() - last_write >= KEEPALIVE_S:
            yield ": keep-alive\n\n"
            last_write = time.monotonic()
        await asyncio.sleep(POLL_S)


@router.get("/{job_id}/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "`status` events {status, progress, message, attempt} on each change and "
                                            "`metric` events {step, name, value} with the metric row id as SSE id; "
                                            "send Last-Event-ID to resume; the stream ends after a terminal status"}})
def job_events(job_id: str, request: Request, who: Principal = Depends(principal),
               last_event_id: Annotated[str | None, Header(max_length=32)] = None):
    jid = parse_id(job_id)
    with request.app.state.sessions() as session:
        tenant = session.scalar(select(Job.tenant).where(Job.id == jid))
    if tenant is None or not owns(who, tenant):
        raise Problem(404, f"job {job_id} not found")
    return StreamingResponse(_stream(request.app.state.sessions, jid, _last_id(last_event_id)),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
