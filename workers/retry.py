"""Retrying database work through a short outage (e.g. a PostgreSQL restart), so a worker loses no result."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError

log = logging.getLogger(__name__)
T = TypeVar("T")


def retrying(fn: Callable[[], T], attempts: int = 60, delay_s: float = 1.0) -> T:
    """Call ``fn`` (which must open its own session) until the database answers; other errors pass through."""
    for _ in range(attempts - 1):
        try:
            return fn()
        except DBAPIError as exc:
            if not (isinstance(exc, OperationalError) or exc.connection_invalidated):
                raise
            log.warning("database unavailable (%s); retrying in %.1fs", exc.__class__.__name__, delay_s)
            time.sleep(delay_s)
    return fn()
