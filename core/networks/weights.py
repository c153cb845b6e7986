"""Safetensors weights loaded into a built module from files on local disk (torch; workers and tests).

Each file is opened with ``safetensors.safe_open``, which memory-maps it: the names, dtypes and shapes of every file
are checked against the module first, then the tensors are copied in one at a time, converted to the module's dtype
(float16 or bfloat16 weights are stored as sent; a float32 run converts them as they load). A shard's tensors never
sit in memory all at once, so loading costs the module plus one tensor, whatever the checkpoint's size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn


def load_weights(module: nn.Module, files: Sequence[Path]) -> None:
    """Load every tensor by name and shape; names missing from the files may only be aliases of loaded ones (tied
    weights). ValueError naming the first mismatch, before any weight is changed."""
    from safetensors import safe_open

    own = module.state_dict()
    found: dict[str, Path] = {}
    with_shapes: list[tuple[Path, list[str]]] = []
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            names = list(f.keys())
            for name in names:
                if name not in own:
                    raise ValueError(f"weights: {path.name}: the model has no tensor {name}")
                if name in found:
                    raise ValueError(f"weights: tensor {name} is in {found[name].name} and {path.name}")
                shape = tuple(f.get_slice(name).get_shape())
                if shape != tuple(own[name].shape):
                    raise ValueError(f"weights: {name} has shape {shape}, the model {tuple(own[name].shape)}")
                found[name] = path
        with_shapes.append((path, names))
    distinct = {n for n, _ in module.named_parameters()} | {n for n, _ in module.named_buffers()}
    missing = sorted((set(own) - set(found)) & distinct)
    if missing:
        raise ValueError(f"weights: tensors missing for {missing[:5]}")
    with torch.no_grad():
        for path, names in with_shapes:
            with safe_open(str(path), framework="pt") as f:
                for name in names:
                    own[name].copy_(f.get_tensor(name))
    if hasattr(module, "tie_weights"):
        module.tie_weights()  # type: ignore[operator]  # nn.Module.__getattr__ says Tensor | Module; a method here
