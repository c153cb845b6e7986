"""JSON from an archive, with its nesting depth measured on the raw bytes before ``json.loads`` sees them.

A document nested 100,000 deep would make a recursive parser overflow; counting brackets outside strings first
costs one regular-expression pass and a cumulative sum, whatever the depth.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from core.networks.exported.errors import ArchiveRejected

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))


def depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in ``raw`` (brackets inside strings do not count)."""
    brackets = np.frombuffer(_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS), dtype=np.uint8)
    if brackets.size == 0:
        return 0
    steps = np.where((brackets == ord("[")) | (brackets == ord("{")), 1, -1)
    return int(np.cumsum(steps).max())


def loads(raw: bytes, where: str, max_depth: int) -> Any:
    """``raw`` parsed as JSON once its depth is known to be at most ``max_depth``; ``ArchiveRejected`` otherwise."""
    found = depth(raw)
    if found > max_depth:
        raise ArchiveRejected(f"{where}: JSON nested {found} deep, more than {max_depth}")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ArchiveRejected(f"{where}: not valid JSON ({str(exc)[:120]})") from None
