"""Artifacts rendered when first asked for, so that a job's run never waits for matplotlib.

A technique stores a ``Recipe`` (a renderer's name and its JSON arguments) where it would store PNG bytes; the
artifact's row keeps it, and the first GET of the artifact renders the bytes, stores them and clears the recipe.
Renderers are looked up in ``RENDERERS`` only (no name from a row is imported otherwise), and their modules import
matplotlib, not torch, so the API process can run them. ``REPORT`` is the job's report.html, made from the job's
row and its PNG artifacts (``core.report``).
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass, field

from core.json_values import json_safe

REPORT = "report"

RENDERERS = {
    "init_averaging.forward_moments": "core.techniques.init_averaging.plots:forward_moments",
}

_pyplot = threading.Lock()  # pyplot keeps global state: one figure at a time per process


@dataclass(frozen=True)
class Recipe:
    renderer: str
    args: dict = field(default_factory=dict)

    def as_json(self) -> dict:
        """What the artifact's row keeps; NaN and infinity become None (JSON has no spelling for them, and a plot
        leaves a None point out as it does a NaN)."""
        return {"renderer": self.renderer, "args": json_safe(self.args)}


def render(recipe: dict) -> bytes:
    """The bytes of a stored recipe (``Recipe.as_json``); ``LookupError`` for a renderer not in ``RENDERERS``."""
    target = RENDERERS.get(recipe.get("renderer", ""))
    if target is None:
        raise LookupError(f"no renderer {recipe.get('renderer')!r}")
    module, name = target.split(":")
    draw = getattr(importlib.import_module(module), name)
    with _pyplot:
        return draw(**recipe.get("args", {}))
