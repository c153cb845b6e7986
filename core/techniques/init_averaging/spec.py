"""The ``init_averaging`` kind as the API sees it: params, budget check, description and example (no torch)."""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from pydantic import Field, model_validator

from core.networks.budget import Workload
from core.networks.spec import ModelSpec
from core.techniques.base import KindSpec, Params

BUILTIN_COLUMNS = {"digits": 64, "clusters": 16}
UPLOAD_CLASSES = 256  # an uploaded dataset's label count is unknown before the run: budget generously
# core.averaged_init's names (this module imports no torch); `quadratic` is the RMS mean since migration 0015
Mean = Literal["arithmetic", "geometric", "quadratic", "least_squares", "harmonic"]
DEFAULT_MEANS: tuple[Mean, ...] = ("arithmetic", "geometric", "quadratic")


class InitAveragingParams(Params):
    widths: list[Annotated[int, Field(ge=1, le=16384)]] | None = Field(
        None, min_length=2, max_length=17, description="layer widths, input first (or give model)"
    )
    model: ModelSpec | None = Field(
        None,
        description="analyse this network instead of a linear stack: a table of "
        "its non-square weights and variance ratios through the whole model",
    )
    means: list[Mean] = Field(default_factory=lambda: list(DEFAULT_MEANS), min_length=1, max_length=5)
    distribution: Literal["normal", "uniform"] = "normal"
    activation: Literal["linear", "relu", "tanh"] = Field("linear", description="widths only")
    batch: int = Field(1024, ge=1, le=65536)
    trials: int = Field(4, ge=1, le=64, description="independent weight draws averaged per mean")
    dataset: Literal["digits", "clusters"] | UUID = Field(
        "digits", description="model with a classifier (MLP, CNN, ResNet): the rows fed through it"
    )
    seq_len: int = Field(128, ge=2, le=8192, description="model with tokens: sequence length (capped at its context)")

    @model_validator(mode="after")
    def _fits(self):
        if (self.widths is None) == (self.model is None):
            raise ValueError("widths: give either widths (a linear stack) or model, not both or neither")
        if self.widths is None:
            return self
        if self.batch < 16:
            raise ValueError("batch: at least 16 rows for a linear stack")
        weights = sum(a * b for a, b in zip(self.widths, self.widths[1:]))
        activations = self.batch * sum(self.widths)
        need = 4 * (weights + 3 * activations)
        if need > 4 * 2**30:
            raise ValueError(f"batch: weights and activations need {need / 2**30:.1f} GiB (> 4 GiB)")
        return self


def model_workload(params: InitAveragingParams, columns: int | None) -> Workload | None:
    """One batch forward and backward through the model, its weights and their gradients; no optimizer."""
    if params.model is None:
        return None
    builtin = not isinstance(params.dataset, UUID)
    return Workload(
        batch=params.batch,
        seq_len=params.seq_len,
        features=columns if isinstance(params.dataset, UUID) else BUILTIN_COLUMNS[params.dataset],
        classes=10 if builtin else UPLOAD_CLASSES,
        optimizer_states=0,
    )


SPEC = KindSpec(
    name="init_averaging",
    description="Forward/backward variance through non-square layers initialized with averaged fans.",
    params=InitAveragingParams,
    example={
        "widths": [768, 3072, 768],
        "means": ["arithmetic", "geometric", "quadratic", "least_squares", "harmonic"],
        "distribution": "normal",
        "activation": "linear",
        "batch": 512,
        "trials": 2,
    },
    model_workload=model_workload,
)
