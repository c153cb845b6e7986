"""The ``eg_stepsize`` kind as the API sees it: params, budget check, description and example (no torch)."""

from __future__ import annotations

import math
from typing import Annotated, Literal
from uuid import UUID

from pydantic import Field, model_validator

from core.data.needs import DatasetNeeds
from core.networks.budget import Workload
from core.networks.spec import TRANSFORMER_ARCHS, BuiltinModel, ModelSpec
from core.techniques.base import KindSpec, Params

MEMORY_BUDGET = 4 * 2**30
WORK_BUDGET = 2e13  # multiply-adds in all runs together: tens of minutes on a CPU worker
MAX_EVAL_POINTS = 1000
HOLDOUT = 0.2  # the held-out fraction: a fifth of the rows (arrays) or of the rows of a text stream


class SGDSpec(Params):
    name: Literal["sgd"] = "sgd"
    lr: float = Field(0.3, gt=0, le=100)


class MomentumSpec(Params):
    name: Literal["momentum"] = "momentum"
    lr: float = Field(0.03, gt=0, le=100)
    momentum: float = Field(0.9, ge=0, lt=1)


class AdamSpec(Params):
    name: Literal["adam"] = "adam"
    lr: float = Field(3e-3, gt=0, le=10)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0, le=1)


class HypergradientSpec(Params):
    name: Literal["hypergradient"] = "hypergradient"
    lr: float = Field(0.3, gt=0, le=100)
    beta: float = Field(1e-3, ge=0, le=10, description="rate of α ← α + β <g_{t-1}, g_t>")
    lr_floor: float | None = Field(
        0.0, ge=0, le=100, description="safety floor of α; null: the paper's rule, under which α may turn negative"
    )


class EGStepSizeSpec(Params):
    name: Literal["eg_stepsize"] = "eg_stepsize"
    lr: float = Field(0.3, gt=0, le=100)
    gamma: float = Field(100.0, ge=0, le=1e6, description="EG rate of ν; the product g_{t-1} g_t is not scale free")
    granularity: Literal["coordinate", "layer", "global"] = "coordinate"
    max_log_step: float | None = Field(
        0.1, gt=0, le=10, description="safety clamp of each step's change of log ν; null: off (the published rule)"
    )
    max_log_nu: float | None = Field(10.0, gt=0, le=50, description="safety clamp of log ν; null: off")


class EGFunnelSpec(Params):
    name: Literal["eg_funnel"] = "eg_funnel"
    lr: float = Field(0.03, gt=0, le=100)
    momentum: float = Field(0.9, ge=0, lt=1)
    gamma_p: float = Field(100.0, ge=0, le=1e6, description="EG rate of the per-coordinate gains p")
    gamma_s: float = Field(1.0, ge=0, le=1e6, description="EG rate of the scale s")
    beta: float = Field(0.9, ge=0, lt=1, description="EMA factor of the gradients that drive p")
    scale: Literal["layer", "global"] = "layer"
    max_log_step: float | None = Field(0.1, gt=0, le=10, description="safety clamp of each exponent; null: off")
    max_log_gain: float | None = Field(10.0, gt=0, le=50, description="safety clamp of log p and log s; null: off")


OptimizerSpec = Annotated[
    SGDSpec | MomentumSpec | AdamSpec | HypergradientSpec | EGStepSizeSpec | EGFunnelSpec, Field(discriminator="name")
]


def _default_optimizers() -> list:
    return [SGDSpec(), MomentumSpec(), AdamSpec(), HypergradientSpec(), EGStepSizeSpec(), EGFunnelSpec()]


def param_count(dim: int, classes: int, model: str, hidden: int, depth: int) -> int:
    """Weights and biases of the classifier ``_build_model`` makes."""
    widths = [dim] + ([hidden] * depth if model == "mlp" else []) + [classes]
    return sum(a * b + b for a, b in zip(widths, widths[1:]))


