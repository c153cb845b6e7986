"""``.npy`` and ``.npz`` uploads: judged by their headers (and a .npz by its zip directory) before any data is read,
then copied a chunk at a time: a .npy through a read-only memory map, a .npz entry by entry, never unpickled."""

from __future__ import annotations

import io
import math
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from core.data.formats.arrays import ArraysSink
from core.data.formats.inspection import CHUNK_BYTES, Inspection, UploadRejected, check_size
from core.data.formats.npyfile import read_npy_header

NPZ_COMPRESSIONS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
"""Zip methods of the entries read: what numpy writes, refused by the directory before any entry is opened."""
EOCD = struct.Struct("<4s4H2LH")  # the zip's end-of-central-directory record
EOCD_SIGNATURE = b"PK\x05\x06"
MAX_DIRECTORY_BYTES = 4096  # two entries' worth
LABEL_SPOOL = ".y-source.tmp"


def convert_npy(raw: Path, out_dir: Path, cap: int) -> Inspection:
    """A single array: its rows become x (a 1-D array is one column); a .npy carries no labels."""
    with open(raw, "rb") as fp:
        shape, dtype, offset = read_npy_header(fp, "x")
    rows, columns = _rows_columns(shape)
    check_size(rows, columns, False, cap)
    declared = rows * columns * dtype.itemsize
    held = raw.stat().st_size - offset
    if held != declared:
        raise UploadRejected(
            f"x: the header declares shape {shape} of {dtype} ({declared} bytes) but the file holds "
            f"{held} bytes of data"
        )
    x = np.memmap(raw, dtype=dtype, mode="r", offset=offset, shape=(rows, columns))
    sink = ArraysSink(out_dir, columns, False, cap)
    sink.source_dtypes = dict.fromkeys(sink.names, str(dtype))
    try:
        per_chunk = max(1, CHUNK_BYTES // (columns * dtype.itemsize))
        for start in range(0, rows, per_chunk):
            sink.add(np.asarray(x[start : start + per_chunk]))
        return sink.finish("npy")
    except BaseException:
        sink.discard()
        raise
    finally:
        del x


def convert_npz(raw: Path, out_dir: Path, cap: int) -> Inspection:
    """``x`` and optional ``y`` entries, stored or deflated, checked by the zip directory and each .npy header."""
    sink: ArraysSink | None = None
    try:
        with open(raw, "rb") as fp:
            check_zip_directory(fp)
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
                    entries[name] = read_entry_header(zf, info, name)
                if "x" not in entries:
                    raise UploadRejected(f"file: the .npz must hold an array named 'x' (found {sorted(entries)})")
                x, y = entries["x"], entries.get("y")
                rows, columns = _rows_columns(x.shape)
                check_size(rows, columns, y is not None, cap)
                if y is not None and (len(y.shape) not in (1, 2) or y.shape[0] != rows or math.prod(y.shape) != rows):
                    raise UploadRejected(f"y: shape {y.shape} is not one label per row of x ({rows} rows)")
                sink = ArraysSink(out_dir, columns, y is not None, cap)
                sink.source_dtypes = dict.fromkeys(sink.names, str(x.dtype))
                # x and y are separate entries: y is spooled to a memory-mapped file first, then x chunk by chunk
                # with the labels of its rows
                labels = _label_spool(zf, y, out_dir) if y is not None else None
                try:
                    at = 0

                    def add(chunk: np.ndarray) -> None:
                        nonlocal at
                        assert sink is not None
                        sink.add(chunk, None if labels is None else labels[at : at + len(chunk)])
                        at += len(chunk)

                    copy_entry_rows(zf, x, columns, add)
                finally:
                    (out_dir / LABEL_SPOOL).unlink(missing_ok=True)
        return sink.finish("npz")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, zlib.error) as exc:
        if sink is not None:
            sink.discard()
        raise UploadRejected(f"file: not a readable .npz ({exc})") from None
    except BaseException:
        if sink is not None:
            sink.discard()
        raise


def _label_spool(zf: zipfile.ZipFile, y: NpyEntry, out_dir: Path) -> np.memmap:
    """The y entry copied to a temporary memory-mapped file (as read, any numeric dtype), so that x's chunks can be
    paired with their labels without holding either entry."""
    path = out_dir / LABEL_SPOOL
    spool = np.memmap(path, dtype=y.dtype, mode="w+", shape=(y.shape[0],))
    at = 0

    def add(chunk: np.ndarray) -> None:
        nonlocal at
        spool[at : at + len(chunk)] = chunk.reshape(-1)
        at += len(chunk)

    copy_entry_rows(zf, y, 1, add)
    spool.flush()
    return np.memmap(path, dtype=y.dtype, mode="r", shape=(y.shape[0],))


def _rows_columns(shape: tuple[int, ...]) -> tuple[int, int]:
    rows = shape[0] if shape else 0
    return rows, (1 if len(shape) == 1 else math.prod(shape[1:]))


@dataclass(frozen=True)
class NpyEntry:
    """A .npz entry judged by its header: where its data starts and what it declares."""

    info: zipfile.ZipInfo
    shape: tuple[int, ...]
    dtype: np.dtype
    data_offset: int  # bytes of magic and header before the data


def check_zip_directory(fp: BinaryIO) -> None:
    """Refuse a zip whose directory holds more than two entries before Python's zipfile reads it into memory."""
    size = fp.seek(0, io.SEEK_END)
    start = max(0, size - EOCD.size - 65_535)
    fp.seek(start)
    tail = fp.read(size - start)
    at = tail.rfind(EOCD_SIGNATURE)
    if at < 0 or at + EOCD.size > len(tail):
        raise UploadRejected("file: not a .npz (no zip directory)")
    _, _, _, _, entries, directory_bytes, _, _ = EOCD.unpack_from(tail, at)
    if entries > 2 or directory_bytes > MAX_DIRECTORY_BYTES:
        raise UploadRejected(
            f"file: the .npz lists {entries} entries in {directory_bytes} bytes; at most x.npy and y.npy are accepted"
        )
    fp.seek(0)


def read_entry_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> NpyEntry:
    """The entry's .npy header, checked against the zip's declared uncompressed size: an entry must hold exactly
    the data its header declares, so neither can lie to make the other bigger."""
    with zf.open(info) as entry:
        shape, dtype, offset = read_npy_header(entry, name)
    declared = math.prod(shape) * dtype.itemsize
    if offset + declared != info.file_size:
        raise UploadRejected(
            f"{name}: the header declares shape {shape} of {dtype} ({declared} bytes) but the entry "
            f"holds {info.file_size - offset} bytes of data"
        )
    return NpyEntry(info, shape, dtype, offset)


def copy_entry_rows(zf: zipfile.ZipFile, npy: NpyEntry, columns: int, add: Callable[[np.ndarray], None]) -> None:
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
