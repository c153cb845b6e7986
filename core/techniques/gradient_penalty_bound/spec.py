"""The ``gradient_penalty_bound`` kind as the API sees it: params, budget check, description and example (no torch)."""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from pydantic import Field, model_validator

from core.costs import auto_method, measurement_flops
from core.data.needs import DatasetNeeds
from core.networks.spec import BuiltinModel, ExportedModel, ModelSpec
from core.techniques.base import KindSpec, Params

MAX_BYTES = 4 * 2**30
"""Memory one job may plan for (a worker's share)."""
MAX_FLOPS = 1e13
"""Work one job may plan for: minutes on a worker CPU."""
MAX_MEASUREMENTS = 200
"""Measurements per job: each costs hundreds of jvp/vjp calls, whose fixed overhead no flop count shows."""
MAX_INPUT_DIM = 4096
"""Widest input accepted (uploads): the forward-mode Frobenius pass costs d_in forward passes per measurement."""
POWER_TOL, POWER_MAX_ITER = 1e-6, 100
"""Power iteration stopping rule; the warm start at ∇_x f keeps the bound valid even when it stops early."""


BUILTIN_SHAPES = {"digits": (64, 10, 1797), "clusters": (16, 10, 2000)}
"""(input dim, classes, samples) of the built-in datasets, so params naming them are checked before queueing."""


class GradientPenaltyBoundParams(Params):
    dataset: Literal["digits", "clusters"] | UUID = Field(
        "digits", description="Built-in name or uploaded UUID (needs integer labels y)."
    )
    widths: list[Annotated[int, Field(ge=1, le=1024)]] = Field(
        [64, 64],
        min_length=0,
        max_length=7,
        description="Hidden widths; the MLP has len(widths) + 1 <= 8 Linear layers.",
    )
    activation: Literal["relu", "tanh", "gelu", "linear"] = "relu"
    init: Literal["default", "xavier", "kaiming", "orthogonal"] = Field(
        "default", description="default: torch's U(±1/sqrt(fan_in)); the others use the activation's gain, zero bias."
    )
    f: Literal["loss", "logit", "sum"] = Field(
        "loss", description="Scalar f per sample: its cross-entropy, one logit, or the sum of all logits."
    )
    target_class: int | None = Field(
        None, ge=0, le=9999, description="Class whose logit f='logit' takes; None: the sample's own label."
    )
    steps: int = Field(300, ge=1, le=5000)
    lr: float = Field(0.1, gt=0.0, le=10.0)
    optimizer: Literal["sgd", "momentum", "adam"] = "sgd"
    batch_size: int = Field(64, ge=1, le=1024)
    every: int = Field(25, ge=1, le=5000, description="Measure the bound every this many steps (and at 0 and the end).")
    samples: int = Field(32, ge=1, le=256, description="Inputs per measurement (the same ones every time).")
    method: Literal["auto", "jacrev", "power"] = Field(
        "auto", description="Spectral norm of ∂h/∂x: materialized by jacrev, power iteration with jvp/vjp, or auto."
    )
    model: ModelSpec | None = Field(
        None,
        description="a chain of affine layers and elementwise activations: the builtin mlp (sets widths and "
        "activation relu), or an exported program (.pt2) whose graph is such a chain (linear or convolution layers, "
        "any elementwise activation; trained from its own weights); other models are refused",
    )

    @model_validator(mode="after")
    def _fits(self) -> GradientPenaltyBoundParams:
        if self.model is not None:
            self._take_chain(self.model)
        if self.every > self.steps:
            raise ValueError("every: must be at most steps")
        if self.steps // self.every + 2 > MAX_MEASUREMENTS:
            raise ValueError(f"every: steps/every gives more than {MAX_MEASUREMENTS} measurements")
        if isinstance(self.dataset, str) and not isinstance(self.model, ExportedModel):
            d_in, classes, n = BUILTIN_SHAPES[self.dataset]
            check_budget(self, d_in, classes, n)
        return self

    def _take_chain(self, model) -> None:
        """The bound factors ‖∂h/∂x‖ layer by layer along a chain h_{l+1} = σ(W_l h_l + b_l); a model with
        pooling, attention, normalisation or residual connections has no such chain. An exported program's graph
        is judged at submit (``core.networks.exported.roles``); it brings its own layers and weights."""
        if isinstance(model, ExportedModel):
            fields = type(self).model_fields
            given = [name for name in ("widths", "activation", "init") if getattr(self, name) != fields[name].default]
            if given:  # compared with the defaults: the stored params, validated again by the worker, list them all
                raise ValueError(f"{given[0]}: an exported model brings its own layers and weights")
            return
        if not isinstance(model, BuiltinModel) or model.arch != "mlp":
            what = (
                f"the builtin {model.arch}"
                if isinstance(model, BuiltinModel)
                else "a Hugging Face transformer (attention, layer norm and residual connections)"
            )
            raise ValueError(
                f"model: {what} is not a chain of affine layers and elementwise activations, so the "
                "per-layer factors of the bound are undefined for it; use the builtin mlp or widths"
            )
        chain = [model.hidden] * model.depth
        if model.hidden > 1024:
            raise ValueError("model.hidden: at most 1024 for this kind")
        if "widths" in self.model_fields_set and self.widths != chain:
            raise ValueError("widths: give widths or a model, not both")
        if "activation" in self.model_fields_set and self.activation != "relu":
            raise ValueError("activation: the builtin mlp uses relu")
        self.widths, self.activation = chain, "relu"


