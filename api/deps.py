"""Request-scoped dependencies: a database session, and what the app holds for every request (its settings, the
publisher of wake-up messages); the one way a route reads them."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

from fastapi import Request
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api.problems import Problem
from core.settings import Settings
from workers.publish import Publisher


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


async def app_settings(request: Request) -> Settings:
    """The settings the app was made with (async: read on the event loop, no thread hop)."""
    return request.app.state.settings


async def publisher(request: Request) -> Publisher:
    return request.app.state.publisher


async def session_factory(request: Request) -> sessionmaker:
    """For work that outlives one session (a validation's beat thread)."""
    return request.app.state.sessions
