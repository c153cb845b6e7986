"""The ``gradnorm_gan`` kind as the API sees it: params, budget check, description and example (no torch)."""

from __future__ import annotations

import math
from typing import Literal
from uuid import UUID

from pydantic import Field, model_validator

from core.networks.spec import ExportedModel
from core.techniques.base import KindSpec, Params

MEMORY_LIMIT_BYTES = 4 * 2**30
WORK_LIMIT_FLOPS = 2e14
ACTIVATION_COPIES = 16
MAX_INPUT_DIM = 4096
DATASET_DIMS = {"ring8": 2, "grid25": 2, "digits": 64}


class GradnormGanParams(Params):
    dataset: Literal["ring8", "grid25", "digits"] | UUID = Field(
        default="ring8", description="8 Gaussians on a ring, a 5×5 Gaussian grid, sklearn digits, or an upload."
    )
    n_data: int = Field(default=10000, ge=256, le=200_000, description="Points drawn for the 2-D mixtures.")
    mixture_std: float | None = Field(
        default=None, ge=1e-3, le=1.0, description="Std of each mixture component; None: 0.02 ring8, 0.05 grid25."
    )
    arch: Literal["mlp", "conv"] = Field(default="mlp", description="conv needs square images with side % 4 == 0.")
    width: int = Field(default=128, ge=8, le=1024, description="Hidden width of the MLP generator and critic.")
    depth: int = Field(default=3, ge=1, le=6, description="Hidden layers of the MLP generator and critic.")
    channels: int = Field(default=32, ge=4, le=128, description="Base channel count of the conv nets.")
    z_dim: int = Field(default=16, ge=1, le=256)
    constraint: Literal["gn", "gran", "plain_norm", "gp", "spectral", "clip", "none"] = "gn"
    loss: Literal["wasserstein", "hinge", "bce"] = "wasserstein"
    n_critic: int = Field(default=5, ge=1, le=10, description="Critic updates per generator update.")
    lr_d: float = Field(default=2e-4, ge=1e-6, le=1e-1)
    lr_g: float = Field(default=2e-4, ge=1e-6, le=1e-1)
    beta1: float = Field(default=0.5, ge=0.0, le=0.999)
    beta2: float = Field(default=0.9, ge=0.0, le=0.9999)
    steps: int = Field(default=1000, ge=1, le=20_000, description="Generator updates.")
    batch: int = Field(default=256, ge=8, le=2048)
    gp_weight: float = Field(default=10.0, ge=0.0, le=1000.0, description="λ of WGAN-GP (constraint gp).")
    clip_value: float = Field(default=0.01, ge=1e-4, le=10.0, description="Weight clipping bound (constraint clip).")
    eps: float = Field(default=1e-8, ge=1e-12, le=1.0, description="ε of GraN and plain_norm; GN's zero guard.")
    eval_samples: int = Field(default=2000, ge=256, le=10_000)
    log_every: int = Field(default=10, ge=1, le=1000)
    critic: ExportedModel | None = Field(
        default=None,
        description="An exported program (.pt2) x -> score trained as the critic from its own weights (spectral "
        "constraint excluded: it reparametrises nn.Linear modules, which an exported graph has not).",
    )
    generator: ExportedModel | None = Field(
        default=None, description="An exported program z -> x trained as the generator; z_dim is its input's size."
    )

    @model_validator(mode="after")
    def _fits_a_worker(self):
        if self.critic is not None and self.constraint == "spectral":
            raise ValueError("constraint: spectral norm needs the critic's nn.Linear modules; use gn, gran, gp, clip")
        dim = DATASET_DIMS.get(self.dataset) if isinstance(self.dataset, str) else None
        if self.arch == "conv" and dim == 2:
            raise ValueError("arch: conv needs image data (digits or an uploaded set of square images)")
        if dim is not None:
            check_budget(self, dim)
        return self


def image_side(dim: int) -> int | None:
    """Image side for a flattened square image usable by the conv nets (two stride-2 stages), else None."""
    side = math.isqrt(dim)
    return side if side * side == dim and side % 4 == 0 else None


def estimate(params: GradnormGanParams, dim: int) -> tuple[float, float]:
    """Rough peak bytes and total FLOPs of a job on inputs of dimension ``dim``.

    Memory: float32 activations per sample × batch × ``ACTIVATION_COPIES`` (real and fake batches, the forward, the
    create_graph backward and its gradients), plus parameters with their gradients and two Adam moments.
    FLOPs: 2 per weight per sample for a forward, × 6 for forward + backward + double backprop; a critic update
    scores a real and a fake batch and samples G once, a generator update runs G and D once each.
    """
    acts: float  # the CNN's are fractional
    flops_d: float
    flops_g: float
    if params.arch == "mlp":
        weights_d = dim * params.width + (params.depth - 1) * params.width**2 + params.width
        weights_g = params.z_dim * params.width + (params.depth - 1) * params.width**2 + params.width * dim
        acts = params.depth * params.width + dim
        flops_d, flops_g = 2 * weights_d, 2 * weights_g
    else:
        c, pixels = params.channels, dim
        weights_d = 9 * c + 16 * 2 * c * c + 16 * 8 * c * c + 4 * c * pixels // 16
        weights_g = params.z_dim * 4 * c * pixels // 16 + 16 * 8 * c * c + 16 * 2 * c * c + 9 * c
        acts = c * pixels * (1 + 0.5 + 0.25) + pixels
        flops_d = 2 * (9 * c * pixels + 16 * 2 * c * c * pixels / 4 + 16 * 8 * c * c * pixels / 16)
        flops_g = flops_d
    memory = 4 * params.batch * acts * ACTIVATION_COPIES + 4 * 4 * (weights_d + weights_g)
    per_step = params.batch * 6 * ((2 * params.n_critic + 1) * flops_d + (params.n_critic + 1) * flops_g)
    return memory, per_step * params.steps


def check_budget(params: GradnormGanParams, dim: int) -> None:
    """Raise ValueError naming the field to shrink when one job would not fit a worker's memory or time."""
    if dim > MAX_INPUT_DIM:
        raise ValueError(f"dataset: inputs of dimension {dim} exceed {MAX_INPUT_DIM}")
    if params.arch == "conv" and image_side(dim) is None:
        raise ValueError(f"arch: conv needs square images with side divisible by 4, got dimension {dim}")
    memory, flops = estimate(params, dim)
    if memory > MEMORY_LIMIT_BYTES:
        field = "channels" if params.arch == "conv" else "width"
        raise ValueError(f"batch: about {memory / 2**30:.1f} GiB needed (limit 4 GiB); lower batch or {field}")
    if flops > WORK_LIMIT_FLOPS:
        raise ValueError(
            f"steps: about {flops:.1e} FLOPs needed (limit {WORK_LIMIT_FLOPS:.0e}); lower steps, "
            "batch, n_critic or the network size"
        )


SPEC = KindSpec(
    name="gradnorm_gan",
    description="GAN critics made Lipschitz by gradient normalization (GN, GraN) vs GP, spectral norm and clipping.",
    params=GradnormGanParams,
    example={
        "dataset": "ring8",
        "mixture_std": 0.05,
        "constraint": "gn",
        "loss": "wasserstein",
        "width": 64,
        "depth": 2,
        "z_dim": 4,
        "n_critic": 2,
        "steps": 500,
        "batch": 128,
        "lr_d": 1e-3,
        "lr_g": 1e-3,
        "eval_samples": 1000,
    },
)
