"""The ``momentum_accumulation`` kind as the API sees it: params, budget check, description and example (no torch)."""

from __future__ import annotations

import math
from typing import Annotated, Literal
from uuid import UUID

from pydantic import Field, model_validator

from core.data.needs import DatasetNeeds
from core.networks.budget import Workload
from core.networks.spec import TRANSFORMER_ARCHS, BuiltinModel, ModelSpec
from core.techniques.base import KindSpec, Params

Arm = Literal["explicit_buffer", "chi_exact", "beta_tilde_lr_chi", "lr_chi_only", "per_micro_batch"]
ARMS: tuple[Arm, ...] = ("explicit_buffer", "chi_exact", "beta_tilde_lr_chi", "lr_chi_only", "per_micro_batch")
Beta = Annotated[float, Field(ge=0.0, lt=1.0)]
BUILTIN_SHAPES = {"digits": (1797, 64, 10), "clusters": (2000, 16, 10)}  # rows, features, classes
EVAL_CHUNK = 256
TRAIN_PROBE = 512  # at most this many training rows in the train-loss probe (fewer when eval_rows is smaller)
MAX_EVAL_ROWS = 8192  # held-out rows (or text windows) kept in memory and evaluated; training reads sampled rows
MAX_BYTES = 4 * 2**30
MAX_FLOPS = 2e12
MAX_MICRO_STEPS = 300_000


class MomentumAccumulationParams(Params):
    dataset: Literal["digits", "clusters"] | UUID = "digits"
    model: Literal["mlp", "cnn"] | ModelSpec = Field(
        "mlp",
        description="mlp or cnn (cnn needs square images as rows; digits is 8x8), or a model spec: a "
        "classifier (builtin mlp/cnn/resnet) on labelled rows, or a token model (causal or masked LM) trained on "
        "rows of token ids (digits: pixel levels 0..16)",
    )
    hidden: int = Field(64, ge=4, le=1024, description="width of the hidden dense layers")
    channels: int = Field(8, ge=2, le=64, description="cnn only: channels of the first conv (the second has 2x)")
    optimizer: Literal["sgdm", "adam"] = "sgdm"
    betas: tuple[Beta, Beta] = Field((0.9, 0.999), description="β (sgdm uses the first) or Adam's (β1, β2)")
    lr: float = Field(0.1, gt=0.0, le=10.0)
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="sgdm: L2 in the gradient; adam: decoupled")
    accum_steps: int = Field(4, ge=1, le=256, description="k: micro-batches per update")
    micro_batch: int = Field(8, ge=1, le=1024)
    steps: int = Field(800, ge=1, le=100_000, description="micro-batches per arm and seed (the data budget)")
    arms: list[Arm] = Field(default_factory=lambda: list(ARMS), min_length=1, max_length=len(ARMS))
    seeds: int = Field(3, ge=1, le=10, description="independent runs (init and data order) per arm")
    eval_every: int = Field(50, ge=1, le=100_000, description="micro-steps between held-out evaluations")
    holdout: float = Field(0.2, ge=0.05, le=0.5, description="fraction of rows held out")
    eval_rows: int = Field(
        MAX_EVAL_ROWS,
        ge=1,
        le=MAX_EVAL_ROWS,
        description="held-out rows (text: windows) scored at each evaluation, and the cap of the train-loss probe "
        f"(at most {TRAIN_PROBE} rows): each evaluation costs about eval_rows + min(eval_rows, {TRAIN_PROBE}) "
        "forward passes of the model",
    )
    dtype: Literal["float32", "float64"] = "float32"

    @model_validator(mode="after")
    def _fits(self):
        if len(set(self.arms)) != len(self.arms):
            raise ValueError("arms: each arm may appear once")
        if self.steps < self.accum_steps:
            raise ValueError("steps: fewer micro-steps than accum_steps means the accumulating arms never update")
        if self.eval_every > self.steps:
            raise ValueError("eval_every: larger than steps")
        if self.steps // self.eval_every > 1000:
            raise ValueError("eval_every: more than 1000 evaluations per run")
        if self.steps * len(self.arms) * self.seeds > MAX_MICRO_STEPS:
            raise ValueError(f"steps: steps x arms x seeds exceeds {MAX_MICRO_STEPS} micro-steps")
        if self.model == "cnn" and self.dataset == "clusters":
            raise ValueError("model: cnn is for image data (digits, or an upload of square images); clusters is not")
        if not isinstance(self.model, str):
            if token_model(self.model) and self.dataset == "clusters":
                raise ValueError(
                    "model: token models train on rows of token ids (digits, or an upload of integer "
                    "rows); clusters is continuous"
                )
            return self
        if not isinstance(self.dataset, UUID):
            rows, features, classes = BUILTIN_SHAPES[self.dataset]
            check_budget(self, rows, features, classes)
        return self


