"""Canonical ``.npy`` files written a block at a time, and raw ``.npy`` headers read before any data.

A canonical file is plain little-endian ``.npy`` (format 1.0, no pickle) that
``np.load(mmap_mode="r", allow_pickle=False)`` maps. Its row count is known only once the source has been read, so
the writer reserves a fixed-size header, appends blocks and writes the header last: nothing but one block is ever in
memory.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import IO, BinaryIO

import numpy as np

from core.data.formats.inspection import UploadRejected

HEADER_BYTES = 128  # numpy pads a 1.0 header to a multiple of 64; any shape within the limits fits in 128
WRITE_BUFFER = 1 << 20


def npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """numpy's own 1.0 header for ``shape``, exactly HEADER_BYTES long."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype.str, "fortran_order": False, "shape": shape})
    header = buf.getvalue()
    if len(header) != HEADER_BYTES:
        raise ValueError(f"a header of {len(header)} bytes for shape {shape}")  # the limits keep shapes short
    return header


class NpyWriter:
    """Appends C-ordered blocks of ``dtype`` whose rows have ``row_shape``; ``close`` writes the header."""

    def __init__(self, path: Path, dtype: np.dtype, row_shape: tuple[int, ...] = ()):
        self.path, self.dtype, self.row_shape = path, np.dtype(dtype), row_shape
        self.rows = 0
        self._fh: BinaryIO | None = open(path, "wb", buffering=WRITE_BUFFER)  # noqa: SIM115 (closed by close)
        self._fh.write(b"\0" * HEADER_BYTES)

    @property
    def bytes(self) -> int:
        """Data bytes written so far."""
        return self.rows * math.prod(self.row_shape) * self.dtype.itemsize

    def append(self, block: np.ndarray) -> None:
        assert self._fh is not None and block.shape[1:] == self.row_shape
        self._fh.write(np.ascontiguousarray(block, dtype=self.dtype).data)
        self.rows += block.shape[0]

    def close(self) -> Path:
        assert self._fh is not None
        self._fh.seek(0)
        self._fh.write(npy_header(self.dtype, (self.rows, *self.row_shape)))
        self._fh.close()
        self._fh = None
        return self.path

    def discard(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self.path.unlink(missing_ok=True)


def read_npy_header(fp: IO[bytes], field: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of a raw ``.npy``, refused unless it is a numeric C-ordered array."""
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except ValueError as exc:
        raise UploadRejected(f"{field}: not a readable .npy header ({exc})") from None
    check_numeric(dtype, field)
    if any(d < 0 for d in shape):
        raise UploadRejected(f"{field}: shape {shape} is not a shape")
    if fortran and len(shape) > 1:
        raise UploadRejected(f"{field}: Fortran-ordered arrays are not accepted; save np.ascontiguousarray({field})")
    return tuple(shape), dtype, fp.tell()


def check_numeric(dtype: np.dtype, field: str) -> None:
    if dtype.hasobject or dtype.fields is not None or dtype.kind not in "biuf":
        raise UploadRejected(f"{field}: dtype {dtype} is not numeric (bool, integer or float)")
