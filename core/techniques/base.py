"""What a kind provides and what it may ask of the job that runs it.

A kind is a package ``core/techniques/<kind>/`` with two modules: ``spec`` defines a ``Params`` model (validated at
the API, before anything is queued) and exports ``SPEC``, a ``KindSpec``; it imports no torch, so the API stays
light. ``run`` defines ``run(params, ctx) -> dict`` (torch). An optional ``summary`` module defines
``summarize(params, result) -> dict`` (pure: a ``core.summary.Summary``), the answer the worker attaches to the
result. Neither sees HTTP, SQL or Celery: everything a run
reports goes through the ``RunContext`` it is handed. This module is imported by both sides, so it holds no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict

from core.data.needs import DatasetNeeds, arrays_only

if TYPE_CHECKING:
    from collections.abc import Mapping

    import numpy as np
    import torch

    from core.data.loader import DatasetView
    from core.networks.stored import ModelFiles
    from core.renders import Recipe


class Params(BaseModel):
    """Base of every kind's params: unknown fields, NaN and infinity are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class JobCancelled(Exception):
    """Raised by ``RunContext.check_cancelled`` when the job was cancelled: unwinds the technique."""


class JobTimedOut(Exception):
    """Raised by ``RunContext.check_cancelled`` when the job ran past its ``timeout_s``."""


class ForeignResource(Exception):
    """Raised by ``RunContext.load_model``/``load_dataset`` for an upload of another tenant than the job's: the job
    fails without reading it (admission refuses such a job; this guards a row that got past it)."""


class RunContext(Protocol):
    device: torch.device
    seed: int

    def progress(self, fraction: float, message: str = "") -> None:
        """Report progress in [0, 1] with a short human-readable message."""

    def metric(self, step: int, name: str, value: float) -> None:
        """Log one point of a time series; buffered, so it is cheap to call every step."""

    def artifact(self, name: str, data: bytes | Recipe, media_type: str) -> None:
        """Store a named artifact (PNG plot, JSON, NPY array), or the recipe that renders it when first asked for
        (``core.renders``)."""

    def check_cancelled(self) -> None:
        """Raise JobCancelled / JobTimedOut when the job must stop; call at least once per step."""

    def load_dataset(self, dataset_id: str) -> DatasetView | Mapping[str, np.ndarray]:
        """An uploaded dataset: a ``core.data.loader`` view (memory-mapped), or arrays ``x`` and maybe ``y``."""

    def load_model(self, model_id: str) -> ModelFiles:
        """A stored model: its config (None for an exported program) and its files on local disk."""


@dataclass(frozen=True)
class KindSpec:
    """What the API knows of a kind: its name, description, params model and a runnable example."""

    name: str
    description: str
    params: type[Params]
    example: dict
    # params -> what one micro-batch on params.model holds (core.networks.budget.Workload), given the columns of an
    # uploaded dataset (None for a built-in one); the API budgets the model against the queue's worker with it
    model_workload: Callable[[Any, int | None], Any] | None = None
    # params -> what they need of an uploaded dataset (checked before queueing; 422 on params.dataset)
    dataset_needs: Callable[[Any], DatasetNeeds] = arrays_only


@dataclass(frozen=True)
class Kind:
    """A kind as a worker runs it: its spec, its run function and (when it has one) its summary function."""

    spec: KindSpec
    run: Callable[[Any, RunContext], dict]
    summarize: Callable[[Any, dict], dict] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def params(self) -> type[Params]:
        return self.spec.params

    @property
    def example(self) -> dict:
        return self.spec.example