def cnn_side(features: int) -> int | None:
    side = math.isqrt(features)
    return side if side * side == features and side >= 2 else None


def check_budget(params: MomentumAccumulationParams, rows: int, features: int, classes: int) -> None:
    """Raise ValueError("<field>: ...") when the job's memory or arithmetic would not fit one worker."""
    h, c = params.hidden, params.channels
    if params.model == "cnn":
        side = cnn_side(features)
        if side is None:
            raise ValueError(f"model: cnn needs square images as rows; {features} features is not a square >= 4")
        flat = 2 * c * (side // 2) ** 2
        n_params = 10 * c + 18 * c * c + 2 * c + flat * h + h + h * classes + classes
        fwd = 2 * (9 * c + 18 * c * c) * side * side + 2 * (flat * h + h * classes)
        act = 3 * c * side * side + h + classes
    else:
        n_params = features * h + h + h * h + h + h * classes + classes
        fwd = 2 * n_params
        act = features + 2 * h + classes
    item = 8 if params.dtype == "float64" else 4
    resident = min(rows, params.eval_rows) + probe_rows(params)  # in memory; training rows are read per micro-batch
    need = item * (5 * n_params + 3 * act * (params.micro_batch + EVAL_CHUNK) + resident * (features + 1))
    if need > MAX_BYTES:
        raise ValueError(f"hidden: weights, optimizer state and activations need {need / 2**30:.1f} GiB (> 4 GiB)")
    runs = len(params.arms) * params.seeds
    evals = params.steps // params.eval_every + 2
    flops = runs * fwd * (3 * params.micro_batch * params.steps + evals * resident)
    if flops > MAX_FLOPS:
        raise ValueError(f"steps: about {flops:.1e} floating-point operations (> {MAX_FLOPS:.0e})")


def probe_rows(params: MomentumAccumulationParams) -> int:
    """Training rows scored for the train-loss curve: ``TRAIN_PROBE``, or ``eval_rows`` when that is smaller."""
    return min(TRAIN_PROBE, params.eval_rows)


def token_model(model) -> bool:
    return not isinstance(model, BuiltinModel) or model.arch in TRANSFORMER_ARCHS


def model_workload(params: MomentumAccumulationParams, columns: int | None) -> Workload | None:
    """One arm and seed at a time: weights, .grad (the explicit buffer), the optimizer's state, one micro-batch of
    activations, and the flat final weights kept per seed for the identity check (two per seed)."""
    if isinstance(params.model, str):
        return None
    features = BUILTIN_SHAPES[params.dataset][1] if not isinstance(params.dataset, UUID) else columns
    return Workload(
        batch=params.micro_batch,
        seq_len=features,
        features=features,
        classes=256 if isinstance(params.dataset, UUID) else BUILTIN_SHAPES[params.dataset][2],
        optimizer_states=2 if params.optimizer == "adam" else 1,
        extra_buffers=2 * params.seeds,
        dtype_bytes=8 if params.dtype == "float64" else 4,
    )


def dataset_needs(params: MomentumAccumulationParams) -> DatasetNeeds:
    """Classifiers need labelled rows (square images for a CNN); token models read rows of token ids (arrays) or
    windows of a text dataset's token stream."""
    model = params.model
    if isinstance(model, str):
        return DatasetNeeds(labels=True, square_rows=model == "cnn")
    if isinstance(model, BuiltinModel) and not token_model(model):
        return DatasetNeeds(labels=True, square_rows=model.arch in ("cnn", "resnet"))
    return DatasetNeeds(kinds=("arrays", "text"))


SPEC = KindSpec(
    name="momentum_accumulation",
    description="Gradient accumulation inside the momentum (no buffer) vs explicit accumulation and per-batch updates.",
    params=MomentumAccumulationParams,
    example={
        "dataset": "digits",
        "model": "mlp",
        "hidden": 32,
        "optimizer": "sgdm",
        "betas": [0.9, 0.999],
        "lr": 0.3,
        "accum_steps": 8,
        "micro_batch": 4,
        "steps": 480,
        "seeds": 2,
        "eval_every": 40,
        "dtype": "float64",
    },
    model_workload=model_workload,
    dataset_needs=dataset_needs,
)
