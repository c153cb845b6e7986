"""The ``vae_density`` kind as the API sees it: params, budget check, description and example (no torch)."""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from pydantic import Field, model_validator

from core.networks.spec import ExportedModel
from core.techniques.base import KindSpec, Params

# The likelihood each built-in data set calls for; any other choice is refused (a Gaussian density on binary or
# integer data is unbounded, a Bernoulli one is not a density on reals, dequantization needs 8-bit integers).
# ``digits_17_levels``: the digits' 17 pixel intensities (0..16) placed on the 8-bit scale (round(255·k/16)) and
# dequantized as 8-bit data. Only 17 of the 256 levels occur, so its bits/dim are an 8-bit code length of 17-level
# data: not comparable with natural 8-bit images (a model can learn the 17 spikes and gain up to log2(256/17) ≈ 3.9
# bits/dim over true 8-bit data). ``digits_dequantized`` is its former name, still accepted: stored jobs name it.
BUILTIN_LIKELIHOOD = {
    "linear_gaussian": "gaussian",
    "digits_binarized": "bernoulli",
    "digits_17_levels": "dequantized",
    "digits_dequantized": "dequantized",
}
BUILTIN_DIM = {"digits_binarized": 64, "digits_17_levels": 64, "digits_dequantized": 64}


MEMORY_LIMIT_BYTES = 4 * 1024**3
FLOP_LIMIT = 2e13


class VaeDensityParams(Params):
    dataset: Literal["linear_gaussian", "digits_binarized", "digits_17_levels", "digits_dequantized"] | UUID = Field(
        "linear_gaussian",
        description="Built-in data set or the UUID of an uploaded one (x: (n, D)). The raw "
        "digits/clusters sets are not offered: digits are discrete (use a variant). "
        "digits_17_levels has 17 intensity levels on the 8-bit scale, so its bits/dim "
        "do not compare with 8-bit images; digits_dequantized is its former name.",
    )
    likelihood: Literal["auto", "bernoulli", "gaussian", "dequantized"] = Field(
        "auto",
        description="auto: the data set's own (uploads: binary -> bernoulli, integers 0..255 -> dequantized, "
        "else gaussian).",
    )
    fixed_sigma: float | None = Field(
        None, ge=1e-3, le=1e3, description="Gaussian decoder σ; None learns one σ per dimension."
    )
    latent_dim: int = Field(2, ge=1, le=256)
    hidden: list[Annotated[int, Field(ge=1, le=1024)]] = Field(
        default_factory=lambda: [64, 64], max_length=4, description="MLP widths; [] makes encoder/decoder affine."
    )
    train_k: int = Field(1, ge=1, le=64, description="1: ELBO training; >1: IWAE bound with that many samples.")
    steps: int = Field(
        2000, ge=0, le=100_000, description="Training steps; 0 (exported encoder and decoder only): evaluate as sent."
    )
    batch_size: int = Field(128, ge=1, le=1024)
    lr: float = Field(1e-3, gt=0.0, le=1.0, description="Adam learning rate.")
    eval_k: list[Annotated[int, Field(ge=1, le=5000)]] = Field(
        default_factory=lambda: [1, 10, 100, 1000],
        min_length=1,
        max_length=8,
        description="Importance-sample counts K to evaluate, strictly increasing.",
    )
    heldout_fraction: float = Field(0.2, ge=0.05, le=0.5)
    eval_samples: int = Field(500, ge=1, le=5000, description="At most this many rows evaluated per split.")
    synthetic_n: int = Field(2000, ge=20, le=100_000, description="linear_gaussian: number of rows.")
    synthetic_dim: int = Field(8, ge=1, le=256, description="linear_gaussian: data dimension D.")
    synthetic_latent: int = Field(2, ge=1, le=64, description="linear_gaussian: true latent dimension.")
    synthetic_sigma: float = Field(0.5, ge=0.01, le=10.0, description="linear_gaussian: true noise σ.")
    encoder: ExportedModel | None = Field(
        None,
        description="An exported program (.pt2) x -> (mean, log-variance) of q(z|x), used instead of the MLP; "
        "give it with decoder.",
    )
    decoder: ExportedModel | None = Field(
        None,
        description="An exported program z -> Bernoulli logits, a Gaussian mean (σ learned, or fixed_sigma), or "
        "(mean, log-scale); give it with encoder.",
    )

    @model_validator(mode="after")
    def _check(self) -> VaeDensityParams:
        if any(b <= a for a, b in zip(self.eval_k, self.eval_k[1:])):
            raise ValueError("eval_k: must be strictly increasing")
        resolved: str = self.likelihood
        if isinstance(self.dataset, str):
            resolved = BUILTIN_LIKELIHOOD[self.dataset]
            if self.likelihood not in ("auto", resolved):
                raise ValueError(f"likelihood: {self.dataset} needs {resolved!r} (or 'auto'), not {self.likelihood!r}")
        if resolved == "bernoulli" and self.fixed_sigma is not None:
            raise ValueError("fixed_sigma: a Bernoulli likelihood has no variance")
        if (self.encoder is None) != (self.decoder is None):
            raise ValueError(f"{'decoder' if self.decoder is None else 'encoder'}: exported networks come in pairs")
        if self.encoder is None:
            if self.steps == 0:
                raise ValueError("steps: 0 evaluates an exported encoder and decoder as sent; the MLP must train")
            check_budget(self, self.data_dim_if_known())
        elif self.hidden != [64, 64] or self.latent_dim != type(self).model_fields["latent_dim"].default:
            # compared with the defaults: the stored params, validated again by the worker, list them all
            raise ValueError(f"{'hidden' if self.hidden != [64, 64] else 'latent_dim'}: set by the exported networks")
        return self

    def data_dim_if_known(self) -> int | None:
        if self.dataset == "linear_gaussian":
            return self.synthetic_dim
        return BUILTIN_DIM.get(self.dataset) if isinstance(self.dataset, str) else None


