"""Keyset page cursors on (created_at, id), for lists read newest first: opaque to clients, checked when read back."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime


def encode_cursor(created_at: datetime, row_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{row_id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """ValueError on anything that is not a cursor this service made."""
    try:
        raw = base64.urlsafe_b64decode(cursor.encode()).decode()
    except (binascii.Error, UnicodeError):
        raise ValueError("not a cursor") from None
    ts, row_id = raw.split("|")
    created_at = datetime.fromisoformat(ts)
    if created_at.tzinfo is None:  # this service's cursors carry UTC; a naive one was made elsewhere
        raise ValueError("cursor timestamp has no timezone")
    return created_at, uuid.UUID(row_id)
