"""Gradient-normalized GAN critics and the tools to judge them: 2-D mixtures, mode coverage, Lipschitz statistics.

A critic D with ‖∇ₓD‖ ≤ 1 everywhere is 1-Lipschitz. For a piecewise-linear D (ReLU / LeakyReLU layers) the input
gradient w is constant inside each linear region, so dividing D by a function of ‖w‖ bounds the gradient of the result:

- ``"gn"``   (Wu et al., 2021):        D̂ = D / (‖∇D‖ + |D|)        → ‖∇D̂‖ = ‖w‖² / (‖w‖ + |D|)² ≤ 1, |D̂| ≤ 1;
- ``"gran"`` (Bhaskara et al., 2022):  D̂ = D·‖∇D‖ / (‖∇D‖² + ε)   → ‖∇D̂‖ = ‖w‖² / (‖w‖² + ε) < 1;
- ``"plain"``:                         D̂ = D / (‖∇D‖ + ε)          → ‖∇D̂‖ = ‖w‖ / (‖w‖ + ε) < 1.

The bound holds inside regions only: D̂ jumps across region boundaries, which is why :func:`lipschitz_stats` also
measures finite-difference slopes between sample pairs instead of trusting the gradient alone.
Nothing here knows about jobs, params or HTTP.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

Variant = Literal["gn", "gran", "plain"]
VARIANTS: tuple[str, ...] = ("gn", "gran", "plain")

_BATCHNORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
BATCHNORM_REASON = (
    "BatchNorm in train mode mixes the samples of a batch, so the gradient of the summed critic "
    "output with respect to one input is no longer that sample's own ∇ₓD and the per-sample norm "
    "is wrong"
)


def normalize_discriminator(
    D: Callable[[Tensor], Tensor], x: Tensor, variant: Variant = "gn", eps: float = 1e-8
) -> tuple[Tensor, Tensor]:
    """Normalized critic scores D̂(x) (shape (B,)) and the per-sample raw gradient norms ‖∇ₓD(x)‖ (shape (B,)).

    The input gradient is taken with ``create_graph=True``, so both outputs stay differentiable with respect to D's
    parameters and to ``x`` (double backprop): a loss on D̂ trains D, and a loss on D̂(G(z)) trains G. Norms are over
    each sample's flattened input; this is only correct when D treats samples independently (no BatchNorm in train
    mode). ``eps`` is GraN's ε and the plain variant's ε; for GN (which needs none) it only floors the denominator
    so that D = 0 with ∇D = 0 gives 0, not NaN.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
    if eps <= 0:
        raise ValueError("eps: must be positive")
    with torch.enable_grad():
        if not x.requires_grad:
            x = x.detach().requires_grad_(True)
        d = D(x)
        batch = x.shape[0]
        if d.numel() != batch:
            raise ValueError(f"D must give one score per sample: got shape {tuple(d.shape)} for batch {batch}")
        d = d.reshape(batch)
        (grad,) = torch.autograd.grad(d.sum(), x, create_graph=True)
        grad_norm = grad.reshape(batch, -1).norm(dim=1)
        if variant == "gn":
            d_hat = d / (grad_norm + d.abs()).clamp_min(eps)
        elif variant == "gran":
            d_hat = d * grad_norm / (grad_norm.square() + eps)
        else:
            d_hat = d / (grad_norm + eps)
    return d_hat, grad_norm


def find_batchnorm(module: nn.Module) -> list[str]:
    """Qualified names of the BatchNorm layers in ``module`` (those that break per-sample gradients)."""
    return [name for name, m in module.named_modules() if isinstance(m, _BATCHNORM_TYPES)]


def replace_batchnorm(module: nn.Module) -> list[str]:
    """Swap every BatchNorm for GroupNorm(1, C) in place (a per-sample layer norm over channels and positions).

    The affine scale and shift are copied; running statistics have no counterpart and are dropped. Returns one line
    per replaced layer saying what was done and why.
    """
    notes = []
    for name in find_batchnorm(module):
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        bn = getattr(parent, child)
        gn = nn.GroupNorm(1, bn.num_features, eps=bn.eps, affine=bn.affine)
        tensors = list(bn.parameters()) + list(bn.buffers(recurse=False))
        floats = [t for t in tensors if t.is_floating_point()]
        if floats:
            gn.to(device=floats[0].device, dtype=floats[0].dtype)
        if bn.affine:
            with torch.no_grad():
                gn.weight.copy_(bn.weight)
                gn.bias.copy_(bn.bias)
        setattr(parent, child, gn)
        notes.append(f"{name}: BatchNorm replaced by GroupNorm(1, {bn.num_features}) because {BATCHNORM_REASON}")
    return notes