def _layer_flops(sizes: list[int]) -> float:
    return 2.0 * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def check_budget(p: VaeDensityParams, data_dim: int | None) -> None:
    """Refuse a job whose training activations exceed ~4 GiB or whose total work exceeds FLOP_LIMIT.

    Evaluation memory is bounded by chunking (core.vae.chunk_size_for); its work is Σ_K K decoder passes per row.
    Uploads are checked in ``run`` once D is known.
    """
    if data_dim is None:
        return
    enc = _layer_flops([data_dim, *p.hidden, 2 * p.latent_dim])
    dec = _layer_flops([p.latent_dim, *reversed(p.hidden), data_dim])
    width = 2 * sum(p.hidden) + 2 * data_dim + 3 * p.latent_dim
    train_rows = p.batch_size * p.train_k
    train_bytes = 4 * 4 * train_rows * width  # forward activations, their grads and temporaries
    if train_bytes > MEMORY_LIMIT_BYTES:
        raise ValueError(f"batch_size: batch_size x train_k x width needs ~{train_bytes / 2**30:.1f} GiB, over 4 GiB")
    train_flops = 3.0 * p.steps * p.batch_size * (enc + p.train_k * dec)
    eval_flops = 2.0 * p.eval_samples * sum(k * dec + enc for k in p.eval_k)
    if train_flops + eval_flops > FLOP_LIMIT:
        if train_flops >= eval_flops:
            raise ValueError(
                f"steps: training needs ~{train_flops:.1e} FLOP (steps x batch_size x train_k x model), "
                f"over the {FLOP_LIMIT:.0e} budget"
            )
        raise ValueError(
            f"eval_k: evaluation needs ~{eval_flops:.1e} FLOP (eval_samples x sum(eval_k) x model), "
            f"over the {FLOP_LIMIT:.0e} budget"
        )


SPEC = KindSpec(
    name="vae_density",
    description="Per-sample log p(x) by importance sampling through a VAE (ELBO vs IWAE L_K, nats and bits/dim).",
    params=VaeDensityParams,
    example={
        "dataset": "linear_gaussian",
        "synthetic_dim": 6,
        "synthetic_latent": 2,
        "synthetic_n": 1500,
        "latent_dim": 2,
        "hidden": [32],
        "train_k": 1,
        "steps": 1500,
        "batch_size": 128,
        "lr": 0.01,
        "eval_k": [1, 10, 100, 1000],
        "eval_samples": 200,
    },
)
