"""Parsing uploaded datasets (.npz or .csv) without pickle, into one canonical .npz with ``x`` (float32) and maybe
``y`` (int64), in bounded memory.

An upload is judged on what it declares before any of its data is read: a .npz by its zip directory and each
``.npy`` header (shape, dtype, the entry's uncompressed size, which must match), a .csv by its first row and its line
count; the dataset it would become must fit ``max_stored_bytes``. Data is then read in chunks of at most
``CHUNK_BYTES``, each checked and spooled to a temporary file, so a refusal late in the file (a NaN in the last row)
has held one chunk's worth, not the array; only an accepted dataset is assembled in memory, as the stored blob. The
parser
takes a binary file object and knows nothing of HTTP, so it can run wherever the upload lands.
"""

from __future__ import annotations

import contextlib
import io
import math
import struct
import tempfile
import zipfile
from dataclasses import dataclass
from typing import BinaryIO, Self

import numpy as np

MAX_ROWS = 1_000_000
MAX_COLUMNS = 65_536
CHUNK_BYTES = 4 * 1024 * 1024
CSV_BLOCK_BYTES = 1024 * 1024  # numpy's text parser holds about twenty times its input while it works
MAX_CSV_ROW_BYTES = 2 * 1024 * 1024
X_DTYPE, Y_DTYPE = np.dtype("<f4"), np.dtype("<i8")
_EOCD = struct.Struct("<4s4H2LH")  # the zip's end-of-central-directory record
_EOCD_SIGNATURE = b"PK\x05\x06"
_MAX_DIRECTORY_BYTES = 4096  # two entries' worth


class UploadRejected(ValueError):
    """The upload is not a dataset this service accepts; the message starts with the field and says why."""


@dataclass(frozen=True)
class CanonicalDataset:
    """An accepted upload as stored: its shape and the canonical .npz bytes."""

    rows: int
    columns: int
    has_labels: bool
    npz: bytes


def stored_size(rows: int, columns: int, has_labels: bool) -> int:
    """Bytes of the canonical arrays (the .npz adds a few hundred)."""
    return rows * columns * X_DTYPE.itemsize + (rows * Y_DTYPE.itemsize if has_labels else 0)


def parse_upload(filename: str, fp: BinaryIO, label_column: str | None, max_stored_bytes: int) -> CanonicalDataset:
    """Check and convert an upload read from the seekable binary file ``fp``."""
    lower = filename.lower()
    with _Spool() as spool:
        if lower.endswith(".npz"):
            if label_column is not None:
                raise UploadRejected("label_column: only for .csv uploads (a .npz names its labels 'y')")
            _parse_npz(fp, spool, max_stored_bytes)
        elif lower.endswith(".csv"):
            _parse_csv(fp, label_column, spool, max_stored_bytes)
        else:
            raise UploadRejected("file: only .npz and .csv uploads are accepted")
        return spool.canonical()


def _check_shape(rows: int, columns: int, has_labels: bool, cap: int) -> None:
    if rows < 2 or columns < 1:
        raise UploadRejected(f"x: {rows} rows and {columns} columns are too few (at least 2 and 1)")
    if rows > MAX_ROWS or columns > MAX_COLUMNS:
        raise UploadRejected(
            f"x: {rows} rows and {columns} columns exceed the limits ({MAX_ROWS} rows, {MAX_COLUMNS} columns)"
        )
    size = stored_size(rows, columns, has_labels)
    if size > cap:
        raise UploadRejected(
            f"file: {rows} rows x {columns} columns would store {size} bytes as float32, over the limit of {cap} bytes"
        )


class _Spool:
    """Checked chunks of x and y in temporary files until the whole upload is accepted."""

    def __init__(self) -> None:
        self._files = contextlib.ExitStack()
        self.x = self._files.enter_context(tempfile.TemporaryFile())  # noqa: SIM115 (the stack closes it)
        self.y: BinaryIO | None = None
        self.rows = self.columns = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self._files.close()

    def add_x(self, chunk: np.ndarray) -> None:
        """Rows of x (2-D, any numeric dtype): must be finite as float32."""
        x = chunk.astype(X_DTYPE)
        if not np.isfinite(x).all():
            raise UploadRejected("x: contains NaN or infinity (as float32)")
        self.x.write(x.tobytes())

    def add_y(self, chunk: np.ndarray) -> None:
        """Labels (1-D, any numeric dtype): must be non-negative integers."""
        if self.y is None:
            self.y = self._files.enter_context(tempfile.TemporaryFile())  # noqa: SIM115
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(chunk).all() and (chunk == np.round(chunk)).all() if chunk.dtype.kind == "f" else True
            ok = ok and bool((chunk >= 0).all()) and bool((chunk <= 2**62).all())
        if not ok:
            raise UploadRejected("y: labels must be non-negative integers")
        self.y.write(chunk.astype(Y_DTYPE).tobytes())

    def canonical(self) -> CanonicalDataset:
        """The stored .npz, written straight from the spool: the arrays are never in memory beside the blob."""
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
            parts: list[tuple[str, BinaryIO, np.dtype, tuple[int, ...]]] = [
                ("x", self.x, X_DTYPE, (self.rows, self.columns))
            ]
            if self.y is not None:
                parts.append(("y", self.y, Y_DTYPE, (self.rows,)))
            for name, spool, dtype, shape in parts:
                spool.seek(0)
                with zf.open(f"{name}.npy", "w", force_zip64=True) as entry:
                    np.lib.format.write_array_header_1_0(
                        entry, {"descr": dtype.str, "fortran_order": False, "shape": shape}
                    )
                    while block := spool.read(CHUNK_BYTES):
                        entry.write(block)
        return CanonicalDataset(self.rows, self.columns, self.y is not None, buf.getvalue())