class GradNormalized(nn.Module):
    """Wrap a critic so that ``forward(x)`` returns the normalized scores D̂(x), usable in any GAN training loop.

    ``batchnorm="refuse"`` raises ValueError when the critic contains BatchNorm; ``"replace"`` swaps it for a
    per-sample norm (see :func:`replace_batchnorm`), warns, and keeps the reasons in ``self.replacements``.
    The raw norms of the last call are kept, detached, in ``self.last_grad_norm`` for logging.
    """

    def __init__(
        self,
        D: nn.Module,
        variant: Variant = "gn",
        eps: float = 1e-8,
        batchnorm: Literal["refuse", "replace"] = "refuse",
    ):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
        if batchnorm not in ("refuse", "replace"):
            raise ValueError("batchnorm: expected 'refuse' or 'replace'")
        found = find_batchnorm(D)
        self.replacements: list[str] = []
        if found and batchnorm == "refuse":
            raise ValueError(
                f"critic has BatchNorm layers {found}: {BATCHNORM_REASON}; remove them or pass batchnorm='replace'"
            )
        if found:
            self.replacements = replace_batchnorm(D)
            warnings.warn("; ".join(self.replacements), stacklevel=2)
        self.D = D
        self.variant = variant
        self.eps = eps
        self.last_grad_norm: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        d_hat, grad_norm = normalize_discriminator(self.D, x, self.variant, self.eps)
        self.last_grad_norm = grad_norm.detach()
        return d_hat


# ---------------------------------------------------------------------------------------------------------------
# 2-D Gaussian mixtures and mode coverage


def ring8_centres(radius: float = 2.0) -> Tensor:
    """Eight centres evenly spaced on a circle (the usual ring benchmark of mode-collapse studies)."""
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    return (radius * torch.stack([angles.cos(), angles.sin()], dim=1)).float()


def grid25_centres(spacing: float = 2.0) -> Tensor:
    """A 5×5 grid of centres at spacing·{−2, −1, 0, 1, 2} in each coordinate."""
    ticks = spacing * torch.arange(-2, 3, dtype=torch.float32)
    gx, gy = torch.meshgrid(ticks, ticks, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)


MIXTURES: dict[str, tuple[Callable[[], Tensor], float]] = {
    "ring8": (ring8_centres, 0.02),
    "grid25": (grid25_centres, 0.05),
}
"""Name → (centres factory, default per-coordinate standard deviation)."""


