"""A ``torch.export.save`` archive (.pt2) checked from its zip directory and JSON, never unpickled (no torch here).

Layout written by torch 2.13 (every member under one root folder, the file's stem)::

    archive_format                          "pt2"
    archive_version                         "0"
    byteorder                               "little"
    .data/version, .data/serialization_id   zip writer bookkeeping (ignored)
    models/<model>.json                     the program: graph, signature, pytree specs, guards_code (Python source)
    data/weights/<model>_weights_config.json   {fqn: {path_name, is_param, use_pickle, tensor_meta}}
    data/weights/weight_<i>                 one tensor storage as raw bytes (dtype and layout in tensor_meta)
    data/constants/<model>_constants_config.json, data/constants/tensor_<i>   the same for lifted constants
    data/sample_inputs/<model>.pt           the example inputs as a torch.save pickle: never read here
    extra/*                                 free text the exporter attached (ignored)

Refused: a weight or constant with ``use_pickle`` (torch.load would unpickle it), custom or opaque objects
(pickles), the legacy ``data/weights/<model>.pt`` pickles, compiled members (AOTInductor, ExecuTorch), anything else
outside the layout, a member larger than its limit (sizes from the zip directory, before reading), JSON nested
deeper than ``Limits.json_depth``, a tensor whose declared storage runs past the end of its member, and whatever
``program.parse_program`` refuses (non-allowlisted operators, guards_code that is more than relations between input
sizes, custom objects, subgraphs).
"""

from __future__ import annotations

import contextlib
import math
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from core.networks.exported.errors import ArchiveRejected
from core.networks.exported.jsonsafe import loads
from core.networks.exported.program import DTYPES, Program, TensorMeta, fqn_of, parse_program, tensor_meta

ITEMSIZE = dict(DTYPES.values())
_IGNORED = (".data/", "data/sample_inputs/", "extra/")
_COMPILED = ("data/aotinductor/", "data/executorch/", "data/mtia", "xl_model_weights/")
_MARKERS = {"archive_format": b"pt2", "archive_version": b"0", "byteorder": b"little"}
_MODEL = re.compile(r"models/([A-Za-z0-9_.-]+)\.json")
DIRECTORY_BYTES_PER_MEMBER = 512
"""Directory bytes allowed per member (46 fixed, the name, extra fields): caps the directory before it is parsed."""


@dataclass(frozen=True)
class Limits:
    """Caps checked before anything is read: declared sizes from the zip directory, counts from the JSON."""

    archive_bytes: int = 256 * 2**20  # all members as declared, and all tensors once materialised
    json_bytes: int = 16 * 2**20  # one JSON member
    members: int = 10_000
    json_depth: int = 32
    nodes: int = 100_000


@dataclass(frozen=True)
class StoredTensor:
    """One weight or constant: the member holding its storage and the view of it the model uses."""

    fqn: str
    member: str
    meta: TensorMeta

    @property
    def numel(self) -> int:
        return math.prod(int(s) for s in self.meta.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * ITEMSIZE[self.meta.dtype]


class Archive:
    """A checked archive: its program, weights and constants; tensor bytes are read on request (``member_bytes``).
    Use as a context manager (it holds the zip open)."""

    def __init__(self, zf: zipfile.ZipFile, model: str, program: Program, tensors: dict[str, StoredTensor]):
        self._zip = zf
        self._opened = contextlib.ExitStack()  # the zip and, for a path, the file: closed by close()
        self.model = model
        self.program = program
        self.tensors = tensors  # by fqn: every parameter, buffer and constant the graph takes

    def member_bytes(self, member: str) -> bytes:
        info = self._zip.getinfo(member)
        return _read(self._zip, info, info.file_size)

    def close(self) -> None:
        self._opened.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_archive(file: str | Path | IO[bytes], *, limits: Limits = Limits(), model: str | None = None) -> Archive:
    """Check ``file`` (a path or a seekable binary stream) as a .pt2 archive; ``ArchiveRejected`` says why not.

    ``model``: which program of a multi-model archive (``models/<model>.json``); by default the only one."""
    with contextlib.ExitStack() as opened:
        stream = opened.enter_context(open(file, "rb")) if isinstance(file, str | Path) else file
        zf = opened.enter_context(_open_zip(stream, limits))
        archive = _check(zf, limits, model)
        archive._opened = opened.pop_all()
        return archive


def _open_zip(stream: IO[bytes], limits: Limits) -> zipfile.ZipFile:
    unreadable = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, struct.error)
    try:
        directory = _directory_bytes(stream)
    except unreadable as exc:
        raise ArchiveRejected(f"archive: not a readable zip file ({str(exc)[:120]})") from None
    if directory > limits.members * DIRECTORY_BYTES_PER_MEMBER:
        raise ArchiveRejected(f"archive: a {directory}-byte zip directory; at most {limits.members} members")
    try:
        stream.seek(0)
        return zipfile.ZipFile(stream)
    except unreadable as exc:
        raise ArchiveRejected(f"archive: not a readable zip file ({str(exc)[:120]})") from None


