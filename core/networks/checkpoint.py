"""What a set of model files is, told from their names, and whether a sharded checkpoint's parts agree (no I/O).

A model is sent as one of:

- ``config.json`` alone (random initialisation), or with one ``*.safetensors`` file;
- ``config.json``, ``model.safetensors.index.json`` and the shards the index names (how Hugging Face publishes every
  model above a few GB): the index's ``weight_map`` maps each tensor to the shard that holds it;
- one ``*.pt2`` file (``torch.export.save``), read by ``core.networks.exported``.

A sharded checkpoint is accepted only when the index and the shards' headers agree exactly: every shard the index
names is sent and every shard sent is named, each tensor lives in one shard, and that shard is the one the index
names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from core.networks.safetensors_header import PICKLE_SUFFIXES
from core.networks.strict_json import JsonRefused, parse

Format = Literal["config", "safetensors", "sharded", "exported"]
CONFIG = "config.json"
INDEX_SUFFIX = ".safetensors.index.json"
MAX_FILES = 1024
MAX_INDEX_BYTES = 16 * 1024 * 1024
MAX_INDEX_DEPTH = 3  # {"weight_map": {tensor: shard}, "metadata": {...}}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")


class CheckpointRejected(ValueError):
    """The files do not form a model this service loads; the message is "<field>: <why>"."""


@dataclass(frozen=True)
class Layout:
    """The role of each file of a model, by name."""

    format: Format
    config: str | None = None
    index: str | None = None
    weights: tuple[str, ...] = ()  # safetensors files, in the order sent
    archive: str | None = None  # the .pt2


def layout_of(names: list[str]) -> Layout:
    """The layout these file names make (``CheckpointRejected`` on ``files[i].name`` or ``files`` otherwise)."""
    if not 1 <= len(names) <= MAX_FILES:
        raise CheckpointRejected(f"files: {len(names)} files; between 1 and {MAX_FILES} make one model")
    seen: set[str] = set()
    for i, name in enumerate(names):
        lower = name.lower()
        if not _NAME.fullmatch(name):
            raise CheckpointRejected(f"files[{i}].name: {name[:80]!r} is not a plain file name (letters, digits, ._-)")
        if name in seen:
            raise CheckpointRejected(f"files[{i}].name: {name} is sent twice")
        seen.add(name)
        if lower.endswith(PICKLE_SUFFIXES):
            raise CheckpointRejected(
                f"files[{i}].name: {name} is a pickled checkpoint; only .safetensors (or a .pt2 from "
                "torch.export.save) is loaded (no pickle)"
            )
        if not (lower.endswith((".safetensors", ".pt2")) or name == CONFIG or name.endswith(INDEX_SUFFIX)):
            raise CheckpointRejected(
                f"files[{i}].name: {name} is none of config.json, *.safetensors, *{INDEX_SUFFIX} or *.pt2"
            )
    archives = [n for n in names if n.lower().endswith(".pt2")]
    if archives:
        if len(names) != 1:
            raise CheckpointRejected("files: an exported program (.pt2) is sent alone; it holds its weights")
        return Layout("exported", archive=archives[0])
    if CONFIG not in names:
        raise CheckpointRejected("files: config.json is missing; a safetensors checkpoint is built from its config")
    weights = tuple(n for n in names if n.lower().endswith(".safetensors"))
    indexes = [n for n in names if n.endswith(INDEX_SUFFIX)]
    if len(indexes) > 1:
        raise CheckpointRejected(f"files: {len(indexes)} index files; a sharded checkpoint has one")
    if indexes:
        if not weights:
            raise CheckpointRejected(f"files: {indexes[0]} names shards, and none is sent")
        return Layout("sharded", config=CONFIG, index=indexes[0], weights=weights)
    if len(weights) > 1:
        raise CheckpointRejected(
            f"files: {len(weights)} .safetensors files without an index; send model.safetensors.index.json with "
            "the shards of a sharded checkpoint"
        )
    return Layout("safetensors" if weights else "config", config=CONFIG, weights=weights)


def weight_map(raw: bytes, where: str) -> dict[str, str]:
    """The index's ``weight_map`` ({tensor: shard file}), parsed with bounds."""
    try:
        doc = parse(raw, where, MAX_INDEX_DEPTH)
    except JsonRefused as exc:
        raise CheckpointRejected(str(exc)) from None
    mapping = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(mapping, dict) or not mapping:
        raise CheckpointRejected(f"{where}: expected {{'weight_map': {{tensor: shard file, ...}}}}")
    for tensor, shard in mapping.items():
        if not isinstance(shard, str):
            raise CheckpointRejected(f"{where}: weight_map[{tensor[:80]!r}] is not a file name")
    return mapping


def merge_shards(index: str, mapping: dict[str, str], headers: dict[str, dict[str, list]]) -> dict[str, list]:
    """The whole checkpoint's tensors ({name: [dtype, shape]}) once the index (``mapping``) and the shards'
    ``headers`` (by shard file name) agree; ``CheckpointRejected`` naming the first disagreement."""
    named = set(mapping.values())
    missing = sorted(named - set(headers))
    if missing:
        raise CheckpointRejected(f"files: {missing[0]}, which {index} names, is missing; send every shard")
    unnamed = sorted(set(headers) - named)
    if unnamed:
        raise CheckpointRejected(f"{unnamed[0]}: {index} names no tensor in it; send only the index's shards")
    merged: dict[str, list] = {}
    home: dict[str, str] = {}
    for shard, header in headers.items():
        for tensor, entry in header.items():
            if tensor in home:
                raise CheckpointRejected(
                    f"{shard}: tensor {tensor} is also in {home[tensor]}; a tensor is in one shard"
                )
            home[tensor] = shard
            merged[tensor] = entry
    for tensor, shard in mapping.items():
        if tensor not in home:
            raise CheckpointRejected(f"{shard}: {index} puts tensor {tensor} in it, and the shard lacks it")
        if home[tensor] != shard:
            raise CheckpointRejected(f"{home[tensor]}: holds tensor {tensor}, which {index} puts in {shard}")
    stray = sorted(set(home) - set(mapping))
    if stray:
        raise CheckpointRejected(f"{home[stray[0]]}: tensor {stray[0]} is not in {index}'s weight_map")
    return merged
