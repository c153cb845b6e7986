"""What a conversion reports (``Inspection``) or why it refuses (``UploadRejected``), the limits every format
shares, and running column statistics."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

MAX_ROWS = 1_000_000_000
MAX_COLUMNS = 65_536
MAX_LABEL = 2**31 - 1
CHUNK_BYTES = 4 * 1024 * 1024  # what one read holds in memory, whatever the file's size
SAMPLE_ROWS = 5
PREVIEW_COLUMNS = 64
PREVIEW_TEXT_CHARS = 200
MAX_BALANCE_LABELS = 1000  # distinct labels counted for the preview; more are reported as a count only


class UploadRejected(ValueError):
    """The upload is not a dataset this service accepts; the message is "<field>: <reason>"."""


@dataclass(frozen=True)
class Inspection:
    """An accepted upload: what it holds, its preview, and the canonical files written for it."""

    format: str  # "npy" | "npz" | "csv" | "parquet" | "jsonl"
    kind: str  # "arrays" | "text" | "pairs"
    rows: int
    columns: int | None  # arrays: features per row; text/pairs: None
    has_labels: bool
    preview: dict
    files: dict[str, Path]  # canonical file name -> path in out_dir

    def meta(self) -> dict:
        """The JSON-serialisable description (everything but the local paths), as a Dataset row records it."""
        out = asdict(self)
        out["files"] = sorted(self.files)
        return out


def check_size(rows: int, columns: int, has_labels: bool, cap: int) -> None:
    """Refuse an arrays dataset by its declared shape, before any of its data is read."""
    if rows < 2 or columns < 1:
        raise UploadRejected(f"x: {rows} rows and {columns} columns are too few (at least 2 and 1)")
    if rows > MAX_ROWS or columns > MAX_COLUMNS:
        raise UploadRejected(
            f"x: {rows} rows and {columns} columns exceed the limits ({MAX_ROWS} rows, {MAX_COLUMNS} columns)"
        )
    size = rows * columns * 4 + (rows * 8 if has_labels else 0)
    if size > cap:
        raise UploadRejected(
            f"file: {rows} rows x {columns} columns would store {size} bytes as float32, over the limit of {cap} bytes"
        )


class RunningStats:
    """Count, min, max, mean and population sd per column, merged chunk by chunk (Chan et al.'s pairwise update),
    so a file of any length is summarised in one pass."""

    def __init__(self, columns: int):
        self.n = 0
        self.min = np.full(columns, np.inf)
        self.max = np.full(columns, -np.inf)
        self.mean = np.zeros(columns)
        self.m2 = np.zeros(columns)

    def add(self, block: np.ndarray) -> None:
        """Rows of a 2-D block (one column per statistic)."""
        b = np.asarray(block, dtype=np.float64)
        n_b = b.shape[0]
        if n_b == 0:
            return
        mean_b = b.mean(axis=0)
        m2_b = ((b - mean_b) ** 2).sum(axis=0)
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta**2 * (self.n * n_b / n)
        self.n = n
        np.minimum(self.min, b.min(axis=0), out=self.min)
        np.maximum(self.max, b.max(axis=0), out=self.max)

    def summary(self, names: list[str]) -> list[dict]:
        return [
            {
                "column": name,
                "min": _num(self.min[i]),
                "max": _num(self.max[i]),
                "mean": _num(self.mean[i]),
                "std": _num(math.sqrt(self.m2[i] / self.n)) if self.n else None,
            }
            for i, name in enumerate(names)
        ]


def _num(value: float) -> float | None:
    v = float(value)
    return v if math.isfinite(v) else None
