"""The ``contrastive_accumulation`` kind as the API sees it: params, budget check, description, example (no torch)."""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from pydantic import Field, model_validator

from core.costs import score_block_rows
from core.data.needs import DatasetNeeds
from core.networks.budget import Workload
from core.networks.spec import TRANSFORMER_ARCHS, BuiltinModel, ModelSpec
from core.techniques.base import KindSpec, Params

MEMORY_BUDGET_BYTES = 4 << 30
MAX_JOB_FLOP = 1.0e13
BUILTIN_INPUT_DIMS = {"digits": 64, "clusters": 16}


class ContrastiveAccumulationParams(Params):
    dataset: Literal["digits", "clusters"] | UUID = "digits"
    towers: Literal["shared", "two_tower"] = "shared"
    widths: list[Annotated[int, Field(ge=1, le=2048)]] = Field(default=[128, 64], min_length=1, max_length=4)
    dropout: float = Field(default=0.1, ge=0.0, le=0.9)
    batch_size: int = Field(default=512, ge=2, le=65536)
    chunk_size: int = Field(default=64, ge=1, le=65536)
    temperature: float = Field(default=0.1, ge=0.01, le=10.0)
    normalize: bool = True
    steps: int = Field(default=40, ge=1, le=2000)
    lr: float = Field(default=1e-3, gt=0.0, le=10.0)
    optimizer: Literal["adam", "sgd"] = "adam"
    compare: bool = True
    mask_prob: float = Field(default=0.2, ge=0.0, le=0.9)
    noise_std: float = Field(default=0.1, ge=0.0, le=2.0)
    model: ModelSpec | None = Field(
        None,
        description="towers from a Transformer (builtin, Hugging Face config or "
        "uploaded) pooled over its hidden states, on rows of token ids; widths and "
        "noise_std then do not apply, views mask tokens with mask_prob",
    )
    pooling: Literal["mean", "cls"] = Field("mean", description="model: mean over positions, or the first token")

    @model_validator(mode="after")
    def _fits_a_worker(self):
        if self.chunk_size > self.batch_size:
            raise ValueError("chunk_size: must not exceed batch_size")
        if self.towers == "shared" and self.batch_size % 2:
            raise ValueError("batch_size: must be even with towers='shared' (two views per sample)")
        if self.towers == "shared" and self.chunk_size % 2:
            raise ValueError(
                "chunk_size: must be even with towers='shared' so each view pair shares a chunk "
                "(the naive comparison needs it)"
            )
        if self.model is None:
            check_budget(self, BUILTIN_INPUT_DIMS.get(str(self.dataset), 64))
        elif isinstance(self.model, BuiltinModel) and self.model.arch not in TRANSFORMER_ARCHS:
            raise ValueError(
                f"model.arch: towers pool a Transformer's hidden states; {self.model.arch} has none "
                "(use widths for an MLP tower)"
            )
        elif self.dataset == "clusters":
            raise ValueError(
                "model: Transformer towers read rows of token ids (digits, or an upload of integer "
                "rows); clusters is continuous"
            )
        return self


def model_workload(p: ContrastiveAccumulationParams, columns: int | None) -> Workload | None:
    """The towers of the three methods (each a copy, with its optimizer) and the initial towers; activations of
    the full batch when it is compared, else of one chunk."""
    if p.model is None:
        return None
    rows = p.batch_size if p.compare else p.chunk_size
    states, towers = (2 if p.optimizer == "adam" else 0), tower_count(p)
    # per tower of each of the three methods: weights, gradients, optimizer state; plus the initial towers;
    # less the one set the estimate counts itself
    extra = 3 * towers * (2 + states) + towers - (2 + states)
    return Workload(
        batch=rows * towers,
        seq_len=BUILTIN_INPUT_DIMS.get(str(p.dataset), columns),
        optimizer_states=states,
        extra_buffers=extra,
    )


