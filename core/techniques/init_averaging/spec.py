"""The ``init_averaging`` kind as the API sees it: params, budget check, description and example (no torch)."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from core.techniques.base import KindSpec, Params


class InitAveragingParams(Params):
    widths: list[Annotated[int, Field(ge=1, le=16384)]] = Field(min_length=2, max_length=17,
                                                                description="layer widths, input first")
    means: list[Literal["arithmetic", "geometric", "quadratic", "harmonic"]] = Field(
        default_factory=lambda: ["arithmetic", "geometric", "quadratic"], min_length=1, max_length=4)
    distribution: Literal["normal", "uniform"] = "normal"
    activation: Literal["linear", "relu", "tanh"] = "linear"
    batch: int = Field(1024, ge=16, le=65536)
    trials: int = Field(4, ge=1, le=64, description="independent weight draws averaged per mean")

    @model_validator(mode="after")
    def _fits(self):
        weights = sum(a * b for a, b in zip(self.widths, self.widths[1:]))
        activations = self.batch * sum(self.widths)
        need = 4 * (weights + 3 * activations)
        if need > 4 * 2**30:
            raise ValueError(f"batch: weights and activations need {need / 2**30:.1f} GiB (> 4 GiB)")
        return self


SPEC = KindSpec(
    name="init_averaging",
    description="Forward/backward variance through non-square layers initialized with averaged fans.",
    params=InitAveragingParams,
    example={"widths": [768, 3072, 768], "means": ["arithmetic", "geometric", "quadratic", "harmonic"],
             "distribution": "normal", "activation": "linear", "batch": 512, "trials": 2},
)
