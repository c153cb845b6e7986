"""The ``unsummarized`` kind's run: returns its value at once."""

from __future__ import annotations


def run(params, ctx) -> dict:
    ctx.progress(1.0, "done")
    return {"value": params.value}
