"""init_averaging on an exported program: the per-layer table of its graph's weights and the variance ratios of one
batch of the dataset's rows through it (its own weights, then each averaged init on its non-square weights)."""

from __future__ import annotations

import math

import numpy as np
import torch

from core.data import load_arrays
from core.networks.build import BuiltModel
from core.networks.resolve import load_exported
from core.networks.spec import ExportedModel
from core.techniques.base import RunContext
from core.techniques.init_averaging.spec import InitAveragingParams


def exported_inputs(params: InitAveragingParams, ctx: RunContext) -> tuple[BuiltModel, torch.Tensor]:
    """(the program as a classifier, one batch of standardised rows shaped as its input), on the job's device."""
    assert isinstance(params.model, ExportedModel)  # the caller branches on it
    module = load_exported(params.model, ctx)
    try:
        shape = module.input_shape()
    except ValueError as exc:
        raise ValueError(f"model: {exc}") from None
    x = torch.as_tensor(np.asarray(load_arrays(params.dataset, ctx)["x"], dtype=np.float32)[: params.batch])
    if x.dim() != 2 or x.shape[1] != math.prod(shape):
        raise ValueError(f"dataset: rows of {list(x.shape[1:])} values do not fill the model's input {list(shape)}")
    x = (x - x.mean()) / (x.std() + 1e-8)
    return BuiltModel(module, "classify"), x.reshape(len(x), *shape).to(ctx.device)
