"""Turn a job's ``model`` spec into a built network on the worker (torch): stored models are read through the run
context (``RunContext.load_model``: files on local disk), so a technique never sees SQL or the blob store."""

from __future__ import annotations

from pathlib import Path

from core.networks.build import BuiltModel, build
from core.networks.exported.archive import read_archive
from core.networks.exported.graph import ExportedModule, build_module
from core.networks.spec import BuiltinModel, ExportedModel, HFConfigModel, UploadedModel


def materialize(
    spec: BuiltinModel | HFConfigModel | UploadedModel | ExportedModel, ctx
) -> tuple[BuiltinModel | HFConfigModel, tuple[Path, ...] | None]:
    """The buildable spec and its safetensors files (None: the model's own random initialisation)."""
    if isinstance(spec, ExportedModel):
        raise ValueError("model.source: an exported program has no config to build; it is loaded by load_exported")
    if isinstance(spec, UploadedModel):
        files = ctx.load_model(str(spec.id))
        if files.config is None:
            raise ValueError(f'model.id: model {spec.id} is an exported program; name it as {{"source": "exported"}}')
        return HFConfigModel(source="hf_config", config=files.config, dtype=spec.dtype), files.weights or None
    if isinstance(spec, HFConfigModel) and spec.weights is not None:
        files = ctx.load_model(str(spec.weights))
        if not files.weights:
            raise ValueError(f"model.weights: model {spec.weights} has no safetensors weights")
        return spec, files.weights
    return spec, None


def load_model(
    spec: BuiltinModel | HFConfigModel | UploadedModel | ExportedModel,
    ctx,
    *,
    features: int | None = None,
    classes: int | None = None,
) -> BuiltModel:
    buildable, weights = materialize(spec, ctx)
    built = build(buildable, features=features, classes=classes, weights=weights)
    built.module.to(ctx.device)
    return built


def load_exported(spec: ExportedModel, ctx) -> ExportedModule:
    """The module that runs an exported program, on the job's device: its archive checked again as it is read (the
    same checks as when it was stored), its weights as stored."""
    files = ctx.load_model(str(spec.id))
    if files.archive is None:
        raise ValueError(f'model.id: model {spec.id} is not an exported program; name it as {{"source": "uploaded"}}')
    with read_archive(files.archive, limits=files.limits) as archive:
        return build_module(archive, device=ctx.device)
