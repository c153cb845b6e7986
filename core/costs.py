"""Cost arithmetic of the techniques that needs no torch: the API's budget checks (spec modules) and the
techniques themselves share it, so a job is refused before queueing by the same numbers it will run with."""

from __future__ import annotations

import itertools

DEFAULT_MAX_SCORE_ELEMENTS = 1 << 20


def score_block_rows(cols: int, chunk_size: int, max_score_elements: int = DEFAULT_MAX_SCORE_ELEMENTS) -> int:
    """Rows of the score matrix computed at once: at most one chunk, and at most ``max_score_elements`` entries."""
    return max(1, min(chunk_size, max_score_elements // max(cols, 1)))


JACREV_FLOP_ADVANTAGE = 8.0
"""``method="auto"`` keeps jacrev while its flop estimate is at most this many times power iteration's: jacrev's
vmapped rows make large matrix products, while power iteration's few-row jvp/vjp chain is memory-bound and ran
5-10x slower per flop on CPU (bench/gradient_penalty_bound.py)."""

JACREV_MAX_BYTES = 256 * 2**20
"""``method="auto"`` never materializes more Jacobian entries than this (B · Σ_t d_t · d_in · itemsize)."""


def measurement_flops(d_in: int, hidden_widths: list[int], method: str, max_iter: int = 100) -> float:
    """Rough flops per sample of the Jacobian part of ``gradient_bound_terms`` (the rest is one forward-backward).

    jacrev: one vjp per row of each ∂h^(t)/∂x through its prefix, then an SVD of the d_t × d_in matrix.
    power: per iteration a jvp (two products per layer) and a vjp (one) through every prefix, for ``max_iter``
    iterations, plus the forward-mode Frobenius pass (d_in tangents through all hidden layers).
    """
    dims = [d_in, *hidden_widths]
    prefix = list(itertools.accumulate(a * b for a, b in zip(dims, dims[1:])))
    if method == "jacrev":
        return float(sum(2 * w * p + 4 * w * d_in * min(w, d_in) for w, p in zip(hidden_widths, prefix)))
    return float(max_iter * sum(6 * p for p in prefix) + (4 * d_in * prefix[-1] if prefix else 0))


def auto_method(d_in: int, hidden_widths: list[int], batch: int = 1, max_iter: int = 100, itemsize: int = 8) -> str:
    """The Jacobian method ``"auto"`` picks: jacrev unless its flops exceed JACREV_FLOP_ADVANTAGE times power
    iteration's or its Jacobians would exceed JACREV_MAX_BYTES; wide inputs therefore go to power iteration."""
    if batch * sum(hidden_widths) * d_in * itemsize > JACREV_MAX_BYTES:
        return "power"
    jacrev = measurement_flops(d_in, hidden_widths, "jacrev")
    power = measurement_flops(d_in, hidden_widths, "power", max_iter)
    return "jacrev" if jacrev <= JACREV_FLOP_ADVANTAGE * power else "power"
