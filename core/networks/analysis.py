"""What the techniques measure on a user's model (torch): its non-square weights and their averaged-fan variances
(docs/techniques.md#init_averaging), variance ratios through the whole network, and the memory of gradient accumulation
inside the optimizer versus an explicit buffer (#momentum_accumulation)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from core.averaged_init import Mean, averaged_normal_, averaged_uniform_, averaged_variance, fans
from core.networks.build import BuiltModel
from core.optim.accum import AccumAdam, AccumSGDM, state_bytes


def nonsquare_weights(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Every parameter of two or more dimensions whose fan-in and fan-out differ (torch's fan convention)."""
    out = []
    for name, p in module.named_parameters():
        if p.dim() >= 2:
            fan_in, fan_out = fans(p)
            if fan_in != fan_out:
                out.append((name, p))
    return out


def layer_table(module: nn.Module, means: list[Mean]) -> list[dict]:
    """One row per non-square weight: fans, the variance it has now, and σ² = 1/mean(fans) for each mean."""
    rows = []
    for name, p in nonsquare_weights(module):
        fan_in, fan_out = fans(p)
        rows.append(
            {
                "name": name,
                "shape": list(p.shape),
                "fan_in": fan_in,
                "fan_out": fan_out,
                "current_variance": float(p.detach().double().var()),
                "variance": {m: averaged_variance(fan_in, fan_out, m) for m in means},
            }
        )
    return rows


def reinit_nonsquare_(module: nn.Module, mean: Mean, distribution: str, generator: torch.Generator) -> None:
    """Re-draw every non-square weight with the averaged-fan variance of ``mean``; everything else is kept."""
    fill = averaged_normal_ if distribution == "normal" else averaged_uniform_
    for _, p in nonsquare_weights(module):
        draw = torch.empty(p.shape, dtype=p.dtype)
        fill(draw, mean, generator=generator)
        with torch.no_grad():
            p.copy_(draw.to(p.device))


def _input_layer(built: BuiltModel) -> nn.Module | None:
    """The module whose output is the network's continuous input (token models: the token embedding)."""
    if not built.tokens:
        return None
    module = cast(Any, built.module)  # a transformers model or a TokenTransformer: attributes nn.Module lacks
    return module.get_input_embeddings() if built.hf else module.tok


def variance_ratios(built: BuiltModel, inputs: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
    """Forward E[out²]/E[in²] and backward E[∂in²]/E[∂out²] through the whole model for a random output gradient.

    ``in`` is the input rows (classifiers) or the token embeddings (token models); ``out`` is the logits.
    Dropout is off (eval mode), so the ratios are those of the initialisation itself."""
    built.module.eval()
    captured: dict[str, torch.Tensor] = {}
    layer = _input_layer(built)
    if layer is None:
        x = inputs.detach().clone().requires_grad_()
        captured["in"] = x
        out = built.module(x)
    else:

        def keep(_, __, output):
            output.retain_grad()
            captured["in"] = output

        handle = layer.register_forward_hook(keep)
        try:
            out = built.logits(inputs)
        finally:
            handle.remove()
    g_out = torch.randn(out.shape, generator=generator).to(out.device, out.dtype)
    out.backward(g_out)
    x = captured["in"]
    assert x.grad is not None  # a leaf or retain_grad(), and the backward just ran
    forward = float(out.detach().double().pow(2).mean() / x.detach().double().pow(2).mean())
    backward = float(x.grad.double().pow(2).mean() / g_out.double().pow(2).mean())
    built.module.zero_grad(set_to_none=True)
    return {"forward_ratio": forward, "backward_ratio": backward}


@dataclass
class AccumulationMemory:
    """Persistent bytes across micro-steps of each arm, measured after a full window of ``k`` micro-steps."""

    explicit_buffer_bytes: int  # optimizer state plus the .grad buffer kept across micro-steps
    chi_exact_bytes: int  # AccumAdam/AccumSGDM state only (gradients freed after every micro-step)
    param_bytes: int
    explicit_seconds_per_micro_step: float
    chi_exact_seconds_per_micro_step: float

    @property
    def saving(self) -> int:
        return self.explicit_buffer_bytes - self.chi_exact_bytes

    def as_dict(self) -> dict:
        return {
            "explicit_buffer_bytes": self.explicit_buffer_bytes,
            "chi_exact_bytes": self.chi_exact_bytes,
            "saving_bytes": self.saving,
            "param_bytes": self.param_bytes,
            "saving_is_one_parameter_sized_tensor": self.saving == self.param_bytes,
            "explicit_seconds_per_micro_step": self.explicit_seconds_per_micro_step,
            "chi_exact_seconds_per_micro_step": self.chi_exact_seconds_per_micro_step,
        }


def accumulation_memory(
    built: BuiltModel,
    batches: list[tuple[torch.Tensor, torch.Tensor | None]],
    optimizer: str = "adam",
    lr: float = 1e-4,
) -> AccumulationMemory:
    """Run one window of k = len(batches) micro-steps per arm on the same starting weights and measure what each
    keeps between micro-steps: explicit accumulation holds the optimizer state plus a gradient per parameter until
    the window's step; the exact χ rule folds each micro-gradient into the momentum and frees it at once."""
    k = len(batches)
    start = {n: p.detach().clone() for n, p in built.module.named_parameters()}
    opt_cls = AccumAdam if optimizer == "adam" else AccumSGDM
    built.module.train()
    measured = {}
    for arm in ("explicit_buffer", "chi_exact"):
        with torch.no_grad():
            for n, p in built.module.named_parameters():
                p.copy_(start[n])
        opt = opt_cls(built.module.parameters(), lr=lr, accum_steps=k if arm == "chi_exact" else 1)
        held = 0
        t0 = time.perf_counter()
        for t, (inputs, targets) in enumerate(batches, start=1):
            loss = built.loss(inputs, targets)
            if arm == "explicit_buffer":
                (loss / k).backward()
                held = max(
                    held,
                    sum(
                        p.grad.numel() * p.grad.element_size() for p in built.module.parameters() if p.grad is not None
                    ),
                )
                if t == k:
                    opt.step()
                    opt.zero_grad(set_to_none=True)
            else:
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
        seconds = (time.perf_counter() - t0) / k
        measured[arm] = (state_bytes(opt) + held, seconds)
        del opt
    param_bytes = sum(p.numel() * p.element_size() for p in built.module.parameters())
    return AccumulationMemory(
        measured["explicit_buffer"][0],
        measured["chi_exact"][0],
        param_bytes,
        measured["explicit_buffer"][1],
        measured["chi_exact"][1],
    )