def sample_mixture(
    centres: Tensor, std: float, n: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """``n`` points of an equal-weight isotropic Gaussian mixture and the index of the mode each came from."""
    labels = torch.randint(len(centres), (n,), generator=generator)
    noise = torch.randn(n, centres.shape[1], generator=generator)
    return centres[labels] + std * noise, labels


def mixture(
    name: str, n: int, generator: torch.Generator | None = None, std: float | None = None
) -> tuple[Tensor, Tensor, Tensor, float]:
    """Points, mode labels, centres and standard deviation of the named built-in mixture (``ring8`` or ``grid25``)."""
    if name not in MIXTURES:
        raise KeyError(f"unknown mixture {name!r}; known: {sorted(MIXTURES)}")
    factory, default_std = MIXTURES[name]
    centres = factory()
    sigma = default_std if std is None else std
    x, y = sample_mixture(centres, sigma, n, generator)
    return x, y, centres, sigma


def mode_coverage(
    samples: Tensor, centres: Tensor, std: float, n_sigma: float = 3.0, min_fraction: float = 0.1
) -> dict:
    """How many modes a generator covers and how many of its samples are of high quality.

    A sample is high quality when it lies within ``n_sigma``·std of its nearest centre. A mode is covered when it
    receives at least ``min_fraction`` of the high-quality samples an even split would give it (n / K), and at least
    one. For samples drawn from the mixture itself in 2-D, the high-quality share is 1 − exp(−n_sigma²/2)
    (0.9889 at 3σ) and every mode is covered.
    """
    samples = torch.as_tensor(samples, dtype=torch.float32).reshape(len(samples), -1)
    centres = torch.as_tensor(centres, dtype=torch.float32)
    dist = torch.cdist(samples, centres)
    nearest_dist, nearest = dist.min(dim=1)
    good = nearest_dist <= n_sigma * std
    counts = torch.bincount(nearest[good], minlength=len(centres))
    threshold = max(1.0, min_fraction * len(samples) / len(centres))
    return {
        "modes_covered": int((counts >= threshold).sum()),
        "n_modes": len(centres),
        "high_quality_share": float(good.float().mean()) if len(samples) else 0.0,
        "counts": [int(c) for c in counts],
    }


# ---------------------------------------------------------------------------------------------------------------
# Lipschitz statistics of a trained critic


def input_grad_norms(score_fn: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """Scores and per-sample ‖∇ₓ score‖ of any critic (plain, normalized or constrained), both detached."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        s = score_fn(xg).reshape(len(x))
        (g,) = torch.autograd.grad(s.sum(), xg)
    return s.detach(), g.reshape(len(x), -1).norm(dim=1)


def max_pair_slope(x: Tensor, scores: Tensor, min_distance: float = 1e-6) -> tuple[float, float]:
    """Largest |s_i − s_j| / ‖x_i − x_j‖ over all pairs and the share of pairs with slope above 1.

    Pairs closer than ``min_distance`` (duplicates) are skipped. A 1-Lipschitz critic has no slope above 1; a
    normalized critic can, across the boundary of two linear regions where D̂ jumps.
    """
    flat = x.detach().reshape(len(x), -1).double()
    s = scores.detach().double().reshape(-1)
    dx = torch.cdist(flat, flat)
    ds = (s[:, None] - s[None, :]).abs()
    upper = torch.triu(torch.ones_like(dx, dtype=torch.bool), diagonal=1) & (dx > min_distance)
    if not upper.any():
        return 0.0, 0.0
    slopes = ds[upper] / dx[upper]
    return float(slopes.max()), float((slopes > 1.0).double().mean())


def probe_critic(
    score_fn: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor, generator: torch.Generator | None = None
) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
    """Points, scores and ‖∇ₓ score‖ on real, fake and interpolated points (keys ``real``, ``fake``, ``interp``).

    Interpolates are x̂ = α·real + (1 − α)·fake with α ~ U(0, 1) per pair, where WGAN-GP applies its penalty.
    """
    n = min(len(real), len(fake))
    real, fake = real[:n].detach(), fake[:n].detach()
    alpha = torch.rand(n, generator=generator).to(real.device).reshape(n, *([1] * (real.dim() - 1)))
    probes = {}
    for name, x in (("real", real), ("fake", fake), ("interp", alpha * real + (1 - alpha) * fake)):
        scores, norms = input_grad_norms(score_fn, x)
        probes[name] = (x, scores, norms)
    return probes


def summarize_probes(
    probes: dict[str, tuple[Tensor, Tensor, Tensor]], generator: torch.Generator | None = None, pair_points: int = 512
) -> dict[str, float]:
    """``grad_max_<set>``, ``grad_mean_<set>`` per probe set, and ``max_pair_slope``, ``share_pairs_over_1`` over all
    pairs of up to ``pair_points`` points drawn from the union of the sets."""
    out: dict[str, float] = {}
    for name, (_, _, norms) in probes.items():
        out[f"grad_max_{name}"] = float(norms.max())
        out[f"grad_mean_{name}"] = float(norms.mean())
    all_x = torch.cat([x for x, _, _ in probes.values()])
    all_s = torch.cat([s for _, s, _ in probes.values()])
    pick = torch.randperm(len(all_x), generator=generator)[:pair_points].to(all_x.device)
    out["max_pair_slope"], out["share_pairs_over_1"] = max_pair_slope(all_x[pick], all_s[pick])
    return out


def lipschitz_stats(
    score_fn: Callable[[Tensor], Tensor],
    real: Tensor,
    fake: Tensor,
    generator: torch.Generator | None = None,
    pair_points: int = 512,
) -> dict[str, float]:
    """Measured Lipschitz behaviour of a critic: max and mean gradient norms on real, fake and interpolated points,
    and the largest finite-difference slope between sample pairs (see :func:`probe_critic`, :func:`max_pair_slope`)."""
    return summarize_probes(probe_critic(score_fn, real, fake, generator), generator, pair_points)


# ---------------------------------------------------------------------------------------------------------------
# Image quality through a fixed feature network


def frechet_distance(feat_a: np.ndarray, feat_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets: ‖μa − μb‖² + tr(Σa + Σb − 2(Σa^½ Σb Σa^½)^½).

    The matrix square roots go through symmetric eigendecompositions (no scipy), which is exact for the PSD
    covariance matrices involved.
    """
    a = np.asarray(feat_a, dtype=np.float64)
    b = np.asarray(feat_b, dtype=np.float64)
    mu = a.mean(0) - b.mean(0)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))
    vals, vecs = np.linalg.eigh(cov_a)
    root_a = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
    middle = root_a @ cov_b @ root_a
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    return float(mu @ mu + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)


def classifier_scores(probs: Tensor, confident: float = 0.9) -> dict:
    """Label-free quality of generated samples from a classifier trained on real data.

    ``confident_share``: share of samples the classifier assigns some class with probability ≥ ``confident``
    (recognisable samples); ``classes_covered``: classes that get at least 1% of the samples by arg-max;
    ``inception_score``: exp E[KL(p(y|x) ‖ p(y))], between 1 and the number of classes.
    """
    p = probs.detach().double().clamp_min(1e-12)
    marginal = p.mean(0)
    kl = (p * (p.log() - marginal.log())).sum(1).mean()
    top = p.argmax(1)
    share = torch.bincount(top, minlength=p.shape[1]).double() / len(p)
    return {
        "confident_share": float((p.max(1).values >= confident).double().mean()),
        "classes_covered": int((share >= 0.01).sum()),
        "inception_score": float(kl.exp()),
    }
