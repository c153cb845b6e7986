"""Request-scoped dependencies: a database session and the app-wide settings and Celery app."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

from fastapi import Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.problems import Problem


async def db(request: Request) -> AsyncIterator[Session]:
    """A session for the request. Async so that making it (no I/O until first use) and closing one whose
    transaction already ended cost no thread hop; only a close that must roll back goes to the thread pool."""
    session = request.app.state.sessions()
    try:
        yield session
    finally:
        if session.in_transaction():
            await run_in_threadpool(session.close)
        else:
            session.close()


def parse_id(raw: str, what: str = "job") -> uuid.UUID:
    """Ids are UUIDs; anything else names nothing, so it is a 404 like an unknown id."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise Problem(404, f"{what} {raw!r} not found") from None