# --- .npz -------------------------------------------------------------------------------------------------------


NPZ_COMPRESSIONS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
"""Zip methods of the entries read: what numpy writes, refused by the directory before any entry is opened."""


@dataclass(frozen=True)
class _NpyEntry:
    info: zipfile.ZipInfo
    shape: tuple[int, ...]
    dtype: np.dtype
    data_offset: int  # bytes of magic and header before the data


def _parse_npz(fp: BinaryIO, spool: _Spool, cap: int) -> None:
    _check_directory(fp)
    try:
        with zipfile.ZipFile(fp) as zf:
            entries = {}
            for info in zf.infolist():
                name = info.filename.removesuffix(".npy")
                if name not in ("x", "y") or not info.filename.endswith(".npy"):
                    raise UploadRejected(f"file: unexpected entry {info.filename!r}; only x.npy and y.npy are read")
                if info.compress_type not in NPZ_COMPRESSIONS or info.flag_bits & 0x1:
                    raise UploadRejected(
                        f"file: entry {info.filename!r} is encrypted or compressed with zip method "
                        f"{info.compress_type}; numpy's savez/savez_compressed write stored or deflated entries"
                    )
                entries[name] = _read_header(zf, info, name)
            if "x" not in entries:
                raise UploadRejected(f"file: the .npz must hold an array named 'x' (found {sorted(entries)})")
            x, y = entries["x"], entries.get("y")
            rows = x.shape[0] if x.shape else 0
            columns = 1 if len(x.shape) == 1 else math.prod(x.shape[1:])
            _check_shape(rows, columns, y is not None, cap)
            if x.shape[0] * columns * x.dtype.itemsize > cap:
                raise UploadRejected(f"x: {x.dtype} data of {rows} x {columns} is over the limit of {cap} bytes")
            if y is not None and (len(y.shape) not in (1, 2) or y.shape[0] != rows or math.prod(y.shape) != rows):
                raise UploadRejected(f"y: shape {y.shape} is not one label per row of x ({rows} rows)")
            spool.rows, spool.columns = rows, columns
            _copy_rows(zf, x, columns, spool.add_x)
            if y is not None:
                _copy_rows(zf, y, 1, lambda chunk: spool.add_y(chunk.reshape(-1)))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as exc:
        raise UploadRejected(f"file: not a readable .npz ({exc})") from None


def _check_directory(fp: BinaryIO) -> None:
    """Refuse a zip whose directory holds more than two entries before Python's zipfile reads it into memory."""
    size = fp.seek(0, io.SEEK_END)
    start = max(0, size - _EOCD.size - 65_535)
    fp.seek(start)
    tail = fp.read(size - start)
    at = tail.rfind(_EOCD_SIGNATURE)
    if at < 0 or at + _EOCD.size > len(tail):
        raise UploadRejected("file: not a .npz (no zip directory)")
    _, _, _, _, entries, directory_bytes, _, _ = _EOCD.unpack_from(tail, at)
    if entries > 2 or directory_bytes > _MAX_DIRECTORY_BYTES:
        raise UploadRejected(
            f"file: the .npz lists {entries} entries in {directory_bytes} bytes; at most x.npy and y.npy are accepted"
        )
    fp.seek(0)


