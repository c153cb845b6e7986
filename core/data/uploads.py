"""Parsing uploaded datasets (.npz or .csv) without pickle, into one canonical .npz with ``x`` and maybe ``y``."""
from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

import numpy as np

MAX_ROWS = 1_000_000
MAX_COLUMNS = 65_536
MAX_CELLS = 50_000_000


class UploadRejected(ValueError):
    """The upload is not a dataset this service accepts; the message says why."""


@dataclass
class ParsedDataset:
    x: np.ndarray
    y: np.ndarray | None

    def to_npz(self) -> bytes:
        buf = io.BytesIO()
        arrays = {"x": self.x} if self.y is None else {"x": self.x, "y": self.y}
        np.savez(buf, **arrays)
        return buf.getvalue()


def parse_upload(filename: str, data: bytes, label_column: str | None = None) -> ParsedDataset:
    lower = filename.lower()
    if lower.endswith(".npz"):
        return _check(*_parse_npz(data))
    if lower.endswith(".csv"):
        return _check(*_parse_csv(data, label_column))
    raise UploadRejected("file: only .npz and .csv uploads are accepted")


def _parse_npz(data: bytes) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            if "x" not in npz.files:
                raise UploadRejected(f"file: the .npz must hold an array named 'x' (found {sorted(npz.files)})")
            extra = set(npz.files) - {"x", "y"}
            if extra:
                raise UploadRejected(f"file: unexpected arrays {sorted(extra)}; only 'x' and 'y' are read")
            x = npz["x"]
            y = npz["y"] if "y" in npz.files else None
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        if isinstance(exc, UploadRejected):
            raise
        raise UploadRejected(f"file: not a readable .npz of numeric arrays ({exc})") from None
    return x, y


def _parse_csv(data: bytes, label_column: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UploadRejected("file: a .csv must be UTF-8 text") from None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise UploadRejected("file: the .csv is empty")
    first = [c.strip() for c in lines[0].split(",")]
    has_header = not all(_is_number(c) for c in first)
    header = first if has_header else [str(i) for i in range(len(first))]
    body = lines[1:] if has_header else lines
    if len(body) > MAX_ROWS:
        raise UploadRejected(f"file: {len(body)} rows exceed the limit of {MAX_ROWS}")
    try:
        table = np.array([[float(c) for c in ln.split(",")] for ln in body], dtype=np.float64)
    except ValueError as exc:
        raise UploadRejected(f"file: every cell must be a number ({exc})") from None
    if table.ndim != 2 or table.shape[1] != len(header):
        raise UploadRejected("file: every row must have as many cells as the first row")
    if label_column is None:
        return table, None
    if label_column not in header:
        raise UploadRejected(f"label_column: {label_column!r} is not a column (columns: {header[:20]})")
    j = header.index(label_column)
    return np.delete(table, j, axis=1), table[:, j]


def _is_number(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return False


def _check(x: np.ndarray, y: np.ndarray | None) -> ParsedDataset:
    if x.dtype.kind not in "biuf":
        raise UploadRejected(f"x: dtype {x.dtype} is not numeric")
    if x.ndim == 1:
        x = x[:, None]
    elif x.ndim > 2:  # images and the like: one flattened row per sample
        x = x.reshape(x.shape[0], -1)
    if x.shape[0] < 2 or x.shape[1] < 1:
        raise UploadRejected(f"x: shape {x.shape} has too few rows or columns")
    if x.shape[0] > MAX_ROWS or x.shape[1] > MAX_COLUMNS or x.size > MAX_CELLS:
        raise UploadRejected(f"x: shape {x.shape} exceeds the limits ({MAX_ROWS} rows, {MAX_COLUMNS} columns, "
                             f"{MAX_CELLS} cells)")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise UploadRejected("x: contains NaN or infinity")
    if y is not None:
        if y.dtype.kind not in "biuf":
            raise UploadRejected(f"y: dtype {y.dtype} is not numeric")
        y = y.reshape(-1)
        if y.shape[0] != x.shape[0]:
            raise UploadRejected(f"y: {y.shape[0]} labels for {x.shape[0]} rows")
        if not np.isfinite(y.astype(np.float64)).all() or (y != np.round(y)).any() or (y < 0).any():
            raise UploadRejected("y: labels must be non-negative integers")
        y = y.astype(np.int64)
    return ParsedDataset(x, y)
