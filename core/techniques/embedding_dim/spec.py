"""The ``embedding_dim`` kind as the API sees it: params, budget check, description and example (no torch)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core import dimension
from core.networks.spec import TRANSFORMER_ARCHS, BuiltinModel, ModelSpec
from core.techniques.base import KindSpec, Params


class SweepParams(BaseModel):
    """Fit exp(<u,v>)/Z to a synthetic N×N target of known rank for a range of n, and find the elbow: the fit is
    exact from the target's rank r (or r + 1, the softmax's free constant) on, so the elbow measures r."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    vocab_size: int = Field(128, ge=8, le=1024)
    target_rank: int = Field(16, ge=1, le=256)
    dims: list[Annotated[int, Field(ge=1, le=512)]] = Field(
        default_factory=lambda: [2, 4, 8, 12, 16, 24, 32, 48], min_length=2, max_length=32
    )
    steps: int = Field(300, ge=10, le=5000)
    lr: float = Field(0.05, gt=0, le=1.0)

    @model_validator(mode="after")
    def _bounded(self):
        work = self.vocab_size**2 * sum(self.dims) * self.steps
        if work > 2e11:
            raise ValueError(f"steps: vocab_size² · sum(dims) · steps = {work:.2e} exceeds 2e11")
        return self


class EmbeddingDimParams(Params):
    vocab_sizes: list[Annotated[int, Field(ge=2, le=10**15)]] | None = Field(
        None, min_length=1, max_length=64, description="vocabulary sizes N to bound; optional when model is given"
    )
    coefficient: Annotated[float, Field(gt=0, le=1000)] | Literal["exact"] = dimension.POST_COEFFICIENT
    entropy_dims: list[Annotated[int, Field(ge=2, le=100_000)]] = Field(
        default_factory=lambda: [16, 64, 128, 512], min_length=1, max_length=32
    )
    sweep: SweepParams | None = None
    model: ModelSpec | None = Field(
        None,
        description="a Transformer whose token embedding and attention heads are "
        "checked against its vocabulary and context (model_checks in the result)",
    )

    @model_validator(mode="after")
    def _model_has_embeddings(self):
        if self.vocab_sizes is None and self.model is None:
            raise ValueError("vocab_sizes: give vocabulary sizes, a model, or both")
        if isinstance(self.model, BuiltinModel) and self.model.arch not in TRANSFORMER_ARCHS:
            raise ValueError(
                f"model.arch: {self.model.arch} has no token embedding; use transformer_encoder or "
                "causal_lm, a Hugging Face config or an uploaded model"
            )
        return self


SPEC = KindSpec(
    name="embedding_dim",
    description="Minimum embedding dimension n > 8.33·ln N, entropy per dimension, and an empirical fit sweep.",
    params=EmbeddingDimParams,
    example={
        "vocab_sizes": [512, 100000, 5000000],
        "coefficient": 8.33,
        "entropy_dims": [16, 64, 128, 512],
        "sweep": {"vocab_size": 64, "target_rank": 8, "dims": [2, 4, 6, 8, 9, 12, 16, 24], "steps": 200},
    },
)
