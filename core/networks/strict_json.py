"""JSON a user sent as a file (a config.json, a safetensors header, a checkpoint index), parsed with bounds.

``json.loads`` recurses once per nesting level (a document nested 30,000 deep raises RecursionError), accepts
``NaN``, ``Infinity`` and ``1e400`` (which PostgreSQL's JSON refuses when the row is written) and converts integers
of any length (a 5,000-digit one raises a plain ValueError). Here the depth is measured on the raw bytes first
(``exported.jsonsafe.depth``), and a non-finite number or an integer beyond 64 bits is refused while parsing, each
with a message naming the file.
"""

from __future__ import annotations

import json
import math
from typing import Any

from core.networks.exported.jsonsafe import depth

MAX_INT_DIGITS = 20
"""Digits of the longest integer accepted (2**64 has 20): sizes, offsets and ids all fit in 64 bits."""


class JsonRefused(ValueError):
    """The document is not JSON this service reads; the message is "<where>: <why>"."""


def parse(raw: bytes, where: str, max_depth: int) -> Any:
    """``raw`` as JSON, or ``JsonRefused`` naming ``where``: deeper than ``max_depth``, a non-finite number, an
    integer of more than ``MAX_INT_DIGITS`` digits, or not JSON at all."""
    found = depth(raw)
    if found > max_depth:
        raise JsonRefused(f"{where}: JSON nested {found} deep, more than {max_depth}")

    def number(text: str) -> int:
        if len(text.lstrip("-")) > MAX_INT_DIGITS:
            raise JsonRefused(f"{where}: an integer of {len(text.lstrip('-'))} digits; at most {MAX_INT_DIGITS}")
        return int(text)

    def real(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise JsonRefused(f"{where}: {text[:40]} is beyond the range of a finite number")
        return value

    def constant(name: str) -> float:
        raise JsonRefused(f"{where}: {name} is not a JSON number (only finite numbers are accepted)")

    try:
        return json.loads(raw, parse_int=number, parse_float=real, parse_constant=constant)
    except JsonRefused:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise JsonRefused(f"{where}: not JSON ({str(exc)[:160]})") from None
