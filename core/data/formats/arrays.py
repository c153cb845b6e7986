"""The canonical arrays dataset, filled chunk by chunk: ``x.npy`` (float32 rows) and ``y.npy`` (int64 labels).

Every source format (.npy, .npz, CSV, Parquet) hands its rows here in chunks; each chunk is checked (finite features,
integer labels) and appended to the files, and the preview (samples, per-column statistics, label balance) is
gathered on the way, so nothing is ever held beyond a chunk.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np

from core.data.formats.inspection import (
    MAX_BALANCE_LABELS,
    MAX_LABEL,
    MAX_ROWS,
    PREVIEW_COLUMNS,
    SAMPLE_ROWS,
    Inspection,
    RunningStats,
    UploadRejected,
)
from core.data.formats.npyfile import NpyWriter

X_DTYPE, Y_DTYPE = np.dtype("<f4"), np.dtype("<i8")


class ArraysSink:
    """Checks and writes rows of x (and labels y) into ``out_dir``; ``finish`` returns the Inspection."""

    def __init__(self, out_dir: Path, columns: int, labelled: bool, cap: int, names: list[str] | None = None):
        self.columns, self.cap = columns, cap
        self.names = names or [str(i) for i in range(columns)]
        self.source_dtypes: dict[str, str] = {}
        self.x = NpyWriter(out_dir / "x.npy", X_DTYPE, (columns,))
        self.y = NpyWriter(out_dir / "y.npy", Y_DTYPE) if labelled else None
        self.stats = RunningStats(min(columns, PREVIEW_COLUMNS))
        self.labels: collections.Counter[int] | None = collections.Counter() if labelled else None
        self.distinct_over_cap = False
        self.samples: list[dict] = []

    @property
    def rows(self) -> int:
        return self.x.rows

    def add(self, x: np.ndarray, y: np.ndarray | None = None) -> None:
        """A chunk of rows: x is (n, columns) of any numeric dtype, y (n,) when the dataset is labelled."""
        first = self.rows + 1
        with np.errstate(over="ignore"):  # a value beyond float32 becomes infinity, refused just below
            xs = x.astype(X_DTYPE)
        finite = np.isfinite(xs).all(axis=1)
        if not finite.all():
            row = first + int(np.argmin(finite))
            raise UploadRejected(f"x: row {row} holds NaN or infinity (as float32)")
        if (self.y is None) != (y is None):
            raise ValueError("labels given for an unlabelled dataset, or missing for a labelled one")
        ys = None if y is None else _labels(y, first)
        if self.rows + len(xs) > MAX_ROWS:
            raise UploadRejected(f"x: more than {MAX_ROWS} rows")
        stored = (self.rows + len(xs)) * (self.columns * 4 + (8 if ys is not None else 0))
        if stored > self.cap:
            raise UploadRejected(f"file: more than {self.cap} bytes as stored (after row {first + len(xs) - 1})")
        self.x.append(xs)
        self.stats.add(xs[:, : self.stats.mean.size])
        if ys is not None:
            assert self.y is not None
            self.y.append(ys)
            self._count(ys)
        for i in range(min(SAMPLE_ROWS - len(self.samples), len(xs))):
            sample: dict = {"x": [float(v) for v in xs[i, :PREVIEW_COLUMNS]]}
            if ys is not None:
                sample["y"] = int(ys[i])
            self.samples.append(sample)

    def _count(self, ys: np.ndarray) -> None:
        assert self.labels is not None
        if self.distinct_over_cap:
            return
        values, counts = np.unique(ys, return_counts=True)
        self.labels.update(dict(zip(values.tolist(), counts.tolist(), strict=True)))
        if len(self.labels) > MAX_BALANCE_LABELS:
            self.distinct_over_cap = True
            self.labels.clear()

    def finish(self, fmt: str, label_column: str | None = None) -> Inspection:
        if self.rows < 2:
            raise UploadRejected(f"x: {self.rows} rows are too few (at least 2)")
        files = {"x.npy": self.x.close()}
        if self.y is not None:
            files["y.npy"] = self.y.close()
        shown = self.names[:PREVIEW_COLUMNS]
        preview = {
            "kind": "arrays",
            "format": fmt,
            "rows": self.rows,
            "shape": [self.rows, self.columns],
            "dtypes": {"x": "float32", **({"y": "int64"} if self.y is not None else {})},
            "columns": [{"name": n, "source_dtype": self.source_dtypes.get(n)} for n in shown],
            "columns_shown": len(shown),
            "label_column": label_column,
            "label_balance": None,
            "sample_rows": self.samples,
            "stats": self.stats.summary(shown),
        }
        if self.labels is not None:
            preview["label_balance"] = (
                None if self.distinct_over_cap else {str(k): v for k, v in sorted(self.labels.items())}
            )
            preview["distinct_labels"] = f"over {MAX_BALANCE_LABELS}" if self.distinct_over_cap else len(self.labels)
        return Inspection(fmt, "arrays", self.rows, self.columns, self.y is not None, preview, files)

    def discard(self) -> None:
        self.x.discard()
        if self.y is not None:
            self.y.discard()


def _labels(y: np.ndarray, first: int) -> np.ndarray:
    """Labels as int64, refused unless every one is an integer in [0, MAX_LABEL]; names the first bad row."""
    y = np.asarray(y).reshape(-1)
    if y.dtype.kind == "b":
        return y.astype(Y_DTYPE)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(y) & (y == np.round(y)) if y.dtype.kind == "f" else np.ones(len(y), dtype=bool)
        ok &= (y >= 0) & (y <= MAX_LABEL)
    if not ok.all():
        row = first + int(np.argmin(ok))
        raise UploadRejected(
            f"y: row {row} holds {y[row - first].item()!r}; labels must be integers in [0, {MAX_LABEL}]"
        )
    return y.astype(Y_DTYPE)
