"""Resolve a params' dataset reference: a built-in name or the UUID of an uploaded dataset."""

from __future__ import annotations

from uuid import UUID

import numpy as np
from pydantic import BaseModel

from core.data.builtin import BUILTIN_DATASETS, load_builtin
from core.models.spec import HFConfigModel, UploadedModel


def load_arrays(ref: str | UUID, ctx) -> dict[str, np.ndarray]:
    """Arrays for ``ref``: built-ins are generated from ``ctx.seed``; uploads come from ``ctx.load_dataset``."""
    if isinstance(ref, UUID):
        return ctx.load_dataset(str(ref))
    if ref in BUILTIN_DATASETS:
        return load_builtin(ref, ctx.seed)
    return ctx.load_dataset(str(UUID(ref)))


def uploaded_dataset_ids(params: BaseModel) -> list[str]:
    """Every UUID value in a params model: the uploaded datasets the job needs (checked before queueing)."""
    found: list[str] = []

    def walk(value) -> None:
        if isinstance(value, (HFConfigModel, UploadedModel)):  # their UUIDs name models, not datasets
            return
        if isinstance(value, UUID):
            found.append(str(value))
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name))
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)

    walk(params)
    return found
