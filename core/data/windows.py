"""Training and held-out windows of a text dataset's token stream, for the kinds that train a token model on it
(``momentum_accumulation``, ``eg_stepsize``): one code path, so both read text the same way.

Only the held-out windows (at most ``eval_rows``) and the train probe are tensors in memory; each training batch is
read from the (memory-mapped) stream when it is drawn.
"""

from __future__ import annotations

import numpy as np
import torch

from core.data.batches import chunked_max
from core.data.loader import TextView


class TextWindows:
    """Windows of ``length`` consecutive token ids of a text dataset's stream (its rows packed end to end): the
    first ``1 - holdout`` of the rows train, the rest are held out; windows do not overlap. ``hold_x`` holds the
    first ``eval_rows`` held-out windows, ``probe_x`` the first ``probe_rows`` training windows."""

    def __init__(
        self,
        view: TextView,
        length: int,
        vocab: int,  # the ids the model takes (``BuiltModel.usable_ids``)
        holdout: float,
        device: torch.device,
        eval_rows: int,
        probe_rows: int,
    ):
        if len(view.tokens) and chunked_max(view.tokens) >= vocab:
            top = chunked_max(view.tokens)
            raise ValueError(f"dataset: token ids reach {top}; the model takes ids in [0, {vocab})")
        cut_row = len(view) - max(1, int(round(holdout * len(view))))
        cut = int(view.offsets[cut_row])
        self.view, self.length, self.device, self.features = view, length, device, length
        self.train_windows = cut // length
        self.hold_start, hold_windows = cut, (len(view.tokens) - cut) // length
        if self.train_windows < 1 or hold_windows < 1:
            raise ValueError(
                f"dataset: {cut} training and {len(view.tokens) - cut} held-out tokens do not make one window of "
                f"{length} tokens each (the model's context)"
            )
        self.probe_x = self._windows(np.arange(min(probe_rows, self.train_windows)) * length)
        self.hold_x = self._windows(cut + np.arange(min(eval_rows, hold_windows)) * length)
        self.probe_y = self.hold_y = None

    @property
    def n_train(self) -> int:
        return self.train_windows

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, None]:
        """The training windows at positions ``idx`` (no labels: a token model predicts the stream itself)."""
        return self._windows(np.asarray(idx) * self.length), None

    def _windows(self, starts: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(self.view.windows(starts, self.length), device=self.device)
