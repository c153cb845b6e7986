"""gradnorm_gan's networks from exported programs: the user's critic (and generator) in place of the built-in ones."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from core.networks.exported.graph import ExportedModule
from core.networks.resolve import load_exported
from core.techniques.gradnorm_gan.spec import GradnormGanParams


class Flat(nn.Module):
    """An exported network on flat rows: each row reshaped to the program's input, its output flattened per row."""

    def __init__(self, module: ExportedModule, field: str):
        super().__init__()
        self.module = module
        try:
            self.shape = module.input_shape()
        except ValueError as exc:
            raise ValueError(f"{field}: {exc}") from None
        self.width = math.prod(self.shape)

    def forward(self, rows: Tensor) -> Tensor:
        out = self.module(rows.reshape(len(rows), *self.shape))
        if not isinstance(out, Tensor):
            raise ValueError("the exported network must return one tensor")
        return out.reshape(len(rows), -1)


def exported_nets(params: GradnormGanParams, ctx, dim: int) -> tuple[Flat | None, Flat | None]:
    """(generator, critic) as exported, None where the params name none; checked against the data's ``dim``."""
    G = D = None
    if params.critic is not None:
        D = Flat(load_exported(params.critic, ctx), "critic")
        if D.width != dim:
            raise ValueError(f"critic: takes {list(D.shape)} ({D.width} values), the data rows have {dim}")
        with torch.no_grad():
            scores = D(torch.zeros(2, dim, device=ctx.device))
        if scores.shape[1] != 1:
            raise ValueError(f"critic: returns {scores.shape[1]} values per row, not one score")
    if params.generator is not None:
        G = Flat(load_exported(params.generator, ctx), "generator")
        with torch.no_grad():
            fake = G(torch.zeros(2, G.width, device=ctx.device))
        if fake.shape[1] != dim:
            raise ValueError(f"generator: returns {fake.shape[1]} values per sample, the data rows have {dim}")
    return G, D
