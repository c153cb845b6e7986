"""Newest-first keyset paging on (created_at, id), the one way every list of the API pages (jobs, datasets,
studies): a cursor names the last row of a page, and the next page starts just below it through an index ending in
(created_at, id), however deep the page is. New rows arriving meanwhile move nothing."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy import Select, tuple_
from sqlalchemy.orm import InstrumentedAttribute


class Keyed(Protocol):
    @property
    def created_at(self) -> datetime: ...

    @property
    def id(self) -> uuid.UUID: ...


Row = TypeVar("Row", bound=Keyed)


def encode_cursor(created_at: datetime, row_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{row_id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """Raises ValueError (or UnicodeDecodeError) on anything that is not a cursor this service made."""
    raw = base64.urlsafe_b64decode(cursor.encode()).decode()
    ts, row_id = raw.split("|")
    created_at = datetime.fromisoformat(ts)
    if created_at.tzinfo is None:  # this service's cursors carry UTC; a naive one was made elsewhere
        raise ValueError("cursor timestamp has no timezone")
    return created_at, uuid.UUID(row_id)


def newest_first(
    query: Select[Any],
    created_at: InstrumentedAttribute[datetime],
    row_id: InstrumentedAttribute[uuid.UUID],
    limit: int,
    cursor: str | None,
) -> Select[Any]:
    """``query`` ordered newest first, from just below ``cursor``, one row past ``limit`` (``page`` tells from it
    whether there is a next page)."""
    if cursor:
        ts, last = decode_cursor(cursor)
        # a row comparison, which PostgreSQL turns into an index bound: a deep page starts where the cursor points
        # instead of filtering its way down from the newest row
        query = query.where(tuple_(created_at, row_id) < tuple_(ts, last))
    return query.order_by(created_at.desc(), row_id.desc()).limit(limit + 1)


def page(rows: Sequence[Row], limit: int) -> tuple[list[Row], str | None]:
    """The page of at most ``limit`` rows read by a ``newest_first`` query, and the cursor of the next (None: last)."""
    if len(rows) <= limit:
        return list(rows), None
    return list(rows[:limit]), encode_cursor(rows[limit - 1].created_at, rows[limit - 1].id)
