"""gradient_penalty_bound on an exported program: its chain trained as exported, measured in its dense form."""

from __future__ import annotations

import math

import torch
from torch import nn

from core.networks.exported.chain import Chain, find_chain
from core.networks.exported.dense import dense_chain
from core.networks.exported.graph import ExportedModule


class ExportedChain(nn.Module):
    """An exported chain taking the dataset's flat rows: each row is reshaped to the program's input (an image for a
    convolution), so the training loop and the measurement see rows as for the MLP."""

    def __init__(self, module: ExportedModule, features: int, classes: int):
        super().__init__()
        self.module = module
        self.chain: Chain = find_chain(module.program)
        if not self.chain.is_chain:
            raise ValueError(f"model: node {self.chain.breaks_at!r} breaks the chain ({self.chain.reason})")
        self.shape = module.input_shape()
        if math.prod(self.shape) != features:
            raise ValueError(f"dataset: rows of {features} values do not fill the model's input {list(self.shape)}")
        dims = [_width(module, layer.node) for layer in self.chain.layers]  # read off the graph: dense() is large
        if dims[-1] < classes:
            raise ValueError(f"model: it returns {dims[-1]} logits, fewer than the dataset's {classes} classes")
        self.dims = [features, *dims]

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.module(rows.reshape(len(rows), *self.shape))

    def dense(self) -> nn.Sequential:
        """The chain as float64 Linear layers and activations with the current weights (``dense_chain``)."""
        device = next(self.module.parameters()).device
        example = torch.zeros(2, *self.shape, device=device)
        return dense_chain(self.module, self.chain, example)


def _width(module: ExportedModule, node: str) -> int:
    """Values per row of a node's output, as the graph recorded its shape."""
    (found,) = [n for n in module.program.nodes if n.name == node]
    meta = module.program.tensor_values.get(found.outputs[0]) if isinstance(found.outputs[0], str) else None
    if meta is None or not all(isinstance(s, int) for s in meta.shape[1:]):
        raise ValueError(f"model: the output of node {node!r} has no fixed size per row")
    return math.prod(int(s) for s in meta.shape[1:])