def layer_dims(p: GradientPenaltyBoundParams, d_in: int, classes: int) -> list[int]:
    return [d_in, *p.widths, classes]


def check_budget(p: GradientPenaltyBoundParams, d_in: int, classes: int, n: int, dims: list[int] | None = None) -> None:
    """Raise ValueError("<field>: ...") when the job's planned memory or work exceeds one worker's share.

    ``dims``: the widths of the chain when it is not the MLP of ``widths`` (an exported model, unrolled)."""
    given = dims
    dims = dims or layer_dims(p, d_in, classes)
    d_in, hidden = dims[0], dims[1:-1]
    n_params = sum((a + 1) * b for a, b in zip(dims, dims[1:]))
    method = auto_method(d_in, hidden, p.samples, POWER_MAX_ITER) if p.method == "auto" else p.method
    fwd_bwd = 6 * n_params
    jac = measurement_flops(d_in, hidden, method, POWER_MAX_ITER)
    jac_bytes = 2 * p.samples * sum(hidden) * d_in * 8 if method == "jacrev" else 0
    svd_w = sum(10 * a * b * min(a, b) for a, b in zip(dims, dims[1:]))
    measurements = p.steps // p.every + 2
    train = p.steps * p.batch_size * fwd_bwd
    measure = measurements * (p.samples * (fwd_bwd + jac) + svd_w)
    memory = n_params * (4 * 4 + 8 * 2) + 3 * 4 * p.batch_size * sum(dims) + jac_bytes + 2 * 64 * 2**20 + n * d_in * 8
    if memory > MAX_BYTES:
        field = "method" if jac_bytes > MAX_BYTES / 2 else "widths" if given is None else "model"
        raise ValueError(f"{field}: needs about {memory / 2**30:.1f} GiB, more than {MAX_BYTES / 2**30:.0f} GiB")
    if train + measure > MAX_FLOPS:
        field = "steps" if train > measure else "samples"
        raise ValueError(f"{field}: about {(train + measure):.1e} flops planned, more than {MAX_FLOPS:.0e}")


SPEC = KindSpec(
    name="gradient_penalty_bound",
    description="Measure the input- vs parameter-gradient inequality (and its per-layer factors) while an MLP trains.",
    params=GradientPenaltyBoundParams,
    example={
        "dataset": "digits",
        "widths": [32, 32],
        "activation": "tanh",
        "init": "default",
        "f": "loss",
        "steps": 150,
        "lr": 0.1,
        "optimizer": "sgd",
        "batch_size": 64,
        "every": 25,
        "samples": 16,
        "method": "auto",
    },
    dataset_needs=lambda params: DatasetNeeds(labels=True),
)
