"""Resolve a params' dataset reference (a built-in name or the UUID of an uploaded dataset) to a view from
``core.data.loader``: the one way every kind reads its data."""

from __future__ import annotations

from uuid import UUID

from pydantic import BaseModel

from core.data.builtin import BUILTIN_DATASETS, load_builtin
from core.data.loader import ArraysView, DatasetView, as_view
from core.networks.spec import NAMES_MODELS


def load_dataset(ref: str | UUID, ctx, accepts: tuple[str, ...] = ("arrays",)) -> DatasetView:
    """The dataset ``ref`` names, as a view: built-ins are generated from ``ctx.seed``; uploads come from
    ``ctx.load_dataset`` (memory-mapped). A dataset of a kind outside ``accepts`` is refused (the API refuses it
    before queueing; this guards a job queued before its dataset's kind was known)."""
    if isinstance(ref, UUID) or ref not in BUILTIN_DATASETS:
        view = as_view(ctx.load_dataset(str(UUID(str(ref)))))
    else:
        view = ArraysView(load_builtin(ref, ctx.seed))
    if view.kind not in accepts:
        raise ValueError(f"dataset: {ref} is a {view.kind} dataset; this job needs {' or '.join(accepts)}")
    return view


def load_arrays(ref: str | UUID, ctx) -> ArraysView:
    """An arrays dataset (``x`` and maybe ``y``), for the kinds that read only arrays."""
    view = load_dataset(ref, ctx, ("arrays",))
    assert isinstance(view, ArraysView)
    return view


def uploaded_dataset_ids(params: BaseModel) -> list[str]:
    """Every UUID value in a params model: the uploaded datasets the job needs (checked before queueing)."""
    found: list[str] = []

    def walk(value) -> None:
        if isinstance(value, NAMES_MODELS):  # their UUIDs name models, not datasets
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