def _read_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> _NpyEntry:
    """The entry's .npy header, checked against the zip's declared uncompressed size: an entry must hold exactly
    the data its header declares, so neither can lie to make the other bigger."""
    with zf.open(info) as entry:
        try:
            version = np.lib.format.read_magic(entry)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(entry)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(entry)
            else:
                raise ValueError(f"unsupported .npy version {version}")
        except ValueError as exc:
            raise UploadRejected(f"{name}: not a readable .npy header ({exc})") from None
        offset = entry.tell()
    if dtype.hasobject or dtype.kind not in "biuf" or dtype.fields is not None:
        raise UploadRejected(f"{name}: dtype {dtype} is not numeric (bool, integer or float)")
    if any(d < 0 for d in shape):
        raise UploadRejected(f"{name}: shape {shape} is not a shape")
    if fortran and len(shape) > 1:
        raise UploadRejected(f"{name}: Fortran-ordered arrays are not accepted; save np.ascontiguousarray({name})")
    declared = math.prod(shape) * dtype.itemsize
    if offset + declared != info.file_size:
        raise UploadRejected(
            f"{name}: the header declares shape {shape} of {dtype} ({declared} bytes) but the entry "
            f"holds {info.file_size - offset} bytes of data"
        )
    return _NpyEntry(info, shape, dtype, offset)


def _copy_rows(zf: zipfile.ZipFile, npy: _NpyEntry, columns: int, add) -> None:
    """The entry's rows, a chunk at a time; the zip checks its CRC once the entry is read to the end."""
    row_bytes = columns * npy.dtype.itemsize
    per_chunk = max(1, CHUNK_BYTES // row_bytes)
    with zf.open(npy.info) as entry:
        entry.read(npy.data_offset)
        left = npy.shape[0]
        while left:
            n = min(per_chunk, left)
            raw = entry.read(n * row_bytes)
            if len(raw) != n * row_bytes:
                raise UploadRejected("file: an entry ended before its declared data")
            add(np.frombuffer(raw, dtype=npy.dtype).reshape(n, columns))
            left -= n
        if entry.read(1):
            raise UploadRejected("file: an entry holds more than its declared data")


# --- .csv -------------------------------------------------------------------------------------------------------


def _parse_csv(fp: BinaryIO, label_column: str | None, spool: _Spool, cap: int) -> None:
    fp.seek(0)
    first = fp.readline(MAX_CSV_ROW_BYTES)
    if len(first) == MAX_CSV_ROW_BYTES and not first.endswith(b"\n"):
        raise UploadRejected(f"file: the first row is longer than {MAX_CSV_ROW_BYTES} bytes")
    try:
        cells = [c.strip() for c in first.decode("utf-8").strip().split(",")]
    except UnicodeDecodeError:
        raise UploadRejected("file: a .csv must be UTF-8 text") from None
    if cells == [""]:
        raise UploadRejected("file: the .csv is empty")
    has_header = not all(_is_number(c) for c in cells)
    header = cells if has_header else [str(i) for i in range(len(cells))]
    label = None
    if label_column is not None:
        if label_column not in header:
            raise UploadRejected(f"label_column: {label_column!r} is not a column (columns: {header[:20]})")
        label = header.index(label_column)
    body_start = len(first) if has_header else 0
    lines = _count_lines(fp, body_start)
    columns = len(header) - (label is not None)
    _check_shape(lines, columns, label is not None, cap)
    fp.seek(body_start)
    rows = 0
    for block in _line_blocks(fp):
        try:
            table = np.loadtxt(
                io.StringIO(block.decode("utf-8")), delimiter=",", dtype=np.float64, ndmin=2, comments=None
            )
        except UnicodeDecodeError:
            raise UploadRejected("file: a .csv must be UTF-8 text") from None
        except ValueError as exc:
            reason = str(exc).split(";", 1)[0].rstrip(".")
            raise UploadRejected(
                f"file: every row must hold {len(header)} numbers ({reason}, counting from data row {rows + 1})"
            ) from None
        if table.size == 0:
            continue
        if table.shape[1] != len(header):
            raise UploadRejected(
                f"file: every row must hold {len(header)} numbers (rows from {rows + 1} of the "
                f"data hold {table.shape[1]})"
            )
        if label is None:
            spool.add_x(table)
        else:
            spool.add_x(np.delete(table, label, axis=1))
            spool.add_y(table[:, label])
        rows += table.shape[0]
    _check_shape(rows, columns, label is not None, cap)
    spool.rows, spool.columns = rows, columns


def _count_lines(fp: BinaryIO, start: int) -> int:
    """Lines from ``start`` (an upper bound on the rows: blank lines count too)."""
    fp.seek(start)
    lines, last = 0, b"\n"
    while block := fp.read(CHUNK_BYTES):
        lines += block.count(b"\n")
        last = block[-1:]
    return lines + (last != b"\n")


def _line_blocks(fp: BinaryIO):
    """Blocks of about CSV_BLOCK_BYTES that end at a line end."""
    carry = b""
    while block := fp.read(CSV_BLOCK_BYTES):
        block = carry + block
        cut = block.rfind(b"\n") + 1
        if cut == 0:
            if len(block) > MAX_CSV_ROW_BYTES:
                raise UploadRejected(f"file: a row is longer than {MAX_CSV_ROW_BYTES} bytes")
            carry = block
            continue
        carry = block[cut:]
        yield block[:cut]
    if carry:
        yield carry


def _is_number(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return False
