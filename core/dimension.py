"""How many embedding dimensions a vocabulary of N items needs: n > 8.33·ln N (docs/techniques.md#embedding_dim).

Vectors spread uniformly on a sphere of radius √n give pair entropy H ≈ ln N² + h_n with h_n/n → −½·ln φ;
asking H < 0 gives n > 2·ln N / (½·ln φ). Everything here works in log space: e^(n·cos θ) overflows for large n.
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

GOLDEN_RATIO = (1 + math.sqrt(5)) / 2
ENTROPY_PER_DIM_LIMIT = -0.5 * math.log(GOLDEN_RATIO)  # −0.240606…
EXACT_COEFFICIENT = 2 / (0.5 * math.log(GOLDEN_RATIO))  # 8.3123…
POST_COEFFICIENT = 8.33


def dimension_bound(vocab_size: int, coefficient: float = POST_COEFFICIENT) -> float:
    """coefficient · ln N, the real-valued bound."""
    if vocab_size < 2:
        raise ValueError("vocab_size must be at least 2")
    return coefficient * math.log(vocab_size)


def min_dimension(vocab_size: int, coefficient: float = POST_COEFFICIENT) -> int:
    """The smallest integer strictly above coefficient · ln N."""
    return math.floor(dimension_bound(vocab_size, coefficient)) + 1


def supported_limit(n: int, coefficient: float = POST_COEFFICIENT) -> dict[str, float | None]:
    """How large a vocabulary (or context) n dimensions support: N < N_max = e^(n/c), reported as ln N_max and
    log10 N_max, which are exact at any n, and N_max itself as a float only where it is finite (n/c < ~709.78)."""
    if n < 1:
        raise ValueError("n must be at least 1")
    ln_max = n / coefficient
    n_max = math.exp(ln_max) if ln_max < math.log(sys.float_info.max) else None
    return {"ln_N_max": ln_max, "log10_N_max": ln_max / math.log(10), "N_max": n_max}


def entropy_per_dim(n: int, grid: int = 400_001) -> float:
    """h_n / n by numerical integration over the angle θ between two random directions in n dimensions.

    The angle has density ∝ sin^(n−2) θ on [0, π]; the expectations are ratios of integrals on one grid, so
    the grid spacing cancels and everything is a log-sum-exp.
    """
    if n < 2:
        raise ValueError("n must be at least 2")
    theta = np.linspace(0.0, math.pi, grid)[1:-1]
    cos = np.cos(theta)
    log_density = (n - 2) * np.log(np.sin(theta))
    log_w = log_density + n * cos
    log_norm = np.logaddexp.reduce(log_density)
    log_mean_exp = np.logaddexp.reduce(log_w) - log_norm  # ln E[e^(n cos θ)]
    weights = np.exp(log_w - log_w.max())
    mean_cos_tilted = float(np.sum(cos * weights) / np.sum(weights))  # E[cos θ e^(n cos θ)] / E[e^(n cos θ)]
    return float((log_mean_exp - n * mean_cos_tilted) / n)


def low_rank_target(vocab_size: int, rank: int, generator: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """A target N×N joint distribution exp(<u_i, v_j>)/Z whose logits have exactly the given rank."""
    import torch  # here, not at the top: the API reads this module's constants and must not load torch

    u = torch.randn(vocab_size, rank, generator=generator, dtype=torch.float64)
    v = torch.randn(vocab_size, rank, generator=generator, dtype=torch.float64)
    logits = scale * (u @ v.T) / math.sqrt(rank) * 3.0
    return torch.softmax(logits.flatten(), dim=0).reshape(vocab_size, vocab_size)


EXACT_FIT_KL = 1e-6
"""KL (nats) below which a fit counts as exact: the elbow treats all such fits alike (Adam jitters around an exact
optimum at ~1e-8, and a warm start may land at 1e-16)."""


def _warm_start(target: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """u, v from the truncated SVD of the log-target minus its mean: the least-squares rank-``dim`` fit of its logits
    (softmax ignores a constant). For a target of logit rank r this is exact from n = r + 1 on (the subtracted mean
    costs at most one more direction) and near exact at n = r; below r it is a start that Adam improves on."""
    import torch

    n_items = target.shape[0]
    log_t = torch.log(target)
    left, sing, right_t = torch.linalg.svd(log_t - log_t.mean())
    k = min(dim, n_items)
    root = sing[:k].sqrt()
    u = torch.zeros(n_items, dim, dtype=torch.float64)
    v = torch.zeros(n_items, dim, dtype=torch.float64)
    u[:, :k] = left[:, :k] * root
    v[:, :k] = right_t[:k].T * root
    return u, v


def fit_pair_distribution(target: torch.Tensor, dim: int, steps: int, lr: float, on_step=None) -> float:
    """Fit exp(<u_i, v_j>)/Z with n=dim to ``target``: the SVD warm start (``_warm_start``), then Adam on
    KL(target ‖ model). Returns the smallest KL reached (nats), so that an exact fit is not spoiled by Adam's
    jitter around it and the loss at n reflects what n dimensions can do rather than how far optimisation got."""
    import torch

    u0, v0 = _warm_start(target, dim)
    u, v = u0.requires_grad_(), v0.requires_grad_()
    opt = torch.optim.Adam([u, v], lr=lr)
    flat_t = target.flatten()
    entropy_t = -(flat_t * torch.log(flat_t)).sum()
    best = math.inf
    for step in range(steps):
        opt.zero_grad()
        log_q = torch.log_softmax((u @ v.T).flatten(), dim=0)
        kl = -(flat_t * log_q).sum() - entropy_t
        best = min(best, float(kl.detach()))
        kl.backward()
        opt.step()
        if on_step is not None:
            on_step(step, float(kl.detach()))
    return best


def elbow(dims: list[int], losses: list[float], tolerance: float = 0.05, exact: float = EXACT_FIT_KL) -> int:
    """The smallest n whose log loss is within ``tolerance`` of the total log drop above the best.

    On the log scale because the losses span orders of magnitude (a fit short of the target's rank leaves a loss
    that is orders above an exact one); losses below ``exact`` count as ``exact``. For a target of logit rank r and
    dims around it, the elbow is r or r + 1 and moves with r.
    """
    logs = [math.log(max(loss, exact)) for loss in losses]
    best, worst = min(logs), max(logs)
    threshold = best + tolerance * (worst - best)
    return next(d for d, value in zip(dims, logs) if value <= threshold)