def _directory_bytes(stream: IO[bytes]) -> int:
    """The central directory's size from the end-of-directory record (zip64 too), read before ``zipfile`` parses
    the directory: it makes one Python object per entry, so a small file could otherwise fill memory."""
    size = stream.seek(0, 2)
    tail_size = min(size, 22 + 65_535)
    stream.seek(size - tail_size)
    tail = stream.read(tail_size)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + 22 > len(tail):
        raise zipfile.BadZipFile("no end-of-central-directory record")
    (directory,) = struct.unpack_from("<L", tail, at + 12)
    if directory != 0xFFFFFFFF:
        return int(directory)
    locator = at - 20  # zip64: the locator sits right before the classic record and points at the zip64 one
    if locator < 0 or tail[locator : locator + 4] != b"PK\x06\x07":
        raise zipfile.BadZipFile("a zip64 archive without its locator")
    (offset,) = struct.unpack_from("<Q", tail, locator + 8)
    stream.seek(offset)
    record = stream.read(56)
    if len(record) != 56 or record[:4] != b"PK\x06\x06":
        raise zipfile.BadZipFile("a zip64 end-of-directory record is missing")
    return int(struct.unpack_from("<Q", record, 40)[0])


def _check(zf: zipfile.ZipFile, limits: Limits, wanted: str | None) -> Archive:
    root, infos = _directory(zf, limits)
    for name, expected in _MARKERS.items():
        info = infos.get(f"{root}/{name}")
        if info is not None and _read(zf, info, 64).strip() != expected:
            raise ArchiveRejected(f"archive: {name} is not {expected.decode()!r}")
        if info is None and name != "byteorder":
            raise ArchiveRejected(f"archive: no {name} member; not a torch.export archive")
    models = sorted(m.group(1) for n in infos if (m := _MODEL.fullmatch(n[len(root) + 1 :])))
    model = wanted if wanted is not None else (models[0] if len(models) == 1 else None)
    if model is None or model not in models:
        raise ArchiveRejected(f"archive: holds models {models}; name one of them" if models else "archive: no model")

    def json_member(path: str) -> Any:
        info = infos.get(f"{root}/{path}")
        if info is None:
            raise ArchiveRejected(f"archive: no {path}")
        if info.file_size > limits.json_bytes:
            raise ArchiveRejected(f"{path}: {info.file_size} bytes, more than {limits.json_bytes}")
        return loads(_read(zf, info, limits.json_bytes), path, limits.json_depth)

    program = parse_program(json_member(f"models/{model}.json"), max_nodes=limits.nodes, max_depth=limits.json_depth)
    stored = {
        **_payload(json_member(f"data/weights/{model}_weights_config.json"), "weights", root, infos),
        **_payload(json_member(f"data/constants/{model}_constants_config.json"), "constants", root, infos),
    }
    tensors = {}
    for p in program.placeholders:
        if p.kind != "input":
            if p.target not in stored:
                raise ArchiveRejected(f"archive: the graph takes {p.kind} {p.target!r}, which the archive lacks")
            tensors[p.target] = stored[p.target]
    total = sum(t.nbytes for t in tensors.values())
    if total > limits.archive_bytes:
        raise ArchiveRejected(f"archive: the tensors take {total} bytes, more than {limits.archive_bytes}")
    return Archive(zf, model, program, tensors)


def _directory(zf: zipfile.ZipFile, limits: Limits) -> tuple[str, dict[str, zipfile.ZipInfo]]:
    """(root folder, members by name) once every member is known, allowed and within the size caps."""
    infos = zf.infolist()
    if not infos or len(infos) > limits.members:
        raise ArchiveRejected(f"archive: {len(infos)} members; between 1 and {limits.members} accepted")
    root = infos[0].filename.split("/", 1)[0]
    by_name: dict[str, zipfile.ZipInfo] = {}
    total = 0
    for info in infos:
        name = info.filename
        if not name.startswith(f"{root}/") or name in by_name:
            raise ArchiveRejected(f"archive: member {name[:120]!r} is outside the root folder or repeated")
        if info.flag_bits & 0x1 or info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ArchiveRejected(f"archive: member {name[:120]!r} is encrypted or compressed in an unknown way")
        _classify(name[len(root) + 1 :])
        total += info.file_size
        by_name[name] = info
    if total > limits.archive_bytes:
        raise ArchiveRejected(f"archive: its members take {total} bytes, more than {limits.archive_bytes}")
    return root, by_name


