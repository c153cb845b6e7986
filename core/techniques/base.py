"""What a technique module provides and what it may ask of the job that runs it.

A technique module defines a ``Params`` model (validated at the API, before anything is queued)
and ``run(params, ctx) -> dict``; it exports both as ``KIND``. It never sees HTTP, SQL or Celery:
everything it reports goes through the ``RunContext`` it is handed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict


class Params(BaseModel):
    """Base of every kind's params: unknown fields, NaN and infinity are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class JobCancelled(Exception):
    """Raised by ``RunContext.check_cancelled`` when the job was cancelled: unwinds the technique."""


class JobTimedOut(Exception):
    """Raised by ``RunContext.check_cancelled`` when the job ran past its ``timeout_s``."""


class RunContext(Protocol):
    device: torch.device
    seed: int

    def progress(self, fraction: float, message: str = "") -> None:
        """Report progress in [0, 1] with a short human-readable message."""

    def metric(self, step: int, name: str, value: float) -> None:
        """Log one point of a time series; buffered, so it is cheap to call every step."""

    def artifact(self, name: str, data: bytes, media_type: str) -> None:
        """Store a named artifact (PNG plot, JSON, NPY array)."""

    def check_cancelled(self) -> None:
        """Raise JobCancelled / JobTimedOut when the job must stop; call at least once per step."""

    def load_dataset(self, dataset_id: str) -> dict[str, np.ndarray]:
        """Arrays of an uploaded dataset (``x`` and optionally ``y``)."""


@dataclass(frozen=True)
class Kind:
    """A job kind: its name, params model, run function and a runnable example."""

    name: str
    description: str
    params: type[Params]
    run: Callable[[Any, RunContext], dict]
    example: dict
