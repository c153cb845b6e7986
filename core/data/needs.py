"""What a job needs of the dataset it names, and whether an uploaded dataset meets it: checked by the API before
a job is queued, from the dataset's row (no data is read)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DatasetNeeds:
    """What a job's params need of the dataset they name: its kind (``core.data.loader.DATASET_KINDS``), labels,
    and rows that are square images (a CNN's input)."""

    kinds: tuple[str, ...] = ("arrays",)
    labels: bool = False
    square_rows: bool = False


@dataclass(frozen=True)
class DatasetInfo:
    """What the API knows of an uploaded dataset before queueing (from its row). ``kind``, ``rows`` and
    ``has_labels`` are known once its validation made it ``ready``; ``reason`` says why it was ``rejected``."""

    status: str
    reason: str | None
    kind: str | None
    rows: int | None
    columns: int | None
    has_labels: bool | None


def arrays_only(params: Any) -> DatasetNeeds:
    return DatasetNeeds()


def dataset_refusal(needs: DatasetNeeds, info: DatasetInfo, name: str) -> str | None:
    """Why the ready dataset ``name`` cannot serve a job with these needs, or None when it can."""
    if info.kind not in needs.kinds:
        return f"dataset {name} is a {info.kind} dataset; this job needs {' or '.join(needs.kinds)}"
    if needs.labels and not info.has_labels:
        return f"dataset {name} has no labels (y); this job classifies its rows"
    if needs.square_rows and info.columns is not None:
        side = math.isqrt(info.columns)
        if side < 2 or side * side != info.columns:
            return f"dataset {name} has {info.columns} columns; a cnn needs square images as rows (e.g. 64 = 8x8)"
    return None
