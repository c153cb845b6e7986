"""Turn a job's ``model`` spec into a built network on the worker (torch): uploaded ids are read through the run
context, so a technique never sees SQL."""

from __future__ import annotations

from core.networks.build import BuiltModel, build
from core.networks.spec import BuiltinModel, HFConfigModel, UploadedModel


def materialize(
    spec: BuiltinModel | HFConfigModel | UploadedModel, ctx
) -> tuple[BuiltinModel | HFConfigModel, bytes | None]:
    """The buildable spec and its safetensors bytes (None: the model's own random initialisation)."""
    if isinstance(spec, UploadedModel):
        config, weights = ctx.load_model(str(spec.id))
        return HFConfigModel(source="hf_config", config=config), weights
    if isinstance(spec, HFConfigModel) and spec.weights is not None:
        _, weights = ctx.load_model(str(spec.weights))
        if weights is None:
            raise ValueError(f"model.weights: model {spec.weights} was uploaded without weights")
        return spec, weights
    return spec, None


def load_model(
    spec: BuiltinModel | HFConfigModel | UploadedModel, ctx, *, features: int | None = None, classes: int | None = None
) -> BuiltModel:
    buildable, weights = materialize(spec, ctx)
    built = build(buildable, features=features, classes=classes, weights=weights)
    built.module.to(ctx.device)
    return built
