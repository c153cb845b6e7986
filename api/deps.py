"""Request-scoped dependencies: a database session and the app-wide settings and Celery app."""
from __future__ import annotations

import uuid
from collections.abc import Iterator

from fastapi import Request
from sqlalchemy.orm import Session

from api.problems import Problem


def db(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


def parse_id(raw: str, what: str = "job") -> uuid.UUID:
    """Ids are UUIDs; anything else names nothing, so it is a 404 like an unknown id."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise Problem(404, f"{what} {raw!r} not found") from None
