"""The training and held-out data of a ``momentum_accumulation`` job, whatever its dataset's size.

Only the held-out rows (at most ``MAX_EVAL_ROWS``) and the train probe are tensors in memory; each micro-batch is
read from the dataset when it is drawn (rows of a memory-mapped ``x``, or windows of a text dataset's token stream),
so a dataset larger than the worker's memory trains in batches. The standardisation statistics are accumulated over
chunks of the training rows.
"""

from __future__ import annotations

import numpy as np
import torch

from core.data.batches import chunked_max, selected_moments
from core.data.loader import TextView
from core.techniques.momentum_accumulation.spec import MAX_EVAL_ROWS, TRAIN_PROBE


class Rows:
    """Rows of ``x`` (and labels ``y``) split into train and held-out rows by a seeded permutation; classifier
    inputs are standardised by one scalar centre and scale of the training rows (``standardize``)."""

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray | None,
        holdout: float,
        seed: int,
        dtype: torch.dtype,
        device: torch.device,
        standardize: bool,
    ):
        split = np.random.default_rng(seed).permutation(len(x))
        n_hold = max(1, int(round(holdout * len(x))))
        self.hold, self.train = split[:n_hold], split[n_hold:]
        self.x, self.y, self.dtype, self.device = x, y, dtype, device
        self.features = x.shape[1]
        self.centre, self.scale = 0.0, 1.0
        if standardize:
            in_train = np.zeros(len(x), dtype=bool)
            in_train[self.train] = True
            self.centre, scale = selected_moments(x, in_train)
            self.scale = scale + 1e-8
        self.standardize = standardize
        self.probe_x, self.probe_y = self._rows(self.train[:TRAIN_PROBE])
        self.hold_x, self.hold_y = self._rows(self.hold[:MAX_EVAL_ROWS])

    @property
    def n_train(self) -> int:
        return len(self.train)

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The training rows at positions ``idx`` of the train split, in that order."""
        return self._rows(self.train[idx])

    def _rows(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        order = np.argsort(rows, kind="stable")  # read a memory map front to back, then restore the order
        picked = np.empty((len(rows), self.features), dtype=np.float64 if self.standardize else np.int64)
        picked[order] = self.x[rows[order]]
        if self.standardize:
            x = torch.as_tensor((picked - self.centre) / self.scale, dtype=self.dtype, device=self.device)
        else:
            x = torch.as_tensor(picked, dtype=torch.int64, device=self.device)
        if self.y is None:
            return x, None
        return x, torch.as_tensor(np.asarray(self.y[rows]), dtype=torch.int64, device=self.device)


class TextWindows:
    """Windows of ``length`` consecutive token ids of a text dataset's stream (its rows packed end to end): the
    first ``1 - holdout`` of the rows train, the rest are held out; windows do not overlap."""

    def __init__(self, view: TextView, length: int, vocab: int, holdout: float, device: torch.device):
        if len(view.tokens) and chunked_max(view.tokens) >= vocab:  # vocab: the ids the model takes (usable_ids)
            raise ValueError(
                f"dataset: token ids reach {chunked_max(view.tokens)}; the model takes ids in [0, {vocab})"
            )
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
        self.probe_x = self._windows(np.arange(min(TRAIN_PROBE, self.train_windows)) * length)
        self.hold_x = self._windows(cut + np.arange(min(MAX_EVAL_ROWS, hold_windows)) * length)
        self.probe_y = self.hold_y = None

    @property
    def n_train(self) -> int:
        return self.train_windows

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, None]:
        return self._windows(np.asarray(idx) * self.length), None

    def _windows(self, starts: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(self.view.windows(starts, self.length), device=self.device)
