"""A stored model as a worker reads it (``RunContext.load_model``): its config, and its files on local disk, where
safetensors and the .pt2 are opened in place (memory-mapped) rather than read into memory. No torch here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.networks.exported.archive import Limits


@dataclass(frozen=True)
class ModelFiles:
    """``format``: config | safetensors | sharded | exported. ``weights``: the safetensors file or the shards
    (empty without weights); ``archive``: the .pt2 of an exported model, read with ``limits``."""

    model_id: str
    format: str
    config: dict | None = None
    weights: tuple[Path, ...] = ()
    archive: Path | None = None
    limits: Limits = Limits()


def archive_limits(max_model_bytes: int) -> Limits:
    """What an exported program may hold, the same when it is stored and when a worker loads it: as many bytes
    as a model upload may declare (``GRADLAB_MAX_MODEL_BYTES``)."""
    return Limits(archive_bytes=max_model_bytes)
