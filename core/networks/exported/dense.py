"""An exported chain as the ``nn.Sequential`` of dense ``nn.Linear`` layers and activations that computes the same
function on flattened inputs (torch): the form ``core.penalty`` measures.

Each affine layer of the chain (``chain.find_chain``) is read off the graph by running its node alone on the basis
vectors: z(e_i) − z(0) is the i-th column of its matrix and z(0) its bias, whatever the operator (linear, addmm,
a convolution, whose matrix is then its unrolled one, with a bias repeated over positions). Reshapes between layers
only reorder entries row-major, as ``flatten`` does, so they vanish in the flattened form. Activations run their own
node, with its constant arguments (a leaky ReLU's slope, GELU's approximation), entry by entry.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from core.networks.exported.chain import Chain
from core.networks.exported.graph import ExportedModule, Step, call


class GraphActivation(nn.Module):
    """One activation node of an exported graph applied to a tensor of any shape (it acts entry by entry)."""

    elementwise = True  # core.penalty.split_layers accepts it between Linear layers

    def __init__(self, name: str, step: Step, data: str):
        super().__init__()
        self.name, self._step, self._data = name, step, data

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return call(self._step, {self._data: h}, h.device)

    def extra_repr(self) -> str:
        return self.name


def dense_chain(module: ExportedModule, chain: Chain, example: torch.Tensor) -> nn.Sequential:
    """The chain of ``module`` with its current weights, in float64, taking rows ``example.flatten(1)``-shaped.

    ``example``: a batch of the module's input (its values do not matter: every layer is affine)."""
    if not chain.is_chain:
        raise ValueError(f"model: node {chain.breaks_at!r} breaks the chain ({chain.reason})")
    m64 = copy.deepcopy(module).double()
    with torch.no_grad():
        env = m64.values(example.double())
        layers: list[nn.Module] = []
        for layer in chain.layers:
            weight, bias = _affine(m64.step(layer.node), env[layer.data], layer.data, env)
            if layer.op in ("aten.mm", "aten.matmul") and layer.bias is not None:
                bias = bias + m64.get_parameter(layer.bias).flatten()
            linear = nn.Linear(weight.shape[1], weight.shape[0], bias=layer.bias is not None, dtype=torch.float64)
            linear.weight.copy_(weight)
            if linear.bias is not None:
                linear.bias.copy_(bias)
            layers.append(linear.to(example.device))
            for (node, data), name in zip(layer.steps, layer.activations):
                layers.append(GraphActivation(name, m64.step(node), data))
    return nn.Sequential(*layers)


def _affine(step: Step, value: torch.Tensor, data: str, env: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(matrix, bias) of one affine node, from its outputs on 0 and on each basis vector of its input ``value``."""
    width = value[0].numel()
    basis = torch.cat([torch.zeros(1, width), torch.eye(width)]).to(value)
    out = call(step, {**env, data: basis.reshape(width + 1, *value.shape[1:])}, value.device).flatten(1)
    return (out[1:] - out[0]).T.contiguous(), out[0].clone()
