"""Params of the test-only ``unsummarized`` kind."""

from __future__ import annotations

from core.techniques.base import KindSpec, Params


class UnsummarizedParams(Params):
    value: float = 0.5


SPEC = KindSpec(
    name="unsummarized",
    description="Test only: a run that succeeds and a summary that cannot be built.",
    params=UnsummarizedParams,
    example={"value": 0.5},
)
