"""The training and held-out rows of a ``momentum_accumulation`` job, whatever its dataset's size (a text dataset's
windows are ``core.data.windows.TextWindows``, shared with ``eg_stepsize``).

Only the held-out rows (at most ``eval_rows``) and the train probe are tensors in memory; each micro-batch is read
from the dataset when it is drawn (rows of a memory-mapped ``x``), so a dataset larger than the worker's memory
trains in batches. The standardisation statistics are accumulated over chunks of the training rows.
"""

from __future__ import annotations

import numpy as np
import torch

from core.data.batches import selected_moments


class Rows:
    """Rows of ``x`` (and labels ``y``) split into train and held-out rows by a seeded permutation; classifier
    inputs are standardised by one scalar centre and scale of the training rows (``standardize``). ``hold_x`` holds
    the first ``eval_rows`` held-out rows, ``probe_x`` the first ``probe_rows`` training rows."""

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray | None,
        holdout: float,
        seed: int,
        dtype: torch.dtype,
        device: torch.device,
        standardize: bool,
        eval_rows: int,
        probe_rows: int,
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
        self.probe_x, self.probe_y = self._rows(self.train[:probe_rows])
        self.hold_x, self.hold_y = self._rows(self.hold[:eval_rows])

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
