"""Dataset rows as token ids for token models (numpy only): the built-in digits as pixel levels 0..16, an upload
as its integer values."""

from __future__ import annotations

import numpy as np


def token_rows(x: np.ndarray, ids: int, context: int, pixel_levels: bool = False) -> np.ndarray:
    """Rows of ids in [0, ids) (``BuiltModel.usable_ids``: the whole vocabulary but for a masked LM's mask token),
    cut to ``context`` tokens. ``pixel_levels``: x holds intensities in [0, 1] on a 16-level grid (the digits)."""
    x = np.asarray(x, dtype=np.float64)
    if pixel_levels:
        x = np.round(x * 16)
    if x.ndim != 2 or (x != np.round(x)).any() or x.min() < 0 or x.max() >= ids:
        raise ValueError(f"dataset: a token model needs rows of integer token ids in [0, {ids})")
    if x.shape[1] < 2:
        raise ValueError("dataset: token rows need at least 2 tokens")
    return x[:, :context].astype(np.int64)
