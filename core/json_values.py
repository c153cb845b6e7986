"""Values as JSON can hold them: NaN and infinity, which JSON (and PostgreSQL's json type) cannot spell, become None."""

from __future__ import annotations

import math


def json_safe(value):
    """``value`` with every non-finite float in it (in dicts, lists and tuples, at any depth) replaced by None, and
    dict keys as strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
