"""Params of the test-only ``hang`` kind."""

from __future__ import annotations

from core.techniques.base import KindSpec, Params


class HangParams(Params):
    block: bool = True  # False: return at once


SPEC = KindSpec(
    name="hang",
    description="Test only: a step that blocks without ever calling check_cancelled.",
    params=HangParams,
    example={"block": False},
)
