"""Initializers for non-square weights that average the fan-in and fan-out (docs/techniques.md#init_averaging).

Shaped like ``torch.nn.init``: in-place functions ending in ``_`` that take the weight tensor, read the fans the
way torch does (weight is (out, in, *kernel); the receptive field multiplies both fans) and accept ``generator``.
σ² = 1 / mean(fan_in, fan_out) with the mean chosen by name.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

Mean = Literal["arithmetic", "geometric", "quadratic", "least_squares", "harmonic"]
MEANS: tuple[str, ...] = ("arithmetic", "geometric", "quadratic", "least_squares", "harmonic")


def averaged_variance(fan_in: int, fan_out: int, mean: Mean = "geometric") -> float:
    """σ² = 1/mean(m, n): arithmetic 2/(m+n) (Glorot), geometric 1/√(mn), quadratic (root mean square)
    √2/√(m²+n²), least_squares (m+n)/(m²+n²) (1 over the contraharmonic mean: the σ² minimising
    (mσ²−1)² + (nσ²−1)²), harmonic (1/m + 1/n)/2."""
    m, n = float(fan_in), float(fan_out)
    if m <= 0 or n <= 0:
        raise ValueError("fans must be positive")
    if mean == "arithmetic":
        return 2.0 / (m + n)
    if mean == "geometric":
        return 1.0 / math.sqrt(m * n)
    if mean == "quadratic":
        return 1.0 / math.sqrt((m * m + n * n) / 2.0)
    if mean == "least_squares":
        return (m + n) / (m * m + n * n)
    if mean == "harmonic":
        return (1.0 / m + 1.0 / n) / 2.0
    raise ValueError(f"unknown mean {mean!r}; expected one of {MEANS}")


def fans(tensor: torch.Tensor) -> tuple[int, int]:
    """(fan_in, fan_out) as torch.nn.init computes them: dims 1 and 0 times the receptive field."""
    if tensor.dim() < 2:
        raise ValueError("fans need a tensor with at least 2 dimensions")
    receptive = math.prod(tensor.shape[2:]) if tensor.dim() > 2 else 1
    return tensor.shape[1] * receptive, tensor.shape[0] * receptive


def averaged_normal_(
    tensor: torch.Tensor, mean: Mean = "geometric", gain: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Fill ``tensor`` from N(0, gain²·σ²) with σ² = averaged_variance(fan_in, fan_out, mean)."""
    std = gain * math.sqrt(averaged_variance(*fans(tensor), mean))
    with torch.no_grad():
        return tensor.normal_(0.0, std, generator=generator)


def averaged_uniform_(
    tensor: torch.Tensor, mean: Mean = "geometric", gain: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Fill ``tensor`` from U(−a, a) with a = √3·gain·σ, the same variance as ``averaged_normal_``."""
    bound = math.sqrt(3.0) * gain * math.sqrt(averaged_variance(*fans(tensor), mean))
    with torch.no_grad():
        return tensor.uniform_(-bound, bound, generator=generator)