class EGStepSizeParams(Params):
    dataset: Literal["digits", "clusters"] | UUID = "digits"
    model: Literal["linear", "mlp"] | ModelSpec = Field(
        "mlp",
        description="linear or mlp, or a model spec: a classifier (builtin mlp/cnn/resnet) on labelled rows, "
        "or a token model (causal or masked LM) on rows of token ids (digits: pixel levels 0..16)",
    )
    hidden: int = Field(64, ge=2, le=1024, description="width of each hidden layer (mlp)")
    depth: int = Field(1, ge=1, le=4, description="number of hidden layers (mlp)")
    optimizers: list[OptimizerSpec] = Field(default_factory=_default_optimizers, min_length=1, max_length=8)
    lr_scales: list[float] = Field(
        default_factory=lambda: [0.1, 1.0, 10.0],
        min_length=1,
        max_length=8,
        description="each optimizer runs at lr times each scale",
    )
    steps: int = Field(300, ge=1, le=20000)
    batch_size: int = Field(64, ge=1, le=4096)
    eval_every: int = Field(10, ge=1, le=20000, description="steps between held-out evaluations")
    eval_size: int = Field(
        512,
        ge=1,
        le=8192,
        description="held-out rows (text: windows of the model's context) scored at each evaluation: a large "
        "model's evaluation costs about eval_size forward passes",
    )
    shift_every: int = Field(0, ge=0, le=20000, description="rotate the inputs every this many steps; 0: never")
    shift_angle: float = Field(60.0, gt=0, le=180, description="degrees each shift rotates every random plane")
    recovery_tol: float = Field(0.1, ge=0, le=10, description="recovered: loss <= pre-shift loss x (1 + tol)")
    seeds: int = Field(1, ge=1, le=5)

    @model_validator(mode="after")
    def _fits(self):
        if any(not 1e-4 <= s <= 1e4 for s in self.lr_scales):
            raise ValueError("lr_scales: each scale must be in [1e-4, 1e4]")
        if math.ceil(self.steps / self.eval_every) > MAX_EVAL_POINTS:
            raise ValueError(f"eval_every: more than {MAX_EVAL_POINTS} evaluations per run; raise eval_every")
        if self.shift_every and self.shift_every % self.eval_every:
            raise ValueError("shift_every: must be a multiple of eval_every so the pre-shift loss is measured")
        if isinstance(self.model, str):
            check_budget(self, dim=64, classes=10)
        elif token_model(self.model):
            if self.shift_every:
                raise ValueError("shift_every: shifts rotate continuous input rows; a token model takes 0")
            if self.dataset == "clusters":
                raise ValueError(
                    "model: token models train on token ids (digits, an upload of integer rows, or a text "
                    "dataset); clusters is continuous"
                )
        return self


def check_budget(params: EGStepSizeParams, dim: int, classes: int) -> None:
    """Refuse a job whose memory or total work would not fit one worker (builtins: dim 64, 10 classes)."""
    assert isinstance(params.model, str)  # the linear or MLP model of this kind; a model spec has its own budget
    n = param_count(dim, classes, params.model, params.hidden, params.depth)
    width = dim + classes + (params.hidden * params.depth if params.model == "mlp" else 0)
    need = 4 * (12 * n + 3 * params.batch_size * width + 2 * params.eval_size * width + 2 * dim * dim)
    if need > MEMORY_BUDGET:
        raise ValueError(f"hidden: model, optimizer state and activations need {need / 2**30:.1f} GiB (> 4 GiB)")
    runs = len(params.optimizers) * len(params.lr_scales) * params.seeds
    work = runs * params.steps * (3 * params.batch_size * n + params.batch_size * dim * dim)
    if work > WORK_BUDGET:
        raise ValueError(f"steps: {work:.1e} multiply-adds over {runs} runs exceeds {WORK_BUDGET:.0e}")


def token_model(model) -> bool:
    return not isinstance(model, BuiltinModel) or model.arch in TRANSFORMER_ARCHS


def model_workload(params: EGStepSizeParams, columns: int | None) -> Workload | None:
    """One run at a time: weights, gradients, the richest optimizer state (EGFunnel: momentum, p, s and their
    logs), one minibatch of activations, and each seed's initial weights."""
    if isinstance(params.model, str):
        return None
    features = columns if isinstance(params.dataset, UUID) else {"digits": 64, "clusters": 16}[params.dataset]
    return Workload(
        batch=params.batch_size,
        seq_len=features,
        features=features,
        classes=10 if not isinstance(params.dataset, UUID) else 256,
        optimizer_states=5,
        extra_buffers=params.seeds,
    )


def dataset_needs(params: EGStepSizeParams) -> DatasetNeeds:
    """Classifiers need labelled rows (square images for a CNN); token models read rows of token ids (arrays) or
    windows of a text dataset's token stream, as momentum_accumulation does."""
    model = params.model
    if isinstance(model, str):
        return DatasetNeeds(labels=True)
    if isinstance(model, BuiltinModel) and not token_model(model):
        return DatasetNeeds(labels=True, square_rows=model.arch in ("cnn", "resnet"))
    return DatasetNeeds(kinds=("arrays", "text"))


SPEC = KindSpec(
    name="eg_stepsize",
    description="Exponentiated-gradient step-size adaptation vs fixed rates, momentum, Adam and hypergradient SGD.",
    params=EGStepSizeParams,
    example={
        "dataset": "digits",
        "model": "mlp",
        "hidden": 32,
        "depth": 1,
        "optimizers": [
            {"name": "sgd"},
            {"name": "momentum"},
            {"name": "adam"},
            {"name": "hypergradient"},
            {"name": "eg_stepsize"},
            {"name": "eg_funnel"},
        ],
        "lr_scales": [0.1, 1.0, 10.0],
        "steps": 300,
        "batch_size": 64,
        "eval_every": 10,
        "shift_every": 100,
        "shift_angle": 60.0,
        "seeds": 1,
    },
    model_workload=model_workload,
    dataset_needs=dataset_needs,
)