def dataset_needs(p: ContrastiveAccumulationParams) -> DatasetNeeds:
    """MLP towers read feature rows; Transformer towers read rows of token ids, or the queries and documents of a
    pairs dataset (each pair's two texts are the positives)."""
    return DatasetNeeds(kinds=("arrays",) if p.model is None else ("arrays", "pairs"))


def check_budget(p: ContrastiveAccumulationParams, in_dim: int) -> None:
    """Refuse a job whose chunked step cannot fit ``MEMORY_BUDGET_BYTES`` or whose work exceeds ``MAX_JOB_FLOP``."""
    need = memory_bytes(p, in_dim, "chunked", p.batch_size)
    if need > MEMORY_BUDGET_BYTES:
        raise ValueError(
            f"chunk_size: a chunked step needs ~{need / 2**30:.1f} GiB "
            f"(> {MEMORY_BUDGET_BYTES >> 30} GiB); lower chunk_size, widths or batch_size"
        )
    work = p.steps * step_flop(p, in_dim, "chunked", p.batch_size)
    if p.compare:
        work += p.steps * step_flop(p, in_dim, "naive", p.batch_size)
        if full_batch_fits(p, in_dim, p.batch_size):
            work += p.steps * step_flop(p, in_dim, "full", p.batch_size)
    if work > MAX_JOB_FLOP:
        raise ValueError(
            f"steps: ~{work:.2g} FLOP exceeds {MAX_JOB_FLOP:.0e}; lower steps, batch_size or widths "
            "(the loss alone costs ~6·B²·d per step), or set compare=false"
        )


def tower_count(p) -> int:
    return 1 if p.towers == "shared" else 2


def memory_bytes(p, in_dim: int, method: str, batch: int) -> int:
    """Float32 estimate of one step: inputs, cached reps and their gradients, activations kept for backward, scores."""
    rows = batch * tower_count(p)
    dim = p.widths[-1]
    per_row_activations = 3 * sum(p.widths) + in_dim
    params = tower_count(p) * 4 * sum(a * b + b for a, b in zip([in_dim, *p.widths[:-1]], p.widths))
    fixed = 4 * (3 * rows * in_dim + 6 * rows * dim) + params
    score_copies = 5 * tower_count(p)
    if method == "full":
        return fixed + 4 * (rows * per_row_activations + score_copies * batch * batch)
    active_rows = p.chunk_size * tower_count(p)
    score_block = score_block_rows(batch, p.chunk_size) * batch
    return fixed + 4 * (active_rows * per_row_activations + score_copies * score_block)


def full_batch_fits(p, in_dim: int, batch: int) -> bool:
    return memory_bytes(p, in_dim, "full", batch) <= MEMORY_BUDGET_BYTES


def step_flop(p, in_dim: int, method: str, batch: int) -> float:
    """Forward ≈ 2·rows·Σ(fan_in·fan_out); backward ≈ 2 forwards; the chunked method adds one forward."""
    rows = batch * tower_count(p)
    forward = 2.0 * rows * sum(a * b for a, b in zip([in_dim, *p.widths[:-1]], p.widths))
    loss = 6.0 * batch * batch * p.widths[-1] * (2 if p.towers == "two_tower" else 1)
    return (4.0 if method == "chunked" else 3.0) * forward + loss


SPEC = KindSpec(
    name="contrastive_accumulation",
    description="Exact large-batch InfoNCE gradient in the memory of one chunk (cached representation gradients), "
    "checked against full-batch autograd and naive per-chunk accumulation.",
    params=ContrastiveAccumulationParams,
    example={
        "dataset": "digits",
        "towers": "shared",
        "widths": [256, 256, 64],
        "dropout": 0.1,
        "batch_size": 1024,
        "chunk_size": 64,
        "temperature": 0.1,
        "steps": 20,
        "lr": 0.001,
        "optimizer": "adam",
        "compare": True,
        "mask_prob": 0.2,
        "noise_std": 0.1,
    },
    model_workload=model_workload,
    dataset_needs=dataset_needs,
)
