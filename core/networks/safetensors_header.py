"""Check a ``.safetensors`` file from its header alone (no torch), before its tensor data is read.

Layout: an 8-byte little-endian header length, that many bytes of JSON ({name: {dtype, shape, data_offsets}} and an
optional ``__metadata__`` of strings), then the tensor bytes. Every offset is checked to lie inside the data, to
match its shape and dtype, and the tensors to tile the data without overlap or gaps. The header's JSON is parsed
with bounds (``strict_json``): nesting, integer length, finite numbers.
"""

from __future__ import annotations

import math
import struct
from typing import BinaryIO

from core.networks.strict_json import JsonRefused, parse

MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_HEADER_DEPTH = 3  # {name: {"shape": [...]}}
MAX_RANK = 16
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class WeightsRejected(ValueError):
    """Not a safetensors file this service loads; the message says why."""


def read_header(stream: BinaryIO, total_size: int, where: str = "weights") -> tuple[dict[str, list], int]:
    """({name: [dtype, shape]}, header bytes incl. the length prefix) from the start of ``stream``; reads only the
    header. ``total_size``: the file's size in bytes; ``where``: the field or file named in refusals."""
    length = header_length(stream.read(8), total_size, where)
    try:
        header = parse(stream.read(length), f"{where}: the safetensors header", MAX_HEADER_DEPTH)
    except JsonRefused as exc:
        raise WeightsRejected(str(exc)) from None
    if not isinstance(header, dict):
        raise WeightsRejected(f"{where}: the safetensors header is not a JSON object")
    data_size = total_size - 8 - length
    spans, tensors = [], {}
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise WeightsRejected(f"{where}: __metadata__ must map names to strings")
            continue
        tensors[name] = _check_entry(where, name, entry, data_size)
        spans.append(tuple(entry["data_offsets"]))
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            raise WeightsRejected(f"{where}: tensor data overlaps or leaves gaps")
        position = end
    if position != data_size:
        raise WeightsRejected(f"{where}: the tensors cover {position} of {data_size} data bytes")
    return tensors, 8 + length


def header_length(head: bytes, total_size: int, where: str = "weights") -> int:
    """The header's length from a file's first 8 bytes, once they are known to start a safetensors file whose
    header fits in it and in ``MAX_HEADER_BYTES``."""
    if len(head) < 8:
        raise WeightsRejected(f"{where}: shorter than a safetensors length prefix")
    if head[:1] == b"\x80" or head[:2] == b"PK":
        raise WeightsRejected(f"{where}: a pickle or torch.save file; only safetensors are loaded (no pickle)")
    (length,) = struct.unpack("<Q", head)
    if length > MAX_HEADER_BYTES or length > total_size - 8:
        raise WeightsRejected(f"{where}: header length {length} is larger than the file or {MAX_HEADER_BYTES} bytes")
    return length


def _check_entry(where: str, name: str, entry, data_size: int) -> list:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise WeightsRejected(f"{where}: {name}: expected dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPE_BYTES:
        raise WeightsRejected(f"{where}: {name}: dtype {dtype!r} is not one of {sorted(DTYPE_BYTES)}")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_RANK
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise WeightsRejected(f"{where}: {name}: shape must be a list of at most {MAX_RANK} non-negative integers")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1] <= data_size
    ):
        raise WeightsRejected(f"{where}: {name}: data_offsets outside the file's data")
    if offsets[1] - offsets[0] != math.prod(shape) * DTYPE_BYTES[dtype]:
        raise WeightsRejected(f"{where}: {name}: {offsets[1] - offsets[0]} bytes for shape {shape} of {dtype}")
    return [dtype, shape]
