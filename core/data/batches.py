"""Summaries and samples of memory-mapped datasets that touch one chunk at a time (numpy only), so a kind can train
on a dataset larger than its worker's memory: statistics are accumulated over chunks of rows, and training reads
only the rows of each sampled mini-batch."""

from __future__ import annotations

import math

import numpy as np

CHUNK_BYTES = 4 * 1024 * 1024


def rows_per_chunk(x: np.ndarray) -> int:
    return max(1, CHUNK_BYTES // max(1, x[0].nbytes if len(x) else 1))


def selected_moments(x: np.ndarray, selected: np.ndarray) -> tuple[float, float]:
    """Mean and population sd (float64) of every element of the rows of ``x`` where ``selected`` is True, read a
    chunk of rows at a time (pairwise merge of the chunks' moments)."""
    n, mean, m2 = 0, 0.0, 0.0
    step = rows_per_chunk(x)
    for start in range(0, len(x), step):
        keep = selected[start : start + step]
        if not keep.any():
            continue
        block = np.asarray(x[start : start + step], dtype=np.float64)[keep]
        n_b = block.size
        mean_b = float(block.mean())
        m2_b = float(((block - mean_b) ** 2).sum())
        total = n + n_b
        delta = mean_b - mean
        mean += delta * n_b / total
        m2 += m2_b + delta**2 * n * n_b / total
        n = total
    if n == 0:
        raise ValueError("dataset: no rows selected")
    return mean, math.sqrt(m2 / n)


def chunked_max(a: np.ndarray) -> int:
    """The largest value of a 1-D integer array, read a chunk at a time."""
    step = CHUNK_BYTES // max(1, a.itemsize)
    return max(int(np.asarray(a[i : i + step]).max()) for i in range(0, len(a), step))


def chunked_min(a: np.ndarray) -> int:
    step = CHUNK_BYTES // max(1, a.itemsize)
    return min(int(np.asarray(a[i : i + step]).min()) for i in range(0, len(a), step))
