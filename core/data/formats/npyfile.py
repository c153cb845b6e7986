"""Canonical ``.npy`` files written a block at a time, and raw ``.npy`` headers read (length capped) before any data.

A canonical file is plain little-endian ``.npy`` (format 1.0, no pickle) that
``np.load(mmap_mode="r", allow_pickle=False)`` maps. Its row count is known only once the source has been read, so
the writer reserves a fixed-size header, appends blocks and writes the header last: nothing but one block is ever in
memory.
"""

from __future__ import annotations

import io
import math
import struct
from pathlib import Path
from typing import IO, BinaryIO

import numpy as np

from core.data.formats.inspection import UploadRejected

HEADER_BYTES = 128  # numpy pads a 1.0 header to a multiple of 64; any shape within the limits fits in 128
MAGIC = b"\x93NUMPY"
HEADER_LENGTH = {(1, 0): struct.Struct("<H"), (2, 0): struct.Struct("<I"), (3, 0): struct.Struct("<I")}
MAX_HEADER_BYTES = 8 * 1024  # a raw header's declared length; a numeric array's is under a few hundred bytes
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
        """Rows of any dtype that casts to the file's, converted a buffer's worth at a time (a block of 16 MiB of
        bytes as int32 would otherwise be a 64 MiB copy)."""
        assert self._fh is not None and block.shape[1:] == self.row_shape
        step = max(1, WRITE_BUFFER // max(1, math.prod(self.row_shape) * self.dtype.itemsize))
        for start in range(0, block.shape[0], step):
            self._fh.write(np.ascontiguousarray(block[start : start + step], dtype=self.dtype).data)
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
    """(shape, dtype, data offset) of a raw ``.npy``, refused unless it is a numeric C-ordered array. The header's
    declared length is read and capped here: numpy reads a whole declared header (a .npz entry can declare and
    inflate to gigabytes) before it checks its size."""
    prefix = fp.read(len(MAGIC) + 2)
    if len(prefix) < len(MAGIC) + 2 or not prefix.startswith(MAGIC):
        raise UploadRejected(f"{field}: not a .npy array (no \\x93NUMPY magic)")
    version = (prefix[-2], prefix[-1])
    length = HEADER_LENGTH.get(version)
    if length is None:
        raise UploadRejected(f"{field}: .npy format version {version[0]}.{version[1]} (1.0, 2.0 and 3.0 are read)")
    length_field = fp.read(length.size)
    if len(length_field) < length.size:
        raise UploadRejected(f"{field}: the .npy ends inside its header")
    (declared,) = length.unpack(length_field)
    if declared > MAX_HEADER_BYTES:
        raise UploadRejected(
            f"{field}: the .npy header declares a length of {declared} bytes (at most {MAX_HEADER_BYTES}; "
            "numpy writes under a few hundred)"
        )
    header = fp.read(declared)
    if len(header) < declared:
        raise UploadRejected(f"{field}: the .npy ends inside its header")
    if version == (3, 0) and not header.isascii():
        raise UploadRejected(f"{field}: a .npy 3.0 header with non-ASCII text (a numeric array's header is ASCII)")
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    try:  # numpy parses the header (3.0 is 2.0 with UTF-8 text: the same for ASCII)
        shape, fortran, dtype = read(io.BytesIO(length_field + header), max_header_size=MAX_HEADER_BYTES)
    except ValueError as exc:
        raise UploadRejected(f"{field}: not a readable .npy header ({str(exc).splitlines()[0][:200]})") from None
    check_numeric(dtype, field)
    if any(d < 0 for d in shape):
        raise UploadRejected(f"{field}: shape {shape} is not a shape")
    if fortran and len(shape) > 1:
        raise UploadRejected(f"{field}: Fortran-ordered arrays are not accepted; save np.ascontiguousarray({field})")
    return tuple(shape), dtype, len(prefix) + length.size + declared


def check_numeric(dtype: np.dtype, field: str) -> None:
    if dtype.hasobject or dtype.fields is not None or dtype.kind not in "biuf":
        raise UploadRejected(f"{field}: dtype {dtype} is not numeric (bool, integer or float)")