def _classify(path: str) -> None:
    """Refuse a member that is not part of the layout this reader knows, or that is a pickle or compiled code."""
    if path in _MARKERS or path.startswith(_IGNORED) or _MODEL.fullmatch(path):
        return
    if path.startswith(_COMPILED):
        raise ArchiveRejected(f"archive: {path!r} is compiled code (AOTInductor, ExecuTorch), which is refused")
    folder, _, leaf = path.rpartition("/")
    if folder in ("data/weights", "data/constants"):
        if leaf.startswith(("custom_obj_", "opaque_obj_")):
            raise ArchiveRejected(f"archive: {path!r} is a custom object (a pickle), which is refused")
        if leaf.endswith(".pt"):
            raise ArchiveRejected(f"archive: {path!r} is a legacy pickled state dict, which is refused")
        if re.fullmatch(r"(weight|tensor)_[0-9]+|[A-Za-z0-9_.-]+_(weights|constants)_config\.json", leaf):
            return
    raise ArchiveRejected(f"archive: member {path[:120]!r} is not part of the torch.export layout this service reads")


def _payload(doc: Any, kind: str, root: str, infos: dict[str, zipfile.ZipInfo]) -> dict[str, StoredTensor]:
    """The weights or constants config: raw-bytes tensors only, each inside the member it names."""
    where = f"{kind} config"
    config = doc.get("config") if isinstance(doc, dict) else None
    if not isinstance(config, dict):
        raise ArchiveRejected(f"{where}: expected {{'config': {{...}}}}")
    prefix = "weight_" if kind == "weights" else "tensor_"
    out = {}
    for raw_fqn, entry in config.items():
        fqn = fqn_of(raw_fqn, where)
        entry_where = f"{where}: {fqn!r}"
        if not isinstance(entry, dict):
            raise ArchiveRejected(f"{entry_where}: expected an object")
        path = entry.get("path_name")
        if entry.get("use_pickle") is not False:
            raise ArchiveRejected(
                f"{entry_where} is stored as a pickle (use_pickle); only raw tensor bytes are read "
                "(plain tensors, no tensor subclasses, torch.export.save)"
            )
        if not isinstance(path, str) or not re.fullmatch(f"{prefix}[0-9]+", path):
            raise ArchiveRejected(f"{entry_where}: path_name {str(path)[:80]!r} is not a {prefix}<n> tensor file")
        info = infos.get(f"{root}/data/{kind}/{path}")
        if info is None:
            raise ArchiveRejected(f"{entry_where}: its file data/{kind}/{path} is missing")
        meta = tensor_meta(entry.get("tensor_meta"), entry_where)
        _check_extent(meta, info.file_size, entry_where)
        out[fqn] = StoredTensor(fqn, info.filename, meta)
    return out


def _check_extent(meta: TensorMeta, file_size: int, where: str) -> None:
    """The view (shape, strides, offset) must lie inside the member's declared bytes."""
    numbers = (*meta.shape, *meta.strides, meta.offset)
    if not all(isinstance(n, int) and n >= 0 for n in numbers):
        raise ArchiveRejected(f"{where}: sizes, strides and offset must be non-negative integers")
    itemsize = ITEMSIZE[meta.dtype]
    if file_size % itemsize:
        raise ArchiveRejected(f"{where}: its file holds {file_size} bytes, not a whole number of {meta.dtype}")
    if math.prod(int(s) for s in meta.shape) == 0:
        return
    last = int(meta.offset) + sum((int(s) - 1) * int(st) for s, st in zip(meta.shape, meta.strides))
    if (last + 1) * itemsize > file_size:
        raise ArchiveRejected(
            f"{where}: shape {list(meta.shape)} with strides {list(meta.strides)} reaches byte "
            f"{(last + 1) * itemsize}, past the end of its {file_size}-byte file"
        )


def _read(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """A member's bytes, at most ``limit``; its length must match the directory's declared size."""
    if info.file_size > limit:
        raise ArchiveRejected(f"archive: {info.filename[:120]!r} declares {info.file_size} bytes, over {limit}")
    try:
        with zf.open(info) as stream:
            data = stream.read(info.file_size + 1)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as exc:
        raise ArchiveRejected(f"archive: {info.filename[:120]!r} cannot be read ({str(exc)[:120]})") from None
    if len(data) != info.file_size:
        raise ArchiveRejected(f"archive: {info.filename[:120]!r} holds {len(data)} bytes, not {info.file_size}")
    return data
